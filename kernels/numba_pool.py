"""Numba token pooling: Ward agglomerative clustering of one document's tokens (``reference.ward_clusters``).

The nearest-neighbour chain algorithm finds the same merges as merging the globally closest pair each time
(Ward's criterion is reducible), in O(n^2) time and one ``[n, n]`` matrix of cluster distances updated by the
Lance-Williams formula; the merges, sorted by height, are then replayed up to the requested cluster count.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def ward_clusters(x, n_clusters):
    """``[n]`` int64 labels of the rows of ``x [n, dim]`` in ``max(1, n_clusters)`` Ward clusters, numbered by
    their first row (``reference.ward_clusters``'s result where no two merge heights tie)."""
    n, dim = x.shape
    labels = np.arange(n, dtype=np.int64)
    if n == 0:
        return labels
    # Ward distance of two singletons: |xi - xj|^2 / 2
    d = np.empty((n, n), dtype=np.float64)
    for i in range(n):
        d[i, i] = np.inf
        for j in range(i + 1, n):
            s = 0.0
            for k in range(dim):
                t = np.float64(x[i, k]) - np.float64(x[j, k])
                s += t * t
            d[i, j] = d[j, i] = 0.5 * s
    size = np.ones(n, dtype=np.int64)
    active = np.ones(n, dtype=np.bool_)
    merge_a = np.empty(n - 1, dtype=np.int64)
    merge_b = np.empty(n - 1, dtype=np.int64)
    height = np.empty(n - 1, dtype=np.float64)
    chain = np.empty(n, dtype=np.int64)
    top = 0
    for m in range(n - 1):
        if top == 0:
            for i in range(n):
                if active[i]:
                    chain[0] = i
                    top = 1
                    break
        while True:
            a = chain[top - 1]
            prev = chain[top - 2] if top > 1 else -1
            b, best = prev, d[a, prev] if prev >= 0 else np.inf
            for j in range(n):
                if active[j] and j != a and d[a, j] < best:
                    b, best = j, d[a, j]
            if b == prev:
                break
            chain[top] = b
            top += 1
        top -= 2
        lo, hi = min(a, b), max(a, b)  # the merged cluster keeps the lower id
        merge_a[m], merge_b[m], height[m] = lo, hi, best
        na, nb = size[lo], size[hi]
        for k in range(n):
            if active[k] and k != lo and k != hi:
                nk = size[k]
                v = ((nk + na) * d[k, lo] + (nk + nb) * d[k, hi] - nk * best) / (nk + na + nb)
                d[k, lo] = d[lo, k] = v
        active[hi] = False
        size[lo] = na + nb
        for k in range(n):
            d[k, hi] = d[hi, k] = np.inf
    # replay the lowest n - n_clusters merges (union-find), then number clusters by their first row
    parent = np.arange(n, dtype=np.int64)
    order = np.argsort(height, kind="mergesort")
    for r in range(n - max(1, min(n, n_clusters))):
        ra, rb = merge_a[order[r]], merge_b[order[r]]
        while parent[ra] != ra:
            ra = parent[ra]
        while parent[rb] != rb:
            rb = parent[rb]
        parent[max(ra, rb)] = min(ra, rb)
    number = np.full(n, -1, dtype=np.int64)
    count = 0
    for i in range(n):
        r = i
        while parent[r] != r:
            r = parent[r]
        if number[r] < 0:
            number[r] = count
            count += 1
        labels[i] = number[r]
    return labels
