"""Benchmark of filtered search: recall@10 and latency at filter selectivities 50%, 10%, 1% and 0.1%.

The synthetic corpus of ``bench/run.py`` (:func:`colbert_index.datasets.synthetic.make_corpus`, seed 0) is built with
one metadata field per document, ``{"bucket": b}``, ``b`` in 0..999 assigned by a random permutation (so the
allowed documents are spread over every topic, the hard case for a centroid probe: nothing about the filter
is in the embeddings). A selectivity is a structured filter ``{"bucket": {"$lt": n}}``.

Ground truth: for each query, the exact MaxSim of every document (``search_exact`` with ``k = n_docs``, on the
decompressed index), restricted to the allowed documents; also the same on the raw float embeddings. For each
selectivity, each strategy of ``colbert_index.filters.plan`` is measured:

* ``auto``: what ``Index.search(..., filter=...)`` does (exact scoring of the allowed documents up to
  ``EXACT_MAX_TOKENS`` tokens, else the staged search on them with the probe widened by 1 / selectivity);
* ``exact``: always score the allowed documents exactly;
* ``staged+widen``: always the staged search with the widened probe;
* ``staged``: the staged search on the allowed documents at default parameters (no widening).

Latencies are single queries on one thread (Numba and BLAS), the filter's bitmap cached (as it is for a
repeated filter); ``filter_ms`` is the cost of evaluating the filter in SQLite from scratch.
A crossover sweep (allowed documents 30..2000) times ``exact`` against ``staged+widen`` to set the threshold.

Usage::

    python bench/filters.py --out bench/results          # ~5 min on 2 vCPUs
    python bench/filters.py --quick --out /tmp/x         # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    environment,
    log,
    others_load,
    per_query,
    raw_top_k,
    source_hash,
    thread_count,
    timed,
    wait_for_quiet,
)

from colbert_index import Index, filters
from colbert_index.datasets.synthetic import make_corpus

N_BUCKETS = 1000
SELECTIVITIES = {"50%": 500, "10%": 100, "1%": 10, "0.1%": 1}  # name -> buckets allowed
CROSSOVER_BUCKETS = (3, 10, 20, 40, 100, 200)
STRATEGIES = {  # name -> (EXACT_MAX_TOKENS, MAX_NPROBE_WIDENING)
    "auto": (filters.EXACT_MAX_TOKENS, filters.MAX_NPROBE_WIDENING),
    "exact": (1 << 62, filters.MAX_NPROBE_WIDENING),
    "staged+widen": (-1, filters.MAX_NPROBE_WIDENING),
    "staged": (-1, 1),
}


@contextlib.contextmanager
def strategy(name: str):
    """Force one strategy of :func:`colbert_index.filters.plan` (module settings, restored after)."""
    saved = filters.EXACT_MAX_TOKENS, filters.MAX_NPROBE_WIDENING
    filters.EXACT_MAX_TOKENS, filters.MAX_NPROBE_WIDENING = STRATEGIES[name]
    try:
        yield
    finally:
        filters.EXACT_MAX_TOKENS, filters.MAX_NPROBE_WIDENING = saved


def allowed_truth(order: np.ndarray, allowed: np.ndarray, k: int) -> np.ndarray:
    """``order``: every document id per query, best first; the first ``k`` allowed ones, per query."""
    return np.stack([row[allowed[row]][:k] for row in order])


def recall_vs(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (the truth has fewer than 10 ids when few are allowed)."""
    return round(float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)])), 4)


def measure(index: Index, queries, flt: dict, name: str, truths: dict, wait_s: float, k: int = 10) -> dict:
    """Recall and single-query latency (one thread) of one strategy for one filter (after waiting at most
    ``wait_s`` for other processes to calm down)."""
    with strategy(name):
        for q in queries[:3]:  # warm-up, and the filter's bitmap is cached from here on
            index.search(q, k=k, filter=flt)
        load: dict = {"waited_s": wait_for_quiet(wait_s)}
        with thread_count(1), others_load(load):
            stats, ids = per_query(lambda q: index.search(q, k=k, filter=flt), queries)
    return {
        "strategy": name,
        "recall10_vs_exact": recall_vs(ids, truths["exact"]),
        "recall10_vs_raw": recall_vs(ids, truths["raw"]),
        **{f"{key}": v for key, v in stats.items()},
        **load,
    }


def filter_cost(index: Index, flt: dict, repeats: int = 5) -> float:
    """Median milliseconds to evaluate ``flt`` in SQLite for every segment (the bitmap cache bypassed)."""
    times = []
    for _ in range(repeats):
        for seg in index._s.segments:
            seg.meta.clear_cache()
        t0 = time.perf_counter()
        filters.allowed(index._s, flt)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(float(np.median(times)), 3)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-docs", type=int, default=10000)
    p.add_argument("--n-queries", type=int, default=100)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="600 docs, 10 queries (smoke run)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.n_docs, args.n_queries = 600, 10
    t_start, sources = time.perf_counter(), source_hash()
    wait_s = 0.0 if args.quick else 10.0
    corpus = make_corpus(args.n_docs, dim=args.dim, n_queries=args.n_queries, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    bucket = rng.permutation(args.n_docs) % N_BUCKETS
    queries = corpus.queries
    with tempfile.TemporaryDirectory() as tmp:
        log(f"build: {args.n_docs} docs, dim {args.dim}, 2 bits, metadata {{'bucket': 0..{N_BUCKETS - 1}}}")
        build_ms, index = timed(
            lambda: Index.build(
                Path(tmp) / "idx", corpus.documents(), metadata=[{"bucket": int(b)} for b in bucket], progress=False
            )
        )
        log("ground truth: every document's exact score per query (decompressed and raw)")
        order_exact = index.search_exact(queries, k=args.n_docs).ids
        raw = raw_top_k(queries, corpus.offsets, lambda lo, hi: corpus.embeddings[lo:hi], args.n_docs)
        order_raw = np.stack([slots for _, slots in raw])

        def truths(n_buckets: int) -> tuple[dict, np.ndarray]:
            allowed = bucket < n_buckets
            return {
                "exact": allowed_truth(order_exact, allowed, 10),
                "raw": allowed_truth(order_raw, allowed, 10),
            }, allowed

        unfiltered = {}
        with thread_count(1), others_load(unfiltered):
            for q in queries[:3]:
                index.search(q, k=10)
            stats, ids = per_query(lambda q: index.search(q, k=10), queries)
        unfiltered.update(stats, recall10_vs_exact=recall_vs(ids, order_exact[:, :10]))

        rows = []
        for label, n_buckets in SELECTIVITIES.items():
            flt = {"bucket": {"$lt": n_buckets}}
            t, allowed = truths(n_buckets)
            info = {
                "selectivity": label,
                "filter": flt,
                "allowed_docs": int(allowed.sum()),
                "allowed_tokens": int(corpus.doclens[allowed].sum()),
                "filter_ms": filter_cost(index, flt),
            }
            for name in STRATEGIES:
                log(f"selectivity {label}: {name}")
                rows.append({**info, **measure(index, queries, flt, name, t, wait_s)})

        crossover = []
        for n_buckets in CROSSOVER_BUCKETS if not args.quick else (3, 20):
            flt = {"bucket": {"$lt": n_buckets}}
            t, allowed = truths(n_buckets)
            for name in ("exact", "staged+widen"):
                log(f"crossover, {int(allowed.sum())} allowed: {name}")
                row = measure(index, queries, flt, name, t, wait_s)
                crossover.append(
                    {"allowed_docs": int(allowed.sum()), "allowed_tokens": int(corpus.doclens[allowed].sum()), **row}
                )
        env = environment(sources)
    results = {
        "name": f"filters_n{args.n_docs}_d{args.dim}" if not args.quick else "filters_quick",
        "config": {
            "n_docs": args.n_docs,
            "n_queries": args.n_queries,
            "dim": args.dim,
            "nbits": 2,
            "k": 10,
            "threads": 1,
            "exact_max_tokens": filters.EXACT_MAX_TOKENS,
            "max_nprobe_widening": filters.MAX_NPROBE_WIDENING,
        },
        "build_s": round(build_ms / 1e3, 1),
        "n_tokens": int(corpus.doclens.sum()),
        "unfiltered": unfiltered,
        "rows": rows,
        "crossover": crossover,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "env": env,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{results['name']}.json"
    out.write_text(json.dumps(results, indent=1))
    print(render(results))
    log(f"wrote {out}")
    return results


def render(r: dict) -> str:
    """Markdown tables of one results document."""
    env = r["env"]
    lines = [
        f"{r['config']['n_docs']} docs ({r['n_tokens']} tokens), dim {r['config']['dim']}, 2 bits, "
        f"{r['config']['n_queries']} queries, k=10, one thread; {env['cpu']}, {env['nproc']} cores; commit "
        f"`{env['git_commit']}`{' + uncommitted changes' if env['git_dirty'] else ''}; {env['timestamp_utc']}. "
        f"Unfiltered: p50 {r['unfiltered']['p50_ms']} ms, recall@10 vs exact {r['unfiltered']['recall10_vs_exact']}.",
        "",
        "| selectivity | allowed docs | filter (SQL) ms | strategy | R@10 vs exact (allowed) | R@10 vs raw (allowed) "
        "| p50 ms | p95 ms | others' cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['selectivity']} | {row['allowed_docs']} | {row['filter_ms']} | {row['strategy']} | "
            f"{row['recall10_vs_exact']} | {row['recall10_vs_raw']} | {row['p50_ms']} | {row['p95_ms']} | "
            f"{row.get('others_cpu_cores')} |"
        )
    lines += [
        "",
        "| allowed docs | allowed tokens | strategy | R@10 vs exact | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in r["crossover"]:
        lines.append(
            f"| {row['allowed_docs']} | {row['allowed_tokens']} | {row['strategy']} | {row['recall10_vs_exact']} | "
            f"{row['p50_ms']} | {row['p95_ms']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
