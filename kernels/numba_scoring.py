"""Numba CPU scoring kernels: centroid interaction (stages 2/3) and exact MaxSim (stage 4).

Stage 0 (query x centroid scores) is a plain matrix product: the backend uses the reference's BLAS
call, 3.4x faster than a Numba loop at K=32768 (one thread, measured side by side).

Same contracts as :mod:`colbert_index.kernels.reference`. Candidates are split into blocks so each
thread reuses one scratch buffer; ``prange`` runs over blocks of documents.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_codec import decompress_range, decompress_token
from .numba_ivf import probed_centroids
from .numba_prefetch import prefetch, prefetch_candidate

_BLOCK = 32  # documents per parallel work item
# prefetch distance, in doc tokens, for centroid-score rows in stage 3 (1.21x at 1M, 1024 docs; in
# stage 2, where ~85% of tokens are pruned, prefetching the kept ones' rows was slower)
_AHEAD_TOKENS = 4


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def centroid_interaction(centroid_scores, codes, offsets, candidates, threshold):
    K, q_len = centroid_scores.shape
    thr = np.float32(threshold)
    keep = np.empty(K, dtype=np.bool_)
    for c in range(K):
        k = False
        for q in range(q_len):  # an OR of comparisons vectorises; a running max did not (2.8x slower)
            k |= centroid_scores[c, q] >= thr
        keep[c] = k
    n = candidates.shape[0]
    out = np.zeros(n, dtype=np.float32)
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        best = np.empty(q_len, dtype=np.float32)
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            prefetch_candidate(offsets, candidates, i, codes, 1)
            d = candidates[i]
            for q in range(q_len):
                best[q] = -np.inf
            any_kept = False
            for t in range(offsets[d], offsets[d + 1]):
                c = codes[t]
                if keep[c]:
                    any_kept = True
                    for q in range(q_len):
                        best[q] = max(best[q], centroid_scores[c, q])
            if any_kept:
                s = np.float32(0.0)
                for q in range(q_len):
                    s += best[q]
                out[i] = s
    return out


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def refined_interaction(Q, centroid_scores, cells, codes, packed, offsets, candidates, centroids, table, normalize):
    q_len, dim = Q.shape
    K = centroid_scores.shape[0]
    nbytes = packed.shape[1]
    flat_scores = centroid_scores.reshape(K * q_len)  # 1-D views for the prefetches
    flat_packed = packed.reshape(packed.shape[0] * nbytes)
    probed = probed_centroids(cells, K)
    nprobe = cells.shape[1]
    n = candidates.shape[0]
    out = np.zeros(n, dtype=np.float32)
    longest = 0
    for i in range(n):
        longest = max(longest, offsets[candidates[i] + 1] - offsets[candidates[i]])
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        vec = np.empty((1, dim), dtype=np.float32)
        best = np.empty(q_len, dtype=np.float32)
        in_cells = np.empty(longest, dtype=np.int64)
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            prefetch_candidate(offsets, candidates, i, codes, 1)
            d = candidates[i]
            if offsets[d + 1] == offsets[d]:
                continue
            best[:] = -np.inf
            hi = offsets[d + 1]
            # Pass 1: centroid scores of the tokens outside probed centroids; the others are set
            # aside and their residual rows requested (random reads, mostly TLB and cache misses).
            m = 0
            for t in range(offsets[d], hi):
                if t + _AHEAD_TOKENS < hi:  # the score rows are random reads in a table of K rows
                    prefetch(flat_scores, codes[t + _AHEAD_TOKENS] * q_len)
                c = codes[t]
                if probed[c]:
                    prefetch(flat_packed, t * nbytes)
                    in_cells[m] = t
                    m += 1
                    continue
                for q in range(q_len):
                    best[q] = max(best[q], centroid_scores[c, q])
            # Pass 2: tokens of probed centroids, exact where their centroid is probed for q.
            for u in range(m):
                t = in_cells[u]
                c = codes[t]
                decompress_token(codes, packed, t, centroids, table, normalize, vec, 0)
                for q in range(q_len):
                    is_cell = False
                    for j in range(nprobe):
                        is_cell |= cells[q, j] == c
                    if is_cell:
                        s = np.float32(0.0)
                        for j in range(dim):
                            s += Q[q, j] * vec[0, j]
                        best[q] = max(best[q], s)
                    else:
                        best[q] = max(best[q], centroid_scores[c, q])
            total = np.float32(0.0)
            for q in range(q_len):
                total += best[q]
            out[i] = total
    return out


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def exact_maxsim(Q, codes, packed, offsets, candidates, centroids, table, normalize):
    q_len, dim = Q.shape
    nbytes = packed.shape[1]
    flat = packed.reshape(packed.shape[0] * nbytes)  # 1-D view for the prefetch
    n = candidates.shape[0]
    out = np.zeros(n, dtype=np.float32)
    longest = 0
    for i in range(n):
        longest = max(longest, offsets[candidates[i] + 1] - offsets[candidates[i]])
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        doc = np.empty((longest, dim), dtype=np.float32)
        best = np.empty(q_len, dtype=np.float32)
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            prefetch_candidate(offsets, candidates, i, flat, nbytes)
            d = candidates[i]
            lo, hi = offsets[d], offsets[d + 1]
            if hi == lo:
                continue
            decompress_range(codes, packed, lo, hi, centroids, table, normalize, doc, 0)
            best[:] = -np.inf
            for r in range(hi - lo):
                # four query tokens per pass share each load of the decompressed token
                q = 0
                while q + 4 <= q_len:
                    s0 = s1 = s2 = s3 = np.float32(0.0)
                    for j in range(dim):
                        v = doc[r, j]
                        s0 += Q[q, j] * v
                        s1 += Q[q + 1, j] * v
                        s2 += Q[q + 2, j] * v
                        s3 += Q[q + 3, j] * v
                    best[q] = max(best[q], s0)
                    best[q + 1] = max(best[q + 1], s1)
                    best[q + 2] = max(best[q + 2], s2)
                    best[q + 3] = max(best[q + 3], s3)
                    q += 4
                for rem in range(q, q_len):
                    s = np.float32(0.0)
                    for j in range(dim):
                        s += Q[rem, j] * doc[r, j]
                    best[rem] = max(best[rem], s)
            total = np.float32(0.0)
            for q in range(q_len):
                total += best[q]
            out[i] = total
    return out


@njit(cache=True, nogil=True, parallel=True)
def segment_max_sum(token_scores, offsets):
    """``[n_tokens, q_len]`` token scores + doc ``offsets`` (relative) -> per-doc sum of per-query maxima."""
    n_docs = offsets.shape[0] - 1
    q_len = token_scores.shape[1]
    out = np.zeros(n_docs, dtype=np.float32)
    for d in prange(n_docs):
        lo, hi = offsets[d], offsets[d + 1]
        if hi == lo:
            continue
        s = np.float32(0.0)
        for q in range(q_len):
            m = token_scores[lo, q]
            for t in range(lo + 1, hi):
                m = max(m, token_scores[t, q])
            s += m
        out[d] = s
    return out
