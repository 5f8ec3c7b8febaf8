"""Numba CPU scoring kernels: centroid interaction (stages 2/3) and exact MaxSim (stage 4).

Same contracts as :mod:`colbert_index.kernels.reference`. Candidates are split into blocks so each
thread reuses one scratch buffer; ``prange`` runs over blocks of documents.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_codec import decompress_token

_BLOCK = 32  # documents per parallel work item


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def centroid_interaction(centroid_scores, codes, offsets, candidates, threshold):
    K, q_len = centroid_scores.shape
    keep = np.empty(K, dtype=np.bool_)
    for c in range(K):
        m = centroid_scores[c, 0]
        for q in range(1, q_len):
            m = max(m, centroid_scores[c, q])
        keep[c] = m >= threshold
    n = candidates.shape[0]
    out = np.zeros(n, dtype=np.float32)
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        best = np.empty(q_len, dtype=np.float32)
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
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
def centroid_scores(centroids, Q):
    K, dim = centroids.shape
    q_len = Q.shape[0]
    out = np.empty((K, q_len), dtype=np.float32)
    for c in prange(K):
        for q in range(q_len):
            s = np.float32(0.0)
            for j in range(dim):
                s += centroids[c, j] * Q[q, j]
            out[c, q] = s
    return out


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def exact_maxsim(Q, codes, packed, offsets, candidates, centroids, table, normalize):
    q_len, dim = Q.shape
    n = candidates.shape[0]
    max_len = 0
    for i in range(n):
        max_len = max(max_len, offsets[candidates[i] + 1] - offsets[candidates[i]])
    out = np.zeros(n, dtype=np.float32)
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(nblocks):
        # doc tokens transposed [dim, len]: the inner loop runs over tokens and vectorises
        doc_t = np.empty((dim, max_len), dtype=np.float32)
        vec = np.empty((1, dim), dtype=np.float32)
        acc = np.empty(max_len, dtype=np.float32)
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            d = candidates[i]
            lo = offsets[d]
            m = offsets[d + 1] - lo
            if m == 0:
                continue
            for t in range(m):
                decompress_token(codes, packed, lo + t, centroids, table, normalize, vec, 0)
                for j in range(dim):
                    doc_t[j, t] = vec[0, j]
            total = np.float32(0.0)
            for q in range(q_len):
                for t in range(m):
                    acc[t] = 0.0
                for j in range(dim):
                    qj = Q[q, j]
                    for t in range(m):
                        acc[t] += qj * doc_t[j, t]
                best = acc[0]
                for t in range(1, m):
                    best = max(best, acc[t])
                total += best
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
