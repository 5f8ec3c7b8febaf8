"""Plain numpy reference implementations of every kernel.

These are the ground truth the Numba (and later Triton) kernels are tested against, and the
``numpy`` backend of :class:`colbert_index.Index`. They favour clarity over speed.
"""

from __future__ import annotations

import os

import numpy as np


def maxsim(Q: np.ndarray, docs: list[np.ndarray]) -> np.ndarray:
    """Late-interaction score of one query against raw float documents.

    ``score(d) = sum_i max_j Q[i] . d[j]``; an empty document scores 0.

    >>> Q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    >>> docs = [np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([[0.0, 2.0]])]
    >>> maxsim(Q, docs).tolist()
    [1.5, 2.0]
    """
    Q = np.asarray(Q, dtype=np.float32)
    out = np.zeros(len(docs), dtype=np.float32)
    for i, d in enumerate(docs):
        d = np.asarray(d, dtype=np.float32)
        if len(d):
            out[i] = (Q @ d.T).max(axis=1).sum()
    return out


def pack_bits(buckets: np.ndarray, nbits: int) -> np.ndarray:
    """Pack ``[n, dim]`` bucket indices (< 2**nbits) into ``[n, dim*nbits//8]`` bytes, MSB first."""
    n, dim = buckets.shape
    per_byte = 8 // nbits
    b = buckets.astype(np.uint8).reshape(n, dim // per_byte, per_byte)
    shifts = (8 - nbits * (np.arange(per_byte) + 1)).astype(np.uint8)
    return np.bitwise_or.reduce(b << shifts, axis=2).astype(np.uint8)


def unpack_bits(packed: np.ndarray, nbits: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``[n, nbytes]`` -> ``[n, nbytes*8//nbits]`` uint8 bucket indices."""
    n, nbytes = packed.shape
    per_byte = 8 // nbits
    shifts = (8 - nbits * (np.arange(per_byte) + 1)).astype(np.uint8)
    mask = np.uint8((1 << nbits) - 1)
    return ((packed[:, :, None] >> shifts) & mask).reshape(n, nbytes * per_byte)


def compress_residuals(residuals: np.ndarray, cutoffs: np.ndarray, nbits: int) -> np.ndarray:
    """Bucketise ``[n, dim]`` residuals with per-dimension ``cutoffs[dim, 2**nbits-1]`` and pack them."""
    n, dim = residuals.shape
    buckets = np.zeros((n, dim), dtype=np.uint8)
    for j in range(dim):
        buckets[:, j] = np.searchsorted(cutoffs[j], residuals[:, j], side="right")
    return pack_bits(buckets, nbits)


def compress_tokens(
    tokens: np.ndarray, codes: np.ndarray, centroids: np.ndarray, cutoffs: np.ndarray, weights: np.ndarray, nbits: int
) -> tuple[np.ndarray, int]:
    """Each token's residual against its centroid (``tokens - centroids[codes]``, float32), bucketised and packed
    (:func:`compress_residuals`), and the number of residual coordinates beyond the outermost bucket weights
    (below ``weights[:, 0]`` or above ``weights[:, -1]``: the codec's drift figure)."""
    residuals = np.asarray(tokens, dtype=np.float32) - centroids[np.asarray(codes, dtype=np.int64)]
    outside = int(np.count_nonzero((residuals < weights[:, 0]) | (residuals > weights[:, -1])))
    return compress_residuals(residuals, cutoffs, nbits), outside


def decode_table(bucket_weights: np.ndarray, nbits: int) -> np.ndarray:
    """``[nbytes, 256, 8 // nbits]`` float32: the residual values a packed byte decodes to.

    ``table[b, v, k]`` is the residual of dimension ``b * (8 // nbits) + k`` when byte ``b`` is ``v``.
    Kernels decode a byte with one row lookup instead of shifting and masking every dimension.
    """
    dim = bucket_weights.shape[0]
    per_byte = 8 // nbits
    buckets = unpack_bits(np.arange(256, dtype=np.uint8)[:, None], nbits)  # [256, per_byte]
    dims = np.arange(dim).reshape(dim // per_byte, 1, per_byte)
    return np.ascontiguousarray(bucket_weights[dims, buckets[None]], dtype=np.float32)


def decompress(
    codes: np.ndarray, packed: np.ndarray, centroids: np.ndarray, table: np.ndarray, normalize: bool
) -> np.ndarray:
    """``[n]`` codes + ``[n, nbytes]`` packed residuals -> ``[n, dim]`` float32 vectors.

    ``table`` comes from :func:`decode_table`. ``normalize`` rescales each vector to unit L2 norm
    (for corpora of unit vectors, as ColBERT's).
    """
    out = (centroids[np.asarray(codes, dtype=np.int64)] + residuals_of(packed, table)).astype(np.float32)
    if normalize and len(out):
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def residuals_of(packed: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``[n, nbytes]`` packed residuals -> ``[n, dim]`` float32 residual vectors (no centroid)."""
    packed = np.asarray(packed)
    nbytes, _, per_byte = table.shape
    return table[np.arange(packed.shape[1])[None, :], packed].reshape(len(packed), nbytes * per_byte)


def centroid_scores(centroids: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """``[K, q_len]`` scores of every centroid against every query token (row per centroid)."""
    return np.ascontiguousarray(centroids @ Q.T, dtype=np.float32)


def quantize_query(Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Query tokens rounded to int8, one scale each: ``(int8 [q_len, dim], scale float32 [q_len])`` with
    ``scale = max |Q[q]| / 127`` (1 for an all-zero token) and values ``rint(Q / scale)`` clipped to +-127."""
    Q = np.asarray(Q, dtype=np.float32)
    peak = np.abs(Q).max(axis=1) if Q.size else np.zeros(len(Q), np.float32)
    scale = np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    return np.clip(np.rint(Q / scale[:, None]), -127, 127).astype(np.int8), scale


def centroid_scores_int8(centroids_u8: np.ndarray, scales: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Stage 0 in int8: ``[K, q_len]`` exact integer products of the stored int8 centroids (``centroids_u8``
    minus 128: ``codec.ResidualCodec.centroids_u8``) with :func:`quantize_query`'s values, as float32, times the
    query token's scale, times the centroid's ``scales`` (float32, in that order)."""
    qi, sq = quantize_query(Q)
    c = centroids_u8[:, : qi.shape[1]].astype(np.int64) - 128
    dots = (c @ qi.T.astype(np.int64)).astype(np.float32)
    return (dots * sq[None, :]) * np.asarray(scales, np.float32)[:, None]


def centroid_interaction(
    centroid_scores: np.ndarray,
    codes: np.ndarray,
    offsets: np.ndarray,
    candidates: np.ndarray,
    threshold: float,
    quantised: bool = False,
) -> np.ndarray:
    """Approximate MaxSim of each candidate using only its tokens' centroids.

    ``centroid_scores`` is ``[K, q_len]`` (query token scores of every centroid). A doc token whose
    centroid scores below ``threshold`` for every query token is pruned; a document left with no
    token scores 0. ``threshold=-inf`` disables pruning. ``quantised``: the kept rows rounded to int8
    (:func:`kept_rows_int8`), the maxima summed exactly and times the step, as the CPU kernel computes it
    (within ``q_len / 2`` steps of the float score).
    """
    keep = centroid_scores.max(axis=1) >= np.float32(threshold)  # compared in float32, as the kernels do
    table, step = centroid_scores, np.float32(1.0)
    if quantised:
        remap, rows, step = kept_rows_int8(centroid_scores, threshold)
        table = rows[:, remap].transpose(1, 0, 2).reshape(len(remap), -1)  # [K, q_pad]
        table = table[:, : centroid_scores.shape[1]].astype(np.int64)
    out = np.zeros(len(candidates), dtype=np.float32)
    for i, d in enumerate(candidates):
        c = codes[offsets[d] : offsets[d + 1]].astype(np.int64)
        c = c[keep[c]]
        if len(c):
            best = table[c].max(axis=0).sum()
            out[i] = np.float32(best) * step if quantised else best
    return out


def centroid_interaction_tables(centroid_scores: np.ndarray, threshold: float) -> tuple:
    """What :func:`centroid_interaction_from` needs of one query: here the float scores and the threshold (the
    Numba backend's are its int8 rows, :func:`kept_rows_int8`)."""
    return centroid_scores, threshold


def centroid_interaction_from(tables: tuple, codes, offsets, candidates) -> np.ndarray:
    """:func:`centroid_interaction` from :func:`centroid_interaction_tables`' result."""
    centroid_scores, threshold = tables
    return centroid_interaction(centroid_scores, codes, offsets, candidates, threshold)


def kept_rows_int8(centroid_scores: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """Stage 2's int8 table: ``(remap [K] uint16, rows [q_pad // 32, kept + 1, 32] int8, step float32)``.

    Kept centroids (some query token scores ``>= threshold``) are numbered from 0 in id order; ``rows[j, remap[c]]``
    holds centroid ``c``'s scores for query tokens ``32 j .. 32 j + 31`` over ``step``, rounded to nearest (float32
    division) and clipped to +-127, padded with 0 past ``q_len``; pruned centroids map to the last row, all -128.
    ``remap`` is uint32 when ``K > 65536`` (the codes' own dtype rule). ``step`` is the largest magnitude among the
    kept rows' scores over 127 (float32), 1 when that is 0 or subnormal.
    """
    S = np.asarray(centroid_scores, dtype=np.float32)
    K, q_len = S.shape
    keep = S.max(axis=1) >= np.float32(threshold) if q_len else np.zeros(K, bool)
    n = int(keep.sum())
    remap = np.full(K, n, dtype=np.uint16 if K <= 65536 else np.uint32)
    remap[keep] = np.arange(n)
    peak = np.abs(S[keep]).max() if keep.any() and q_len else np.float32(0.0)
    step = np.float32(peak) / np.float32(127.0) if peak >= np.finfo(np.float32).tiny else np.float32(1.0)
    q_pad = (q_len + 31) // 32 * 32
    flat = np.zeros((n + 1, q_pad), dtype=np.int8)
    flat[:n, :q_len] = np.clip(np.rint(S[keep] / step), -127, 127).astype(np.int8)
    flat[n] = -128
    rows = np.ascontiguousarray(flat.reshape(n + 1, q_pad // 32, 32).transpose(1, 0, 2))
    return remap, rows, np.float32(step)


def int16_room(nbytes: int) -> tuple[int, int]:
    """``(limit, room)``: the largest table entry for ``nbytes`` residual bytes, ``min(127, 32767 // nbytes)``,
    and what their sum leaves of int16 for a centroid score, ``32767 - nbytes * limit``."""
    limit = min(127, max(1, 32767 // max(1, nbytes)))
    return limit, max(1, 32767 - nbytes * limit)


def byte_table_int8(
    Q: np.ndarray, table: np.ndarray, score_bound: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """What each byte of a packed residual adds to each query token, rounded to int8 per query token.

    Returns ``(lut [nbytes * 256, q_len] int8, scale [q_len] float32)``. Row ``256 b + v`` is for value ``v`` of
    byte ``b``: the dot products of the dimensions its high half encodes with their bucket weights, plus the
    same for its low half (each half summed first); ``lut * scale`` approximates it, the largest of a column
    mapping to at most ``limit`` (:func:`int16_room`) so that a token's ``nbytes`` rows sum exactly in int16.
    ``score_bound [q_len]`` (float64, optional) bounds the centroid scores of query token ``q``; the step is
    then at least ``score_bound[q] / room``, so that a score in the same units fits beside the rows' sum
    (:func:`score_rows_int16`). Computed in float64, where products of float32 values are exact and each half's
    one or two products (4 or 2 bits) and the halves' sum are rounded in a fixed order, so the CPU kernel's
    table is this one to the bit however its compiler fuses the operations.
    """
    nbytes, _, per_byte = table.shape
    half = per_byte // 2
    Q = np.asarray(Q, dtype=np.float32).astype(np.float64)
    weights = table.astype(np.float64)
    halves = np.zeros((nbytes, 2, 16, len(Q)))
    for b in range(nbytes):
        for k in range(half):
            halves[b, 0] += weights[b, np.arange(16) << 4, k][:, None] * Q[:, b * per_byte + k][None, :]
            halves[b, 1] += weights[b, np.arange(16), half + k][:, None] * Q[:, b * per_byte + half + k][None, :]
    v = np.arange(256)
    lut = (halves[:, 0, v >> 4] + halves[:, 1, v & 15]).reshape(nbytes * 256, len(Q))
    limit, room = int16_room(nbytes)
    peak = np.abs(lut).max(axis=0) if len(lut) else np.zeros(len(Q))
    bound = np.zeros(len(Q)) if score_bound is None else np.asarray(score_bound, np.float64)[: len(Q)] / room
    step = np.maximum(peak / limit, bound).astype(np.float32)
    used = step >= np.finfo(np.float32).tiny  # a column whose step underflows float32 is all zeros, scale 1
    scale = np.where(used, step, np.float32(1.0)).astype(np.float32)
    ints = np.clip(np.rint(lut * (1.0 / scale.astype(np.float64))), -limit, limit) * used
    return ints.astype(np.int8), scale


def score_rows_int16(centroid_scores: np.ndarray, scale: np.ndarray, room: int) -> np.ndarray:
    """Stage 3's centroid scores in the lookup tables' units: ``rint(S / scale)`` (float32 division) clipped to
    ``+-room``, int16 ``[K, q_len]``."""
    S = np.asarray(centroid_scores, dtype=np.float32)
    return np.clip(np.rint(S / scale[None, : S.shape[1]]), -room, room).astype(np.int16)


def refined_interaction(
    Q: np.ndarray,
    centroid_scores: np.ndarray,
    codes: np.ndarray,
    packed: np.ndarray,
    offsets: np.ndarray,
    candidates: np.ndarray,
    table: np.ndarray,
    quantised: bool = False,
) -> np.ndarray:
    """MaxSim against the decompressed tokens without normalising them: centroid + residual.

    A doc token with centroid ``c`` and residual ``r`` scores ``centroid_scores[c, q] + Q[q] . r``, that is
    ``Q[q] . (centroid + residual)``: :func:`exact_maxsim` with ``normalize=False`` (how the device path
    computes it). For unit vectors the norms it skips are within a few percent of 1, so it ranks nearly as
    :func:`exact_maxsim` does. ``quantised``: ``Q[q] . r`` from :func:`byte_table_int8`'s rows and the
    centroid score from :func:`score_rows_int16`, summed exactly in int16, the maximum times ``scale[q]``: what
    the CPU kernel computes without reading a centroid row (within ~0.02 of the float score per document at dim
    64, 2 bits; the exact rerank that follows is unaffected).
    """
    if quantised:
        bound = np.abs(centroid_scores).max(axis=0) if centroid_scores.size else np.zeros(len(Q))
        lut, scale = byte_table_int8(Q, table, bound.astype(np.float64))
        rows16 = score_rows_int16(centroid_scores, scale, int16_room(packed.shape[1])[1]).astype(np.int32)
        lut = lut.astype(np.int32)
    out = np.zeros(len(candidates), dtype=np.float32)
    for i, d in enumerate(candidates):
        lo, hi = offsets[d], offsets[d + 1]
        if hi == lo:
            continue
        c = codes[lo:hi].astype(np.int64)
        if quantised:
            rows = np.arange(packed.shape[1]) * 256 + packed[lo:hi].astype(np.int64)
            sums = rows16[c] + lut[rows].sum(axis=1)  # [n_tokens, q_len], within int16
            out[i] = (sums.max(axis=0).astype(np.float32) * scale).sum()
        else:
            scores = centroid_scores[c] + residuals_of(packed[lo:hi], table) @ Q.T
            out[i] = scores.max(axis=0).sum()
    return out


def refined_interaction_tables(Q: np.ndarray, table: np.ndarray, score_bound: np.ndarray) -> tuple:
    """What stage 3 needs of one query, computed once however many segments it scores: here ``(Q, table)``
    themselves (the Numba backend's are its int8 tables, :func:`byte_table_int8`, scaled for ``score_bound``)."""
    return Q, table


def refined_interaction_scores(tables: tuple, centroid_scores: np.ndarray) -> np.ndarray:
    """What stage 3 reads of the centroid scores: here the float scores (the Numba backend's: their int16 rows,
    :func:`score_rows_int16`)."""
    return centroid_scores


def refined_interaction_from(
    tables: tuple,
    score_rows: np.ndarray,
    codes: np.ndarray,
    packed: np.ndarray,
    offsets: np.ndarray,
    candidates: np.ndarray,
) -> np.ndarray:
    """:func:`refined_interaction` from :func:`refined_interaction_tables`' and :func:`refined_interaction_scores`'
    results (here the float centroid scores)."""
    Q, table = tables
    return refined_interaction(Q, score_rows, codes, packed, offsets, candidates, table)


def exact_maxsim(
    Q: np.ndarray,
    codes: np.ndarray,
    packed: np.ndarray,
    offsets: np.ndarray,
    candidates: np.ndarray,
    centroids: np.ndarray,
    table: np.ndarray,
    normalize: bool,
) -> np.ndarray:
    """Exact MaxSim of ``Q [q_len, dim]`` against the decompressed candidate documents."""
    out = np.zeros(len(candidates), dtype=np.float32)
    for i, d in enumerate(candidates):
        lo, hi = offsets[d], offsets[d + 1]
        if hi > lo:
            D = decompress(codes[lo:hi], packed[lo:hi], centroids, table, normalize)
            out[i] = (Q @ D.T).max(axis=1).sum()
    return out


def exact_maxsim_originals(
    Q: np.ndarray, originals: np.ndarray, offsets: np.ndarray, candidates: np.ndarray
) -> np.ndarray:
    """Exact MaxSim of ``Q [q_len, dim]`` against the candidate documents' stored vectors: their rows of
    ``originals [n, dim]`` (float16), summed in float32. The full-precision rerank (no normalisation: the vectors
    as they were given)."""
    out = np.zeros(len(candidates), dtype=np.float32)
    for i, d in enumerate(candidates):
        lo, hi = offsets[d], offsets[d + 1]
        if hi > lo:
            D = np.asarray(originals[lo:hi]).astype(np.float32)
            out[i] = (Q @ D.T).max(axis=1).sum()
    return out


def read_rows(fd: int, data_offset: int, offsets: np.ndarray, candidates: np.ndarray, out: np.ndarray) -> int:
    """Read the rows of each candidate document from the open file ``fd`` into ``out``, one document after
    another: row ``r`` of the file is ``out.shape[1] * out.itemsize`` bytes at ``data_offset + r * that``.
    ``out`` (C-contiguous) must hold the candidates' rows. Returns the rows read, or -1 when the file ends first."""
    row_bytes = out.shape[1] * out.itemsize
    total = sum(int(offsets[d + 1] - offsets[d]) for d in candidates)
    if not out.flags.c_contiguous or out.shape[0] < total:
        raise ValueError(f"read_rows: out must be C-contiguous with >= {total} rows, got {out.shape}")
    view = memoryview(out.reshape(-1).view(np.uint8))
    if hasattr(os, "posix_fadvise"):  # every document's rows announced first: cold ones are then read in parallel
        for d in candidates:
            start, n = data_offset + int(offsets[d]) * row_bytes, int(offsets[d + 1] - offsets[d]) * row_bytes
            if n:  # a length of 0 would mean "to the end of the file"
                os.posix_fadvise(fd, start, n, os.POSIX_FADV_WILLNEED)
    pos = 0
    for d in candidates:
        want, at = int(offsets[d + 1] - offsets[d]) * row_bytes, data_offset + int(offsets[d]) * row_bytes
        while want > 0:
            got = os.preadv(fd, [view[pos : pos + want]], at)
            if got <= 0:
                return -1
            pos, at, want = pos + got, at + got, want - got
    return pos // row_bytes


def top_k(scores: np.ndarray, slots: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (score desc, slot asc) of parallel arrays, sorted; ties at the cut go to the lower slots."""
    if k < 1:
        raise ValueError(f"top_k: k must be >= 1, got {k}")
    scores, slots = np.asarray(scores, dtype=np.float32), np.asarray(slots)
    if len(scores) > k:
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        above = np.flatnonzero(scores > kth)
        tied = np.flatnonzero(scores == kth)
        part = np.concatenate([above, tied[np.argsort(slots[tied], kind="stable")[: k - len(above)]]])
        scores, slots = scores[part], slots[part]
    order = np.lexsort((slots, -scores))
    return scores[order], slots[order]


def build_ivf(codes: np.ndarray, offsets: np.ndarray, n_centroids: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverted file as CSR: for each centroid the sorted unique doc slots holding one of its tokens.

    Returns ``(ivf_offsets[K+1] int64, ivf_docs int32)``.
    """
    doc_of_token = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    pairs = np.unique(codes.astype(np.int64) * (len(offsets) - 1) + doc_of_token)
    cents, docs = np.divmod(pairs, max(len(offsets) - 1, 1))
    ivf_offsets = np.zeros(n_centroids + 1, dtype=np.int64)
    np.cumsum(np.bincount(cents, minlength=n_centroids), out=ivf_offsets[1:])
    return ivf_offsets, docs.astype(np.int32)


def probe_cells(centroid_scores: np.ndarray, nprobe: int) -> np.ndarray:
    """``[q_len, min(nprobe, K)]`` int32: each query token's ``nprobe`` best centroids, best first.

    Ties are broken towards the lower centroid id. Cell ``(c, q)`` is probed when ``c`` is in row ``q``.
    """
    K, q_len = centroid_scores.shape
    top = np.argsort(-centroid_scores, axis=0, kind="stable")[: max(0, min(nprobe, K))]
    return np.ascontiguousarray(top.T, dtype=np.int32)


def probe(cells: np.ndarray, ivf_offsets: np.ndarray, ivf_docs: np.ndarray, n_docs: int) -> np.ndarray:
    """Stage 1: the union (sorted, int32) of the IVF lists of every centroid probed by some query token."""
    parts = [ivf_docs[ivf_offsets[c] : ivf_offsets[c + 1]] for c in np.unique(cells)]
    return np.unique(np.concatenate(parts)).astype(np.int32) if parts else np.zeros(0, np.int32)


def probe_agreed(
    cells: np.ndarray, n_any: int, ivf_offsets: np.ndarray, ivf_docs: np.ndarray, n_docs: int
) -> np.ndarray:
    """Stage 1 by agreement: the documents in some token's first ``n_any`` cells (:func:`probe`'s), and those listed
    by the cells (every column) of two query tokens or more; sorted int32."""
    tokens = np.zeros(n_docs, dtype=np.int64)  # query tokens whose cells list the document
    for row in cells:
        listed = [ivf_docs[ivf_offsets[c] : ivf_offsets[c + 1]] for c in row]
        tokens[np.unique(np.concatenate(listed)) if listed else []] += 1
    agreed = np.flatnonzero(tokens >= 2).astype(np.int32)
    return np.union1d(probe(cells[:, :n_any], ivf_offsets, ivf_docs, n_docs), agreed).astype(np.int32)


def segment_max_sum(token_scores: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[n_tokens, q_len]`` token scores + doc ``offsets`` -> per-doc sum of per-query-token maxima."""
    out = np.zeros(len(offsets) - 1, dtype=np.float32)
    for d in range(len(offsets) - 1):
        if offsets[d + 1] > offsets[d]:
            out[d] = token_scores[offsets[d] : offsets[d + 1]].max(axis=0).sum()
    return out


def segment_max_sums(token_scores: np.ndarray, offsets: np.ndarray, col_bounds: np.ndarray) -> np.ndarray:
    """Many queries at once: :func:`segment_max_sum` of columns ``col_bounds[i]:col_bounds[i + 1]`` in row
    ``i`` of the ``[n_queries, n_docs]`` result."""
    out = np.zeros((len(col_bounds) - 1, len(offsets) - 1), dtype=np.float32)
    for i, (a, b) in enumerate(zip(col_bounds[:-1], col_bounds[1:])):
        out[i] = segment_max_sum(token_scores[:, a:b], offsets)
    return out


def probe_bound(
    centroid_scores: np.ndarray,
    cells: np.ndarray,
    nprobe: int,
    floor: np.ndarray,
    ivf_offsets: np.ndarray,
    ivf_docs: np.ndarray,
    n_docs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 1 and an upper bound of each candidate's centroid interaction: ``(candidates, bound)``.

    ``cells [q_len, n]``: each query token's best centroids, best first (:func:`probe_cells`);
    ``candidates`` are the documents of the first ``nprobe`` columns (:func:`probe` of them). For query
    token ``q``, a document holding a token of one of ``cells[q]`` has its best centroid among them, and the
    bound counts that centroid's exact score; otherwise its best scores at most ``floor[q]`` (the score of
    the next centroid), which the bound counts. ``bound[i]`` sums over query tokens: an upper bound of the
    unpruned centroid interaction, equal to it where every query token's best centroid is in the cells.
    """
    cands = probe(cells[:, :nprobe], ivf_offsets, ivf_docs, n_docs)
    where = np.full(n_docs, -1, dtype=np.int64)
    where[cands] = np.arange(len(cands))
    best = np.tile(np.asarray(floor, dtype=np.float32), (len(cands) + 1, 1))  # last row: not a candidate
    for q in range(cells.shape[0]):
        for c in cells[q]:
            rows = where[ivf_docs[ivf_offsets[c] : ivf_offsets[c + 1]]]
            best[rows, q] = np.maximum(best[rows, q], centroid_scores[c, q])
    return cands, best[:-1].sum(axis=1, dtype=np.float32)


def ward_clusters(x: np.ndarray, n_clusters: int) -> np.ndarray:
    """Agglomerative clustering of the rows of ``x [n, dim]`` with Ward's criterion, cut at ``n_clusters``:
    ``[n]`` int64 labels, numbered by their first row. The plain way: merge the closest pair of clusters,
    ``|A| |B| / (|A| + |B|) * |mean(A) - mean(B)|^2``, until ``n_clusters`` remain (ties to the lower ids)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    means, sizes, members = x.copy(), np.ones(n), [[i] for i in range(n)]
    alive = np.ones(n, dtype=bool)
    for _ in range(n - max(1, min(n, n_clusters))):
        ids = np.flatnonzero(alive)
        diff = means[ids, None, :] - means[None, ids, :]
        ward = sizes[ids, None] * sizes[None, ids] / (sizes[ids, None] + sizes[None, ids]) * (diff**2).sum(axis=2)
        ward[np.tril_indices(len(ids))] = np.inf
        a, b = ids[np.array(np.unravel_index(np.argmin(ward), ward.shape))]
        means[a] = (sizes[a] * means[a] + sizes[b] * means[b]) / (sizes[a] + sizes[b])
        sizes[a] += sizes[b]
        members[a] += members[b]
        alive[b] = False
    labels = np.empty(n, dtype=np.int64)
    for c, m in enumerate(sorted((members[i] for i in np.flatnonzero(alive)), key=min)):
        labels[m] = c
    return labels
