"""Sharded build and fan-out search on a local Ray instance, 1 worker vs 2; and the capacity planner.

Scaling run (default): the synthetic corpus (:func:`colbert_index.datasets.synthetic.make_corpus`, seed 0), built
and searched twice on this machine:

* **1 worker**: ``ray.init(num_cpus=1)``, ``build_sharded(n_shards=1)``, one shard actor;
* **2 workers**: ``ray.init(num_cpus=2)``, ``build_sharded(n_shards=2)``, two shard actors.

Every build task and actor is capped at one Numba/OpenMP/BLAS thread, so "workers" is the parallelism.
Both builds train the same codebook size on the same corpus (one k-means task, one thread), then compress
(1 task vs 2 in parallel). Search: a batch of queries sent as one call per shard (QPS), and single queries
one after another (p50 latency, Ray round trip included), k=10, default ``SearchParams`` per shard;
recall@10 against ``search_exact`` of the same sharded index. The in-process ``Index.search`` of the
1-shard index on one thread is given for the Ray overhead.

Ray starts its workers at nice 15 (its ``worker_niceness`` setting) while this process runs at nice 0; on a
shared machine that starves the workers against other jobs, so this benchmark sets ``RAY_worker_niceness``
to ``--worker-niceness`` (default 0) before starting Ray, and records it.

The machine is shared with other jobs: before each block the cores used by other processes are sampled
for one second (``others_cpu_cores``) with the load average; figures taken next to a busy neighbour are not
comparable.

Usage::

    python bench/distributed.py --out bench/results            # ~5 min on 2 vCPUs
    python bench/distributed.py --quick                        # smoke run
    python bench/distributed.py --plan [--node-memory 64G]     # planner table: 10M/100M/1B x dim 48/64/128
    python bench/distributed.py --fanout --out bench/results   # fan-out overhead + planner vs measured, ~10 min

Fan-out run (``--fanout``): one corpus sharded over 1, 2, 4 and 8 shards on one local Ray instance (every actor
one thread, none reserving a CPU), p50 of single queries one after another (Ray round trip and merge included)
against ``Index.search`` of the same documents in one index in this process, one thread. Then a deployment the
planner sizes (``--sim-passages`` at ``--sim-node-memory`` per node: its shard count) is built at reduced size
(``--sim-docs-per-shard`` passages of ~60 tokens per shard, the planner's mean), and each shard's measured bytes on
disk and actor memory (``VmRSS`` of an idle actor, then after a full scan has touched every page) are set
against the planner's terms for that shard (:func:`colbert_index.distributed.planner.layout_bytes` and
``resident_bytes`` at the measured document, token and centroid counts).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import environment, log, others_load, source_hash, wait_for_quiet

from colbert_index import Index, SearchParams
from colbert_index.datasets.synthetic import make_corpus
from colbert_index.distributed import ShardedIndex, build_sharded
from colbert_index.distributed.planner import (
    GIB,
    add_plan_arguments,
    layout_bytes,
    parse_size,
    plan,
    resident_bytes,
    run_plan,
)


def sample_load() -> dict:
    """Cores other processes used over the last second, and the load average (the machine is shared)."""
    out: dict = {}
    with others_load(out):
        time.sleep(1.0)
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return out


def recall(res, exact) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(res.ids.tolist(), exact.ids.tolist())]))


def one_config(workers: int, corpus, ids, root: Path, n_single: int, niceness: int) -> dict:
    import ray

    os.environ["RAY_worker_niceness"] = str(niceness)  # read by the raylet ray.init starts
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        row: dict = {
            "workers": workers,
            "n_shards": workers,
            "worker_niceness": niceness,
            "load_before_build": sample_load(),
        }
        t0 = time.perf_counter()
        m = build_sharded(root / f"w{workers}", corpus.documents(), ids, n_shards=workers, nbits=2)
        row["build_s"] = round(time.perf_counter() - t0, 2)
        row["build"] = m["build"]
        row["shard_build_s"] = [s["seconds"] for s in m["shards"]]
        row["disk_bytes"] = sum(s["disk_bytes"] for s in m["shards"])
        t0 = time.perf_counter()
        index = ShardedIndex.open(root / f"w{workers}")
        index.search(corpus.queries[:4], k=10)  # starts the actors' kernels (Numba cache or compile)
        row["open_and_warm_s"] = round(time.perf_counter() - t0, 2)
        Q = corpus.queries
        exact = index.search_exact(Q, k=10)
        row["load_before_search"] = sample_load()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            res = index.search(Q, k=10)
            best = min(best, time.perf_counter() - t0)
        row["batch_qps"] = round(len(Q) / best, 1)
        lat = []
        for q in Q[:n_single]:
            t0 = time.perf_counter()
            index.search(q, k=10)
            lat.append(time.perf_counter() - t0)
        row["p50_ms"] = round(1000 * float(np.median(lat)), 2)
        row["recall_at_10_vs_exact"] = round(recall(res, exact), 4)
        if workers > 1:  # ndocs is a per-shard budget: split the default one across the shards
            p = SearchParams(ndocs=max(32, SearchParams.defaults(10).ndocs // workers))
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                res = index.search(Q, k=10, params=p)
                best = min(best, time.perf_counter() - t0)
            row["split_budget"] = {
                "ndocs": p.ndocs,
                "batch_qps": round(len(Q) / best, 1),
                "recall_at_10_vs_exact": round(recall(res, exact), 4),
            }
        row["load_after"] = sample_load()
        index.close()
        return row
    finally:
        ray.shutdown()


def in_process(root: Path, corpus, n_single: int) -> dict:
    """Index.search on the 1-shard index in this process, one thread: the figure without Ray."""
    import numba

    from colbert_index.backend import one_blas_thread

    shard = json.loads((root / "w1" / "cluster.json").read_text())["shards"][0]["path"]
    numba.set_num_threads(1)
    with Index.open(root / "w1" / shard) as index, one_blas_thread():
        index.search(corpus.queries[:4], k=10)
        t0 = time.perf_counter()
        index.search(corpus.queries, k=10)
        qps = len(corpus.queries) / (time.perf_counter() - t0)
        lat = []
        for q in corpus.queries[:n_single]:
            t0 = time.perf_counter()
            index.search(q, k=10)
            lat.append(time.perf_counter() - t0)
    return {"batch_qps": round(qps, 1), "p50_ms": round(1000 * float(np.median(lat)), 2)}


def markdown(r: dict) -> str:
    one, two = r["rows"]
    env = r["env"]
    lines = [
        f"{r['config']['n_docs']:,} docs ({r['config']['n_tokens']:,} tokens), dim {r['config']['dim']}, 2 bits, "
        f"{r['config']['n_queries']} queries of 32 tokens, k=10; {env['cpu']}, {env['nproc']} vCPUs; "
        f"commit `{env['git_commit']}`{' + uncommitted changes' if env['git_dirty'] else ''}; "
        f"Ray {r['ray_version']}, workers at nice {one['worker_niceness']}; {env['timestamp_utc']}.",
        "",
        "| workers (= shards) | build | k-means | shard builds | batch QPS | p50 single query | R@10 vs exact | "
        "others' cores (build / search) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in (one, two):
        lines.append(
            f"| {row['workers']} | {row['build_s']} s | {row['build']['kmeans_seconds']} s | "
            f"{', '.join(f'{s} s' for s in row['shard_build_s'])} | {row['batch_qps']} | {row['p50_ms']} ms | "
            f"{row['recall_at_10_vs_exact']} | {row['load_before_build']['others_cpu_cores']} / "
            f"{row['load_before_search']['others_cpu_cores']} |"
        )
    lines += [
        "",
        f"Speed-up 1 -> 2 workers: build {one['build_s'] / two['build_s']:.2f}x, "
        f"batch QPS {two['batch_qps'] / one['batch_qps']:.2f}x, single-query p50 {one['p50_ms'] / two['p50_ms']:.2f}x. "
        f"In-process Index.search of the 1-shard index, one thread: {r['in_process']['batch_qps']} QPS, "
        f"p50 {r['in_process']['p50_ms']} ms.",
    ]
    if "split_budget" in two:
        sb = two["split_budget"]
        lines.append(
            f"2 shards with the default ndocs split between them (ndocs={sb['ndocs']} per shard): batch QPS "
            f"{sb['batch_qps']}, R@10 vs exact {sb['recall_at_10_vs_exact']}."
        )
    return "\n".join(lines)


def p50_single(search, queries) -> tuple[float, float]:
    """p50 and p90 (ms) of ``search(q)`` over single queries, one after another."""
    lat = []
    for q in queries:
        t0 = time.perf_counter()
        search(q)
        lat.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(lat)), 2), round(1000 * float(np.percentile(lat, 90)), 2)


def fanout_overhead(corpus, ids, root: Path, shard_counts, n_single: int) -> dict:
    """p50 of a sharded search at each shard count against one index of the same documents, in process."""
    import numba
    import ray

    from colbert_index.backend import one_blas_thread

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 << 20)
    rows, queries = [], corpus.queries[:n_single]
    try:
        for n in shard_counts:
            m = build_sharded(root / f"s{n}", corpus.documents(), ids, n_shards=n, nbits=2)
            with ShardedIndex.open(root / f"s{n}") as index:
                for _ in range(2):
                    index.search(corpus.queries[:4], k=10)  # actors start and load their kernels
                    index.search(corpus.queries[0], k=10)
                load = sample_load()
                p50, p90 = p50_single(lambda q, index=index: index.search(q, k=10), queries)
                rows.append({"n_shards": n, "p50_ms": p50, "p90_ms": p90, "load": load, "K": m["n_centroids"]})
                log(f"{n} shard(s): p50 {p50} ms, p90 {p90} ms (others {load['others_cpu_cores']} cores)")
    finally:
        ray.shutdown()
    shard = json.loads((root / "s1" / "cluster.json").read_text())["shards"][0]["path"]
    numba.set_num_threads(1)
    with Index.open(root / "s1" / shard) as one, one_blas_thread():
        one.search(corpus.queries[:4], k=10)
        load = sample_load()
        p50, p90 = p50_single(lambda q: one.search(q, k=10), queries)
    return {"rows": rows, "one_index": {"p50_ms": p50, "p90_ms": p90, "load": load}}


def planner_vs_measured(args, root: Path) -> dict:
    """A deployment the planner sizes, built at reduced size; per shard, planned vs measured bytes."""
    import ray

    p = plan(int(args.sim_passages), args.dim, 2, args.sim_node_memory)
    n_docs = p.n_shards * args.sim_docs_per_shard
    corpus = make_corpus(n_docs, dim=args.dim, n_queries=8, mean_doc_len=int(p.tokens_per_passage), seed=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 << 20)
    try:
        m = build_sharded(root / "sim", corpus.documents(), list(range(n_docs)), n_shards=p.n_shards, nbits=2)
        with ShardedIndex.open(root / "sim") as index:
            idle = [ray.get(a[0].memory.remote()) for a in index.actors]
            index.search_exact(corpus.queries, k=10)  # every page of every shard touched
            index.search(corpus.queries, k=10)
            warm = [ray.get(a[0].memory.remote()) for a in index.actors]
            infos = index.info()
    finally:
        ray.shutdown()
    shards = []
    for e, info, i0, i1 in zip(m["shards"], infos, idle, warm):
        with Index.open(root / "sim" / e["path"]) as shard:
            pairs = len(shard._d.ivf_docs) / shard.n_tokens
        args_ = (info["n_docs"], info["n_tokens"], args.dim, 2, info["n_centroids"])
        shards.append(
            {
                "n_docs": info["n_docs"],
                "n_tokens": info["n_tokens"],
                "disk_planned": layout_bytes(*args_),
                "disk_measured": info["disk_bytes"],
                "resident_planned": resident_bytes(*args_),
                "resident_planned_measured_ivf": resident_bytes(*args_, ivf_pairs_per_token=pairs),
                "ivf_pairs_per_token": round(pairs, 3),
                "rss_idle": i0["rss_bytes"],
                "rss_warm": i1["rss_bytes"],
            }
        )
    return {
        "deployment": {
            "passages": int(args.sim_passages),
            "node_memory_gib": args.sim_node_memory / GIB,
            "n_shards": p.n_shards,
            "shard_disk_gib": round(p.shard_disk_bytes / GIB, 2),
            "ram_per_node_gib": round(p.ram_per_node / GIB, 2),
            "K": p.n_centroids,
        },
        "reduced": {"docs_per_shard": args.sim_docs_per_shard, "K": m["n_centroids"]},
        "shards": shards,
    }


def fanout_markdown(r: dict) -> str:
    env, f = r["env"], r["fanout"]
    one = f["one_index"]["p50_ms"]
    lines = [
        f"{r['config']['n_docs']:,} docs ({r['config']['n_tokens']:,} tokens), dim {r['config']['dim']}, 2 bits, "
        f"single queries of 32 tokens, k=10; {env['cpu']}, {env['nproc']} vCPUs; commit `{env['git_commit']}`"
        f"{' + uncommitted changes' if env['git_dirty'] else ''}; Ray {r['ray_version']}; {env['timestamp_utc']}.",
        "",
        "| shards | p50 | p90 | p50 / one index | others' cores |",
        "|---|---|---|---|---|",
        f"| one index, in process | {one} ms | {f['one_index']['p90_ms']} ms | 1.00 | "
        f"{f['one_index']['load']['others_cpu_cores']} |",
    ]
    for row in f["rows"]:
        lines.append(
            f"| {row['n_shards']} | {row['p50_ms']} ms | {row['p90_ms']} ms | {row['p50_ms'] / one:.2f} | "
            f"{row['load']['others_cpu_cores']} |"
        )
    s = r["simulation"]
    d = s["deployment"]
    lines += [
        "",
        f"Planner: {d['passages']:,} passages, dim {r['config']['dim']}, 2 bits, {d['node_memory_gib']:g} GiB nodes -> "
        f"{d['n_shards']} shards of {d['shard_disk_gib']} GiB on disk, {d['ram_per_node_gib']} GiB per node. "
        f"Built with {s['reduced']['docs_per_shard']:,} passages per shard (K={s['reduced']['K']}):",
        "",
        "| shard | docs | tokens | disk planned | disk measured | resident planned (IVF bound / measured IVF) | "
        "actor RSS idle -> warm | warm - idle |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mib = 1 << 20
    for i, sh in enumerate(s["shards"]):
        grow = (sh["rss_warm"] - sh["rss_idle"]) / mib if sh["rss_warm"] and sh["rss_idle"] else float("nan")
        lines.append(
            f"| {i} | {sh['n_docs']:,} | {sh['n_tokens']:,} | {sh['disk_planned'] / mib:.2f} MiB | "
            f"{sh['disk_measured'] / mib:.2f} MiB | {sh['resident_planned'] / mib:.2f} / "
            f"{sh['resident_planned_measured_ivf'] / mib:.2f} MiB | {(sh['rss_idle'] or 0) / mib:.0f} -> "
            f"{(sh['rss_warm'] or 0) / mib:.0f} MiB | {grow:.1f} MiB |"
        )
    return "\n".join(lines)


def main_fanout(args) -> int:
    sources = source_hash()
    n_docs = 2000 if args.quick else args.n_docs
    corpus = make_corpus(n_docs, dim=args.dim, n_queries=max(args.n_queries, 50), seed=0)
    counts = (1, 2) if args.quick else (1, 2, 4, 8)
    import ray

    root = Path(tempfile.mkdtemp(prefix="dist-fanout-"))
    try:
        r = {
            "config": {"n_docs": n_docs, "n_tokens": int(corpus.doclens.sum()), "dim": args.dim},
            "fanout": fanout_overhead(corpus, list(range(n_docs)), root, counts, min(100, args.n_queries)),
            "ray_version": ray.__version__,
        }
        if args.quick:
            args.sim_docs_per_shard = min(args.sim_docs_per_shard, 300)
        r["simulation"] = planner_vs_measured(args, root)
        r["env"] = environment(sources)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(fanout_markdown(r))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"distributed_fanout_n{n_docs}_d{args.dim}.json"
        path.write_text(json.dumps(r, indent=1))
        log(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--plan" in argv:  # the planner's own arguments (colbert_index.distributed.planner), with this table's defaults
        plan_parser = argparse.ArgumentParser(description="capacity planner (see colbert_index.distributed.planner)")
        plan_parser.add_argument("--plan", action="store_true")
        add_plan_arguments(plan_parser)
        defaults = {"--passages": ["1e7", "1e8", "1e9"], "--dim": ["48", "64", "128"]}
        for flag, values in defaults.items():
            if flag not in argv:
                argv += [flag, *values]
        print(run_plan(plan_parser.parse_args([*argv, "--markdown"] if "--markdown" not in argv else argv)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="print the planner's table (its options: --help there)")
    parser.add_argument("--n-docs", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--n-queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--worker-niceness", type=int, default=0, help="nice value of Ray's workers (Ray: 15)")
    parser.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for a quiet machine")
    parser.add_argument("--out", type=Path, default=None, help="write distributed_n<N>_d<dim>.json here")
    parser.add_argument("--fanout", action="store_true", help="fan-out overhead and planner vs measured instead")
    parser.add_argument("--sim-passages", type=float, default=1e7, help="the deployment the planner sizes")
    parser.add_argument("--sim-node-memory", type=parse_size, default=8 * GIB, help="its node memory (8G)")
    parser.add_argument("--sim-docs-per-shard", type=int, default=2000, help="passages per shard when built")
    args = parser.parse_args(argv)
    if args.fanout:
        return main_fanout(args)
    n_docs, n_queries = (1500, 40) if args.quick else (args.n_docs, args.n_queries)
    sources = source_hash()
    corpus = make_corpus(n_docs, dim=args.dim, n_queries=n_queries, seed=0)
    ids = list(range(n_docs))
    import ray

    root = Path(tempfile.mkdtemp(prefix="dist-bench-"))
    try:
        rows = []
        for workers in (1, 2):
            waited = wait_for_quiet(args.wait) if args.wait else 0.0
            log(f"{workers} worker(s) (waited {waited} s for a quiet machine)")
            rows.append(one_config(workers, corpus, ids, root, min(50, n_queries), args.worker_niceness))
        r = {
            "config": {
                "n_docs": n_docs,
                "n_tokens": int(corpus.doclens.sum()),
                "dim": args.dim,
                "n_queries": n_queries,
            },
            "rows": rows,
            "in_process": in_process(root, corpus, min(50, n_queries)),
            "ray_version": ray.__version__,
            "env": environment(sources),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(markdown(r))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"distributed_n{n_docs}_d{args.dim}.json"
        path.write_text(json.dumps(r, indent=1))
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
