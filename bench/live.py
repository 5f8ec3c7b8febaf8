"""Benchmark of the live index: add throughput, delete latency, compaction time vs index size, and
recall after adds (half a corpus built, the other half added) against a fresh build of the whole.

Figures, each on the synthetic corpus (:func:`colbert_index.datasets.synthetic.make_corpus`, seed 0):

* **fresh**: ``Index.build`` of all ``n_docs``; recall@10 of ``search`` (default params, k=10) against
  exact MaxSim on the raw embeddings and against the index's own ``search_exact``; p50 of one query.
* **half + adds**: ``Index.build`` of the first half, then ``add`` of the second half in 1 and in 10
  batches (1 / 10 new segments, all encoded with the half's codebook); the same recall and latency,
  the add throughput (tokens per second of each ``add`` call, commit included) and the drift it reports;
  then ``compact()`` (time, figures after) and ``compact(retrain=True)`` (time, figures after).
* **drift**: the same half, plus a corpus of *other topics* (``make_corpus`` seed 1) added with
  ``expand=False`` (then ``compact(retrain=True)``) and with the default codebook extension: the drift
  figures ``add`` reports, and recall on that corpus's queries vs a fresh build of both.
* **delete**: latency of ``delete`` of 10% of the documents at once, then of 1 / 10 / 100 random ids
  (medians; commit included), and search latency and recall vs ``search_exact`` with those 10% deleted
  (tombstones, before compaction).
* **compaction vs size**: for each size, build on 90%, add 10%, delete 10% at random, then time
  ``compact()`` and ``compact(retrain=True)``.

Latencies are single queries at one thread (Numba and BLAS); everything else uses all threads.
Results: ``<out>/live_n<N>_d<dim>.json``; a markdown summary is printed.

Usage::

    python bench/live.py --out bench/results                 # ~10 min on 2 vCPUs
    python bench/live.py --quick                             # smoke run, ~30 s
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from common import (
    BENCH_DIR,
    environment,
    ground_truth,
    log,
    others_load,
    per_query,
    recall,
    source_hash,
    thread_count,
    timed,
    wait_for_quiet,
)

from colbert_index import Index
from colbert_index.datasets.synthetic import make_corpus

WAIT_QUIET_S = 20.0  # before each latency block, wait at most this long for other processes to calm down


def quality(index: Index, queries: np.ndarray, truth: np.ndarray) -> dict:
    """recall@10 vs raw and vs search_exact, p50/p95 of one query at one thread, segments."""
    load = {"waited_s": wait_for_quiet(WAIT_QUIET_S)}
    with thread_count(1), others_load(load):
        for q in queries[:3]:
            index.search(q, k=10)
        stats, ids = per_query(lambda q: index.search(q, k=10), queries)
    exact = index.search_exact(queries, k=10).ids
    return {
        "docs": index.n_docs,
        "segments": len(index.segment_info()),
        "recall10_raw": recall(ids, truth, 10),
        "recall10_vs_exact": recall(ids, exact, 10),
        "exact_recall10_raw": recall(exact, truth, 10),
        "p50_ms": stats["p50_ms"],
        "p95_ms": stats["p95_ms"],
        **load,
    }


def add_row(info) -> dict:
    return {
        "docs": info.docs_added,
        "tokens": info.tokens_added,
        "seconds": round(info.seconds, 3),
        "tokens_per_s": round(info.tokens_added / info.seconds),
        "drift": info.drift,
        "drift_expected": info.drift_expected,
        "outliers": info.outliers,
        "centroids_added": info.centroids_added,
    }


def half_then_add(workdir: Path, docs: list, n_batches: int, queries, truth, half: Path) -> dict:
    path = workdir / f"add{n_batches}"
    shutil.copytree(half, path)
    index = Index.open(path)
    rest = docs[len(docs) // 2 :]
    adds = [add_row(index.add(list(chunk))) for chunk in np.array_split(np.array(rest, dtype=object), n_batches)]
    log(f"{n_batches} add(s): {sum(a['seconds'] for a in adds):.1f} s")
    out = {"batches": n_batches, "adds": adds, "after_adds": quality(index, queries, truth)}
    ms, info = timed(index.compact)
    out["compact_s"] = round(ms / 1e3, 2)
    out["after_compact"] = quality(index, queries, truth)
    if n_batches == 1:
        ms, _ = timed(lambda: index.compact(retrain=True))
        out["compact_retrain_s"] = round(ms / 1e3, 2)
        out["after_compact_retrain"] = quality(index, queries, truth)
        out["K_after_retrain"] = index.n_centroids
    index.close()
    shutil.rmtree(path)
    return out


def deletes(workdir: Path, fresh: Path, queries, truth, n_docs: int, rng) -> dict:
    path = workdir / "delete"
    shutil.copytree(fresh, path)
    index = Index.open(path)
    ms, _ = timed(lambda: index.delete(rng.choice(n_docs, size=n_docs // 10, replace=False)))
    out = {f"delete_{n_docs // 10}_ms": round(ms, 2)}
    # the raw truth is not restricted to live documents: report the staged search against search_exact only
    q = quality(index, queries, truth)
    out["after_10pct_deleted"] = {k: q[k] for k in ("docs", "recall10_vs_exact", "p50_ms", "p95_ms")}
    for n, reps in ((1, 20), (10, 5), (100, 5)):
        if n * reps > index.n_docs // 2:  # --quick
            continue
        times = []
        for _ in range(reps):
            ids = rng.choice(index.doc_ids(), size=n, replace=False)
            ms, _ = timed(lambda ids=ids: index.delete(ids))
            times.append(ms)
        out[f"delete_{n}_ms_median"] = round(float(np.median(times)), 2)
    index.close()
    shutil.rmtree(path)
    return out


def compaction_vs_size(workdir: Path, sizes: list[int], dim: int, nbits: int, rng) -> list[dict]:
    rows = []
    for n in sizes:
        docs = make_corpus(n, dim=dim, n_queries=0, seed=0).documents()
        path = workdir / f"size{n}"
        cut = int(n * 0.9)
        Index.build(path, docs[:cut], nbits=nbits, progress=False)
        index = Index.open(path)
        index.add(docs[cut:])
        index.delete(rng.choice(n, size=n // 10, replace=False))
        row = {"n_docs": n, "n_tokens_stored": sum(s["n_tokens"] for s in index.segment_info())}
        ms, _ = timed(index.compact)
        row["compact_s"] = round(ms / 1e3, 2)
        row["live_tokens"] = index.n_tokens
        ms, _ = timed(lambda index=index: index.compact(retrain=True))
        row["compact_retrain_s"] = round(ms / 1e3, 2)
        row["K_after_retrain"] = index.n_centroids
        rows.append(row)
        log(f"compaction, {n} docs: {row}")
        index.close()
        shutil.rmtree(path)
    return rows


def drift(workdir: Path, docs: list, half: Path, args) -> dict:
    """Half of corpus A, then a corpus B of other topics added with and without codebook extension:
    the drift figures, and recall on B's queries against a fresh build of both."""
    other = make_corpus(len(docs) // 2, dim=args.dim, n_queries=args.n_queries, seed=1)
    both = docs[: len(docs) // 2] + other.documents()
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in both])])
    combined = SimpleNamespace(queries=other.queries, offsets=offsets, embeddings=np.concatenate(both))
    truth, _ = ground_truth(combined)
    out = {}
    for expand in (False, True):
        path = workdir / f"drift-{expand}"
        shutil.copytree(half, path)
        index = Index.open(path)
        row = {"add": add_row(index.add(other.documents(), expand=expand)), "K": index.n_centroids}
        row["after_add"] = quality(index, other.queries, truth)
        if not expand:
            ms, _ = timed(lambda index=index: index.compact(retrain=True))
            row["compact_retrain_s"] = round(ms / 1e3, 2)
            row["after_compact_retrain"] = quality(index, other.queries, truth)
        out["extended" if expand else "fixed"] = row
        index.close()
        shutil.rmtree(path)
    ms, fresh = timed(lambda: Index.build(workdir / "drift-fresh", both, nbits=args.nbits, progress=False))
    out["fresh_build_s"] = round(ms / 1e3, 2)
    out["fresh"] = quality(fresh, other.queries, truth) | {"K": fresh.n_centroids}
    fresh.close()
    shutil.rmtree(workdir / "drift-fresh")
    return out


def render(r: dict) -> str:
    lines = [
        f"n_docs={r['config']['n_docs']}, dim={r['config']['dim']}, nbits={r['config']['nbits']}, "
        f"commit {r['env']['git_commit']}, {r['env']['timestamp_utc']}",
        "",
        "| index | segments | R@10 raw | R@10 vs exact | exact R@10 raw | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name, q):
        lines.append(
            f"| {name} | {q['segments']} | {q['recall10_raw']} | {q['recall10_vs_exact']} | "
            f"{q['exact_recall10_raw']} | {q['p50_ms']} | {q['p95_ms']} |"
        )

    row("fresh build (all docs)", r["fresh"])
    for h in r["half_then_add"]:
        row(f"half + {h['batches']} add(s)", h["after_adds"])
        row(f"half + {h['batches']} add(s), compact()", h["after_compact"])
        if "after_compact_retrain" in h:
            row(f"half + {h['batches']} add(s), compact(retrain=True)", h["after_compact_retrain"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-docs", type=int, default=10000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--nbits", type=int, default=2)
    p.add_argument("--n-queries", type=int, default=100)
    p.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10000])
    p.add_argument("--out", type=Path, default=None, help="folder of the results JSON (default: print only)")
    p.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        global WAIT_QUIET_S
        args.n_docs, args.n_queries, args.sizes, WAIT_QUIET_S = 600, 10, [300, 600], 0.0
    t_start, sources = time.perf_counter(), source_hash()
    rng = np.random.default_rng(0)
    corpus = make_corpus(args.n_docs, dim=args.dim, n_queries=args.n_queries, seed=0)
    docs = corpus.documents()
    truth, _ = ground_truth(corpus)
    indexes_dir = BENCH_DIR / "indexes"
    indexes_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="live-", dir=indexes_dir))
    results, load = {"config": vars(args) | {"out": str(args.out)}}, {}
    try:
        with others_load(load):
            ms, fresh = timed(lambda: Index.build(workdir / "fresh", docs, nbits=args.nbits, progress=False))
            env = environment(sources)  # after a parallel kernel has run
            results["fresh"] = quality(fresh, corpus.queries, truth) | {"build_s": round(ms / 1e3, 2)}
            log(f"fresh build {ms / 1e3:.1f} s: {results['fresh']}")
            ms, half = timed(
                lambda: Index.build(workdir / "half", docs[: args.n_docs // 2], nbits=args.nbits, progress=False)
            )
            results["half_build_s"] = round(ms / 1e3, 2)
            results["half_then_add"] = [
                half_then_add(workdir, docs, b, corpus.queries, truth, half.path) for b in (1, 10)
            ]
            results["drift"] = drift(workdir, docs, half.path, args)
            log(f"drift: {results['drift']}")
            results["delete"] = deletes(workdir, fresh.path, corpus.queries, truth, args.n_docs, rng)
            log(f"deletes: {results['delete']}")
            results["compaction_vs_size"] = compaction_vs_size(workdir, args.sizes, args.dim, args.nbits, rng)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results.update(env=env, loadavg_end=[round(x, 2) for x in os.getloadavg()], **load)
    results["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(render(results))
    print(json.dumps({k: results[k] for k in ("delete", "compaction_vs_size", "drift")}, indent=1))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"live_n{args.n_docs}_d{args.dim}.json"
        path.write_text(json.dumps(results, indent=1) + "\n")
        log(f"wrote {path} (wall {results['wall_s']} s)")
    return results


if __name__ == "__main__":
    main()
