"""Numba top-k selection: the ``k`` best of (score, slot) pairs, ordered by score desc then slot asc.

Each pair becomes one uint64 key whose ascending order is that order (the score's float32 bits mapped to
an order-preserving integer, flipped, in the high half; the slot in the low half), so a partition and a
sort of plain integers replace numpy's argpartition + flatnonzero + lexsort (the reference's way; faster for the
sizes a search selects from: docs/design-notes.md).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_SIGN = np.uint32(0x80000000)


def top_k(scores: np.ndarray, slots: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (score desc, slot asc) of parallel arrays, sorted (``reference.top_k``'s contract).

    Ties at the cut go to the lower slots, so every backend and device keeps the same candidates when stage
    scores tie exactly (documents of the same centroids). Slots must lie in ``[0, 2**32)``."""
    if k < 1:
        raise ValueError(f"top_k: k must be >= 1, got {k}")
    scores = np.asarray(scores, dtype=np.float32)
    n = len(scores)
    kth = np.partition(scores, n - k)[n - k] if n > k else np.float32(-np.inf)
    return top_k_from(scores, np.asarray(slots), k, kth)


@njit(cache=True, nogil=True)
def top_k_from(scores, slots, k, kth):
    """``reference.top_k`` among the items scoring at least ``kth`` (the caller's k-th best score, or -inf).

    ``scores`` float32; ``slots`` integers in ``[0, 2**32)`` (checked). Returns float32 scores and slots of
    ``slots``' dtype, best first.
    """
    n = scores.shape[0]
    m = 0
    for i in range(n):
        m += scores[i] >= kth
    keys = np.empty(m, dtype=np.uint64)
    m = 0
    for i in range(n):
        if scores[i] >= kth:
            if slots[i] < 0 or slots[i] > 0xFFFFFFFF:
                raise ValueError("top_k: slots must be in [0, 2**32)")
            bits = np.float32(scores[i] + np.float32(0.0)).view(np.uint32)  # + 0.0: -0.0 ties with 0.0
            up = ~bits if bits & _SIGN else bits | _SIGN  # increases with the score
            keys[m] = (np.uint64(~up) << np.uint64(32)) | np.uint64(slots[i])
            m += 1
    if m > k:
        keys = np.partition(keys, k - 1)[:k]
    keys = np.sort(keys)
    out_bits = np.empty(keys.shape[0], dtype=np.uint32)
    out_slots = np.empty(keys.shape[0], dtype=slots.dtype)
    for i in range(keys.shape[0]):
        up = ~np.uint32(keys[i] >> np.uint64(32))
        out_bits[i] = up & ~_SIGN if up & _SIGN else ~up
        out_slots[i] = keys[i] & np.uint64(0xFFFFFFFF)
    return out_bits.view(np.float32), out_slots
