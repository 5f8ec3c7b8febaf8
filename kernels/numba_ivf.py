"""Numba CPU kernels of the inverted file: build it from codes, and probe it (stage 1)."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .numba_llvm import llvm_function
from .numba_rows import max_into


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


def _uint64_bits(op: str, doc: str, *flags: int):
    """An intrinsic ``f(x)`` for a uint64 ``x``: LLVM's ``llvm.<op>.i64`` (one instruction), returning int64;
    ``flags`` are its trailing i1 constant arguments."""

    def f(typingctx, x):
        if x != types.uint64:
            return None

        def codegen(context, builder, signature, args):
            i1, i64 = ir.IntType(1), ir.IntType(64)
            fn = llvm_function(builder, f"llvm.{op}.i64", i64, i64, *[i1] * len(flags))
            return builder.call(fn, [args[0], *(i1(v) for v in flags)])

        return types.int64(types.uint64), codegen

    f.__name__, f.__doc__ = f"_{op}", doc
    return intrinsic(f)


_trailing_zeros = _uint64_bits("cttz", "The index of the lowest set bit of a nonzero uint64.", 1)
_popcount = _uint64_bits("ctpop", "The number of set bits of a uint64.")


_SCAN_BLOCK = 16  # centroids whose per-query-token maxima are checked before any is looked at alone


@njit(cache=True, nogil=True)
def probe_insert(top_val, top_id, n_top, floor, q, v, c):
    """Put centroid ``c``, scoring ``v``, in query token ``q``'s sorted top list (``top_val``/``top_id [q_len,
    nprobe]``, ``n_top`` entries filled), where the caller found it belongs: the list is not full, or ``v >
    floor[q]``, its last value, which ``floor`` holds once it is full. Strict ``>`` below and in that test: on
    ties the earlier (lower) centroid id stays. (Callers test inline: a call per score took 4x longer.)"""
    nprobe = top_val.shape[1]
    n = n_top[q]
    pos = n if n < nprobe else nprobe - 1
    while pos > 0 and v > top_val[q, pos - 1]:
        top_val[q, pos] = top_val[q, pos - 1]
        top_id[q, pos] = top_id[q, pos - 1]
        pos -= 1
    top_val[q, pos] = v
    top_id[q, pos] = c
    if n < nprobe:
        n_top[q] = n + 1
    if n_top[q] == nprobe:
        floor[q] = top_val[q, nprobe - 1]


@njit(cache=True, nogil=True, fastmath=True)
def probe_cells(centroid_scores, nprobe):
    K, q_len = centroid_scores.shape
    nprobe = max(0, min(nprobe, K))
    top_id = np.zeros((q_len, nprobe), dtype=np.int32)
    if nprobe == 0:
        return top_id
    # A sorted top-nprobe buffer per query token. Rows are read in memory order, a block at a time: the
    # block's maximum per query token (a vectorised loop) is compared with each token's current
    # nprobe-th best, and only blocks that beat one are looked at row by row. Strict > keeps the lower
    # centroid id on ties. (One branch per score is much slower.)
    top_val = np.empty((q_len, nprobe), dtype=np.float32)
    n_top = np.zeros(q_len, dtype=np.int64)
    floor = np.full(q_len, -np.inf, dtype=np.float32)  # nprobe-th best so far; -inf until full
    block_max = np.empty((2, q_len), dtype=np.float32)  # alternating rows (max_into)
    for c0 in range(0, K, _SCAN_BLOCK):
        c1 = min(K, c0 + _SCAN_BLOCK)
        for q in range(q_len):
            block_max[0, q] = centroid_scores[c0, q]
        cur = 0
        for c in range(c0 + 1, c1):
            max_into(block_max, 1 - cur, cur, centroid_scores, c)
            cur = 1 - cur
        better = False
        for q in range(q_len):
            better |= (block_max[cur, q] > floor[q]) | (n_top[q] < nprobe)
        if not better:
            continue
        for c in range(c0, c1):
            for q in range(q_len):
                v = centroid_scores[c, q]
                if n_top[q] < nprobe or v > floor[q]:  # n_top: fastmath may not order -inf
                    probe_insert(top_val, top_id, n_top, floor, q, v, c)
    return top_id


@njit(cache=True, nogil=True)
def _mark(cells, ivf_offsets, ivf_docs, n_docs):
    """A bitmap of 64-bit words with a bit set per document of the probed cells, and an upper bound of their number."""
    probed = np.unique(cells.ravel())
    total = 0
    for c in probed:
        total += ivf_offsets[c + 1] - ivf_offsets[c]
    words = np.zeros((n_docs + 63) // 64, dtype=np.uint64)
    for c in probed:
        _mark_cell(words, c, ivf_offsets, ivf_docs)
    return words, total


@njit(cache=True, nogil=True, inline="always")
def _mark_cell(words, c, ivf_offsets, ivf_docs):
    """Set the bit of every document of cell ``c``'s list in ``words``."""
    for p in range(ivf_offsets[c], ivf_offsets[c + 1]):
        d = np.uint64(ivf_docs[p])
        words[d >> np.uint64(6)] |= np.uint64(1) << (d & np.uint64(63))


@njit(cache=True, nogil=True)
def _read_off(words, total):
    """The documents marked in ``words``, in slot order (int32)."""
    out = np.empty(total, dtype=np.int32)
    n = 0
    for w in range(words.shape[0]):
        x = words[w]
        while x:
            out[n] = w * 64 + _trailing_zeros(x)
            n += 1
            x &= x - np.uint64(1)
    return out[:n]


@njit(cache=True, nogil=True)
def probe(cells, ivf_offsets, ivf_docs, n_docs):
    # Candidates are marked in a bitmap of 64-bit words and read off it word by word, in slot order (a
    # bool per document read one by one, or a sort of the candidates, is much slower on large indexes).
    return _read_off(*_mark(cells, ivf_offsets, ivf_docs, n_docs))


@njit(cache=True, nogil=True)
def probe_agreed(cells, n_any, ivf_offsets, ivf_docs, n_docs):
    # Every document of some token's first n_any cells goes into the result bitmap (as the probe marks them). Then,
    # token by token, a document that the token's other cells list goes in too when an earlier token's other cells
    # listed it (its bit in ``seen``); the token's own documents join ``seen`` only after that, so one token's cells
    # never agree with each other. Two bitmaps of n_docs bits stay in cache where a tag per document would not.
    q_len, n_cells = cells.shape
    words, total = _mark(cells[:, :n_any], ivf_offsets, ivf_docs, n_docs)
    seen = np.zeros_like(words)
    one, six, low = np.uint64(1), np.uint64(6), np.uint64(63)
    for q in range(q_len):
        for j in range(n_any, n_cells):
            c = cells[q, j]
            total += ivf_offsets[c + 1] - ivf_offsets[c]
            for p in range(ivf_offsets[c], ivf_offsets[c + 1]):
                d = np.uint64(ivf_docs[p])
                w, bit = d >> six, one << (d & low)
                words[w] |= seen[w] & bit
        for j in range(n_any, n_cells):
            _mark_cell(seen, cells[q, j], ivf_offsets, ivf_docs)
    return _read_off(words, min(total, n_docs))


@njit(cache=True, nogil=True, fastmath=True)
def probe_bound(centroid_scores, cells, nprobe, floor, ivf_offsets, ivf_docs, n_docs):
    # A candidate gains S[c, q] - floor[q] from the first (best) cell c of q that lists it; last_q marks
    # the query token that last credited it, so later cells of the same token do not. Per-candidate state
    # is indexed by the candidate's rank (its word's first rank + the bits below it), so it spans the
    # candidates, not the corpus, and stays in cache; documents of the extra cells that are not candidates
    # are skipped by their bit.
    q_len, n_cells = cells.shape
    words, total = _mark(cells[:, :nprobe], ivf_offsets, ivf_docs, n_docs)
    first = np.empty(words.shape[0], dtype=np.int64)
    n = 0
    for w in range(words.shape[0]):
        first[w] = n
        n += _popcount(words[w])
    gain = np.zeros(n, dtype=np.float32)
    last_q = np.full(n, -1, dtype=np.int32)
    one = np.uint64(1)
    for q in range(q_len):
        for j in range(n_cells):
            c = cells[q, j]
            g = centroid_scores[c, q] - floor[q]
            for p in range(ivf_offsets[c], ivf_offsets[c + 1]):
                d = np.uint64(ivf_docs[p])
                w, b = d >> np.uint64(6), d & np.uint64(63)
                x = words[w]
                if (x >> b) & one:
                    i = first[w] + _popcount(x & ((one << b) - one))
                    if last_q[i] != q:
                        last_q[i] = q
                        gain[i] += g
    base = np.float32(0.0)
    for q in range(q_len):
        base += floor[q]
    bound = np.empty(n, dtype=np.float32)
    for i in range(n):
        bound[i] = base + gain[i]
    return _read_off(words, total), bound
