"""PyLate's ``retrieve.ColBERT`` over two indexes of the same embeddings: our drop-in
(:class:`colbert_index.pylate.PyLateIndex`) and PyLate's own ``indexes.PLAID``.

For each ``--nbits``, both indexes are built from the synthetic corpus of ``bench/run.py`` (``make_corpus``, seed 0;
the ids are strings, as PyLate's are) with every thread, then searched through ``retrieve.ColBERT(index=...)
.retrieve(queries_embeddings=q, k=10)`` one query at a time on one thread (torch, Numba and BLAS limited to one),
``--rounds`` rounds in alternating order after 3 warm-up queries. Recall@10 is against exact MaxSim over the raw
float32 embeddings; ``B/token`` is every file in the index directory over the number of tokens. Each engine runs at
its defaults: PyLate's PLAID at its constructor's defaults (``n_ivf_probe=8``, ``n_full_scores=8192``; with the
Stanford backend these become ``ncells=8``, ``ndocs=8192``, ``centroid_score_threshold=0.35``), ours at
:class:`colbert_index.SearchParams` defaults; ``--ours-sweep`` adds settings of ours.

PyLate's default PLAID backend is fast-plaid, whose compiled extension is tied to one torch release (fast-plaid
1.4.6.2110, the newest PyLate 1.6.0 accepts, requires torch 2.11.0, a CUDA build on PyPI; next to torch 2.13.0+cpu its
``create`` dies with SIGSEGV). The script therefore uses PLAID's other backend, ``use_fast=False`` (PyLate's
``StanfordPLAID``: colbert-ai's indexer and searcher vendored in PyLate), unless ``--use-fast``.

Set-up (a venv of its own: PyLate pins fast-plaid and through it a CUDA torch; keep the CPU torch)::

    python -m venv bench/peers/.venvs/pylate && P=bench/peers/.venvs/pylate/bin/pip
    $P install torch==2.13.0                       # first: the CPU build
    $P install --no-deps pylate==1.6.0             # without fast-plaid (and so without torch 2.11)
    $P install sentence-transformers==5.3.0 "transformers<=5.3.0" datasets accelerate pandas ujson==5.12.0 \\
        ninja==1.11.1.4 fastkmeans==0.5.0
    $P install -e . threadpoolctl
    bench/peers/.venvs/pylate/bin/python bench/pylate_compare.py --n-docs 10000 --dim 64 --nbits 2 4

The first PLAID search compiles PyLate's C++ extensions (about 3 minutes; cached under ~/.cache/torch_extensions).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
from common import (
    environment,
    gc_paused,
    ground_truth,
    latency_stats,
    log,
    mrr,
    others_load,
    recall,
    source_hash,
    thread_count,
    wait_for_quiet,
)

from colbert_index import SearchParams
from colbert_index.datasets.synthetic import make_corpus
from colbert_index.pylate import PyLateIndex


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def one_thread():
    """torch, Numba and every BLAS / OpenMP pool on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with thread_count(1):
            yield
    finally:
        torch.set_num_threads(before)


def build(engine: str, folder: Path, nbits: int, dim: int, ids: list[str], docs: list[np.ndarray], args):
    """Build one index through PyLate's API; returns (index, seconds)."""
    from pylate import indexes

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # PyLate / colbert-ai print their progress
        if engine == "plaid":
            index = indexes.PLAID(
                index_folder=str(folder),
                index_name=f"plaid_b{nbits}",
                override=True,
                use_fast=args.use_fast,
                nbits=nbits,
                embedding_size=dim,
                show_progress=False,
            )
        else:
            index = PyLateIndex(folder, f"ours_b{nbits}", override=True, nbits=nbits, show_progress=False)
        index.add_documents(documents_ids=ids, documents_embeddings=docs)
    return index, time.perf_counter() - t0


def latencies(retriever, queries: np.ndarray, k: int) -> tuple[list[float], list[float], list[list[str]]]:
    """Wall and CPU milliseconds of each ``retrieve`` of one query, and the ids found."""
    wall, cpu, found = [], [], []
    with contextlib.redirect_stdout(sys.stderr), gc_paused():
        for q in queries[:3]:
            retriever.retrieve(queries_embeddings=q, k=k)
        for q in queries:
            c0, t0 = time.process_time(), time.perf_counter()
            hits = retriever.retrieve(queries_embeddings=q, k=k)
            t1, c1 = time.perf_counter(), time.process_time()
            wall.append((t1 - t0) * 1e3)
            cpu.append((c1 - c0) * 1e3)
            found.append([h["id"] for h in hits[0]])
    return wall, cpu, found


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-docs", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--n-queries", type=int, default=100)
    ap.add_argument("--nbits", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ours-sweep", default="2:1024", help="extra nprobe:ndocs settings of ours, comma-separated")
    ap.add_argument("--use-fast", action="store_true", help="PyLate's fast-plaid backend (needs its torch)")
    ap.add_argument("--wait-quiet", type=float, default=60.0, help="seconds to wait for other processes to go quiet")
    ap.add_argument("--workdir", type=Path, default=None, help="where the indexes go (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/pylate_n<N>_d<dim>.json")
    args = ap.parse_args(argv)
    from pylate import retrieve

    sources = source_hash()
    out = args.out or Path(__file__).resolve().parent / "results" / f"pylate_n{args.n_docs}_d{args.dim}.json"
    corpus = make_corpus(args.n_docs, dim=args.dim, n_queries=args.n_queries, seed=0)
    docs, ids = corpus.documents(), [str(i) for i in range(args.n_docs)]
    n_tokens = len(corpus.embeddings)
    log(f"corpus: {args.n_docs} docs, {n_tokens} tokens, dim {args.dim}; exact ground truth ...")
    truth, gt_s = ground_truth(corpus, k=args.k)
    sweep = [tuple(int(x) for x in s.split(":")) for s in args.ours_sweep.split(",") if s]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pylate_compare_"))
    rows = []
    try:
        for nbits in args.nbits:
            built = {}
            for engine in ("ours", "plaid"):
                wait_for_quiet(args.wait_quiet)
                load: dict = {}
                with others_load(load):
                    index, seconds = build(engine, workdir, nbits, args.dim, ids, docs, args)
                name = f"{engine}_b{nbits}"
                built[engine] = index
                log(f"{name}: built in {seconds:.1f} s (other load {load['others_cpu_cores']})")
                size = dir_bytes(workdir / name)
                rows.append(
                    {
                        "engine": engine,
                        "nbits": nbits,
                        "build_s": round(seconds, 2),
                        "build_others_cpu_cores": load["others_cpu_cores"],
                        "dir_bytes": size,
                        "bytes_per_token": round(size / n_tokens, 2),
                    }
                )
            # settings measured: each engine's defaults, then ours at the sweep's settings
            settings = [("plaid", None), ("ours", None)] + [("ours", SearchParams(nprobe=p, ndocs=d)) for p, d in sweep]
            times: dict[int, dict] = {i: {"wall": [], "cpu": [], "p50": [], "load": []} for i in range(len(settings))}
            found: dict[int, list] = {}
            for r in range(args.rounds):
                order = list(range(len(settings)))
                order = order[r % len(order) :] + order[: r % len(order)]  # rotating order
                for i in order:
                    engine, params = settings[i]
                    index = built[engine]
                    if engine == "ours":
                        index.params = params or SearchParams()
                    retriever = retrieve.ColBERT(index=index)
                    wait_for_quiet(args.wait_quiet)
                    load = {}
                    with one_thread(), others_load(load):
                        wall, cpu, ids_found = latencies(retriever, corpus.queries, args.k)
                    times[i]["wall"] += wall
                    times[i]["cpu"] += cpu
                    times[i]["p50"].append(round(float(np.median(wall)), 3))
                    times[i]["load"].append(load["others_cpu_cores"])
                    found[i] = ids_found
                    log(f"round {r}: {engine} b{nbits} {params}: p50 {np.median(wall):.3f} ms")
            for i, (engine, params) in enumerate(settings):
                pred = np.array([[int(x) for x in row] + [-1] * (args.k - len(row)) for row in found[i]])
                row = next(x for x in rows if x["engine"] == engine and x["nbits"] == nbits)
                if params is not None:  # ours at another setting: a row of its own, same index
                    row = {**row, "setting": f"nprobe={params.nprobe}, ndocs={params.ndocs}"}
                    rows.append(row)
                else:
                    row["setting"] = "defaults"
                row.update(
                    {
                        "search": latency_stats(times[i]["wall"]),
                        "search_cpu": latency_stats(times[i]["cpu"]),
                        "p50_per_round_ms": times[i]["p50"],
                        "search_others_cpu_cores": times[i]["load"],
                        "recall10_raw": recall(pred, truth, 10),
                        "mrr10": mrr(pred, corpus.targets, 10),
                    }
                )
            for index in built.values():
                if isinstance(index, PyLateIndex):
                    index.close()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    env = environment(sources)
    env.update({p: version(p) for p in ("pylate", "torch", "sentence-transformers", "transformers")})
    env["pylate_backend"] = "fast-plaid" if args.use_fast else "StanfordPLAID (use_fast=False)"
    result = {
        "n_docs": args.n_docs,
        "n_tokens": n_tokens,
        "dim": args.dim,
        "n_queries": args.n_queries,
        "k": args.k,
        "rounds": args.rounds,
        "ground_truth_s": round(gt_s, 1),
        "environment": env,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out}")
    print("| index | nbits | setting | build | B/token | recall@10 vs exact | MRR@10 | p50 (1 thread) | CPU p50 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        label = "colbert_index PyLateIndex" if r["engine"] == "ours" else "PyLate PLAID"
        print(
            f"| {label} | {r['nbits']} | {r['setting']} | {r['build_s']:.1f} s | {r['bytes_per_token']:.2f} | "
            f"{r['recall10_raw']:.3f} | {r['mrr10']:.3f} | {r['search']['p50_ms']:.2f} ms | "
            f"{r['search_cpu']['p50_ms']:.2f} ms |"
        )


if __name__ == "__main__":
    main()
