"""Row helpers shared by the Numba kernels: vector code LLVM does not find on its own.

Running maxima over rows (a document's best score per query token) are the inner loop of stages 2-4 and of
the probe. Written in place, ``best[q] = max(best[q], row[q])`` compiles to scalar code (LLVM does not
vectorise that store of a select of its own load); written to another buffer it becomes AVX ``vmaxps``.
So callers keep two rows of a buffer and alternate them after each row (several times faster per row;
docs/design-notes.md).

Decompression adds each byte's 4 (2-bit) or 2 (4-bit) residual values to as many centroid values; written
out per element those adds compiled to scalar ``vaddss`` too, so :data:`add4` / :data:`add2` emit the one
vector add.

Stage 0 (query x centroid scores) and stage 4 (decompressed tokens x query) are products of a tall matrix with
the few query tokens: :func:`row_scores` computes two rows at a time, 32 query tokens each, in eight AVX
accumulators (:data:`dot2x32` and its narrower siblings): faster than OpenBLAS on one thread for these shapes,
and no BLAS thread pool to hold to one thread (docs/design-notes.md).

Stage 3 scores a token's residual against every query token through lookup tables rounded to int8
(:func:`byte_table_int8`) and its centroid score in the same units (:func:`score_rows_int16`): :func:`doc_max16`
walks a document's tokens with their int16 sums and running maximum in registers (a loop of row adds through
memory waits on store-to-load forwarding at every byte, and LLVM did not vectorise the loop that sums them in
place).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .numba_llvm import llvm_function


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def max_into(buf, dst, src, table, row):
    """``buf[dst, i] = max(buf[src, i], table[row, i])`` over ``buf``'s columns (``dst != src``).

    Rows are passed by index, not as array views: swapping views in a loop costs reference counting
    (docs/design-notes.md); callers alternate ``dst`` and ``src`` between two rows of ``buf``.
    """
    for i in range(buf.shape[1]):
        buf[dst, i] = max(buf[src, i], table[row, i])


def _vector_add(width: int):
    """An intrinsic ``add(out, oi, a, ai, b, bi)``: ``out[oi:oi+width] = a[ai:ai+width] + b[bi:bi+width]``
    as one ``<width x float>`` add, on 1-D float32 arrays (indices in bounds: not checked)."""

    def add(typingctx, out, oi, a, ai, b, bi):
        if not all(isinstance(x, types.Array) and x.ndim == 1 and x.dtype == types.float32 for x in (out, a, b)):
            return None
        if not all(isinstance(i, types.Integer) for i in (oi, ai, bi)):
            return None

        def codegen(context, builder, signature, args):
            vt = ir.VectorType(ir.FloatType(), width)
            ptrs = []
            for k in (0, 2, 4):
                ty = signature.args[k]
                ary = context.make_array(ty)(context, builder, args[k])
                p = cgutils.get_item_pointer(context, builder, ty, ary, [args[k + 1]], wraparound=False)
                ptrs.append(builder.bitcast(p, vt.as_pointer()))
            total = builder.fadd(builder.load(ptrs[1], align=4), builder.load(ptrs[2], align=4))
            builder.store(total, ptrs[0], align=4)
            return context.get_dummy_value()

        return types.void(out, oi, a, ai, b, bi), codegen

    add.__name__ = f"add{width}"
    return intrinsic(add)


add4 = _vector_add(4)  # 2-bit residuals: a byte's four dimensions
add2 = _vector_add(2)  # 4-bit residuals: a byte's two dimensions


@njit(cache=True, nogil=True)
def nibble_table(Q, table, q_pad):
    """``[nbytes * 32, q_pad]`` float64: what each half byte of a packed residual adds to each query token.

    Row ``32 b + h`` holds, for every query token, the dot product of the dimensions that the high half
    ``h`` of byte ``b`` encodes with their bucket weights; row ``32 b + 16 + l`` the same for the low half.
    Summed over a token's bytes, that is ``Q @ residual`` for the token. Columns past ``len(Q)`` are 0.
    Half bytes rather than bytes: 32 rows per byte instead of 256. In float64 the products of float32 values
    are exact and a half byte's one or two of them (4 or 2 bits) are rounded once, whatever the compiler
    fuses or reorders: :func:`byte_table_int8` built from it is ``reference.byte_table_int8``'s to the bit.
    """
    q_len = Q.shape[0]
    nbytes, _, per_byte = table.shape
    half = per_byte // 2
    out = np.zeros((nbytes * 32, q_pad), dtype=np.float64)
    for b in range(nbytes):
        for h in range(16):
            for k in range(half):
                w_high, w_low = np.float64(table[b, h << 4, k]), np.float64(table[b, h, half + k])  # other half 0
                for q in range(q_len):
                    out[b * 32 + h, q] += w_high * np.float64(np.float32(Q[q, b * per_byte + k]))
                    out[b * 32 + 16 + h, q] += w_low * np.float64(np.float32(Q[q, b * per_byte + half + k]))
    return out


_TINY = np.float32(np.finfo(np.float32).tiny)  # the smallest normal float32
# prefetch distance, in doc tokens, for centroid-score rows in stage 3 (doc_max16 and the prefetch into the next
# candidate in numba_scoring; 4 / 8 / 16 within 12% with the lookup-table stage 3, 8 never the slowest)
AHEAD_TOKENS = 8


@njit(cache=True, nogil=True)
def int16_room(nbytes):
    """``(limit, room)``: the largest lookup-table entry for ``nbytes`` residual bytes, ``min(127, 32767 //
    nbytes)``, and what their sum leaves of int16 for a centroid score, ``32767 - nbytes * limit``."""
    limit = min(127, max(1, 32767 // max(1, nbytes)))
    return limit, max(1, 32767 - nbytes * limit)


@njit(cache=True, nogil=True)
def score_rows_int16(centroid_scores, scale, room):
    """Stage 3's centroid scores in the lookup tables' units: ``[K, len(scale)]`` int16 ``rint(S / scale)``
    clipped to ``+-room`` (:func:`int16_room`), 0 past ``q_len``; ``reference.score_rows_int16``'s arithmetic."""
    K, q_len = centroid_scores.shape
    out = np.zeros((K, scale.shape[0]), dtype=np.int16)
    r = np.float32(room)
    for c in range(K):
        for q in range(q_len):
            out[c, q] = np.int16(min(r, max(-r, np.rint(centroid_scores[c, q] / scale[q]))))
    return out


@njit(cache=True, nogil=True)
def byte_table_int8(Q, table, q_pad, score_bound):
    """What each byte of a packed residual adds to each query token, rounded to int8 per column:
    ``(lut [nbytes * 256, q_pad] int8, scale [q_pad])``.

    Row ``256 b + v`` is :func:`nibble_table`'s rows ``32 b + (v >> 4)`` plus ``32 b + 16 + (v & 15)`` (in
    float64, that order); ``lut * scale`` approximates it, the largest entry of a column mapping to at most
    ``limit = min(127, 32767 // nbytes)``, so that a token's ``nbytes`` rows sum exactly in int16
    (:func:`doc_max16`). The centroid scores share the column's scale (:func:`score_rows_int16`): the step is
    also at least ``score_bound[q] / room`` (``score_bound [q_pad]`` float64 bounds query token ``q``'s centroid
    scores; ``room``: :func:`int16_room`), so that a score fits beside the rows' sum (usually the table's own,
    finer step decides).
    A byte per row rather than a half byte: half the row adds per token, for a table that fits L2 instead of L1,
    a net gain (docs/design-notes.md). The arithmetic is ``reference.byte_table_int8``'s step for step.
    """
    half = nibble_table(Q, table, q_pad)
    nbytes = half.shape[0] // 32
    # the largest |high + low| of each byte from the halves' extremes, rounding being monotonic: the 256 sums of
    # a byte are formed once, in the loop that rounds them
    peak = np.zeros(q_pad, dtype=np.float64)
    for b in range(nbytes):
        for q in range(q_pad):
            hi_max = hi_min = half[b * 32, q]
            lo_max = lo_min = half[b * 32 + 16, q]
            for h in range(1, 16):
                hi_max, hi_min = max(hi_max, half[b * 32 + h, q]), min(hi_min, half[b * 32 + h, q])
                lo_max, lo_min = max(lo_max, half[b * 32 + 16 + h, q]), min(lo_min, half[b * 32 + 16 + h, q])
            peak[q] = max(peak[q], abs(hi_max + lo_max), abs(hi_min + lo_min))
    limit, room = int16_room(nbytes)
    scale = np.ones(q_pad, dtype=np.float32)
    used = np.zeros(q_pad, dtype=np.float64)  # 1.0, or 0.0 for a column of zeros
    for q in range(q_pad):
        step = np.float32(max(peak[q] / limit, score_bound[q] / room))
        if step >= _TINY:  # else a column of zeros: a (sub)normal-underflowing query token adds nothing
            scale[q] = step
            used[q] = 1.0
    inv = 1.0 / scale.astype(np.float64)  # a product per entry instead of a division: 4x faster here
    out = np.empty((nbytes * 256, q_pad), dtype=np.int8)
    for b in range(nbytes):
        for v in range(256):
            r, high, low = b * 256 + v, b * 32 + (v >> 4), b * 32 + 16 + (v & 15)
            for q in range(q_pad):  # branch-free: this loop vectorises
                x = half[high, q] + half[low, q]
                out[r, q] = np.int8(min(limit, max(-limit, np.rint(x * inv[q]))) * used[q])
    return out, scale


@intrinsic
def doc_max16(typingctx, out, lut, scale, scores, codes, packed, lo, hi, col):
    """``out[:32]`` = ``scale[col + i]`` times the max over tokens ``t`` in ``[lo, hi)`` (``hi > lo``) of
    ``scores[codes[t] * q_pad + col + i] + (sum over bytes b of lut[(256 b + packed[t, b]) * q_pad + col + i])``
    for ``i < 32``, all in int16: stage 3 for one document and 32 query tokens.

    1-D views (``lut`` int8 with ``q_pad = len(scale)`` columns, ``scores`` int16 ``[K * q_pad]``
    (:func:`score_rows_int16`), ``packed`` uint8 ``[n_tokens * nbytes]`` with ``nbytes = len(lut) // (256
    q_pad)``); nothing is bounds-checked. The running maximum and the sums (two, alternating bytes) stay in
    registers over the whole document, the centroid score is one 64-byte row added to them, and the scale
    multiplies the maximum once, instead of float score rows added to each token's scaled sum
    (docs/design-notes.md). The score row of the token :data:`AHEAD_TOKENS` on is prefetched.
    """
    arrays = (out, lut, scale, scores, packed)
    dtypes = (types.float32, types.int8, types.float32, types.int16, types.uint8)
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == t for a, t in zip(arrays, dtypes)):
        return None
    if not (isinstance(codes, types.Array) and codes.ndim == 1 and codes.dtype in (types.uint16, types.uint32)):
        return None  # uint32 codes beyond 65,536 centroids (ResidualCodec.code_dtype)
    if not all(isinstance(x, types.Integer) for x in (lo, hi, col)):
        return None

    def codegen(context, builder, signature, args):
        i1, i8, i16, i32, i64 = (ir.IntType(w) for w in (1, 8, 16, 32, 64))
        bytes_t, sums_t, f_t = ir.VectorType(i8, 32), ir.VectorType(i16, 32), ir.VectorType(ir.FloatType(), 32)
        ary = {k: context.make_array(signature.args[k])(context, builder, args[k]) for k in range(6)}
        out_p, lut_p, scale_p, scores_p, codes_p, packed_p = (ary[k].data for k in range(6))
        q_pad = builder.extract_value(ary[2].shape, 0)
        nbytes = builder.udiv(builder.extract_value(ary[1].shape, 0), builder.mul(q_pad, i64(256)))
        lo, hi, col = (context.cast(builder, args[k], signature.args[k], types.int64) for k in (6, 7, 8))
        smax = llvm_function(builder, "llvm.smax.v32i16", sums_t, sums_t, sums_t)
        prefetch = llvm_function(builder, "llvm.prefetch.p0", ir.VoidType(), i8.as_pointer(), i32, i32, i32)

        def row_of(t):  # the score row of token t, at column col
            code = builder.zext(builder.load(builder.gep(codes_p, [t])), i64)
            return builder.gep(scores_p, [builder.add(builder.mul(code, q_pad), col)])

        best = cgutils.alloca_once_value(builder, ir.Constant(sums_t, [-32768] * 32))
        sums = [cgutils.alloca_once(builder, sums_t) for _ in range(2)]
        with cgutils.for_range(builder, builder.sub(hi, lo)) as tokens:
            t = builder.add(lo, tokens.index)
            ahead = builder.add(t, i64(AHEAD_TOKENS))
            with builder.if_then(builder.icmp_signed("<", ahead, hi)):
                builder.call(prefetch, [builder.bitcast(row_of(ahead), i8.as_pointer()), i32(0), i32(3), i32(1)])
            builder.store(builder.load(builder.bitcast(row_of(t), sums_t.as_pointer()), align=2), sums[0])
            builder.store(ir.Constant(sums_t, [0] * 32), sums[1])
            first = builder.mul(t, nbytes)

            def add_row(s, b):  # s += the table row of byte b's value
                v = builder.zext(builder.load(builder.gep(packed_p, [builder.add(first, b)])), i64)
                p = builder.gep(lut_p, [builder.add(builder.mul(builder.add(builder.shl(b, i64(8)), v), q_pad), col)])
                x = builder.load(builder.bitcast(p, bytes_t.as_pointer()), align=1)
                builder.store(builder.add(builder.load(s), builder.sext(x, sums_t)), s)

            with cgutils.for_range(builder, builder.lshr(nbytes, i64(1))) as pairs:
                for k, s in enumerate(sums):
                    add_row(s, builder.add(builder.shl(pairs.index, i64(1)), i64(k)))
            with builder.if_then(builder.trunc(nbytes, i1)):  # an odd last byte
                add_row(sums[0], builder.sub(nbytes, i64(1)))
            total = builder.add(builder.load(sums[0]), builder.load(sums[1]))
            builder.store(builder.call(smax, [builder.load(best), total]), best)
        sc = builder.load(builder.bitcast(builder.gep(scale_p, [col]), f_t.as_pointer()), align=4)
        best_f = builder.fmul(builder.sitofp(builder.load(best), f_t), sc)
        builder.store(best_f, builder.bitcast(out_p, f_t.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(out, lut, scale, scores, codes, packed, lo, hi, col), codegen


_NO_TOKEN = -(1 << 62)  # doc_max_int8's result for a document with no kept token


@intrinsic
def doc_max_int8(typingctx, rows, block, remap, codes, lo, hi):
    """The sum over 32 lanes of the max over tokens ``t`` in ``[lo, hi)`` of ``rows[block, remap[codes[t]]]``
    (int8), or ``_NO_TOKEN`` when every token maps to the pruned row (all -128): stage 2 for one document.

    ``rows`` int8 ``[blocks, n_rows, 32]`` (C-contiguous), ``remap`` and ``codes`` uint16 or uint32 1-D; nothing
    is bounds-checked. Every token is looked up (no branch on pruning, a coin flip for the predictor) in a table
    of the kept centroids' rows small enough for L1/L2, and the running max stays in one register: stage 2 1.6x
    faster than a branch-free compaction of the kept tokens followed by float maxima (1M index, cold caches,
    side by side).
    """
    if not (isinstance(rows, types.Array) and rows.ndim == 3 and rows.dtype == types.int8):
        return None
    unsigned = (types.uint16, types.uint32)
    if not all(isinstance(x, types.Array) and x.ndim == 1 and x.dtype in unsigned for x in (remap, codes)):
        return None
    if not all(isinstance(x, types.Integer) for x in (block, lo, hi)):
        return None

    def codegen(context, builder, signature, args):
        i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
        bytes_t, wide_t = ir.VectorType(i8, 32), ir.VectorType(i32, 32)
        rows_p, remap_p, codes_p = (
            context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 2, 3)
        )
        block, lo, hi = (context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 4, 5))
        n_rows = builder.extract_value(context.make_array(signature.args[0])(context, builder, args[0]).shape, 1)
        first = builder.gep(rows_p, [builder.mul(block, builder.shl(n_rows, i64(5)))])

        best = cgutils.alloca_once_value(builder, ir.Constant(bytes_t, [-128] * 32))
        with cgutils.for_range(builder, builder.sub(hi, lo)) as tokens:
            code = builder.zext(builder.load(builder.gep(codes_p, [builder.add(lo, tokens.index)])), i64)
            r = builder.zext(builder.load(builder.gep(remap_p, [code])), i64)
            row = builder.gep(first, [builder.shl(r, i64(5))])
            x = builder.load(builder.bitcast(row, bytes_t.as_pointer()), align=1)
            builder.store(
                builder.call(
                    llvm_function(builder, "llvm.smax.v32i8", bytes_t, bytes_t, bytes_t), [builder.load(best), x]
                ),
                best,
            )
        b = builder.load(best)
        total = builder.call(
            llvm_function(builder, "llvm.vector.reduce.add.v32i32", i32, wide_t), [builder.sext(b, wide_t)]
        )
        none = builder.icmp_signed(
            "==", builder.call(llvm_function(builder, "llvm.vector.reduce.smax.v32i8", i8, bytes_t), [b]), i8(-128)
        )
        return builder.select(none, i64(_NO_TOKEN), builder.sext(total, i64))

    return types.int64(rows, block, remap, codes, lo, hi), codegen


def _dot2(width: int):
    """An intrinsic ``dot2(out, o0, o1, a, a0, a1, bt, bi, n, stride)``: ``out[o0:o0+width] = a[a0:a0+n] @
    bt[:, bi:bi+width]`` and ``out[o1:o1+width]`` likewise for ``a[a1:a1+n]``, where ``bt`` holds ``n`` rows of
    ``stride`` floats. 1-D float32 arrays, indices not checked. Two rows of ``a`` share each load of ``bt``;
    ``2 * width / 8`` fused multiply-adds per step keep the FMA units busy."""
    nvec = width // 8

    def dot2(typingctx, out, o0, o1, a, a0, a1, bt, bi, n, stride):
        if not all(isinstance(x, types.Array) and x.ndim == 1 and x.dtype == types.float32 for x in (out, a, bt)):
            return None
        if not all(isinstance(x, types.Integer) for x in (o0, o1, a0, a1, bi, n, stride)):
            return None

        def codegen(context, builder, signature, args):
            i32, i64 = ir.IntType(32), ir.IntType(64)
            vt = ir.VectorType(ir.FloatType(), 8)
            out_p, a_p, bt_p = (
                context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 3, 6)
            )
            o0, o1, a0, a1, bi, n, stride = (
                context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 2, 4, 5, 7, 8, 9)
            )
            # fmuladd: one FMA where the target has it, a multiply and an add where it does not (plain llvm.fma
            # becomes a libm call per lane on x86-64 without FMA)
            fma = llvm_function(builder, "llvm.fmuladd.v8f32", vt, vt, vt, vt)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(vt, [0.0] * 8)) for _ in range(2 * nvec)]
            undef = ir.Constant(vt, ir.Undefined)

            def splat(ptr, i):
                x = builder.insert_element(undef, builder.load(builder.gep(ptr, [i])), i32(0))
                return builder.shuffle_vector(x, undef, ir.Constant(ir.VectorType(i32, 8), [0] * 8))

            with cgutils.for_range(builder, n) as loop:
                d = loop.index
                x0, x1 = splat(a_p, builder.add(a0, d)), splat(a_p, builder.add(a1, d))
                row = builder.add(builder.mul(d, stride), bi)
                for k in range(nvec):
                    ptr = builder.bitcast(builder.gep(bt_p, [builder.add(row, i64(8 * k))]), vt.as_pointer())
                    y = builder.load(ptr, align=4)
                    builder.store(builder.call(fma, [x0, y, builder.load(accs[k])]), accs[k])
                    builder.store(builder.call(fma, [x1, y, builder.load(accs[nvec + k])]), accs[nvec + k])
            for first, o in ((0, o0), (nvec, o1)):
                for k in range(nvec):
                    ptr = builder.bitcast(builder.gep(out_p, [builder.add(o, i64(8 * k))]), vt.as_pointer())
                    builder.store(builder.load(accs[first + k]), ptr, align=4)
            return context.get_dummy_value()

        return types.void(out, o0, o1, a, a0, a1, bt, bi, n, stride), codegen

    dot2.__name__ = f"dot2x{width}"
    return intrinsic(dot2)


dot2x8, dot2x16, dot2x24, dot2x32 = (_dot2(w) for w in (8, 16, 24, 32))


@njit(cache=True, nogil=True, inline="always")
def _dot2_columns(out, o0, o1, a, a0, a1, bt, n, cols):
    """:func:`_dot2` over all ``cols`` (a multiple of 8) columns of ``bt``, 32 at a time."""
    for j in range(0, cols, 32):
        w = min(32, cols - j)
        if w == 32:
            dot2x32(out, o0 + j, o1 + j, a, a0, a1, bt, j, n, cols)
        elif w == 24:
            dot2x24(out, o0 + j, o1 + j, a, a0, a1, bt, j, n, cols)
        elif w == 16:
            dot2x16(out, o0 + j, o1 + j, a, a0, a1, bt, j, n, cols)
        else:
            dot2x8(out, o0 + j, o1 + j, a, a0, a1, bt, j, n, cols)


@njit(cache=True, nogil=True, fastmath=True)
def row_scores(A, Q, out):
    """``out[:len(A)] = A @ Q.T`` for float32 ``A [m, dim]`` and ``Q [q_len, dim]`` (C-contiguous), two rows
    of ``A`` at a time (``reference.centroid_scores``' contract). ``out``: float32 ``[>= m, q_len]``."""
    m, dim = A.shape
    q_len = Q.shape[0]
    cols = (q_len + 7) // 8 * 8
    bt = np.zeros((dim, cols), dtype=np.float32)  # Q transposed, columns padded to whole vectors
    for q in range(q_len):
        for d in range(dim):
            bt[d, q] = Q[q, d]
    flat_a, flat_bt = A.reshape(m * dim), bt.reshape(dim * cols)
    flat_out = out.reshape(out.shape[0] * q_len)
    rows = np.empty(2 * cols, dtype=np.float32)  # two rows, when out's rows are not whole vectors
    for i in range(0, m, 2):
        i1 = min(i + 1, m - 1)  # an odd last row pairs with itself
        if cols == q_len and i1 > i:
            _dot2_columns(flat_out, i * q_len, i1 * q_len, flat_a, i * dim, i1 * dim, flat_bt, dim, cols)
        else:
            _dot2_columns(rows, 0, cols, flat_a, i * dim, i1 * dim, flat_bt, dim, cols)
            for q in range(q_len):
                out[i, q] = rows[q]
                out[i1, q] = rows[cols + q]
