"""colbert_index on a bench/peers corpus: runs in the main environment.

Build: ``Index.build(index, flat float32 embeddings (memory-mapped), doc_lengths=..., nbits=...)`` with every
thread. Search: ``Index.open(index)`` then ``index.search(Q, k)`` one query at a time with the default
``SearchParams``, inside ``numba.set_num_threads(threads)`` and ``threadpoolctl.threadpool_limits(threads)``
(as bench/run.py measures).

Usage (see common.py): ``python run_ours.py build|search --data D --index I --out R.json``.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numba
import numpy as np
from common import Corpus, runner_main
from threadpoolctl import threadpool_limits

import colbert_index
from colbert_index import Index, SearchParams


def build(corpus: Corpus, index_dir: Path, nbits: int) -> dict:
    """Build our index of the corpus into ``index_dir`` (all threads)."""
    if index_dir.exists():
        shutil.rmtree(index_dir)
    index = Index.build(index_dir, corpus.embeddings, doc_lengths=corpus.doclens, nbits=nbits, progress=False)
    facts = {"K": index.n_centroids, "numba_threads": numba.get_num_threads()}
    index.close()
    return facts


def _resolved(params: SearchParams, k: int, n_docs: int) -> SearchParams:
    """``params`` with every field set as the search sets it for ``k`` on an index of ``n_docs`` documents."""
    p = params.resolved(k, n_docs)  # nprobe and agree_cells by index size
    if p.ndocs is None:  # sized per index (SearchParams.default_ndocs) since commit 24130c6
        p = replace(p, ndocs=SearchParams.default_ndocs(k, n_docs))
    return p


def open_search(corpus: Corpus, index_dir: Path, k: int, threads: int, params: dict | None = None):
    """The opened index; one-query function on ``threads`` Numba/BLAS threads (``SearchParams(**params)``)."""
    numba.set_num_threads(threads)
    threadpool_limits(limits=threads)  # stays in force for the process
    index = Index.open(index_dir)
    chosen = SearchParams(**(params or {}))
    resolved = _resolved(chosen, k, index.n_docs)

    def search_one(q: np.ndarray) -> np.ndarray:
        return index.search(q, k=k, params=chosen).ids[0]

    facts = {
        "params": {
            "nprobe": resolved.nprobe,
            "agree_cells": resolved.agree_cells,
            "centroid_score_threshold": resolved.centroid_score_threshold,
            "ndocs": resolved.ndocs,
        },
        "numba_threads": numba.get_num_threads(),
        "backend": index.backend.name,
    }
    return search_one, facts


# explain's stage names -> the profile's, numbered like the peers' step-by-step profiles
_STAGES = {
    "tables": "0 centroid scores",
    "probe": "1 probe IVF",
    "stage2": "2 pruned interaction",
    "stage3": "3 refined interaction",
    "stage4": "4 exact maxsim",
    "rerank": "4 rerank originals",
}


def profile(corpus: Corpus, index_dir: Path, k: int, threads: int, params: dict | None = None):
    """Per-stage milliseconds of ``Index.search(..., explain=True)`` for one query (wall time inside the search,
    stage by stage: the search itself, so it returns what ``Index.search`` does by construction)."""
    numba.set_num_threads(threads)
    threadpool_limits(limits=threads)
    index = Index.open(index_dir)
    sp = SearchParams(**(params or {}))

    def one(q: np.ndarray) -> tuple[dict, list]:
        res = index.search(q, k=k, params=sp, explain=True)
        return {_STAGES.get(st["stage"], st["stage"]): st["ms"] for st in res.explain[0]["stages"]}, list(res.ids[0])

    return one


def versions() -> dict:
    """Versions of the pieces that matter."""
    import faiss

    return {
        "colbert_index": colbert_index.__version__,
        "colbert_index_path": str(Path(colbert_index.__file__).parent),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "faiss": faiss.__version__,
    }


if __name__ == "__main__":
    runner_main("ours", build, open_search, versions, profile)
