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
from dataclasses import replace
from pathlib import Path

import numba
import numpy as np
from common import Corpus, runner_main
from threadpoolctl import threadpool_limits

import colbert_index
from colbert_index import Index, SearchParams
from colbert_index.backend import one_blas_thread
from colbert_index.search import query_tables, score_bound


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
    p = params.resolved(k)
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
            "centroid_score_threshold": resolved.centroid_score_threshold,
            "ndocs": resolved.ndocs,
        },
        "numba_threads": numba.get_num_threads(),
        "backend": index.backend.name,
    }
    return search_one, facts


def profile(corpus: Corpus, index_dir: Path, k: int, threads: int, params: dict | None = None):
    """``colbert_index.search.staged_search`` for one query, step by step, CPU time (``process_time``) per stage.

    Mirrors ``staged_search`` at the commit it was written for; ``same_ids_as_search`` in the output tells
    whether it still returns what ``Index.search`` does.
    """
    numba.set_num_threads(threads)
    threadpool_limits(limits=threads)
    index = Index.open(index_dir)
    data, be, p = index._d, index.backend, _resolved(SearchParams(**(params or {})), k, index.n_docs)
    if p.nbound is not None:
        raise SystemExit("ours: the per-stage profile mirrors the plain probe; it has no nbound path")
    codec = data.codec
    top_k = _top_k(be)

    def one(q: np.ndarray) -> tuple[dict, list]:
        with one_blas_thread():  # as Index.search holds it: once per call, not per BLAS kernel
            return stages(np.ascontiguousarray(q, dtype=np.float32))

    def stages(Q: np.ndarray) -> tuple[dict, list]:
        t0 = time.process_time()
        tables3 = be.refined_interaction_tables(Q, codec.table, score_bound(codec, Q))
        S, rows3, first_cells, stage2 = query_tables(codec, Q, be, p, tables3)  # with VNNI: one pass for 0-3
        t1 = time.process_time()
        nprobe = p.nprobe
        while True:
            if first_cells is not None and nprobe == p.nprobe:
                cells = first_cells
            else:
                S = be.centroid_scores(codec.centroids, Q) if S is None else S
                cells = be.probe_cells(S, nprobe)
            cands = be.probe(cells, data.ivf_offsets, data.ivf_docs, data.n_docs)
            if len(cands) >= k or nprobe >= codec.n_centroids:
                break
            nprobe *= 2
        t2 = time.process_time()
        if len(cands) > max(p.ndocs, k):
            if stage2 is None:
                stage2 = be.centroid_interaction_tables(S, p.centroid_score_threshold)
            approx = be.centroid_interaction_from(stage2, data.codes, data.offsets, cands)
            cands = top_k(approx, cands, max(p.ndocs, k))[1]
        t3 = time.process_time()
        n_exact = SearchParams.n_exact(k, p.ndocs)
        if len(cands) > n_exact:
            rows3 = be.refined_interaction_scores(tables3, S) if rows3 is None else rows3
            approx = be.refined_interaction_from(tables3, rows3, data.codes, data.residuals, data.offsets, cands)
            cands = top_k(approx, cands, n_exact)[1]
        t4 = time.process_time()
        scores = be.exact_maxsim(
            Q, data.codes, data.residuals, data.offsets, cands, codec.centroids, codec.table, codec.normalize
        )
        _, slots = top_k(scores, cands, min(k, data.n_docs))
        ids = index.ids_of(slots)
        t5 = time.process_time()
        ms = [(b - a) * 1e3 for a, b in zip((t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5))]
        names = ("0 centroid scores", "1 probe IVF", "2 pruned interaction", "3 refined interaction", "4 exact maxsim")
        return dict(zip(names, ms)), list(ids)

    return one


def _top_k(backend):
    """The backend's top-k kernel; ``colbert_index.search.top_k`` at the commits (``--ours-ref``) from before
    top-k selection became a backend kernel."""
    if hasattr(backend, "top_k"):
        return backend.top_k
    from colbert_index.search import top_k

    return top_k


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
