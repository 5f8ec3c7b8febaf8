"""Row helpers shared by the Numba kernels: vector code LLVM does not find on its own.

Running maxima over rows (a document's best score per query token) are the inner loop of stages 2-4 and of
the probe. Written in place, ``best[q] = max(best[q], row[q])`` compiles to scalar code (LLVM does not
vectorise that store of a select of its own load); written to another buffer it becomes AVX ``vmaxps``.
So callers keep two rows of a buffer and alternate them after each row: 3-5x faster per row (32 query
tokens, rows in L1/L2, side by side).

Decompression adds each byte's 4 (2-bit) or 2 (4-bit) residual values to as many centroid values; written
out per element those adds compiled to scalar ``vaddss`` too, so :data:`add4` / :data:`add2` emit the one
vector add.

Stage 0 (query x centroid scores) and stage 4 (decompressed tokens x query) are products of a tall matrix with
the few query tokens: :func:`row_scores` computes two rows at a time, 32 query tokens each, in eight AVX
accumulators (:data:`dot2x32` and its narrower siblings): faster than OpenBLAS on one thread at dim 64, 1.1-1.4x
at 4k rows and 2.1-2.5x at 32k-65k (and no BLAS thread pool to hold to one thread).

Stage 3 scores a token's residual against every query token through lookup tables rounded to int8
(:func:`nibble_table_int8`): :func:`nibble_sums32` adds a token's table rows in registers (a loop of row adds
through memory waits on store-to-load forwarding at every byte, and LLVM did not vectorise the loop that sums
them in place).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@njit(cache=True, nogil=True, fastmath=True, inline="always")
def max_into(buf, dst, src, table, row):
    """``buf[dst, i] = max(buf[src, i], table[row, i])`` over ``buf``'s columns (``dst != src``).

    Rows are passed by index, not as array views: swapping views in a loop costs reference counting
    (stage 2 ran 2x slower that way); callers alternate ``dst`` and ``src`` between two rows of ``buf``.
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
    fuses or reorders: the table is ``reference.nibble_table_int8``'s to the bit.
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


@njit(cache=True, nogil=True)
def nibble_table_int8(Q, table, q_pad):
    """:func:`nibble_table` rounded to int8 per column: ``(lut [nbytes * 32, q_pad] int8, scale [q_pad])``.

    ``lut * scale`` approximates the float table; the largest entry of a column maps to ``limit`` =
    ``min(127, 32767 // (2 nbytes))``, so a token's ``2 nbytes`` rows sum exactly in int16
    (:func:`nibble_sums32`). The arithmetic is ``reference.nibble_table_int8``'s step for step.
    """
    lut = nibble_table(Q, table, q_pad)
    rows = lut.shape[0]
    limit = min(127, max(1, 32767 // max(1, rows // 16)))
    scale = np.ones(q_pad, dtype=np.float32)
    out = np.zeros((rows, q_pad), dtype=np.int8)
    for q in range(q_pad):
        m = 0.0
        for r in range(rows):
            m = max(m, abs(lut[r, q]))
        step = np.float32(m / limit)
        if step >= _TINY:  # else a column of zeros: a (sub)normal-underflowing query token adds nothing
            scale[q] = step
            for r in range(rows):
                out[r, q] = np.int8(min(limit, max(-limit, np.rint(lut[r, q] / np.float64(step)))))
    return out, scale


@intrinsic
def nibble_sums32(typingctx, out, oi, lut, li, packed, pi, nbytes, stride):
    """``out[oi:oi+32] = sum over b < nbytes`` of rows ``32 b + (v >> 4)`` and ``32 b + 16 + (v & 15)`` of
    ``lut`` (columns ``li:li+32``, ``stride`` items per row), ``v = packed[pi + b]``.

    1-D arrays (``out`` int16, ``lut`` int8, ``packed`` uint8); nothing is bounds-checked, nor the int16 sum
    for overflow (:func:`nibble_table_int8` bounds it). High and low halves accumulate in two ``<32 x i16>``
    registers: a row is one sign-extending load and add per 16 columns, and the int8 table of 32 query
    tokens (16 KiB at dim 64, 2 bits) stays in L1 where the float one (64 KiB) did not: stage 3 1.5-2x faster
    on the 1M index (side by side in one process).
    """
    if not (isinstance(out, types.Array) and isinstance(lut, types.Array) and isinstance(packed, types.Array)):
        return None
    if out.dtype != types.int16 or lut.dtype != types.int8 or packed.dtype != types.uint8:
        return None
    if not all(isinstance(x, types.Integer) for x in (oi, li, pi, nbytes, stride)):
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        row_t, acc_t = ir.VectorType(ir.IntType(8), 32), ir.VectorType(ir.IntType(16), 32)
        out_p, lut_p, packed_p = (
            context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 2, 4)
        )
        oi, li, pi, nbytes, stride = (
            context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 3, 5, 6, 7)
        )
        accs = [cgutils.alloca_once_value(builder, ir.Constant(acc_t, [0] * 32)) for _ in range(2)]
        with cgutils.for_range(builder, nbytes) as loop:
            b = loop.index
            v = builder.zext(builder.load(builder.gep(packed_p, [builder.add(pi, b)])), i64)
            high = builder.add(builder.mul(b, i64(32)), builder.lshr(v, i64(4)))
            low = builder.add(builder.add(builder.mul(b, i64(32)), i64(16)), builder.and_(v, i64(15)))
            for acc, row in zip(accs, (high, low)):
                start = builder.add(builder.mul(row, stride), li)
                x = builder.load(builder.bitcast(builder.gep(lut_p, [start]), row_t.as_pointer()), align=1)
                builder.store(builder.add(builder.load(acc), builder.sext(x, acc_t)), acc)
        total = builder.add(builder.load(accs[0]), builder.load(accs[1]))
        builder.store(total, builder.bitcast(builder.gep(out_p, [oi]), acc_t.as_pointer()), align=2)
        return context.get_dummy_value()

    return types.void(out, oi, lut, li, packed, pi, nbytes, stride), codegen


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
            fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]), "llvm.fma.v8f32")
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
