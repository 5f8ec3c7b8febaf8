"""``colbert-index`` command line: build | search | demo."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cmd_build(args: argparse.Namespace) -> int:
    from colbert_index import Index

    emb = np.load(args.embeddings, mmap_mode="r")
    lengths = np.load(args.doclens)
    ids = [line.rstrip("\n") for line in open(args.ids, encoding="utf-8")] if args.ids else None
    t0 = time.perf_counter()
    idx = Index.build(
        args.index,
        emb,
        doc_ids=ids,
        nbits=args.nbits,
        n_centroids=args.n_centroids,
        doc_lengths=lengths,
        overwrite=args.overwrite,
        seed=args.seed,
    )
    print(f"built {idx} in {time.perf_counter() - t0:.1f}s, {idx.disk_bytes() / idx.n_tokens:.2f} bytes/token")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from colbert_index import Index, SearchParams

    idx = Index.open(args.index)
    Q = np.load(args.queries)
    params = SearchParams(args.nprobe, args.threshold, args.ndocs)
    res = idx.search_exact(Q, k=args.k) if args.exact else idx.search(Q, k=args.k, params=params)
    for qi in range(len(res)):
        print("\t".join(f"{i}:{s:.4f}" for i, s in zip(res.ids[qi], res.scores[qi])))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from colbert_index import Index
    from colbert_index.backend import get_backend
    from colbert_index.metrics import found_at, recall_at
    from colbert_index.search import brute_force
    from colbert_index.synthetic import make_corpus

    print(f"generating a synthetic clustered corpus: {args.n_docs} docs, dim {args.dim} ...")
    corpus = make_corpus(args.n_docs, dim=args.dim, n_queries=args.n_queries, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.index or Path(tmp) / "demo-index")
        t0 = time.perf_counter()
        idx = Index.build(path, corpus.documents(), nbits=args.nbits, overwrite=True, seed=args.seed)
        build_s = time.perf_counter() - t0
        print(f"built {idx} in {build_s:.1f}s: {idx.disk_bytes() / idx.n_tokens:.2f} bytes/token on disk")
        idx.search(corpus.queries[:2], k=10)  # compile / warm up
        t0 = time.perf_counter()
        res = idx.search(corpus.queries, k=10)
        ms = (time.perf_counter() - t0) * 1000 / len(corpus.queries)
        t0 = time.perf_counter()
        exact = idx.search_exact(corpus.queries, k=10)
        exact_ms = (time.perf_counter() - t0) * 1000 / len(corpus.queries)
        seg = get_backend().segment_max_sum
        raw = brute_force(list(corpus.queries), corpus.offsets, lambda lo, hi: corpus.embeddings[lo:hi], 10, seg)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colbert-index", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build an index from a flat .npy of token embeddings")
    b.add_argument("index", help="output index directory")
    b.add_argument("--embeddings", required=True, help=".npy float [n_tokens, dim]")
    b.add_argument("--doclens", required=True, help=".npy int [n_docs], tokens per document")
    b.add_argument("--ids", help="text file with one document id per line (default 0..n-1)")
    b.add_argument("--nbits", type=int, default=2, choices=(2, 4))
    b.add_argument("--n-centroids", type=int)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--overwrite", action="store_true")
    b.set_defaults(func=cmd_build)

    s = sub.add_parser("search", help="search queries from a .npy [q_len, dim] or [n_q, q_len, dim]")
    s.add_argument("index")
    s.add_argument("--queries", required=True)
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--nprobe", type=int)
    s.add_argument("--threshold", type=float, help="centroid_score_threshold")
    s.add_argument("--ndocs", type=int)
    s.add_argument("--exact", action="store_true", help="brute-force exact MaxSim instead")
    s.set_defaults(func=cmd_search)

    d = sub.add_parser("demo", help="build and search a built-in synthetic corpus, report recall and speed")
    d.add_argument("--n-docs", type=int, default=3000)
    d.add_argument("--dim", type=int, default=64)
    d.add_argument("--nbits", type=int, default=2, choices=(2, 4))
    d.add_argument("--n-queries", type=int, default=50)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--index", help="keep the demo index at this path")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"colbert-index: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
