"""GPU benchmark: the fused Triton kernel's memory bandwidth, and end-to-end search on a GPU, Triton vs torch.

For each ``--dims`` (nbits ``--nbits``) it opens, or builds once from the synthetic stream and keeps under
``--index-dir``, an index of ``--n-docs`` passages (default 1M, ~60 tokens each), then on ``--device``:

1. **Fused kernel** (stage 4, ``exact_maxsim_batched``): ``--kernel-queries`` queries, each with its own
   random candidate documents, together at least ``--kernel-tokens`` (default 10M) candidate tokens, in
   one launch. Effective bandwidth = compressed bytes the kernel must read (codes + packed residuals of
   every candidate token, plus per-candidate ids and offsets) / time, and its fraction of the HBM peak
   (``--hbm-peak-gbs``, or a table of known GPUs by name). The centroid rows it gathers come mostly from
   L2 and are reported separately (``centroid_bytes``). The torch fallback runs the same candidates.
2. **End to end**, k=10, default ``SearchParams``, for each kernel backend (``triton``, ``torch``): single
   query latency (p50/p95 over ``--n-queries``, each ``Index.search`` call synchronised by its copy of the
   results to the host), batched throughput (all queries in one ``Index.search`` call), and recall@10
   against exact MaxSim over the same compressed index (brute force on the device with the torch kernel,
   ``search_exact``'s definition). Both backends run in one process on one device, so the Triton speed-up
   is a ratio from one run. ``--with-cpu`` adds the Numba path (single-query latency on 20 queries).

Every row records the device, driver/library versions, commit and a timestamp. Results go to
``<out>/<name>.json``; a markdown table is printed.

Usage::

    python bench/gpu.py                                   # H100: 1M docs, dims 64 and 128, nbits 2
    python bench/gpu.py --index-dir /data/indexes --hbm-peak-gbs 3350
    python bench/gpu.py --quick --device cpu              # smoke run of the code paths (torch on CPU)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from colbert_index.kernels import torch_scoring  # noqa: E402
from run import BENCH_DIR, environment, latency_stats, log, recall, source_hash  # noqa: E402

from colbert_index import Index  # noqa: E402
from colbert_index.device_search import keep_top  # noqa: E402
from colbert_index.synthetic import SyntheticStream  # noqa: E402

# HBM peak (GB/s) by device-name substring, first match wins (vendor data sheets)
HBM_PEAK_GBS = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM5
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("T4", 320.0),
)
QUICK = {
    "n_docs": 400,
    "dims": [64],
    "n_queries": 8,
    "kernel_tokens": 20_000,
    "kernel_queries": 4,
    "kernel_repeat": 3,
    "name": "gpu_quick",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="torch device (default cuda; 'cpu' for a smoke run)")
    p.add_argument("--n-docs", type=int, default=1_000_000, help="passages in the synthetic index (default 1M)")
    p.add_argument("--mean-doc-len", type=int, default=60, help="mean tokens per passage (default 60)")
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128], help="embedding dims (default 64 128)")
    p.add_argument("--nbits", type=int, default=2, choices=[2, 4], help="residual bits (default 2)")
    p.add_argument("--n-queries", type=int, default=100, help="queries of 32 tokens (default 100)")
    p.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--kernel-tokens", type=int, default=10_000_000, help="candidate tokens of the kernel run")
    p.add_argument("--kernel-queries", type=int, default=32, help="queries sharing the kernel launch (default 32)")
    p.add_argument("--kernel-repeat", type=int, default=10, help="timed kernel launches (default 10)")
    p.add_argument("--backends", nargs="+", default=["triton", "torch"], choices=["triton", "torch"])
    p.add_argument("--hbm-peak-gbs", type=float, help="HBM peak of the GPU in GB/s (default: by device name)")
    p.add_argument("--with-cpu", action="store_true", help="also time the Numba CPU path on 20 queries")
    p.add_argument("--index-dir", type=Path, default=BENCH_DIR / "indexes", help="where indexes are kept")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="directory of the JSON results")
    p.add_argument("--name", default="gpu", help="results name (default gpu; --quick: gpu_quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds; index in --out)")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
        if args.index_dir == p.get_default("index_dir"):
            args.index_dir = args.out / "indexes"
    if args.kernel_tokens < 1 or args.n_queries < 1 or args.n_docs < 1:
        p.error("--kernel-tokens, --n-queries and --n-docs must be positive")
    return args


def device_env(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "device": str(device)}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), sm_count=props.multi_processor_count
        )
    return env


def hbm_peak(args, device: torch.device) -> float | None:
    if args.hbm_peak_gbs:
        return args.hbm_peak_gbs
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gbs for key, gbs in HBM_PEAK_GBS if key in name), None)


def synced(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def open_index(args, dim: int) -> Index:
    """The kept index for (n_docs, dim, nbits), built from the synthetic stream the first time."""
    path = args.index_dir / f"gpu_n{args.n_docs}_d{dim}_b{args.nbits}_len{args.mean_doc_len}_s{args.seed}"
    if not (path / "manifest.json").is_file():
        stream = SyntheticStream(args.n_docs, dim, 0, mean_doc_len=args.mean_doc_len, seed=args.seed)
        log(f"dim {dim}: building {path} ({stream.n_tokens:,} tokens; kept for later runs)")
        t0 = time.perf_counter()
        Index.build(path, iter(stream), nbits=args.nbits, seed=args.seed, progress=not args.quick).close()
        log(f"dim {dim}: built in {time.perf_counter() - t0:.0f} s")
    return Index.open(path)


def exact_truth(data, Q: torch.Tensor, q_lens: torch.Tensor, k: int) -> np.ndarray:
    """Top-``k`` positions of each query by brute force over every live document (torch kernel)."""
    docs = torch.arange(data.n_docs, device=Q.device)
    if data.deleted is not None:
        docs = docs[~data.deleted]
    out = []
    for i in range(len(Q)):
        cand_q = torch.full((len(docs),), i, dtype=torch.int32, device=Q.device)
        s = torch_scoring.exact_maxsim_batched(
            Q,
            q_lens,
            data.codes,
            data.residuals,
            data.offsets,
            docs,
            cand_q,
            data.centroids,
            data.table,
            data.normalize,
        )
        out.append(keep_top(s, docs, cand_q, len(Q), k)[1].cpu().numpy())
    return np.stack(out)


def kernel_run(args, data, kernels: dict, device: torch.device, peak: float | None, rng) -> list[dict]:
    """Stage 4 over >= ``--kernel-tokens`` random candidate tokens in one launch, per kernel backend."""
    n_q, dim = args.kernel_queries, data.centroids.shape[1]
    lens = (data.offsets[1:] - data.offsets[:-1]).cpu().numpy()
    per_query = int(np.ceil(args.kernel_tokens / n_q / max(lens.mean(), 1)))
    cands = rng.integers(0, data.n_docs, (n_q, per_query))
    n_tokens = int(lens[cands].sum())
    cands_t = torch.from_numpy(cands.ravel()).to(device)
    cand_q = torch.from_numpy(np.repeat(np.arange(n_q), per_query).astype(np.int32)).to(device)
    Q = torch.nn.functional.normalize(torch.randn((n_q, 32, dim), device=device), dim=2)
    q_lens = torch.full((n_q,), 32, dtype=torch.int32, device=device)
    code_bytes = data.codes.element_size()
    read = n_tokens * (data.residuals.shape[1] + code_bytes) + len(cands_t) * (16 + 8 + 4 + 4)
    rows = []
    for name, module in kernels.items():
        args_ = (Q, q_lens, data.codes, data.residuals, data.offsets, cands_t, cand_q, data.centroids, data.table)

        def launch(module=module, args_=args_):
            return module.exact_maxsim_batched(*args_, data.normalize)

        t0 = time.perf_counter()
        launch()  # compile + autotune (Triton), warm caches
        synced(device)
        first_s = time.perf_counter() - t0
        times = []
        for _ in range(args.kernel_repeat):
            t0 = time.perf_counter()
            launch()
            synced(device)
            times.append(time.perf_counter() - t0)
        sec = float(np.median(times))
        gbs = read / sec / 1e9
        rows.append(
            {
                "kind": "kernel",
                "backend": name,
                "dim": dim,
                "candidates": len(cands_t),
                "candidate_tokens": n_tokens,
                "q_len": 32,
                "ms": round(sec * 1e3, 3),
                "first_call_s": round(first_s, 2),
                "compressed_bytes": read,
                "centroid_bytes": n_tokens * dim * 4,
                "effective_gbs": round(gbs, 2),
                "hbm_peak_gbs": peak,
                "fraction_of_peak": round(gbs / peak, 3) if peak else None,
                "gtokens_per_s": round(n_tokens / sec / 1e9, 3),
                "tflops": round(2 * 32 * dim * n_tokens / sec / 1e12, 2),
            }
        )
        log(f"kernel {name} dim {dim}: {n_tokens:,} tokens in {sec * 1e3:.2f} ms, {gbs:.0f} GB/s")
    return rows


def search_run(index: Index, queries: np.ndarray, truth: np.ndarray, k: int) -> dict:
    index.search(queries[:2], k=k)  # compile / autotune, upload done at open
    times = []
    ids = []
    for q in queries:
        t0 = time.perf_counter()
        res = index.search(q, k=k)  # ids and scores come back to the host: synchronised
        times.append((time.perf_counter() - t0) * 1e3)
        ids.append(res.ids[0])
    t0 = time.perf_counter()
    batch = index.search(queries, k=k)
    batch_s = time.perf_counter() - t0
    ids = np.stack(ids)
    return {
        "search": latency_stats(times),
        "batch_qps": round(len(queries) / batch_s, 1),
        "recall10_vs_exact": recall(ids, truth, 10),
        "batch_recall10_vs_exact": recall(batch.ids, truth, 10),
    }


def bench_dim(args, dim: int, device: torch.device, env: dict, rng) -> list[dict]:
    cpu = open_index(args, dim)
    base = {"env": env, "n_docs": cpu.n_docs, "n_tokens": cpu.n_tokens, "dim": dim, "nbits": args.nbits}
    base["K"] = cpu.n_centroids
    stream = SyntheticStream(args.n_docs, dim, args.n_queries, mean_doc_len=args.mean_doc_len, seed=args.seed)
    queries = stream.queries()
    indexes, kernels = {}, {}
    for name in args.backends:
        try:
            t0 = time.perf_counter()
            idx = Index.open(cpu.path, device=str(device), backend=name)
            indexes[name] = (idx, time.perf_counter() - t0)
            kernels[name] = idx._device.kernels
        except (ImportError, ValueError, RuntimeError) as e:
            log(f"dim {dim}: backend {name} unavailable on {device}: {e}")
    if not indexes:
        raise SystemExit(f"no backend of {args.backends} runs on {device}")
    any_index = next(iter(indexes.values()))[0]
    data = any_index._device.prepare(any_index._s)
    Q = torch.from_numpy(np.ascontiguousarray(queries)).to(device)
    q_lens = torch.full((len(queries),), queries.shape[1], dtype=torch.int32, device=device)
    log(f"dim {dim}: exact top-{args.k} of {len(queries)} queries (brute force on {device})")
    t0 = time.perf_counter()
    truth = any_index.ids_of(exact_truth(data, Q, q_lens, args.k))
    exact_s = time.perf_counter() - t0
    rows = [{**base, **r} for r in kernel_run(args, data, kernels, device, hbm_peak(args, device), rng)]
    for name, (idx, open_s) in indexes.items():
        log(f"dim {dim}: end-to-end search with {name}")
        row = {**base, "kind": "search", "backend": name, "k": args.k, "open_s": round(open_s, 2)}
        rows.append({**row, **search_run(idx, queries, truth, args.k), "exact_ms_per_query": exact_s * 1e3 / len(Q)})
        idx.close()
    if args.with_cpu:
        sub = queries[:20]
        r = search_run(cpu, sub, truth[:20], args.k)
        rows.append({**base, "kind": "search", "backend": "numba-cpu", "k": args.k, **r})
    _speedups(rows)
    return rows


def _speedups(rows: list[dict]) -> None:
    """Triton over torch, from the same run: kernel time, p50 latency, batched QPS."""
    by = {(r["kind"], r["backend"]): r for r in rows}
    tri, tor = by.get(("kernel", "triton")), by.get(("kernel", "torch"))
    if tri and tor:
        tri["speedup_vs_torch"] = round(tor["ms"] / tri["ms"], 2)
    tri, tor = by.get(("search", "triton")), by.get(("search", "torch"))
    if tri and tor:
        tri["p50_speedup_vs_torch"] = round(tor["search"]["p50_ms"] / tri["search"]["p50_ms"], 2)
        tri["qps_speedup_vs_torch"] = round(tri["batch_qps"] / tor["batch_qps"], 2)


def render(rows: list[dict]) -> str:
    lines = [
        "| dim | kernel | candidate tokens | ms | GB/s | of peak | Gtok/s | TFLOP/s | vs torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == "kernel":
            lines.append(
                f"| {r['dim']} | {r['backend']} | {r['candidate_tokens']:,} | {r['ms']} | {r['effective_gbs']} | "
                f"{r['fraction_of_peak']} | {r['gtokens_per_s']} | {r['tflops']} | {r.get('speedup_vs_torch', '')} |"
            )
    lines += [
        "",
        "| dim | search | p50 ms | p95 ms | batch QPS | R@10 vs exact | p50 vs torch | QPS vs torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] == "search":
            s = r["search"]
            lines.append(
                f"| {r['dim']} | {r['backend']} | {s['p50_ms']} | {s['p95_ms']} | {r['batch_qps']} | "
                f"{r['recall10_vs_exact']} | {r.get('p50_speedup_vs_torch', '')} | "
                f"{r.get('qps_speedup_vs_torch', '')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available to torch {torch.__version__}")
    if device.type == "cpu":
        torch.set_num_threads(1)  # torch's OpenMP pool and Numba's take turns on the cores otherwise
    sources = source_hash()
    rng = np.random.default_rng(args.seed)
    rows = []
    for dim in args.dims:
        env = {**environment(sources), **device_env(device)}
        env["timestamp_utc"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows += bench_dim(args, dim, device, env, rng)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.json"
    path.write_text(json.dumps(rows, indent=1, default=str))
    print(render(rows))
    log(f"results: {path}")
    return rows


if __name__ == "__main__":
    main()
