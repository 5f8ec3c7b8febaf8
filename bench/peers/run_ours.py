"""colbert_index on a bench/peers corpus: runs in the main environment.

Build: ``Index.build(index, flat float32 embeddings (memory-mapped), doc_lengths=..., nbits=...)`` with every
thread. Search: ``Index.open(index)`` then ``index.search(Q, k)`` one query at a time with the default
``SearchParams``, inside ``numba.set_num_threads(threads)`` and ``threadpoolctl.threadpool_limits(threads)``
(as bench/run.py measures).

Usage (see common.py): ``python run_ours.py build|search --data D --index I --out R.json``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numba
import numpy as np
from common import Corpus, runner_main
from threadpoolctl import threadpool_limits

import colbert_index
from colbert_index import Index, SearchParams
from colbert_index.search import top_k


def build(corpus: Corpus, index_dir: Path, nbits: int) -> dict:
    """Build our index of the corpus into ``index_dir`` (all threads)."""
    if index_dir.exists():
        shutil.rmtree(index_dir)
    index = Index.build(index_dir, corpus.embeddings, doc_lengths=corpus.doclens, nbits=nbits, progress=False)
    facts = {"K": index.n_centroids, "numba_threads": numba.get_num_threads()}
    index.close()
    return facts


def open_search(corpus: Corpus, index_dir: Path, k: int, threads: int):
    """The opened index; one-query function on ``threads`` Numba/BLAS threads, default parameters."""
    numba.set_num_threads(threads)
    threadpool_limits(limits=threads)  # stays in force for the process
    index = Index.open(index_dir)
    params = SearchParams().resolved(k)

    def search_one(q: np.ndarray) -> np.ndarray:
        return index.search(q, k=k).ids[0]

    facts = {
        "params": {
            "nprobe": params.nprobe,
            "centroid_score_threshold": params.centroid_score_threshold,
            "ndocs": params.ndocs,
        },
        "numba_threads": numba.get_num_threads(),
        "backend": index.backend.name,
    }
    return search_one, facts


def profile(corpus: Corpus, index_dir: Path, k: int, threads: int):
    """``colbert_index.search.staged_search`` for one query, step by step with a timer per stage.

    Mirrors ``staged_search`` at the commit it was written for; ``same_ids_as_search`` in the output tells
    whether it still returns what ``Index.search`` does.
    """
    numba.set_num_threads(threads)
    threadpool_limits(limits=threads)
    index = Index.open(index_dir)
    data, be, p = index._d, index.backend, SearchParams().resolved(k)
    codec = data.codec

    def one(q: np.ndarray) -> tuple[dict, list]:
        Q = np.ascontiguousarray(q, dtype=np.float32)
        t0 = time.perf_counter()
        S = be.centroid_scores(codec.centroids, Q)
        t1 = time.perf_counter()
        nprobe = p.nprobe
        while True:
            cells = be.probe_cells(S, nprobe)
            cands = be.probe(cells, data.ivf_offsets, data.ivf_docs, data.n_docs)
            if len(cands) >= k or nprobe >= codec.n_centroids:
                break
            nprobe *= 2
        t2 = time.perf_counter()
        if len(cands) > max(p.ndocs, k):
            approx = be.centroid_interaction(S, data.codes, data.offsets, cands, p.centroid_score_threshold)
            cands = top_k(approx, cands, max(p.ndocs, k))[1]
        t3 = time.perf_counter()
        n_exact = max(p.ndocs // 4, k)
        if len(cands) > n_exact:
            approx = be.refined_interaction(
                Q,
                S,
                cells,
                data.codes,
                data.residuals,
                data.offsets,
                cands,
                codec.centroids,
                codec.table,
                codec.normalize,
            )
            cands = top_k(approx, cands, n_exact)[1]
        t4 = time.perf_counter()
        scores = be.exact_maxsim(
            Q, data.codes, data.residuals, data.offsets, cands, codec.centroids, codec.table, codec.normalize
        )
        _, slots = top_k(scores, cands, min(k, data.n_docs))
        ids = index.ids_of(slots)
        t5 = time.perf_counter()
        ms = [(b - a) * 1e3 for a, b in zip((t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5))]
        names = ("0 centroid scores", "1 probe IVF", "2 pruned interaction", "3 refined interaction", "4 exact maxsim")
        return dict(zip(names, ms)), list(ids)

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
