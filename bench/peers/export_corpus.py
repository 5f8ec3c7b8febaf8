"""Write the synthetic corpus of ``bench/run.py`` to flat files that every engine of bench/peers reads.

Same generator and defaults as ``bench/run.py`` (``colbert_index.datasets.synthetic.make_corpus``, 100 queries of 32
tokens, seed 0), so the 10k corpus here is the one of the ``n10000_d64`` results. Writes to
``bench/data/peers_n{N}_d{D}/`` (gitignored):

* ``embeddings.npy`` float32 ``[n_tokens, dim]`` (L2-normalised rows), ``doclens.npy`` int64 ``[n_docs]``
  (a document's id is its position), ``queries.npy`` float32 ``[n_q, q_len, dim]``, ``targets.npy``;
* ``gt_ids.npy`` / ``gt_scores.npy`` ``[n_q, 100]``: exact MaxSim top-100 over the raw float32 embeddings,
  computed like ``bench/run.py``'s ground truth (``brute_force`` with the Numba kernels);
* ``meta.json``: the generator's parameters, sizes, timings.

An existing directory with the same parameters is kept as it is (pass ``--force`` to rewrite it).
Runs in the main environment.
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> None:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-docs", type=int, default=10000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--n-queries", type=int, default=100)
    p.add_argument("--q-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rewrite an existing corpus directory")
    a = p.parse_args(argv)
    export(a.n_docs, a.dim, a.n_queries, a.q_len, a.seed, a.force)


if __name__ == "__main__":
    main()
