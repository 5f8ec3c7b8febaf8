"""Numba CPU kernels of the residual codec: bucketise + bit-pack, and decompression.

Same contracts as :mod:`colbert_index.kernels.reference` (``compress_tokens``, ``decompress``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_prefetch import prefetch_range
from .numba_rows import add2, add4

# tokens ahead whose centroid rows decompression prefetches (16, not 8, since the vector adds made each token
# cheaper: 1.1x on 64 random docs at 10k, 1.13x on 256 at 1M, alternating in one process; 24 no better)
_AHEAD_ROWS = 16


@njit(cache=True, nogil=True, parallel=True)
def compress_tokens(tokens, codes, centroids, cutoffs, weights, nbits):
    # Each residual coordinate is computed once, in a register: bucketised, packed and checked against the outermost
    # bucket weights in one pass (numpy's residual array, written and read twice, cost the 1M build ~20 s).
    n, dim = tokens.shape
    per_byte = 8 // nbits
    nbytes = dim // per_byte
    ncut = cutoffs.shape[1]
    out = np.empty((n, nbytes), dtype=np.uint8)
    beyond = np.zeros(n, dtype=np.int64)
    for t in prange(n):
        c = codes[t]
        count = 0
        for b in range(nbytes):
            byte = 0
            for k in range(per_byte):
                j = b * per_byte + k
                r = tokens[t, j] - centroids[c, j]
                bucket = 0
                for u in range(ncut):
                    if cutoffs[j, u] <= r:
                        bucket += 1
                byte |= bucket << (8 - nbits * (k + 1))
                count += (r < weights[j, 0]) | (r > weights[j, ncut])
            out[t, b] = byte
        beyond[t] = count
    return out, beyond.sum()


@njit(cache=True, nogil=True, fastmath=True)
def decompress_range(codes, packed, lo, hi, centroids, table, normalize, out, row):
    """Decompress tokens ``lo:hi`` into ``out[row : row + hi - lo, :]``.

    Two passes: centroid + residual for every token first, norms after. The centroid rows are
    random reads (out of cache at large K); with no norm to finish between tokens their cache
    misses overlap; the rows are also prefetched a few tokens ahead. Each byte's dimensions are one vector
    add (:func:`add4` / :func:`add2`; written out per element they compile to scalar adds). The gains of each
    are in docs/design-notes.md.
    """
    nbytes, _, per_byte = table.shape
    dim = centroids.shape[1]
    flat = centroids.reshape(centroids.shape[0] * dim)  # 1-D views: the prefetch and the vector adds
    flat_table = table.reshape(table.size)
    flat_out = out.reshape(out.size)
    for t in range(lo, min(hi, lo + _AHEAD_ROWS)):
        start = np.int64(codes[t]) * dim
        prefetch_range(flat, start, start + dim)
    for i in range(hi - lo):
        t = lo + i
        if t + _AHEAD_ROWS < hi:
            start = np.int64(codes[t + _AHEAD_ROWS]) * dim
            prefetch_range(flat, start, start + dim)
        c = np.int64(codes[t]) * dim
        r = (row + i) * dim
        for b in range(nbytes):  # centroid + the byte's residual values: one vector add per byte
            o = b * per_byte
            v = (b * 256 + np.int64(packed[t, b])) * per_byte
            if per_byte == 4:  # 2 bits
                add4(flat_out, r + o, flat, c + o, flat_table, v)
            else:  # 4 bits, the codec's only other width (codec.NBITS)
                add2(flat_out, r + o, flat, c + o, flat_table, v)
    if normalize:
        for r in range(row, row + hi - lo):
            norm = np.float32(0.0)
            for j in range(out.shape[1]):
                norm += out[r, j] * out[r, j]
            inv = np.float32(1.0) / np.sqrt(max(norm, np.float32(1e-24)))
            for j in range(out.shape[1]):
                out[r, j] *= inv


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def decompress(codes, packed, centroids, table, normalize):
    n = codes.shape[0]
    out = np.empty((n, centroids.shape[1]), dtype=np.float32)
    block = 256
    for i in prange((n + block - 1) // block):
        lo = i * block
        decompress_range(codes, packed, lo, min(n, lo + block), centroids, table, normalize, out, lo)
    return out
