"""Write a corpus to flat files that every engine of bench/peers reads: the synthetic corpus of ``bench/run.py``,
or a real-text corpus of ``bench/realtext.py`` with its MiniLM embeddings.

Same generator and defaults as ``bench/run.py`` (``colbert_index.datasets.synthetic.make_corpus``, 100 queries of 32
tokens, seed 0), so the 10k corpus here is the one of the ``n10000_d64`` results. Writes to
``bench/data/peers_n{N}_d{D}/`` (gitignored):

* ``embeddings.npy`` float32 ``[n_tokens, dim]`` (L2-normalised rows), ``doclens.npy`` int64 ``[n_docs]``
  (a document's id is its position), ``queries.npy`` float32 ``[n_q, q_len, dim]``, ``targets.npy``;
* ``gt_ids.npy`` / ``gt_scores.npy`` ``[n_q, 100]``: exact MaxSim top-100 over the raw float32 embeddings,
  computed like ``bench/run.py``'s ground truth (``brute_force`` with the Numba kernels);
* ``meta.json``: the generator's parameters, sizes, timings.

The real-text corpus (``--corpus prose`` or ``docstrings``; ``bench/common.py``: ``realtext_corpus``) goes to
``bench/data/peers_realtext_{corpus}_n{N}_q{Q}_s{seed}/`` with the same files (``queries.npy``: ``[n_q, 32, 128]``,
MiniLM's queries being expanded to 32 tokens; ``targets.npy``: the passage each query was taken from), plus
``passages.jsonl`` and ``queries.jsonl`` (the texts, and each passage's source) and, in ``meta.json``, where
the passages come from (package versions) and the MRR@10 of exact MaxSim on the raw vectors. Encoding 30,000
passages takes 30-60 min on 2 cores; the embeddings are cached (``bench/data/realtext_*.npz``).

An existing directory with the same parameters is kept as it is (pass ``--force`` to rewrite it).
Runs in the main environment.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEERS_DIR = Path(__file__).resolve().parent
DATA_DIR = PEERS_DIR.parent / "data"
GT_K = 100


def corpus_dir(n_docs: int, dim: int) -> Path:
    """Where the corpus of ``n_docs`` documents of dimension ``dim`` lives."""
    return DATA_DIR / f"peers_n{n_docs}_d{dim}"


def export(n_docs: int, dim: int, n_queries: int = 100, q_len: int = 32, seed: int = 0, force: bool = False) -> Path:
    """Generate, write and return the corpus directory (reused when it exists with the same parameters)."""
    out = corpus_dir(n_docs, dim)
    params = {"n_docs": n_docs, "dim": dim, "n_queries": n_queries, "q_len": q_len, "seed": seed}
    meta_path = out / "meta.json"
    if not force and meta_path.exists() and json.loads(meta_path.read_text()).get("params") == params:
        print(f"{out}: exists, reused")
        return out
    from colbert_index.backend import get_backend  # only when generating: compare.py imports this module
    from colbert_index.datasets.synthetic import make_corpus
    from colbert_index.search import brute_force

    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # written last: its presence means the directory is complete
    t0 = time.perf_counter()
    corpus = make_corpus(n_docs, dim=dim, n_queries=n_queries, q_len=q_len, seed=seed)
    gen_s = time.perf_counter() - t0
    np.save(out / "embeddings.npy", corpus.embeddings.astype(np.float32, copy=False))
    np.save(out / "doclens.npy", corpus.doclens.astype(np.int64))
    np.save(out / "queries.npy", corpus.queries.astype(np.float32))
    np.save(out / "targets.npy", corpus.targets.astype(np.int64))
    print(f"{out}: {len(corpus.embeddings)} tokens generated in {gen_s:.1f} s; ground truth...")
    t0 = time.perf_counter()
    best = brute_force(
        list(corpus.queries),
        corpus.offsets,
        lambda lo, hi: corpus.embeddings[lo:hi],
        GT_K,
        get_backend("numba"),
    )
    gt_s = time.perf_counter() - t0
    np.save(out / "gt_ids.npy", np.stack([slots for _, slots in best]).astype(np.int64))
    np.save(out / "gt_scores.npy", np.stack([scores for scores, _ in best]).astype(np.float32))
    meta = {
        "params": params,
        "generator": "colbert_index.datasets.synthetic.make_corpus (defaults of bench/run.py)",
        "n_tokens": len(corpus.embeddings),
        "generate_s": round(gen_s, 2),
        "ground_truth": f"exact MaxSim top-{GT_K} over the raw float32 embeddings",
        "ground_truth_s": round(gt_s, 2),
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{out}: ground truth in {gt_s:.1f} s")
    return out


def realtext_dir(corpus: str, n_docs: int, n_queries: int, seed: int) -> Path:
    """Where a real-text corpus of ``n_docs`` passages and ``n_queries`` queries lives."""
    return DATA_DIR / f"peers_realtext_{corpus}_n{n_docs}_q{n_queries}_s{seed}"


def bench_common():
    """``bench/common.py`` (its name clashes with ``bench/peers/common.py``, so it is loaded under another)."""
    if "bench_common" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_common", PEERS_DIR.parent / "common.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_common"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_common"]


def export_realtext(
    corpus: str = "prose", n_docs: int = 30_000, n_queries: int = 300, seed: int = 0, force: bool = False
) -> Path:
    """Build (or reuse) the real-text corpus, encode it with MiniLM as ColBERT (cached), write it and its exact
    ground truth; return the directory."""
    params = {"corpus": f"realtext-{corpus}", "n_docs": n_docs, "n_queries": n_queries, "seed": seed}
    meta_path = realtext_dir(corpus, n_docs, n_queries, seed) / "meta.json"
    if not force and meta_path.exists() and json.loads(meta_path.read_text()).get("params") == params:
        print(f"{meta_path.parent}: exists, reused")
        return meta_path.parent
    bc = bench_common()
    rt = bc.realtext_corpus(corpus, n_docs, n_queries, seed)
    out = realtext_dir(corpus, len(rt.texts), len(rt.query_texts), seed)  # the pool may be smaller than asked
    meta_path = out / "meta.json"
    with tempfile.TemporaryDirectory(prefix="peers-realtext-") as tmp:
        docs, queries, encode_s, model = bc.realtext_embeddings(rt, None, Path(tmp))
    if len({len(q) for q in queries}) != 1:
        raise SystemExit("the peers' runners take queries of one length (a model with query expansion)")
    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # written last: its presence means the directory is complete
    flat = np.concatenate(docs).astype(np.float32)
    doclens = np.asarray([len(d) for d in docs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(doclens)])
    np.save(out / "embeddings.npy", flat)
    np.save(out / "doclens.npy", doclens)
    np.save(out / "queries.npy", np.stack(queries).astype(np.float32))
    np.save(out / "targets.npy", rt.targets)
    with open(out / "passages.jsonl", "w") as f:
        for source, text in zip(rt.sources, rt.texts):
            f.write(json.dumps({"source": source, "text": text}) + "\n")
    with open(out / "queries.jsonl", "w") as f:
        for text, target in zip(rt.query_texts, rt.targets):
            f.write(json.dumps({"text": text, "target": int(target)}) + "\n")
    print(f"{out}: {len(flat)} tokens; ground truth...")
    t0 = time.perf_counter()
    best = bc.raw_top_k(queries, offsets, lambda lo, hi: flat[lo:hi], GT_K)
    gt_s = time.perf_counter() - t0
    gt_ids = np.stack([slots for _, slots in best]).astype(np.int64)
    np.save(out / "gt_ids.npy", gt_ids)
    np.save(out / "gt_scores.npy", np.stack([scores for scores, _ in best]).astype(np.float32))
    meta = {
        "params": params,
        "generator": "bench/common.py realtext_corpus + realtext_embeddings",
        "model": model,
        **rt.describe(),
        "n_tokens": len(flat),
        "query_tokens": len(queries[0]),
        "encode_s": round(encode_s, 1),
        "ground_truth": f"exact MaxSim top-{GT_K} over the raw float32 embeddings",
        "ground_truth_s": round(gt_s, 2),
        "mrr10_exact_raw": bc.mrr(gt_ids, rt.targets),
        "recall_target_in_exact_top10": round(float(np.mean([t in g[:10] for t, g in zip(rt.targets, gt_ids)])), 4),
    }
    meta["dim"] = int(flat.shape[1])
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{out}: ground truth in {gt_s:.1f} s; MRR@10 of exact MaxSim {meta['mrr10_exact_raw']}")
    return out


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", choices=["synthetic", "prose", "docstrings"], default="synthetic")
    p.add_argument("--n-docs", type=int, default=10000)
    p.add_argument("--dim", type=int, default=64, help="synthetic only (real text: the model's, 128)")
    p.add_argument("--n-queries", type=int, help="default: 100 (synthetic), 300 (real text)")
    p.add_argument("--q-len", type=int, default=32, help="synthetic only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rewrite an existing corpus directory")
    a = p.parse_args(argv)
    if a.corpus == "synthetic":
        export(a.n_docs, a.dim, a.n_queries or 100, a.q_len, a.seed, a.force)
    else:
        try:
            export_realtext(a.corpus, a.n_docs, a.n_queries or 300, a.seed, a.force)
        except bench_common().ProseSourceMissing as exc:
            raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
