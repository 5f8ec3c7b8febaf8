"""Numba CPU kernels of the residual codec: bucketise + bit-pack, and decompression.

Same contracts as :mod:`colbert_index.kernels.reference` (``compress_residuals``, ``decompress``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True, parallel=True)
def compress_residuals(residuals, cutoffs, nbits):
    n, dim = residuals.shape
    per_byte = 8 // nbits
    nbytes = dim // per_byte
    ncut = cutoffs.shape[1]
    out = np.empty((n, nbytes), dtype=np.uint8)
    for t in prange(n):
        for b in range(nbytes):
            byte = 0
            for k in range(per_byte):
                j = b * per_byte + k
                r = residuals[t, j]
                bucket = 0
                for c in range(ncut):
                    if cutoffs[j, c] <= r:
                        bucket += 1
                byte |= bucket << (8 - nbits * (k + 1))
            out[t, b] = byte
    return out


@njit(cache=True, nogil=True, fastmath=True)
def decompress_token(codes, packed, t, centroids, table, normalize, out, row):
    """Decompress token ``t`` into ``out[row, :]`` (shared by every kernel that reads residuals).

    Takes the row index rather than a row view: views in hot loops cost reference counting.
    """
    nbytes, _, per_byte = table.shape
    c = codes[t]
    norm = np.float32(0.0)
    for b in range(nbytes):
        v = packed[t, b]
        for k in range(per_byte):
            x = centroids[c, b * per_byte + k] + table[b, v, k]
            out[row, b * per_byte + k] = x
            norm += x * x
    if normalize:
        inv = np.float32(1.0) / np.sqrt(max(norm, np.float32(1e-24)))
        for j in range(out.shape[1]):
            out[row, j] *= inv


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def decompress(codes, packed, centroids, table, normalize):
    n = codes.shape[0]
    out = np.empty((n, centroids.shape[1]), dtype=np.float32)
    for t in prange(n):
        decompress_token(codes, packed, t, centroids, table, normalize, out, t)
    return out
