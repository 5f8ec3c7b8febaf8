"""int8 stage 0 on CPUs without AVX-512: the AVX2 kernels against the float ones, side by side, one thread.

Measures, alternating the variants call by call in one process:

* stage 0 alone: ``numba_scoring.centroid_scores`` (float32) against ``numba_vnni.centroid_scores_int8``, for
  K = 4096 / 16384 / 65536, dims 64 / 128, 32 and 12 query tokens;
* the fused pass ``numba_vnni.query_tables`` (stage 0 with the probe's cells, stage 2's table and stage 3's
  int16 rows) against the float passes it replaces: ``centroid_scores``, ``probe_cells``, ``kept_rows_int8``
  and ``refined_interaction_scores``;
* whole searches on the 10k synthetic index (dim 64, 2 bits, 100 queries, k=10, defaults): p50 with the
  backend's ``query_tables_int8`` against the same backend with it set to ``None`` (the float path), the time
  spent in each stage's kernels, and recall@10 against ``search_exact`` for both.

Then the same in a child process whose Numba compiles for ``haswell`` (AVX2, no AVX-512: ``NUMBA_CPU_NAME=haswell
NUMBA_CPU_FEATURES=""``, its own cache dir), and a check that a child compiling for ``x86-64`` (no AVX2) picks the
float path and searches with it. ``NUMBA_CPU_NAME`` alone does not change the target: Numba then keeps the host's
feature string (docs/design-notes.md).

Usage::

    python bench/int8_avx2.py --rounds 5 --out bench/results/int8_avx2.json
        # 16 min on the 2-vCPU Zen 3 VM, most of it waiting for a quiet machine (up to --quiet-wait s per block)
    python bench/int8_avx2.py --quick --out /tmp/int8_avx2.json      # smoke run, about 2 min (compiles twice)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
from colbert_index.kernels import numba_ivf, numba_llvm, numba_scoring, numba_vnni
from common import (
    BENCH_DIR,
    environment,
    gc_paused,
    log,
    others_load,
    recall,
    source_hash,
    thread_count,
    wait_for_quiet,
)
from llvmlite import binding

from colbert_index import Index
from colbert_index.codec import ResidualCodec, dequantize_centroids, quantize_centroids
from colbert_index.datasets.synthetic import make_corpus
from colbert_index.search import score_bound

TARGETS = {  # child targets: the environment Numba reads at import
    "haswell": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""},
    "x86-64": {"NUMBA_CPU_NAME": "x86-64", "NUMBA_CPU_FEATURES": ""},
}
NPROBE, THRESHOLD = 2, 0.5


def _target() -> dict:
    """What this process compiles for, and the int8 kernel it picked."""
    from colbert_index.backend import get_backend

    fused = get_backend("numba").query_tables_int8
    return {
        "cpu_name": numba.config.CPU_NAME or "host",
        "cpu_features": "host" if numba.config.CPU_FEATURES is None else numba.config.CPU_FEATURES or "(from name)",
        "target_isa": sorted(numba_llvm.target_isa()),
        "int8_dot": numba_vnni.INT8_DOT,
        "query_tables_int8": None if fused is None else f"{fused.__module__}.{fused.__name__}",
    }


def _codebook(rng: np.random.Generator, K: int, dim: int, q_len: int):
    """Unit centroids as the codec stores them, and a query whose tokens lie near some of them (so the keep test
    and the probe lists see scores like a real query's)."""
    c = rng.standard_normal((K, dim)).astype(np.float32)
    c = dequantize_centroids(*quantize_centroids(c / np.linalg.norm(c, axis=1, keepdims=True)))
    codec = ResidualCodec(c, np.zeros((dim, 3), np.float32), np.zeros((dim, 4), np.float32), 2)
    Q = c[rng.choice(K, q_len)] + 0.08 * rng.standard_normal((q_len, dim)).astype(np.float32)
    return codec, np.ascontiguousarray(Q / np.linalg.norm(Q, axis=1, keepdims=True), dtype=np.float32)


def _alternate(fns: dict, reps: int) -> dict:
    """Median milliseconds of each function, called in turn ``reps`` times (order reversed every other round)."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    names = list(fns)
    with gc_paused():
        for r in range(reps):
            for k in names if r % 2 == 0 else names[::-1]:
                t0 = time.perf_counter()
                fns[k]()
                times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: round(float(np.median(v)), 4) for k, v in times.items()}


def kernel_rows(reps: int, quick: bool, quiet_s: float) -> tuple[list, list]:
    """Stage 0 alone and the fused pass against their float counterparts, over the grid of shapes."""
    rng = np.random.default_rng(0)
    stage0, fused = [], []
    for K in (4096,) if quick else (4096, 16384, 65536):
        for dim in (64,) if quick else (64, 128):
            for q_len in (32, 12):
                codec, Q = _codebook(rng, K, dim, q_len)
                c, (u8, scales) = codec.centroids, codec.centroids_u8
                tables3 = numba_scoring.refined_interaction_tables(Q, codec.table, score_bound(codec, Q))

                def float_passes(c=c, Q=Q, tables3=tables3):
                    S = numba_scoring.centroid_scores(c, Q)
                    numba_ivf.probe_cells(S, NPROBE)
                    numba_scoring.kept_rows_int8(S, THRESHOLD)
                    numba_scoring.refined_interaction_scores(tables3, S)

                row = {"K": K, "dim": dim, "q_len": q_len, "waited_s": wait_for_quiet(quiet_s)}
                with others_load(row):
                    t = _alternate(
                        {
                            "float": lambda c=c, Q=Q: numba_scoring.centroid_scores(c, Q),
                            "int8": lambda u8=u8, s=scales, Q=Q: numba_vnni.centroid_scores_int8(u8, s, Q),
                        },
                        reps,
                    )
                stage0.append({**row, "float_ms": t["float"], "int8_ms": t["int8"], "speedup": _ratio(t)})
                row = {"K": K, "dim": dim, "q_len": q_len, "waited_s": wait_for_quiet(quiet_s)}
                with others_load(row):
                    t = _alternate(
                        {
                            "float": float_passes,
                            "int8": lambda u8=u8, s=scales, Q=Q, t3=tables3: numba_vnni.query_tables(
                                u8, s, Q, NPROBE, THRESHOLD, t3
                            ),
                        },
                        reps,
                    )
                fused.append({**row, "float_passes_ms": t["float"], "fused_int8_ms": t["int8"], "speedup": _ratio(t)})
                log(f"K={K} dim={dim} q_len={q_len}: stage 0 {stage0[-1]['speedup']}x, fused {fused[-1]['speedup']}x")
    return stage0, fused


def _ratio(t: dict) -> float:
    return round(t["float"] / t["int8"], 2)


class _StageClock:
    """Wraps a backend's stage kernels to add up the milliseconds each stage spends in them during a search."""

    STAGES = {
        "query_tables_int8": "stages_0_1",
        "centroid_scores": "stages_0_1",
        "probe_cells": "stages_0_1",
        "probe": "stages_0_1",
        "centroid_interaction_tables": "stage_2",
        "centroid_interaction_from": "stage_2",
        "refined_interaction_scores": "stage_3",
        "refined_interaction_from": "stage_3",
        "exact_maxsim": "stage_4",
    }

    def __init__(self, backend) -> None:
        self.ms = dict.fromkeys(self.STAGES.values(), 0.0)
        for name, stage in self.STAGES.items():
            func = getattr(backend, name)
            if func is not None:
                setattr(backend, name, self._timed(func, stage))

    def _timed(self, func, stage):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.ms[stage] += (time.perf_counter() - t0) * 1e3

        return run


def search_rows(path: Path, queries: np.ndarray, rounds: int, quiet_s: float) -> dict:
    """p50 of whole searches with and without the int8 pass (one thread, alternating per query), the time in
    each stage's kernels per query, and recall@10 against ``search_exact``."""
    indexes = {"int8": Index.open(path), "float": Index.open(path)}
    indexes["float"].backend.query_tables_int8 = None  # the path of a CPU without an int8 kernel
    has_int8 = indexes["int8"].backend.query_tables_int8 is not None
    out: dict = {"int8_path_available": has_int8}
    with thread_count(1):
        exact = indexes["float"].search_exact(queries, k=10).ids
        for idx in indexes.values():
            idx.search(queries[:3], k=10)  # compile or load the kernels
        times = {k: [] for k in indexes}
        ids = {k: [None] * len(queries) for k in indexes}
        clocks = {k: _StageClock(idx.backend) for k, idx in indexes.items()}
        names = list(indexes)
        out["waited_s"] = wait_for_quiet(quiet_s)
        with others_load(out), gc_paused():
            for r in range(rounds):
                for i, q in enumerate(queries):
                    for k in names if (r + i) % 2 == 0 else names[::-1]:
                        t0 = time.perf_counter()
                        res = indexes[k].search(q, k=10)
                        times[k].append((time.perf_counter() - t0) * 1e3)
                        ids[k][i] = res.ids[0]
    n = rounds * len(queries)
    for k in names:
        out[k] = {
            "p50_ms": round(float(np.percentile(times[k], 50)), 3),
            "p95_ms": round(float(np.percentile(times[k], 95)), 3),
            "recall10_vs_exact": recall(np.stack(ids[k]), exact, 10),
            "stage_ms_per_query": {s: round(v / n, 3) for s, v in clocks[k].ms.items()},
        }
    paired = np.asarray(times["float"]) / np.asarray(times["int8"])
    out["p50_speedup"] = round(out["float"]["p50_ms"] / out["int8"]["p50_ms"], 3)
    out["median_paired_speedup"] = round(float(np.median(paired)), 3)
    out["same_top10"] = float(np.mean([np.array_equal(a, b) for a, b in zip(ids["int8"], ids["float"])]))
    return out


def measure(path: Path, queries: np.ndarray, args: argparse.Namespace) -> dict:
    """Every measurement of this process (its Numba target)."""
    row: dict = {"target": _target()}
    if numba_vnni.INT8_DOT is not None:
        with thread_count(1):
            row["stage0"], row["fused"] = kernel_rows(args.reps, args.quick, args.quiet_wait)
    row["search_10k"] = search_rows(path, queries, args.rounds, args.quiet_wait)
    return row


def _runs_here(target: str) -> bool:
    """Whether this CPU can run code compiled for ``target`` (an x86-64 CPU; with AVX2 for ``haswell``)."""
    host = binding.get_host_cpu_features()
    return platform.machine().lower() in ("x86_64", "amd64") and (target != "haswell" or host.get("avx2", False))


def _child(target: str, path: Path, queries: Path, args: argparse.Namespace) -> dict:
    """This script again in a process whose Numba compiles for ``target`` (own cache dir)."""
    env = {**os.environ, **TARGETS[target], "NUMBA_CACHE_DIR": str(Path(tempfile.gettempdir()) / f"numba-{target}")}
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [sys.executable, __file__, "--child", target, "--index", str(path), "--queries", str(queries)]
        cmd += ["--reps", str(args.reps), "--rounds", str(args.rounds), "--quiet-wait", str(args.quiet_wait)]
        cmd += ["--out", f.name] + ["--quick"] * args.quick
        log(f"child process for {target}: {' '.join(f'{k}={v!r}' for k, v in TARGETS[target].items())}")
        subprocess.run(cmd, env=env, check=True)
        return json.loads(Path(f.name).read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "int8_avx2.json")
    p.add_argument("--reps", type=int, default=40, help="calls of each kernel variant per shape")
    p.add_argument("--rounds", type=int, default=3, help="passes over the queries per search variant")
    p.add_argument("--quiet-wait", type=float, default=20.0, help="most seconds to wait for a quiet machine per block")
    p.add_argument("--quick", action="store_true", help="K=4096, dim 64, 1,000 documents, 20 queries")
    p.add_argument("--child", choices=sorted(TARGETS), help=argparse.SUPPRESS)
    p.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--queries", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.reps, args.rounds, args.quiet_wait = min(args.reps, 5), 1, 0.0
    if args.child:
        queries = np.load(args.queries)
        if args.child == "x86-64":  # the choice, and that the float path searches; no timing
            res = {"target": _target(), "search_10k": search_rows(args.index, queries[:10], 1, 0.0)}
        else:
            res = measure(args.index, queries, args)
        args.out.write_text(json.dumps(res, indent=1))
        return
    sources, t0 = source_hash(), time.perf_counter()
    n_docs = 1000 if args.quick else 10_000
    corpus = make_corpus(n_docs, dim=64, n_queries=20 if args.quick else 100)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index"
        log(f"building the {n_docs}-document index")
        Index.build(path, corpus.documents(), nbits=2, progress=False)
        np.save(Path(tmp) / "queries.npy", corpus.queries)
        results = {"n_docs": n_docs, "dim": 64, "nbits": 2, "n_queries": len(corpus.queries), "k": 10}
        results["params"] = {"nprobe_kernels": NPROBE, "threshold_kernels": THRESHOLD, "search": "defaults"}
        results["native"] = measure(path, corpus.queries, args)
        results["environment"] = environment(sources)
        for target in TARGETS:
            if _runs_here(target):
                results[target] = _child(target, path, Path(tmp) / "queries.npy", args)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {args.out}")
    for name in ("native", *(t for t in TARGETS if t in results)):
        s = results[name]["search_10k"]
        log(
            f"{name}: {results[name]['target']['int8_dot']}; 10k p50 int8 {s['int8']['p50_ms']} ms, float "
            f"{s['float']['p50_ms']} ms; recall {s['int8']['recall10_vs_exact']} / {s['float']['recall10_vs_exact']}"
        )


if __name__ == "__main__":
    main()
