"""bench/gpu.py must keep working where there is no GPU: its defaults, and a tiny run with the torch
kernels on CPU tensors (figures are not checked; the GPU figures need a GPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from colbert_index import Index

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def _module():
    """bench/gpu.py as a module, loaded with bench/ first on ``sys.path`` (as when the script runs) for its
    ``from common import ...``."""
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH.parent))
    return module


def test_defaults_are_the_issue_s_benchmark():
    args = _module().parse_args([])
    assert args.device == "cuda" and args.n_docs == 1_000_000 and args.dims == [64, 128] and args.nbits == 2
    assert args.kernel_tokens >= 10_000_000 and args.k == 10 and args.backends == ["triton", "torch"]
    quick = _module().parse_args(["--quick", "--n-docs", "500"])
    assert quick.n_docs == 500 and quick.kernel_tokens < 1_000_000


def test_quick_cpu_run(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_quick.json").read_text())
    kinds = {(r["kind"], r["backend"]) for r in rows}
    assert {("kernel", "torch"), ("search", "torch")} <= kinds
    search = next(r for r in rows if r["kind"] == "search")
    assert search["recall10_vs_exact"] == 1.0 and search["env"]["device"] == "cpu"
    assert "| dim | search |" in out.stdout


def test_exact_truth_in_several_launches_equals_one(index_2k_2bit, corpus_2k, monkeypatch):
    """The ground truth split over launches (as at 1M passages) ranks as the one-launch run and search_exact."""
    import torch

    gpu = _module()
    idx = Index.open(index_2k_2bit.path, device="cpu", backend="torch")
    data = idx._device.prepare(idx._s)
    Q = torch.from_numpy(corpus_2k.queries[:5])
    q_lens = torch.full((5,), Q.shape[1], dtype=torch.int32)
    whole = gpu.exact_truth(data, Q, q_lens, 10)
    monkeypatch.setattr(gpu, "_TRUTH_PAIRS", 2 * data.n_docs)  # two queries per launch: launches of 2, 2, 1
    np.testing.assert_array_equal(gpu.exact_truth(data, Q, q_lens, 10), whole)
    np.testing.assert_array_equal(idx.ids_of(whole), idx.search_exact(corpus_2k.queries[:5], k=10).ids)
    idx.close()
