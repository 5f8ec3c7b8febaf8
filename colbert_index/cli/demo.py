"""``demo`` (a synthetic corpus, or the built-in passages with a model) and ``bench`` (latency and recall)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from colbert_index.cli.inputs import parse_filter, search_params


def cmd_bench(args: argparse.Namespace) -> int:
    import numba

    from colbert_index import Index
    from colbert_index.metrics import recall_at

    with tempfile.TemporaryDirectory() as tmp:
        if args.index is None:
            from colbert_index.datasets.synthetic import make_corpus

            corpus = make_corpus(args.synthetic, dim=args.dim, n_queries=args.n_queries, seed=args.seed)
            t0 = time.perf_counter()
            idx = Index.build(Path(tmp) / "bench-index", corpus.documents(), nbits=args.nbits, seed=args.seed)
            print(f"built {idx} in {time.perf_counter() - t0:.1f}s")
            Q = corpus.queries
        elif args.queries is None:
            raise ValueError(
                "bench INDEX needs --queries Q.npy ([n_q, q_len, dim]); or leave out INDEX for --synthetic"
            )
        else:
            idx, Q = Index.open(args.index), np.load(args.queries)
            Q = Q[None] if Q.ndim == 2 else Q
        if args.threads:
            numba.set_num_threads(args.threads)
        params, flt = search_params(args), parse_filter(args.filter)
        Q = Q[: args.n_queries]
        for q in Q[:3]:
            idx.search(q, k=args.k, params=params, filter=flt)  # compile / warm up
        times, found = [], []
        for q in Q:
            t0 = time.perf_counter()
            found.append(idx.search(q, k=args.k, params=params, filter=flt).ids[0])
            times.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        idx.search(Q, k=args.k, params=params, filter=flt)
        batch_qps = len(Q) / (time.perf_counter() - t0)
        n_exact = min(args.exact_queries, len(Q))
        exact = idx.search_exact(Q[:n_exact], k=args.k, filter=flt).ids
        width = min(args.k, exact.shape[1]) if exact.size else 0
        rec = recall_at(np.stack(found[:n_exact]), exact, width) if n_exact and width else float("nan")
        p50, p95, p99 = np.percentile(times, [50, 95, 99])
        explained = idx.search(Q[:n_exact], k=args.k, params=params, filter=flt, explain=True).explain or []
        result = {
            "queries": len(Q),
            "k": args.k,
            "threads": numba.get_num_threads(),
            "p50_ms": round(float(p50), 3),
            "p95_ms": round(float(p95), 3),
            "p99_ms": round(float(p99), 3),
            "batch_qps": round(batch_qps, 1),
            f"recall@{args.k}_vs_exact": round(rec, 4),
            "exact_queries": n_exact,
            **kept_per_stage(explained),
        }
        print(json.dumps(result) if args.json else "\n".join(f"{k:>16}  {v}" for k, v in result.items()))
    return 0


def kept_per_stage(explained: list[dict]) -> dict:
    """Means over queries of what ``search(..., explain=True)`` reports: the candidates each stage kept and the
    ``ndocs`` / ``n_exact`` the search used (the defaults for the index's size unless set)."""
    stages: dict[str, list] = {}
    for e in explained:
        for row in e.get("stages", []):
            if "candidates" in row:
                stages.setdefault(f"mean_kept_{row['stage']}", []).append(row["candidates"])
        for name in ("nprobe", "ndocs", "n_exact"):
            if name in e.get("params", {}):
                stages.setdefault(f"mean_{name}", []).append(e["params"][name])
    return {name: round(float(np.mean(v)), 1) for name, v in stages.items()}


def cmd_demo_texts(args: argparse.Namespace) -> int:
    """Index the built-in passages (colbert_index.datasets.demo_texts) with a real model and run its queries."""
    from colbert_index import Encoder, Index
    from colbert_index.datasets.demo_texts import PASSAGES, QUERIES

    t0 = time.perf_counter()
    enc = Encoder.from_pretrained(args.model, device=args.device)
    print(f"loaded {enc} in {time.perf_counter() - t0:.1f}s")
    ids, texts = list(PASSAGES), list(PASSAGES.values())
    t0 = time.perf_counter()
    docs = enc.encode_documents(texts, progress=False)
    print(f"encoded {len(docs)} passages ({sum(map(len, docs))} tokens) in {time.perf_counter() - t0:.1f}s")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.index or Path(tmp) / "demo-index")
        idx = Index.build(path, docs, doc_ids=ids, nbits=args.nbits, overwrite=True, seed=args.seed, progress=False)
        print(f"built {idx}: {idx.disk_bytes() / idx.n_tokens:.2f} bytes/token")
        Q, lengths = enc.encode_queries([q for q, _ in QUERIES], progress=False)
        res = idx.search(Q, k=3, query_lengths=lengths)
        hits = 0
        for qi, (query, answer) in enumerate(QUERIES):
            hits += res.ids[qi][0] == answer
            print(f"\n{query!r}  (answered by {answer!r})")
            for rank, (i, s) in enumerate(zip(res.ids[qi], res.scores[qi]), start=1):
                print(f"  {rank}. {i:20s} {s:6.2f}  {PASSAGES[i][:70]}...")
        print(f"\nthe answering passage ranks first for {hits} of {len(QUERIES)} queries")
        if args.index:
            print(f"index kept at {path}")
    return 0


def _kernels_cached() -> bool:
    """Whether Numba's on-disk cache of the kernels has entries (none on a fresh install)."""
    import colbert_index.kernels

    return any((Path(colbert_index.kernels.__file__).parent / "__pycache__").glob("*.nbi"))


def cmd_demo(args: argparse.Namespace) -> int:
    if args.model:
        return cmd_demo_texts(args)
    from colbert_index import Index
    from colbert_index.backend import get_backend
    from colbert_index.datasets.synthetic import make_corpus
    from colbert_index.metrics import found_at, recall_at
    from colbert_index.search import brute_force

    print(f"generating a synthetic clustered corpus: {args.n_docs} docs, dim {args.dim} ...")
    corpus = make_corpus(args.n_docs, dim=args.dim, n_queries=args.n_queries, seed=args.seed)
    compiling = not _kernels_cached()
    if compiling:
        print("first run on this install: the Numba kernels compile as they are first used (~30 s; cached after)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.index or Path(tmp) / "demo-index")
        t0 = time.perf_counter()
        idx = Index.build(path, corpus.documents(), nbits=args.nbits, overwrite=True, seed=args.seed)
        build_s = time.perf_counter() - t0
        note = " (compiling included)" if compiling else ""
        print(f"built {idx} in {build_s:.1f}s{note}: {idx.disk_bytes() / idx.n_tokens:.2f} bytes/token on disk")
        idx.search(corpus.queries[:2], k=10)  # compile / warm up
        idx.search_exact(corpus.queries[:2], k=10)
        t0 = time.perf_counter()
        res = idx.search(corpus.queries, k=10)
        ms = (time.perf_counter() - t0) * 1000 / len(corpus.queries)
        t0 = time.perf_counter()
        exact = idx.search_exact(corpus.queries, k=10)
        exact_ms = (time.perf_counter() - t0) * 1000 / len(corpus.queries)
        raw = brute_force(
            list(corpus.queries), corpus.offsets, lambda lo, hi: corpus.embeddings[lo:hi], 10, get_backend()
        )
        raw_ids = np.stack([slots for _, slots in raw])
        for qi in range(min(3, len(res))):
            top = ", ".join(f"{i} ({s:.2f})" for i, s in zip(res.ids[qi, :5], res.scores[qi, :5]))
            print(f"query {qi} (made from doc {corpus.targets[qi]}): {top}")
        import numba

        print(
            f"search: {ms:.2f} ms/query; exact brute force: {exact_ms:.1f} ms/query ({exact_ms / ms:.0f}x slower); "
            f"{numba.get_num_threads()} Numba threads"
        )
        print(f"recall@10 vs the index's exact search: {recall_at(res.ids, exact.ids, 10):.3f}")
        print(f"recall@10 vs exact MaxSim on the raw float embeddings: {recall_at(res.ids, raw_ids, 10):.3f}")
        print(f"query's source doc in top-10: {found_at(res.ids, corpus.targets):.3f}")
        if args.index:
            print(f"index kept at {path}")
    return 0
