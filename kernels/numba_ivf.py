"""Numba CPU kernels of the inverted file: build it from codes, and probe it (stage 1)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def build_ivf(codes, offsets, n_centroids):
    # One pass counts distinct (centroid, doc) pairs, a second fills them; visiting docs in order
    # keeps every list sorted and `last` dedups tokens of one doc sharing a centroid.
    n_docs = offsets.shape[0] - 1
    last = np.full(n_centroids, -1, dtype=np.int64)
    counts = np.zeros(n_centroids + 1, dtype=np.int64)
    for d in range(n_docs):
        for t in range(offsets[d], offsets[d + 1]):
            c = codes[t]
            if last[c] != d:
                last[c] = d
                counts[c + 1] += 1
    ivf_offsets = np.cumsum(counts)
    ivf_docs = np.empty(ivf_offsets[n_centroids], dtype=np.int32)
    fill = ivf_offsets[:-1].copy()
    last[:] = -1
    for d in range(n_docs):
        for t in range(offsets[d], offsets[d + 1]):
            c = codes[t]
            if last[c] != d:
                last[c] = d
                ivf_docs[fill[c]] = d
                fill[c] += 1
    return ivf_offsets, ivf_docs


@njit(cache=True, nogil=True)
def probe_cells(centroid_scores, nprobe):
    K, q_len = centroid_scores.shape
    cells = np.zeros((K, q_len), dtype=np.bool_)
    nprobe = min(nprobe, K)
    if nprobe < 1:
        return cells
    # rows in memory order (centroid outer), a tiny sorted top-nprobe buffer per query token;
    # strict > keeps the lower centroid id on ties
    top_id = np.empty((q_len, nprobe), dtype=np.int64)
    top_val = np.empty((q_len, nprobe), dtype=np.float32)
    n_top = np.zeros(q_len, dtype=np.int64)
    for c in range(K):
        for q in range(q_len):
            v = centroid_scores[c, q]
            n = n_top[q]
            if n == nprobe and v <= top_val[q, n - 1]:
                continue
            pos = n if n < nprobe else nprobe - 1
            while pos > 0 and v > top_val[q, pos - 1]:
                top_val[q, pos] = top_val[q, pos - 1]
                top_id[q, pos] = top_id[q, pos - 1]
                pos -= 1
            top_val[q, pos] = v
            top_id[q, pos] = c
            if n < nprobe:
                n_top[q] = n + 1
    for q in range(q_len):
        for i in range(n_top[q]):
            cells[top_id[q, i], q] = True
    return cells


@njit(cache=True, nogil=True)
def probed_centroids(cells):
    """``[K]`` bool: centroids that some query token probes (a row of ``cells`` has a True)."""
    K, q_len = cells.shape
    probed = np.zeros(K, dtype=np.bool_)
    for c in range(K):
        for q in range(q_len):
            if cells[c, q]:
                probed[c] = True
                break
    return probed


@njit(cache=True, nogil=True)
def probe(cells, ivf_offsets, ivf_docs, n_docs):
    K = cells.shape[0]
    probed = probed_centroids(cells)
    total = 0
    for c in range(K):
        if probed[c]:
            total += ivf_offsets[c + 1] - ivf_offsets[c]
    seen = np.zeros(n_docs, dtype=np.bool_)
    out = np.empty(total, dtype=np.int32)
    n = 0
    for c in range(K):
        if probed[c]:
            for p in range(ivf_offsets[c], ivf_offsets[c + 1]):
                d = ivf_docs[p]
                if not seen[d]:
                    seen[d] = True
                    out[n] = d
                    n += 1
    return np.sort(out[:n])
