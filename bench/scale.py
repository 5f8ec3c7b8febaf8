"""Scale benchmark: a streaming build of a large synthetic corpus fed from a generator, then search.

The corpus (:class:`colbert_index.datasets.synthetic.SyntheticStream`) is never held in memory: the build reads
it once from a generator, and the ground truth (exact MaxSim top-100 over the raw float embeddings)
regenerates it chunk by chunk. Figures: build time and peak RSS of the build, bytes per token,
open time, single-query p50/p95/p99 latency on 1 and 2 threads, batch QPS on 2 threads, recall@10 /
@100 and MRR@10 vs the raw ground truth, and recall@10 vs ``search_exact`` on a few queries.

Usage::

    python bench/scale.py --n-docs 100000 --dim 64            # ~5 min here
    python bench/scale.py --n-docs 1000000 --dim 64 --mean-doc-len 60   # 1M passages, ~60M tokens
    # keep the index and re-measure search later without rebuilding (build figures are carried over
    # from the previous results file); the raw ground truth is cached under bench/data/
    python bench/scale.py --n-docs 1000000 --mean-doc-len 60 --index bench/indexes/scale_1m
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import tempfile
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    GT_K,
    environment,
    log,
    mrr,
    param_sweep,
    parse_sweep,
    raw_top_k,
    recall,
    single_query_latency,
    source_hash,
    thread_count,
    timed,
)

from colbert_index import Index
from colbert_index.backend import get_backend
from colbert_index.datasets.synthetic import SyntheticStream


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def raw_ground_truth(stream: SyntheticStream, queries: list[np.ndarray], docs_per_chunk: int = 20000) -> np.ndarray:
    """Exact MaxSim top-``GT_K`` slots over the raw embeddings, regenerating the corpus chunk by chunk."""
    top_k = get_backend("numba").top_k
    best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
    for d0 in range(0, stream.n_docs, docs_per_chunk):
        d1 = min(d0 + docs_per_chunk, stream.n_docs)
        emb = np.concatenate([stream.document(d) for d in range(d0, d1)])
        offsets = np.concatenate([[0], np.cumsum(stream.doclens[d0:d1])])
        part = raw_top_k(queries, offsets, lambda lo, hi, e=emb: e[lo:hi], GT_K)
        for i, (s, slots) in enumerate(part):
            best[i] = top_k(np.concatenate([best[i][0], s]), np.concatenate([best[i][1], slots + d0]), GT_K)
    return np.stack([slots for _, slots in best])


def cached_ground_truth(stream: SyntheticStream, queries: list[np.ndarray], name: str, seed: int) -> np.ndarray:
    """:func:`raw_ground_truth`, computed once per corpus and query set and kept under ``bench/data``."""
    path = BENCH_DIR / "data" / f"gt_{name}_q{len(queries)}_s{seed}.npy"
    if path.exists():
        return np.load(path)
    truth = raw_ground_truth(stream, queries)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, truth)
    return truth


def index_fingerprint(index: Index) -> str:
    """A short hash of the index's stored codes and residuals (their checksums in the manifest): two builds
    of one corpus that differ in any token's code or residual get different fingerprints."""
    sums = [f["sha256"] for s in index.manifest["segments"] for f in s["files"].values()]
    return hashlib.sha256("".join(sums).encode()).hexdigest()[:12]


def cached_exact(index: Index, queries: list[np.ndarray], name: str, seed: int) -> np.ndarray:
    """``search_exact`` top-``GT_K`` slots of ``queries`` (brute force over the decompressed index), cached
    per index content: a rebuild that assigns any token differently computes its own."""
    path = BENCH_DIR / "data" / f"exact_{name}_{index_fingerprint(index)}_q{len(queries)}_s{seed}.npy"
    if path.exists():
        return np.load(path)
    exact = index.search_exact(queries, k=GT_K).ids  # slots: this benchmark builds with default ids
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, exact)
    return exact


def build_phases(build: dict) -> dict:
    """The seconds of a build's phases from its manifest: reading (the generator) and spilling, training the
    codec, compressing and writing."""
    return {f"build_{k}_s": build.get(f"{k}_seconds") for k in ("spill", "train", "compress")}


def assignment_check(index: Index, stream: SyntheticStream, n_docs: int = 3000) -> dict:
    """How often the build's (approximate above 16,384 centroids) assignment picks the exact nearest centroid,
    on the tokens of ``n_docs`` random documents (regenerated)."""
    docs = np.random.default_rng(1).choice(stream.n_docs, min(n_docs, stream.n_docs), replace=False)
    x = np.concatenate([stream.document(int(d)) for d in docs])
    agreement, excess = index.codec.assignment_agreement(x)
    return {"assignment_tokens": len(x), "assignment_agreement": round(agreement, 4),
            "assignment_residual_sq_norm_excess": round(excess, 5)}  # fmt: skip


def index_facts(index: Index) -> dict:
    """What the index itself says about its size and identity (the uuid ties build figures to this build)."""
    return {
        "n_docs": index.n_docs,
        "n_tokens": index.n_tokens,
        "dim": index.dim,
        "nbits": index.nbits,
        "K": index.n_centroids,
        "bytes_per_token": round(index.disk_bytes() / index.n_tokens, 2),
        "index_uuid": index.manifest["uuid"],
    }


def cold_open(path: Path, query: np.ndarray) -> dict:
    """Open time and first-query latency with the page cache dropped (needs root; else not measured)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as e:
        return {"cold_open": f"not measured: cannot drop the page cache ({e.strerror})"}
    open_ms, index = timed(lambda: Index.open(path))
    first_ms, _ = timed(lambda: index.search(query, k=10))
    second_ms, _ = timed(lambda: index.search(query, k=10))
    index.close()
    return {"cold_open_s": round(open_ms / 1e3, 2), "cold_first_query_ms": round(first_ms, 1),
            "cold_second_query_ms": round(second_ms, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-docs", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--nbits", type=int, default=2)
    p.add_argument("--mean-doc-len", type=int, default=100, help="60 gives ~60M tokens per 1M passages")
    p.add_argument("--n-queries", type=int, default=100)
    p.add_argument("--exact-queries", type=int, default=10, help="queries also run through search_exact")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--sweep", default="1:256,1:1024,2:1024,2:4096,4:4096", help="nprobe:ndocs pairs, k=10")
    p.add_argument("--index", type=Path, help="index directory: built if absent, reused (and kept) if present")
    args = p.parse_args(argv)
    name = f"scale_n{args.n_docs}_d{args.dim}_b{args.nbits}_len{args.mean_doc_len}"
    sources = source_hash()

    stream = SyntheticStream(
        args.n_docs, dim=args.dim, n_queries=args.n_queries, mean_doc_len=args.mean_doc_len, seed=args.seed
    )
    log(f"{name}: {stream.n_tokens} tokens; building from the generator")
    (BENCH_DIR / "indexes").mkdir(parents=True, exist_ok=True)
    workdir = None if args.index else Path(tempfile.mkdtemp(prefix=name + "-", dir=BENCH_DIR / "indexes"))
    path = args.index or workdir / "index"
    out_json = args.out / f"{name}.json"
    try:
        if path.exists():
            index = Index.open(path)
            if (index.n_docs, index.dim) != (stream.n_docs, stream.dim):
                raise SystemExit(f"{path} holds {index.n_docs} docs of dim {index.dim}, not this corpus")
            previous = json.loads(out_json.read_text()) if out_json.exists() else {"row": {}, "env": {}}
            old = previous["row"]
            if old.get("index_uuid") == index.manifest["uuid"]:  # the build these figures were measured on
                row = {k: v for k, v in old.items() if k.startswith(("build", "peak_rss"))}
                row["build_commit"] = old.get("build_commit") or previous["env"].get("git_commit", "unknown")
            else:  # built elsewhere: only what the index itself records (no peak RSS)
                log(f"no build figures of this index in {out_json}: taking them from its manifest (no peak RSS)")
                build = index.manifest["build"]
                row = {"build_s": round(build["seconds"], 1), **build_phases(build)}
                row["build_commit"] = "unknown"
            row.update(index_facts(index))
            log(f"reusing the index at {path}")
        else:
            rss_before = peak_rss_gib()
            # the generator's batches come from one forked worker per CPU, as a real encoder would run beside it
            build_ms, index = timed(lambda: Index.build(path, stream.batches(), nbits=args.nbits, progress=True))
            row = {
                "build_s": round(build_ms / 1e3, 1),
                **build_phases(index.manifest["build"]),
                "build_commit": sources,
                "peak_rss_gib_before_build": round(rss_before, 2),
                "peak_rss_gib_after_build": round(peak_rss_gib(), 2),
                **index_facts(index),
            }
            log(f"built in {row['build_s']} s, {row['bytes_per_token']} B/token")
            if args.index:  # the build figures survive an interrupted measurement: a rerun with --index reuses them
                args.out.mkdir(parents=True, exist_ok=True)
                partial = {"name": name, "env": environment(sources), "row": row}
                out_json.write_text(json.dumps(partial, indent=1) + "\n")
        index.close()
        queries = list(stream.queries())
        row.update(cold_open(path, queries[0]))
        for f in sorted(path.rglob("*")):  # back into the page cache: the timings below are warm
            if f.is_file():
                f.read_bytes()
        open_ms, index = timed(lambda: Index.open(path))
        row["open_s"] = round(open_ms / 1e3, 2)  # warm: the cold open just read the files

        gt_ms, raw = timed(lambda: cached_ground_truth(stream, queries, name, args.seed))
        log(f"ground truth in {gt_ms / 1e3:.1f} s")

        for threads in (1, 2):
            with thread_count(threads):
                s10, ids10 = single_query_latency(index, queries, 10)
                s100, ids100 = single_query_latency(index, queries, GT_K)
                batch_ms, batch = timed(lambda: index.search(queries, k=10))
            row[f"t{threads}"] = {
                "search_k10": s10,
                "search_k100": s100,
                "batch_qps_k10": round(len(queries) / (batch_ms / 1e3), 1),
                "batch_equals_single": bool(np.array_equal(batch.ids, ids10)),
            }
            log(f"{threads} thread(s): k=10 p50 {s10['p50_ms']} ms, batch {row[f't{threads}']['batch_qps_k10']} QPS")
        row["recall10_raw"] = recall(ids10, raw, 10)
        row["recall100_raw"] = recall(ids100, raw, 100)
        row["mrr10"] = mrr(ids10, stream.targets)
        row["mrr10_raw"] = mrr(raw, stream.targets)
        n_ex = min(args.exact_queries, len(queries))
        exact = cached_exact(index, queries[:n_ex], name, args.seed)
        row["recall10_vs_exact"] = recall(ids10[:n_ex], exact, 10)
        row["recall100_vs_exact"] = recall(ids100[:n_ex], exact, 100)
        row["exact_recall10_raw"] = recall(exact, raw[:n_ex], 10)
        row["exact_queries"] = n_ex
        row.update(assignment_check(index, stream))
        swept = param_sweep(index, queries, raw, exact[:, :10], parse_sweep(args.sweep))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    results = {"name": name, "env": environment(sources), "row": row, "sweep": swept}
    args.out.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {out_json}: {json.dumps(row)}")
    return results


if __name__ == "__main__":
    main()
