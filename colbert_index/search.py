"""Search: the four PLAID stages over a compressed index (the last on the stored float16 vectors when the index
keeps them), and brute-force exact MaxSim."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from colbert_index.errors import IndexFormatError

# PLAID's defaults by k: (max k, nprobe, centroid_score_threshold, ndocs)
_DEFAULTS = ((10, 1, 0.5, 256), (100, 2, 0.45, 1024))
_NDOCS_SCALE_FROM = 62_500  # documents up to which the default ndocs is PLAID's
# Documents beyond which the default ndocs for k <= 10 is taken 1.5x: there stage 2's ranking of the wider candidate
# list keeps too little of the exact top 10 (docs/search.md; bench/RESULTS.md, Scale). Larger k keep PLAID's table.
_WIDER_NDOCS_FROM = 500_000
# With ``ndocs`` unset and k <= 10 a search sizes stages 2-4 per query (docs/search.md): stage 3 goes deeper while one
# of its k best sits past the first DEEPER_FROM of what it scored (``_deepen``, up to DEEPEN_CAP times ``ndocs``), the
# last stage takes what stage 3's error could lift into the top k (``_could_reach``, up to FINAL_CAP times ``n_exact``).
# Larger k keep the fixed sizes: the deeper-part test fires on most queries there.
DEEPEN_CAP = 8
DEEPER_FROM = 0.4
FINAL_CAP = 4
ERROR_SLACK = 0.005
# For k <= 10 beyond _NDOCS_SCALE_FROM documents, stage 1 also takes the documents that the best AGREE_CELLS centroids
# of two query tokens or more both list (``SearchParams.agree_cells``; docs/search.md).
AGREE_CELLS = 6


def _wider_ndocs(k: int, n_docs: int) -> bool:
    return k <= _DEFAULTS[0][0] and n_docs > _WIDER_NDOCS_FROM


@dataclass(frozen=True)
class SearchParams:
    """Knobs of the staged search. ``None`` fields take the default for the requested ``k``.

    nprobe: centroids probed per query token (stage 1). Unset, PLAID's value for ``k`` (:meth:`default_nprobe`).
    centroid_score_threshold: stage 2 ignores doc tokens whose centroid scores below this for every
        query token.
    ndocs: candidates kept after stage 2; stage 3 keeps :meth:`n_exact` of them for the exact rerank. Unset,
        it is PLAID's value for ``k`` up to 62,500 documents and grows with the square root of the number
        of documents beyond (:meth:`default_ndocs`): the probe reaches that many more candidates. Unset and for
        k <= 10, the search also sizes itself per query: stage 3 goes further down stage 2's ranking (up to 8x
        ``ndocs``) while that ranking put one of stage 3's k best low, and the last stage, once it has scored stage
        3's best, takes every further candidate that stage 3's error, as those showed it, could lift into the top k
        (``DEEPEN_CAP``, ``FINAL_CAP``; docs/search.md). Set, exactly
        ``ndocs`` and :meth:`n_exact`: to go past the sized search, set it to several times the default.
    nbound: unset, stage 1 is PLAID's probe. Set, stage 1 also bounds each candidate's centroid interaction
        from above, from the IVF lists alone (``reference.probe_bound``), and keeps the best ``nbound``; stage
        2 then runs only if more than ``ndocs`` remain. More robust to documents unlike the training data,
        but slower and less accurate than stage 2 on large indexes (docs/design-notes.md), hence opt-in.
    bound_cells: with ``nbound``, centroids per query token whose lists the bound reads (at least
        ``nprobe``): exact where a document's best centroid for a token is among them, the next
        centroid's score otherwise.
    agree_cells: stage 1 also takes the documents listed by the best ``agree_cells`` centroids of two query tokens or
        more (``probe_agreed``): a document several query tokens point to, though no token's best cell holds it.
        Unset, :meth:`default_agree_cells`; 0 (or at most ``nprobe``) turns it off. Ignored with ``nbound``; the
        GPU path probes twice ``nprobe`` instead (docs/gpu.md).
    rerank: on an index that keeps its documents' vectors (``keep_originals=True``), the candidates stage 3
        passes to the full-precision rerank, exact MaxSim on those float16 vectors, which takes stage 4's place.
        Unset, :meth:`default_rerank`, more where the search sizes itself (as stage 4's count); 0 turns the rerank
        off (stage 4 on decompressed tokens, as on an index without the vectors, which ignores this field).
    """

    nprobe: int | None = None
    centroid_score_threshold: float | None = None
    ndocs: int | None = None
    nbound: int | None = None
    bound_cells: int = 16
    rerank: int | None = None
    agree_cells: int | None = None

    @staticmethod
    def defaults(k: int) -> SearchParams:
        """PLAID's table (what :meth:`default_ndocs` scales for large indexes)."""
        for max_k, nprobe, thr, ndocs in _DEFAULTS:
            if k <= max_k:
                return SearchParams(nprobe, thr, ndocs)
        return SearchParams(4, 0.4, max(4 * k, 4096))

    @staticmethod
    def default_nprobe(k: int, n_docs: int) -> int:
        """PLAID's ``nprobe`` for ``k`` at every size (``n_docs``: kept for callers that size by the index).

        On large indexes stage 1 reaches further by agreement instead (:meth:`default_agree_cells`): it finds as
        much of the exact top 10 as a doubled probe with fewer candidates for stage 2 (docs/search.md).
        """
        return SearchParams.defaults(k).nprobe

    @staticmethod
    def default_agree_cells(k: int, n_docs: int) -> int:
        """:data:`AGREE_CELLS` for ``k <= 10`` beyond 62,500 documents (where :meth:`default_ndocs` starts to grow),
        else 0. K grows only with the square root of the tokens, so every cell holds more tokens as the corpus grows,
        and one cell per query token misses documents close to several query tokens (docs/search.md)."""
        return AGREE_CELLS if k <= _DEFAULTS[0][0] and n_docs > _NDOCS_SCALE_FROM else 0

    @staticmethod
    def default_ndocs(k: int, n_docs: int) -> int:
        """PLAID's ``ndocs`` for ``k``, times ``sqrt(n_docs / 62,500)`` when that is above 1, and 1.5x more for
        ``k <= 10`` beyond 500,000 documents.

        The default K grows with the square root of the corpus, so one probed cell, and the candidate
        list, grows with it too: keeping PLAID's fixed ``ndocs`` of them loses recall on large indexes
        (docs/search.md).
        """
        scale = max(1.0, math.sqrt(n_docs / _NDOCS_SCALE_FROM)) * (1.5 if _wider_ndocs(k, n_docs) else 1.0)
        return int(round(SearchParams.defaults(k).ndocs * scale / 32)) * 32

    @staticmethod
    def n_exact(k: int, ndocs: int) -> int:
        """Candidates stage 3 passes to the exact rerank: ``max(2 k, ndocs // 16)``.

        Stage 3 scores every token with its residual (un-normalised), so its order is nearly the exact one and a
        sixteenth of the candidates suffice where PLAID's centroid-only stage 3 needs a quarter (docs/search.md).
        When ``ndocs`` is at most this, stage 3 does not run: stage 2's survivors all go to the exact rerank.
        """
        return max(2 * k, ndocs // 16)

    @staticmethod
    def default_rerank(k: int, ndocs: int) -> int:
        """Candidates that reach the full-precision rerank when ``rerank`` is unset: :meth:`n_exact`'s, as many as
        stage 4 scores without the vectors, so that the rerank costs what stage 4 costs (reading a candidate's
        float16 rows and scoring them takes about as long as decompressing and scoring its codes).

        More find little more: on the real-text corpus, the raw top 10 that stage 2's ``ndocs`` candidates hold are
        all but a few thousandths among stage 3's best ``ndocs // 16`` (bench/RESULTS.md). Widen ``ndocs`` to come
        closer to raw exact MaxSim (docs/search.md)."""
        return SearchParams.n_exact(k, ndocs)

    @property
    def uses_originals(self) -> bool:
        """Whether the last stage scores stored vectors where a segment keeps them (``rerank`` is not 0)."""
        return self.rerank != 0

    def resolved(self, k: int, n_docs: int = 0) -> SearchParams:
        """A copy with ``nprobe`` and ``agree_cells`` (:meth:`default_nprobe`, :meth:`default_agree_cells` for an
        index of ``n_docs`` documents) and the threshold filled from :meth:`defaults` (never mutates ``self``).

        ``ndocs`` stays ``None`` when unset: the search sizes it for the index it searches. ``nbound`` stays
        ``None`` when unset: no bound.
        """
        d = SearchParams.defaults(k)
        p = SearchParams(
            SearchParams.default_nprobe(k, n_docs) if self.nprobe is None else self.nprobe,
            d.centroid_score_threshold if self.centroid_score_threshold is None else self.centroid_score_threshold,
            self.ndocs,
            self.nbound,
            self.bound_cells,
            self.rerank,
            SearchParams.default_agree_cells(k, n_docs) if self.agree_cells is None else self.agree_cells,
        )
        if int(p.nprobe) < 1:
            raise ValueError(f"nprobe must be >= 1, got {p.nprobe}")
        if int(p.bound_cells) < 0:
            raise ValueError(f"bound_cells must be >= 0, got {p.bound_cells}")
        if int(p.agree_cells) < 0:
            raise ValueError(f"agree_cells must be >= 0 (0: off), got {p.agree_cells}")
        for name in ("ndocs", "nbound"):
            if getattr(p, name) is not None and int(getattr(p, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(p, name)}")
        if p.rerank is not None and int(p.rerank) < 0:
            raise ValueError(f"rerank must be >= 0 (0: off), got {p.rerank}")
        if not np.isfinite(p.centroid_score_threshold):
            raise ValueError(f"centroid_score_threshold must be finite, got {p.centroid_score_threshold}")
        return p


@dataclass
class SearchResult:
    """Top-k per query, best first: ``ids [n_q, k]`` (external ids) and ``scores [n_q, k]`` float32.

    When the index holds fewer than ``k`` documents, ``k`` columns shrink to the number of documents.
    ``explain``: with ``search(..., explain=True)``, one dict per query: ``"params"`` (what the search used:
    ``nprobe``, ``agree_cells``, ``centroid_score_threshold``, ``ndocs`` and ``n_exact``, the candidates stages 2
    and 3 kept) and ``"stages"`` (per stage: ``stage``, ``candidates`` kept, ``ms``).
    """

    ids: np.ndarray
    scores: np.ndarray
    explain: list[dict] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def staged_search(
    Q: np.ndarray,
    k: int,
    params: SearchParams,
    data,
    backend,
    deleted: np.ndarray | None = None,
    trace: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One query through the four stages; returns ``(scores, slots)`` of length ``min(k, live docs)``.

    ``data``: one index's arrays, or a list of segments' arrays that share one codebook. Segments are
    searched as one index: every stage keeps its best candidates across all of them, and slot ``s`` of
    segment ``i`` is returned as ``s`` plus the documents of segments ``0..i-1``. ``deleted``: bool
    ``[n_docs]`` (a list of such or ``None`` with segments), slots that must never be returned; they are
    dropped right after the probe, so they never take a candidate's place in a later stage. ``trace``: a dict
    that receives the parameters used (``"params"``) and each stage's candidates and milliseconds (``"stages"``).
    """
    t0 = time.perf_counter() if trace is not None else 0.0
    segs = list(data) if isinstance(data, (list, tuple)) else [data]
    dels = [deleted] if not isinstance(data, (list, tuple)) else (deleted or [None] * len(segs))
    codec = segs[0].codec
    bases = np.zeros(len(segs) + 1, dtype=np.int64)
    np.cumsum([d.n_docs for d in segs], out=bases[1:])
    k = min(k, int(bases[-1]) - sum(int(np.count_nonzero(x)) for x in dels if x is not None))
    if k <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    tables3 = backend.refined_interaction_tables(Q, codec.table, score_bound(codec, Q))  # stage 0 may need them
    S, rows3, first_cells, stage2 = query_tables(codec, Q, backend, params, tables3)
    t0 = _mark(trace, "tables", None, t0)
    nprobe = params.nprobe
    while True:  # stage 1; widen the probe in the rare case it finds fewer than k documents
        if params.nbound is None:
            if first_cells is not None and nprobe == params.nprobe:
                cells = first_cells
            else:
                S = backend.centroid_scores(codec.centroids, Q) if S is None else S  # the fused pass keeps none
                cells = backend.probe_cells(S, probe_width(params, nprobe))
            bounds = None
            cands = [_probe(backend, cells, nprobe, d) for d in segs]
            cands = [c if x is None else c[~x[c]] for c, x in zip(cands, dels)]
        else:
            cells, floor = _cells_and_floor(backend, S, max(nprobe, int(params.bound_cells)))
            found = [backend.probe_bound(S, cells, nprobe, floor, d.ivf_offsets, d.ivf_docs, d.n_docs) for d in segs]
            found = [(c, b) if x is None else (c[~x[c]], b[~x[c]]) for (c, b), x in zip(found, dels)]
            cands, bounds = [c for c, _ in found], [b for _, b in found]
        if sum(map(len, cands)) >= k or nprobe >= codec.n_centroids:
            break
        nprobe *= 2
    n_probed = sum(map(len, cands))
    t0 = _mark(trace, "probe", n_probed, t0)
    originals = params.uses_originals and any(d.originals is not None for d in segs)
    # the search sizes stages 2-4 itself (SearchParams: "ndocs"); measured for k up to PLAID's first row only
    sized = params.ndocs is None and k <= _DEFAULTS[0][0]
    ndocs = SearchParams.default_ndocs(k, int(bases[-1])) if params.ndocs is None else params.ndocs
    n_exact = n_final(k, ndocs, params, originals)
    ndocs = max(ndocs, k)
    nbound = None if bounds is None else max(params.nbound, ndocs)
    if nbound is not None and sum(map(len, cands)) > nbound:  # the best by the bound (sorted: memory order)
        cands = [np.sort(c) for c in _best_across(backend, bounds, cands, bases, nbound)]
        t0 = _mark(trace, "bound", sum(map(len, cands)), t0)
    ranked = np.concatenate([c.astype(np.int64) + b for c, b in zip(cands, bases)])  # global positions
    deeper = None  # stage 2's scores of every candidate, kept while stage 3 may go on down its ranking
    if len(ranked) > ndocs:  # stage 2: centroid interaction with pruning
        if stage2 is None:  # once for every segment
            stage2 = backend.centroid_interaction_tables(S, params.centroid_score_threshold)
        approx = np.concatenate(
            [backend.centroid_interaction_from(stage2, d.codes, d.offsets, c) for d, c in zip(segs, cands)]
        )
        deeper = (approx, ranked) if sized else None
        ranked = backend.top_k(approx, ranked, ndocs)[1]
        t0 = _mark(trace, "stage2", len(ranked), t0)
    n_scored = len(ranked)
    stage3 = None  # stage 3's scores of the last stage's candidates, best first, where the last stage sizes itself
    if len(ranked) > n_exact:  # stage 3: every token with its residual, not normalised
        if rows3 is None:  # once for every segment
            rows3 = backend.refined_interaction_scores(tables3, S)

        def refined(ids: np.ndarray) -> np.ndarray:
            return _per_segment(ids, bases, segs, lambda d, c: backend.refined_interaction_from(
                tables3, rows3, d.codes, d.residuals, d.offsets, c))  # fmt: skip

        approx = refined(ranked)
        if sized and deeper is not None:  # go on down stage 2's ranking while it ranked one of stage 3's k best low
            ranked, approx = _deepen(backend, deeper, ranked, approx, refined, k, ndocs)
            if trace is not None:
                trace["stages"][-1]["candidates"] = len(ranked)  # stage 2 kept what stage 3 scored
        n_scored = len(ranked)
        if sized and not (originals and params.rerank is not None):
            stage3, ranked = backend.top_k(approx, ranked, FINAL_CAP * n_exact)
        else:
            ranked = backend.top_k(approx, ranked, n_exact)[1]
        t0 = _mark(trace, "stage3", len(ranked), t0)

    def last(ids: np.ndarray) -> np.ndarray:
        return _per_segment(ids, bases, segs, lambda d, c: final_scores(Q, d, c, backend, originals))

    if stage3 is not None and len(ranked) > n_exact:  # the best n_exact, then those stage 3 may have put too low
        scores = last(ranked[:n_exact])
        n = n_exact + _could_reach(scores, stage3, k)
        ranked = ranked[:n]
        if trace is not None:  # stage 3 passed on what the last stage scored
            trace["stages"][-1]["candidates"] = n
        scores = np.concatenate([scores, last(ranked[n_exact:])])
    else:
        scores = last(ranked)
    out = backend.top_k(scores, ranked, k)  # stage 4
    if trace is not None:
        _mark(trace, "rerank" if originals else "stage4", len(ranked), t0)
        agreed = int(cells.shape[1]) if params.nbound is None and cells.shape[1] > nprobe else 0  # at most K
        trace["params"] = _used(nprobe, params, n_scored, len(ranked), agreed)
    return out


def probe_width(params: SearchParams, nprobe: int) -> int:
    """Centroids stage 0 ranks per query token: ``nprobe``, or ``agree_cells`` where the agreement probe runs."""
    agree = int(params.agree_cells or 0) if params.nbound is None else 0
    return max(nprobe, agree)


def _probe(backend, cells: np.ndarray, nprobe: int, data) -> np.ndarray:
    """Stage 1 on one segment: the documents of each query token's first ``nprobe`` cells, and with more columns in
    ``cells``, those the cells of two query tokens list (``probe_agreed``)."""
    if cells.shape[1] > nprobe:
        return backend.probe_agreed(cells, nprobe, data.ivf_offsets, data.ivf_docs, data.n_docs)
    return backend.probe(cells, data.ivf_offsets, data.ivf_docs, data.n_docs)


def _per_segment(ids: np.ndarray, bases: np.ndarray, segs: list, score) -> np.ndarray:
    """``score(segment data, local slots)`` of global positions ``ids``, segment by segment, in ``ids``' order."""
    if len(segs) == 1:
        return score(segs[0], ids.astype(np.int32))  # slots fit: top_k keeps them below 2**32, the probe's int32
    which = np.searchsorted(bases, ids, side="right") - 1
    out = np.empty(len(ids), dtype=np.float32)
    for i, d in enumerate(segs):
        mine = which == i
        if mine.any():
            out[mine] = score(d, (ids[mine] - bases[i]).astype(np.int32))
    return out


def _deepen(backend, stage2: tuple, ranked: np.ndarray, approx: np.ndarray, refined, k: int, ndocs: int) -> tuple:
    """Stage 3 further down stage 2's ranking (``stage2``: its scores and the candidates), half an ``ndocs`` at a
    time, while one of the ``k`` best of stage 3's scores sits deep among the candidates it scored (stage 2 ranked a
    document of the top k low, :func:`_ranked_low`), up to :data:`DEEPEN_CAP` times ``ndocs``. Returns the
    candidates scored and their stage-3 scores, in stage 2's order."""
    pool = None
    while _ranked_low(approx, k):
        if pool is None:  # the ranking past ndocs, only for a query that needs it
            pool = backend.top_k(*stage2, DEEPEN_CAP * ndocs)[1][len(ranked) :]
        if not len(pool):
            break
        more, pool = pool[: max(1, ndocs // 2)], pool[max(1, ndocs // 2) :]
        ranked, approx = np.concatenate([ranked, more]), np.concatenate([approx, refined(more)])
    return ranked, approx


def _ranked_low(stage3: np.ndarray, k: int) -> bool:
    """Whether one of the ``k`` best of stage 3's scores (in stage 2's order) sits past the first :data:`DEEPER_FROM`
    of them, or stage 3 scored no more than ``k`` (nothing to judge stage 2's ranking by)."""
    if len(stage3) <= k:
        return True
    return int(np.argpartition(-stage3, k - 1)[:k].max()) >= int(len(stage3) * DEEPER_FROM)


def _could_reach(head: np.ndarray, stage3: np.ndarray, k: int) -> int:
    """How many candidates past the ``len(head)`` the last stage scored it takes too (``head``: its scores of stage 3's
    best; ``stage3``: stage 3's scores of all, best first): those whose stage-3 score, raised by the most a scored one's
    last-stage score exceeds its stage-3 score and by :data:`ERROR_SLACK` of the k-th best, reaches that k-th best."""
    n = len(head)
    kth = float(np.partition(head, n - k)[n - k])
    lift = float(np.max(head - stage3[:n])) + ERROR_SLACK * abs(kth)
    return int(np.count_nonzero(stage3[n:] + lift >= kth))


def _used(nprobe: int, params: SearchParams, ndocs: int, n_exact: int, agree_cells: int = 0) -> dict:
    """What ``explain`` reports as the parameters a search used (the probe widened, ``ndocs`` sized to the index)."""
    threshold = float(params.centroid_score_threshold)
    used = {"nprobe": int(nprobe), "agree_cells": int(agree_cells), "centroid_score_threshold": threshold}
    return used | {"ndocs": int(ndocs), "n_exact": int(n_exact)}


def _mark(trace: dict | None, stage: str, candidates: int | None, t0: float) -> float:
    """Record a stage's candidates and the milliseconds since ``t0`` in ``trace``; the time now."""
    if trace is None:
        return 0.0
    now = time.perf_counter()
    row = {"stage": stage, "ms": round((now - t0) * 1e3, 4)}
    if candidates is not None:
        row["candidates"] = int(candidates)
    trace.setdefault("stages", []).append(row)
    return now


def n_final(k: int, ndocs: int, params: SearchParams, originals: bool) -> int:
    """Candidates stage 3 keeps for the last stage: :meth:`SearchParams.n_exact`, or with the full-precision rerank
    (``originals``) ``rerank`` (:meth:`SearchParams.default_rerank` when unset), at least ``k``."""
    if not originals:
        return SearchParams.n_exact(k, ndocs)
    return max(k, SearchParams.default_rerank(k, ndocs) if params.rerank is None else int(params.rerank))


def final_scores(Q: np.ndarray, data, candidates: np.ndarray, backend, originals: bool) -> np.ndarray:
    """The last stage's scores of one segment's candidates: exact MaxSim on their stored float16 vectors (read from
    the file, their rows only) when ``originals`` and the segment keeps them, else on their decompressed tokens."""
    kept = data.originals if originals else None
    if kept is None:
        codec = data.codec
        tables = (codec.centroids, codec.table, codec.normalize)
        return backend.exact_maxsim(Q, data.codes, data.residuals, data.offsets, candidates, *tables)
    rows, local = kept.gather(data.offsets, candidates, backend)
    scores = backend.exact_maxsim_originals(Q, rows, local, np.arange(len(candidates)))
    if not np.isfinite(scores).all():  # a damaged file too large to be checksummed at open
        raise IndexFormatError(f"{kept.path}: non-finite values in the rows of a document")
    return scores


def score_bound(codec, Q: np.ndarray) -> np.ndarray:
    """A bound on each query token's centroid scores, ``|Q[q]|`` times the largest centroid norm with 5% to
    spare for the int8 query tokens of stage 0 (float64): what stage 3's int16 sums leave room for."""
    norms = np.sqrt(np.einsum("qd,qd->q", Q.astype(np.float64), Q.astype(np.float64)))
    return norms * codec.max_centroid_norm * 1.05


def query_tables(codec, Q: np.ndarray, backend, params: SearchParams, tables3) -> tuple:
    """Stage 0 and what the next stages take from it: ``(S, stage-3 score rows, cells, stage-2 table)``.

    ``S [K, q_len]``: one contiguous row of query-token scores per centroid. A backend with
    ``query_tables_int8`` (Numba on a CPU with AVX2 or VNNI; an optional kernel of the contract) scores int8 query
    tokens against the stored int8 centroids and gives stage 1's cells and stage 2's and 3's tables from the same
    pass (:mod:`kernels.numba_vnni`),
    keeping no float ``S`` (``None``: computed if a wider probe needs it). Otherwise ``S`` is the float product,
    the cells are probed from it (``None`` with ``nbound``, which probes its own), and stages 2 and 3 build
    their tables (``None`` here) if they run. ``tables3``: stage 3's :func:`refined_interaction_tables`.
    """
    fused = backend.query_tables_int8
    if fused is not None and params.nbound is None:
        u8, scales = codec.centroids_u8
        width = probe_width(params, params.nprobe)
        rows3, cells, stage2 = fused(u8, scales, Q, width, params.centroid_score_threshold, tables3)
        return None, rows3, cells, stage2
    S = backend.centroid_scores(codec.centroids, Q)
    cells = backend.probe_cells(S, probe_width(params, params.nprobe)) if params.nbound is None else None
    return S, None, cells, None


def _cells_and_floor(backend, S: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query token's ``nprobe`` best centroids ``[q_len, nprobe]`` and the next one's score ``[q_len]``
    (the most a document outside those cells can score for the token; when every centroid is among them,
    the lowest score, which no document falls below)."""
    ext = backend.probe_cells(S, nprobe + 1)
    if ext.shape[1] <= nprobe:
        return ext, S.min(axis=0)
    return np.ascontiguousarray(ext[:, :nprobe]), np.ascontiguousarray(S[ext[:, nprobe], np.arange(S.shape[1])])


def _best_across(backend, scores: list, cands: list, bases: np.ndarray, n: int) -> list:
    """The ``n`` best candidates over all segments (``scores[i]`` of ``cands[i]``), split back by segment."""
    if len(cands) == 1:
        return [backend.top_k(scores[0], cands[0], n)[1]]
    best = backend.top_k(np.concatenate(scores), np.concatenate([c + b for c, b in zip(cands, bases)]), n)[1]
    which = np.searchsorted(bases, best, side="right") - 1
    return [(best[which == i] - bases[i]).astype(c.dtype) for i, c in enumerate(cands)]


def brute_force(
    queries: list[np.ndarray],
    offsets: np.ndarray,
    token_chunk: Callable[[int, int], np.ndarray],
    k: int,
    backend,
    max_scores: int = 1 << 25,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact MaxSim top-k of every query over all documents.

    ``token_chunk(lo, hi)`` returns float32 embeddings of tokens ``lo:hi`` (raw or decompressed); the
    corpus is walked once in chunks of whole documents, each chunk scored against all queries in one
    product (``max_scores`` floats at most: 128 MiB) and reduced by ``backend.segment_max_sums``: faster than a
    product per query (docs/design-notes.md).
    """
    n_docs = len(offsets) - 1
    k = min(k, n_docs)
    if not queries:
        return []
    QT = np.ascontiguousarray(np.concatenate(queries).T)
    bounds = np.zeros(len(queries) + 1, dtype=np.int64)
    np.cumsum([len(q) for q in queries], out=bounds[1:])
    chunk_tokens = int(np.clip(max_scores // max(1, QT.shape[1]), 1024, 1 << 18))
    best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
    pending, d_from, d0 = [], 0, 0  # chunk scores not yet merged into best (a quarter of max_scores at most)
    while d0 < n_docs:
        d1 = int(np.searchsorted(offsets, offsets[d0] + chunk_tokens, side="right")) - 1
        d1 = min(max(d1, d0 + 1), n_docs)
        lo, hi = int(offsets[d0]), int(offsets[d1])
        local = np.ascontiguousarray(offsets[d0 : d1 + 1] - lo)
        pending.append(backend.segment_max_sums(token_chunk(lo, hi) @ QT, local, bounds))
        d0 = d1
        if (d0 - d_from) * len(queries) >= max_scores // 4 or d0 == n_docs:
            scores = np.concatenate(pending, axis=1)
            slots = np.arange(d_from, d0, dtype=np.int64)
            for i, (s, b) in enumerate(best):
                best[i] = backend.top_k(np.concatenate([s, scores[i]]), np.concatenate([b, slots]), k)
            pending, d_from = [], d0
    return best
