"""Full-precision rerank: each corpus indexed twice, with and without its documents' float16 vectors
(``Index.build(..., keep_originals=True)``), searched with the same parameters.

Figures per corpus, index and operating point (``ndocs``; nprobe and the rest at their defaults, ``rerank`` at its
default): recall@10 against exact MaxSim over the raw float32 embeddings, MRR@10 of each query's source document,
single-query p50 / p95 on one thread with the page cache warm and cold, bytes on disk, and the process's resident
memory while it searches (VmRSS / VmHWM, RssAnon / RssFile from ``/proc/self/status``).

Timing: one process opens both indexes and times each query alone on one thread on one index, then the other (the
order alternating), so that both meet the same load from other processes (the machine is shared); ``--rounds`` warm
passes (each query's median), then a cold pass: before each query, its index's files are dropped from the page
cache (``madvise(DONTNEED)`` on the process's memory maps of them, then ``posix_fadvise(DONTNEED)``): only this
index's pages, so other processes are untouched. ``--drop-caches CORPUS`` also times 2 queries per index after a
global ``echo 3 > /proc/sys/vm/drop_caches`` (root; it empties the page cache of every process on the machine, so
it is off by default). Memory: a fresh process per index opens it, searches 3 queries, resets the peak
(``/proc/self/clear_refs``), runs every query and reads the figures, so that they are the search's alone.

Corpora: ``synthetic`` (``make_corpus(10_000, dim=64)``, 100 queries of 32 tokens, the query's source document as
the MRR target), ``docstrings`` (bench/realtext.py's 10,000 passages and 300 queries, MiniLM as ColBERT, dim 128,
from its cached embeddings), ``prose`` (the larger real-text corpus of bench/peers, when its embeddings are cached).

Usage::

    python bench/rerank.py                                  # synthetic + docstrings, ~40 min on 2 vCPUs
    python bench/rerank.py --corpora docstrings --ndocs 256 2048 --rounds 5
    python bench/rerank.py --corpora prose --n-docs 30000
    python bench/rerank.py --quick --out /tmp/bench-quick    # seconds: 400 synthetic documents
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    environment,
    gc_paused,
    latency_stats,
    log,
    mrr,
    others_load,
    raw_top_k,
    recall,
    source_hash,
    split_flat,
    thread_count,
    wait_for_quiet,
)

from colbert_index import Index, SearchParams

STATUS_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


# ---------------------------------------------------------------------------------------------- corpora
def load_corpus(name: str, n_docs: int | None, workdir: Path) -> dict:
    """``{"docs", "queries", "targets", "about"}`` of a corpus."""
    if name == "synthetic":
        from colbert_index.datasets.synthetic import make_corpus

        c = make_corpus(n_docs or 10_000, dim=64)
        about = {"corpus": "synthetic (colbert_index.datasets.synthetic.make_corpus, dim 64)"}
        return {"docs": c.documents(), "queries": list(c.queries), "targets": np.asarray(c.targets), "about": about}
    from common import realtext_corpus, realtext_embeddings

    n_docs = n_docs or (10_000 if name == "docstrings" else 30_000)
    rt = realtext_corpus(name, n_docs, 300, 0)
    prefix = "realtext" if name == "docstrings" else f"realtext_{name}"
    cache = BENCH_DIR / "data" / f"{prefix}_minilm_n{len(rt.texts)}_q{len(rt.query_texts)}_s0.npz"
    if cache.exists():  # the embeddings bench/realtext.py (or bench/peers) encoded
        z = np.load(cache)
        docs, queries = split_flat(z["tokens"], z["lengths"]), split_flat(z["q_tokens"], z["q_lengths"])
    else:
        docs, queries, _, _ = realtext_embeddings(rt, None, workdir)
    about = {**rt.describe(), "model": "all-MiniLM-L6-v2 as ColBERT (Dense 384->128)", "embeddings": cache.name}
    return {"docs": docs, "queries": queries, "targets": rt.targets, "about": about}


# ---------------------------------------------------------------------------------------------- measuring
def _status() -> dict:
    """The resident-memory fields of ``/proc/self/status``, in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_FIELDS:
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def _index_files(index: Index) -> list[Path]:
    m = index.manifest
    entries = list(m["codebook"].values())
    for s in m["segments"]:
        entries += [e for e in s["files"].values() if "path" in e]
    return [index.path / e["path"] for e in entries]


def evict(index: Index) -> None:
    """Drop the index's files from the page cache: this process's mappings of them first (``madvise``), then the
    cached pages (``posix_fadvise``). Other processes' pages are not touched."""
    for seg in index._s.segments:
        for arr in (seg.data.codes, seg.data.residuals):
            mm = getattr(arr, "_mmap", None)
            if isinstance(mm, mmap.mmap):
                mm.madvise(mmap.MADV_DONTNEED)
    for path in _index_files(index):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def drop_all_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _queries(queries_path: Path) -> list[np.ndarray]:
    z = np.load(queries_path, allow_pickle=False)
    return [q[:n] for q, n in zip(z["q"], z["lengths"])]


def measure_memory(path: Path, queries_path: Path, params: dict) -> dict:
    """A ``--measure memory`` process: one index, every query once; resident memory before and while (VmHWM reset
    after 3 warm-up queries), and the ids found."""
    queries, p, out = _queries(queries_path), SearchParams(**params), {}
    with thread_count(1), Index.open(path) as index:
        for q in queries[:3]:
            index.search(q, k=10, params=p)
        out["before"] = _status()
        Path("/proc/self/clear_refs").write_text("5\n")  # VmHWM from here on
        out["ids"] = [index.search(q, k=10, params=p).ids[0].tolist() for q in queries]
        out["after"] = _status()
    return out


def measure_times(paths: list[Path], queries_path: Path, params: dict, rounds: int, drop: bool) -> dict:
    """A ``--measure times`` process: both indexes open, each query timed alone on one thread on one index then the
    other (the order alternating), so that both meet the same load from other processes; ``rounds`` warm passes,
    then one cold pass (the query's index evicted from the page cache before it), then with ``drop`` 2 queries
    after a global drop_caches each."""
    queries, p = _queries(queries_path), SearchParams(**params)
    indexes = [Index.open(path) for path in paths]
    warm = [[[] for _ in queries] for _ in indexes]
    cold: list[list[float]] = [[] for _ in indexes]
    dropped: list[list[float]] = [[] for _ in indexes]
    out: dict = {}

    def timed_search(index: Index, q: np.ndarray) -> float:
        t0 = time.perf_counter()
        index.search(q, k=10, params=p)
        return (time.perf_counter() - t0) * 1e3

    with thread_count(1), gc_paused(), others_load(out):
        for index in indexes:
            for q in queries[:3]:
                index.search(q, k=10, params=p)
        for r in range(rounds):
            for i, q in enumerate(queries):
                order = range(len(indexes)) if (i + r) % 2 == 0 else reversed(range(len(indexes)))
                for v in order:
                    warm[v][i].append(timed_search(indexes[v], q))
        for i, q in enumerate(queries):
            for v in range(len(indexes)) if i % 2 == 0 else reversed(range(len(indexes))):
                evict(indexes[v])
                cold[v].append(timed_search(indexes[v], q))
        for q in queries[: 2 if drop else 0]:
            for v in range(len(indexes)):
                evict(indexes[v])  # its mappings and pages, then everyone's page cache
                drop_all_caches()
                dropped[v].append(timed_search(indexes[v], q))
    for index in indexes:
        index.close()
    out["warm_ms"] = [[round(float(np.median(t)), 4) for t in per_query] for per_query in warm]
    out["cold_ms"] = [[round(t, 4) for t in c] for c in cold]
    out["dropped_ms"] = [[round(t, 4) for t in d] for d in dropped]
    return out


def run_measure(*args) -> dict:
    cmd = [sys.executable, __file__, "--measure", json.dumps(list(args), default=str)]  # paths as strings
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- one corpus
def raw_truth(docs: list[np.ndarray], queries: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The documents' offsets and each query's exact MaxSim top 10 over the raw float32 embeddings."""
    flat = np.concatenate(docs).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return offsets, np.stack([s for _, s in raw_top_k(queries, offsets, lambda lo, hi: flat[lo:hi], 10)])


def bench_corpus(name: str, args, workdir: Path) -> dict:
    t0 = time.perf_counter()
    c = load_corpus(name, args.n_docs, workdir)
    docs, queries, targets = c["docs"], c["queries"][: args.n_queries], c["targets"][: args.n_queries]
    lengths = np.array([len(q) for q in queries])
    padded = np.zeros((len(queries), lengths.max(), queries[0].shape[1]), np.float32)
    for i, q in enumerate(queries):
        padded[i, : len(q)] = q
    queries_path = workdir / f"{name}-queries.npz"
    np.savez(queries_path, q=padded, lengths=lengths)
    offsets, raw = raw_truth(docs, queries)
    result = {
        "corpus": name,
        **c["about"],
        "n_docs": len(docs),
        "n_tokens": int(offsets[-1]),
        "dim": int(docs[0].shape[1]),
        "n_queries": len(queries),
        "mrr10_raw": mrr(raw, targets),
        "indexes": {},
        "rows": [],
    }
    took = time.perf_counter() - t0
    log(f"{name}: {len(docs)} docs, {len(queries)} queries, raw MRR@10 {result['mrr10_raw']} ({took:.0f} s)")
    paths = {}
    for variant, keep in (("without", False), ("with", True)):
        paths[variant] = workdir / f"{name}-{variant}"
        build_s = time.perf_counter()
        index = Index.build(paths[variant], docs, nbits=args.nbits, keep_originals=keep, overwrite=True, progress=False)
        build_s = time.perf_counter() - build_s
        with index:
            kept = sum(int(s["files"]["originals"]["bytes"]) for s in index.manifest["segments"] if keep)
            exact = index.search_exact(queries, k=10).ids
            result["indexes"][variant] = {
                "build_s": round(build_s, 1),
                "disk_bytes": index.disk_bytes(),
                "bytes_per_token": round(index.disk_bytes() / index.n_tokens, 2),
                "originals_bytes": kept,
                "search_exact_recall10_raw": recall(exact, raw, 10),
                "search_exact_mrr10": mrr(exact, targets),
            }
        log(f"{name} {variant}: {result['indexes'][variant]}")
    for ndocs in args.ndocs:
        params = {} if ndocs == SearchParams.defaults(10).ndocs else {"ndocs": ndocs}
        row: dict = {"ndocs": ndocs, "rerank": SearchParams.default_rerank(10, ndocs)}
        wait_for_quiet(args.quiet_wait)
        drop = name in args.drop_caches and ndocs == args.ndocs[0]
        times = run_measure("times", [paths["without"], paths["with"]], queries_path, params, args.rounds, drop)
        row["others_cpu_cores"] = times["others_cpu_cores"]
        for v, variant in enumerate(("without", "with")):
            memory = run_measure("memory", paths[variant], queries_path, params)
            ids = np.asarray(memory["ids"])
            warm, cold = latency_stats(times["warm_ms"][v]), latency_stats(times["cold_ms"][v])
            row[variant] = {
                "recall10_raw": recall(ids, raw, 10),
                "mrr10": mrr(ids, targets),
                "warm_p50_ms": warm["p50_ms"],
                "warm_p95_ms": warm["p95_ms"],
                "cold_p50_ms": cold["p50_ms"],
                "cold_p95_ms": cold["p95_ms"],
                "rss_mib_before": memory["before"],
                "rss_mib_while": memory["after"],  # VmHWM: the peak while the queries ran
            }
            if drop:
                row[variant]["after_drop_caches_ms"] = times["dropped_ms"][v]
        row["warm_p50_ratio"] = round(row["with"]["warm_p50_ms"] / row["without"]["warm_p50_ms"], 3)
        row["cold_p50_ratio"] = round(row["with"]["cold_p50_ms"] / row["without"]["cold_p50_ms"], 3)
        row["hwm_ratio"] = round(row["with"]["rss_mib_while"]["VmHWM"] / row["without"]["rss_mib_while"]["VmHWM"], 3)
        result["rows"].append(row)
        log(f"{name} ndocs={ndocs}: {json.dumps(row)}")
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpora = ("synthetic", "docstrings", "prose")
    p.add_argument("--corpora", nargs="+", default=["synthetic", "docstrings"], choices=corpora)
    p.add_argument("--n-docs", type=int, help="documents per corpus (default: 10,000; prose 30,000)")
    p.add_argument("--n-queries", type=int, default=300)
    p.add_argument("--nbits", type=int, default=2, choices=(2, 4))
    p.add_argument("--ndocs", type=int, nargs="+", default=[256, 1024, 2048, 4096], help="operating points (k=10)")
    p.add_argument("--rounds", type=int, default=3, help="warm passes over the queries (per-query median)")
    p.add_argument(
        "--drop-caches", nargs="*", default=[], metavar="CORPUS", help="2 more queries, each after a drop_caches"
    )
    p.add_argument("--quiet-wait", type=float, default=10.0, help="seconds to wait for a quiet machine per process")
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/bench-rerank"), help="on a disk, not a tmpfs")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="directory of rerank.json")
    p.add_argument("--quick", action="store_true", help="a tiny synthetic run (CI): rerank_quick.json")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measuring process, its arguments as JSON
    args = p.parse_args(argv)
    if args.measure:
        kind, *rest = json.loads(args.measure)
        if kind == "memory":
            print(json.dumps(measure_memory(Path(rest[0]), Path(rest[1]), rest[2])))
        else:
            print(json.dumps(measure_times([Path(x) for x in rest[0]], Path(rest[1]), *rest[2:])))
        return {}
    if args.quick:
        args.corpora, args.n_docs, args.n_queries, args.ndocs, args.rounds = ["synthetic"], 400, 8, [256], 1
        args.quiet_wait, args.drop_caches, args.workdir = 0.0, [], args.out / "rerank-quick-indexes"
    args.workdir.mkdir(parents=True, exist_ok=True)
    out = args.out / ("rerank_quick.json" if args.quick else "rerank.json")
    result = {"env": environment(source_hash()), "nbits": args.nbits, "corpora": []}
    for name in args.corpora:
        result["corpora"].append(bench_corpus(name, args, args.workdir))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
