"""fast-plaid on a bench/peers corpus: runs in ``bench/peers/.venvs/fastplaid``.

Build: ``FastPlaid(index, device="cpu").create(documents_embeddings=[one tensor per document], nbits=...)``
with fast-plaid's other defaults (kmeans_niters 4, max_points_per_centroid 256, seed 42). Search: one query
per ``.search(Q[None], top_k=k)`` call with the default search parameters (n_ivf_probe 8, n_full_scores 4096),
``torch.set_num_threads(threads)``; the Rust side's rayon pool is limited by ``RAYON_NUM_THREADS``, which
compare.py sets for the search process.

Usage (see common.py): ``python run_fastplaid.py build|search --data D --index I --out R.json``.
"""

from __future__ import annotations

import shutil
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from common import Corpus, runner_main
from fast_plaid import search as fp_search

DEFAULT_PARAMS = {"n_ivf_probe": 8, "n_full_scores": 4096}  # FastPlaid.search's defaults in 1.7.0


def build(corpus: Corpus, index_dir: Path, nbits: int) -> dict:
    """Build a fast-plaid index of the corpus into ``index_dir`` (all threads)."""
    if index_dir.exists():
        shutil.rmtree(index_dir)
    docs = [torch.from_numpy(np.array(d, dtype=np.float32)) for d in corpus.documents()]
    index = fp_search.FastPlaid(index=str(index_dir), device="cpu")
    index.create(documents_embeddings=docs, nbits=nbits)
    index.close()
    K = int(np.load(index_dir / "centroids.npy", mmap_mode="r").shape[0])
    return {"K": K, "torch_threads": torch.get_num_threads()}


def open_search(corpus: Corpus, index_dir: Path, k: int, threads: int, params: dict | None = None):
    """The loaded index; one-query function on ``threads`` threads (fast-plaid's defaults unless ``params``)."""
    torch.set_num_threads(threads)
    index = fp_search.FastPlaid(index=str(index_dir), device="cpu")
    chosen = {**DEFAULT_PARAMS, **(params or {})}

    def search_one(q: np.ndarray) -> list[int]:
        res = index.search(torch.from_numpy(np.ascontiguousarray(q))[None], top_k=k, show_progress=False, **chosen)
        return [pid for pid, _ in res[0]]

    return search_one, {"params": chosen, "torch_threads": torch.get_num_threads()}


def versions() -> dict:
    """Versions of the pieces that matter."""
    return {"fast-plaid": version("fast-plaid"), "torch": torch.__version__}


if __name__ == "__main__":
    runner_main("fast-plaid", build, open_search, versions)
