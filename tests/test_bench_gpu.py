"""bench/gpu.py must keep working where there is no GPU: its defaults, and a tiny run with the torch
kernels on CPU tensors (figures are not checked; the GPU figures need a GPU)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
