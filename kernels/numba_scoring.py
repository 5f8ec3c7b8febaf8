"""Numba CPU scoring kernels: centroid interaction (stage 2), MaxSim with un-normalised residuals through
lookup tables (stage 3) and exact MaxSim (stage 4).

Stage 0 (query x centroid scores) and stage 4's scores of decompressed tokens are :func:`numba_rows.row_scores`
(register-blocked products, faster than OpenBLAS on one thread for these shapes).

Same contracts as :mod:`colbert_index.kernels.reference`. Candidates are split into blocks so each
thread reuses one scratch buffer; ``prange`` runs over blocks of documents.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_codec import decompress_range
from .numba_prefetch import prefetch, prefetch_candidate
from .numba_rows import (
    _NO_TOKEN,
    _TINY,
    AHEAD_TOKENS,
    byte_table_int8,
    doc_max16,
    doc_max_int8,
    int16_room,
    max_into,
    row_scores,
    score_rows_int16,
)

_BLOCK = 32  # documents per parallel work item
_EXACT_BLOCK_TOKENS = 4096  # decompressed tokens per row_scores call in stage 4


@njit(cache=True, nogil=True)
def centroid_scores(centroids, Q):
    """Stage 0 (``reference.centroid_scores``): ``[K, q_len]``, one row of query-token scores per centroid.
    ``centroids`` must be float32 (the codec's always are); ``Q`` any float dtype and layout."""
    out = np.empty((centroids.shape[0], Q.shape[0]), dtype=np.float32)
    row_scores(np.ascontiguousarray(centroids), Q, out)
    return out


def centroid_interaction(centroid_scores, codes, offsets, candidates, threshold):
    """Stage 2 (``reference.centroid_interaction`` with ``quantised=True``): the kept centroids' score rows
    rounded to int8 (:func:`kept_rows_int8`), maxima over a document's tokens in int8 (:func:`doc_max_int8`),
    summed exactly and times the step: within ``q_len`` half steps of the float score, close enough that
    stage 2 keeps nearly the same candidates (docs/design-notes.md)."""
    return _interaction(*kept_rows_int8(centroid_scores, threshold), codes, offsets, candidates)


def centroid_interaction_tables(centroid_scores, threshold):
    """Stage 2's table for one query (:func:`kept_rows_int8`): built once, not once per segment."""
    return kept_rows_int8(centroid_scores, threshold)


def centroid_interaction_from(tables, codes, offsets, candidates):
    """:func:`centroid_interaction` from :func:`centroid_interaction_tables`' result (or the third of
    ``numba_vnni.query_tables``')."""
    return _interaction(*tables, codes, offsets, candidates)


def kept_rows_int8(centroid_scores, threshold):
    """``(remap [K] uint16, rows [q_pad // 32, kept + 1, 32] int8, step float32)``: ``rows[j, remap[c]]`` is
    centroid ``c``'s scores for query tokens ``32 j ..`` over ``step`` rounded (``reference.kept_rows_int8``'s
    arithmetic: no fastmath here) when some query token scores it ``>= threshold``, the last row (all -128)
    when it is pruned; padding 0. ``step`` is the largest kept score's magnitude over 127. Few centroids pass
    the threshold, so the table stays in cache where the float rows would not; the remap is uint16 (uint32 past
    65536 centroids) and the rows 32 bytes wide for the same reason (docs/design-notes.md)."""
    K = centroid_scores.shape[0]
    remap = np.empty(K, dtype=np.uint16 if K <= 65536 else np.uint32)
    return (remap, *_fill_kept_rows(centroid_scores, np.float32(threshold), remap))


@njit(cache=True, nogil=True)
def _fill_kept_rows(centroid_scores, thr, remap):
    """:func:`kept_rows_int8` into ``remap``; returns ``(rows, step)``."""
    K, q_len = centroid_scores.shape
    kept = np.empty(K, dtype=np.int64)
    n = 0
    peak = np.float32(0.0)
    for c in range(K):
        k = False
        for q in range(q_len):  # an OR of comparisons vectorises; a running max does not
            k |= centroid_scores[c, q] >= thr
        if k:
            kept[n] = c
            n += 1
            for q in range(q_len):
                peak = max(peak, abs(centroid_scores[c, q]))
    return int8_rows(centroid_scores, kept, kept[:n], peak, remap)


@njit(cache=True, nogil=True)
def int8_rows(src, src_rows, kept, peak, remap):
    """Stage 2's table from the kept centroids' float score rows: ``src[src_rows[j]]`` is the row of centroid
    ``kept[j]`` (ascending ids), ``peak`` their largest magnitude. Fills ``remap`` and returns ``(rows, step)``
    (:func:`kept_rows_int8`)."""
    n, q_len = kept.shape[0], src.shape[1]
    step = peak / np.float32(127.0) if peak >= _TINY else np.float32(1.0)
    remap[:] = n
    rows = np.zeros(((q_len + 31) // 32, n + 1, 32), dtype=np.int8)
    rows[:, n, :] = -128
    for j in range(n):
        remap[kept[j]] = j
        r = src_rows[j]
        for q in range(q_len):
            rows[q // 32, j, q % 32] = np.int8(
                min(np.float32(127.0), max(np.float32(-127.0), np.rint(src[r, q] / step)))
            )
    return rows, step


@njit(cache=True, nogil=True, parallel=True)
def _interaction(remap, rows, step, codes, offsets, candidates):
    n = candidates.shape[0]
    out = np.zeros(n, dtype=np.float32)
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            prefetch_candidate(offsets, candidates, i, codes, 1)
            d = candidates[i]
            total = 0
            for j in range(rows.shape[0]):  # a document with no kept token: _NO_TOKEN in every block
                total += doc_max_int8(rows, j, remap, codes, offsets[d], offsets[d + 1])
            if total > _NO_TOKEN // 2:
                out[i] = np.float32(total) * step
    return out


def refined_interaction(Q, centroid_scores, codes, packed, offsets, candidates, table):
    """Stage 3 (``reference.refined_interaction`` with ``quantised=True``): each token's centroid score plus its
    residual against every query token, summed in int16 from int8 lookup tables (:func:`byte_table_int8`,
    :func:`score_rows_int16`, :func:`doc_max16`), so no row of ``centroids`` is read and no token decompressed.
    Dearer per document than PLAID's centroid-only stage 3, paid back by a smaller exact rerank (docs/search.md)."""
    bound = np.abs(centroid_scores).max(axis=0) if centroid_scores.size else np.zeros(centroid_scores.shape[1])
    tables = refined_interaction_tables(Q, table, bound.astype(np.float64))
    rows = refined_interaction_scores(tables, centroid_scores)
    return refined_interaction_from(tables, rows, codes, packed, offsets, candidates)


def refined_interaction_tables(Q, table, score_bound):
    """Stage 3's tables for one query, ``(lut, scale, room)`` (:func:`byte_table_int8`, 32 columns at a time for
    :func:`doc_max16`; ``room``: :func:`int16_room`), built once per query, not once per segment.
    ``score_bound[q]`` bounds ``|centroid score|`` for query token ``q`` (float64, ``len(Q)``)."""
    q_pad = (Q.shape[0] + 31) // 32 * 32
    bound = np.zeros(q_pad, dtype=np.float64)
    bound[: Q.shape[0]] = score_bound
    lut, scale = byte_table_int8(Q, table, q_pad, bound)
    return lut, scale, int16_room(table.shape[0])[1]


def refined_interaction_scores(tables, centroid_scores):
    """What stage 3 reads of the centroid scores: their int16 rows in the tables' units (:func:`score_rows_int16`;
    ``numba_vnni.query_tables`` writes them in its pass)."""
    return score_rows_int16(centroid_scores, tables[1], tables[2])


def refined_interaction_from(tables, score_rows, codes, packed, offsets, candidates):
    """:func:`refined_interaction` from :func:`refined_interaction_tables`' and :func:`refined_interaction_scores`'
    results."""
    return _refined(tables[0], tables[1], score_rows, codes, packed, offsets, candidates)


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def _refined(lut, scale, score_rows, codes, packed, offsets, candidates):
    K, q_pad = score_rows.shape
    nbytes = packed.shape[1]
    flat_lut = lut.reshape(lut.size)
    flat_scores = score_rows.reshape(K * q_pad)  # 1-D views for the intrinsic and the prefetches
    flat_packed = packed.reshape(packed.shape[0] * nbytes)
    n = candidates.shape[0]
    out = np.zeros(n, dtype=np.float32)
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        best = np.empty(32, dtype=np.float32)
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            prefetch_candidate(offsets, candidates, i, codes, 1)
            prefetch_candidate(offsets, candidates, i, flat_packed, nbytes)
            if i + 1 < n:  # the score rows of the next candidate's first tokens (doc_max16 prefetches the rest)
                nlo, nhi = offsets[candidates[i + 1]], offsets[candidates[i + 1] + 1]
                for u in range(nlo, min(nhi, nlo + AHEAD_TOKENS)):
                    prefetch(flat_scores, codes[u] * q_pad)
            d = candidates[i]
            lo, hi = offsets[d], offsets[d + 1]
            if hi == lo:
                continue
            total = np.float32(0.0)
            for j in range(0, q_pad, 32):  # padding columns add 0: scale 1, table and score rows 0
                doc_max16(best, flat_lut, scale, flat_scores, codes, flat_packed, lo, hi, j)
                for q in range(32):
                    total += best[q]
            out[i] = total
    return out


def exact_maxsim(Q, codes, packed, offsets, candidates, centroids, table, normalize):
    """Stage 4: decompress a block of candidates (Numba), score it (:func:`numba_rows.row_scores`), max per doc.

    Blocks of ~_EXACT_BLOCK_TOKENS tokens keep the decompressed tokens and their scores in cache.
    """
    candidates = np.asarray(candidates)
    n = len(candidates)
    out = np.zeros(n, dtype=np.float32)
    if n == 0:
        return out
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    lengths = offsets[candidates + 1] - offsets[candidates]
    local = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=local[1:])
    size = min(int(local[-1]), _EXACT_BLOCK_TOKENS + int(lengths.max()))
    buf = np.empty((size, Q.shape[1]), np.float32)
    scores = np.empty((size, Q.shape[0]), np.float32)
    i = 0
    while i < n:
        j = min(n, max(i + 1, int(np.searchsorted(local, local[i] + _EXACT_BLOCK_TOKENS, side="right")) - 1))
        m = int(local[j] - local[i])
        if m:
            rows = local[i : j + 1] - local[i]  # where each document's tokens go in buf
            decompress_docs(codes, packed, offsets, candidates[i:j], rows, centroids, table, normalize, buf)
            row_scores(buf[:m], Q, scores)
            out[i:j] = segment_max_sum(scores[:m], rows)
        i = j
    return out


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def decompress_docs(codes, packed, offsets, candidates, rows, centroids, table, normalize, out):
    """The tokens of ``candidates[i]`` into ``out[rows[i] : rows[i + 1]]`` (one document after another)."""
    n = candidates.shape[0]
    nbytes = packed.shape[1]
    flat = packed.reshape(packed.shape[0] * nbytes)  # 1-D view for the prefetch
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            prefetch_candidate(offsets, candidates, i, flat, nbytes)
            d = candidates[i]
            decompress_range(codes, packed, offsets[d], offsets[d + 1], centroids, table, normalize, out, rows[i])


def segment_max_sum(token_scores, offsets):
    """``[n_tokens, q_len]`` token scores + doc ``offsets`` (relative) -> per-doc sum of per-query maxima."""
    return segment_max_sums(token_scores, offsets, np.array([0, token_scores.shape[1]], dtype=np.int64))[0]


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def segment_max_sums(token_scores, offsets, col_bounds):
    """Many queries at once: ``[n_tokens, sum of q_len]`` scores, columns ``col_bounds[i]:col_bounds[i + 1]``
    for query ``i`` -> ``[n_queries, n_docs]`` per-doc sums of each query's per-token maxima."""
    n_docs = offsets.shape[0] - 1
    n_cols = token_scores.shape[1]
    n_q = col_bounds.shape[0] - 1
    out = np.zeros((n_q, n_docs), dtype=np.float32)
    for blk in prange((n_docs + _BLOCK - 1) // _BLOCK):
        best = np.empty((2, n_cols), dtype=np.float32)  # the running max alternates between rows (max_into)
        for d in range(blk * _BLOCK, min(n_docs, (blk + 1) * _BLOCK)):
            lo, hi = offsets[d], offsets[d + 1]
            if hi == lo:
                continue
            for j in range(n_cols):
                best[0, j] = token_scores[lo, j]
            cur = 0
            for t in range(lo + 1, hi):  # whole rows: contiguous (a column at a time is much slower)
                max_into(best, 1 - cur, cur, token_scores, t)
                cur = 1 - cur
            for i in range(n_q):
                s = np.float32(0.0)
                for j in range(col_bounds[i], col_bounds[i + 1]):
                    s += best[cur, j]
                out[i, d] = s
    return out
