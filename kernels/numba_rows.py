"""Row helpers shared by the Numba kernels: vector code LLVM does not find on its own.

Running maxima over rows (a document's best score per query token) are the inner loop of stages 2-4 and of
the probe. Written in place, ``best[q] = max(best[q], row[q])`` compiles to scalar code (LLVM does not
vectorise that store of a select of its own load); written to another buffer it becomes AVX ``vmaxps``.
So callers keep two rows of a buffer and alternate them after each row: 3-5x faster per row (32 query
tokens, rows in L1/L2, side by side).

Decompression adds each byte's 4 (2-bit) or 2 (4-bit) residual values to as many centroid values; written
out per element those adds compiled to scalar ``vaddss`` too, so :data:`add4` / :data:`add2` emit the one
vector add.

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


@njit(cache=True, nogil=True)  # no fastmath: the same float32 operations as reference.nibble_table_int8
def nibble_table(Q, table, q_pad):
    """``[nbytes * 32, q_pad]`` float32: what each half byte of a packed residual adds to each query token.

    Row ``32 b + h`` holds, for every query token, the dot product of the dimensions that the high half
    ``h`` of byte ``b`` encodes with their bucket weights; row ``32 b + 16 + l`` the same for the low half.
    Summed over a token's bytes, that is ``Q @ residual`` for the token. Columns past ``len(Q)`` are 0.
    Half bytes rather than bytes: 32 rows per byte instead of 256.
    """
    q_len = Q.shape[0]
    nbytes, _, per_byte = table.shape
    half = per_byte // 2
    out = np.zeros((nbytes * 32, q_pad), dtype=np.float32)
    for b in range(nbytes):
        for h in range(16):
            for k in range(half):
                w_high, w_low = table[b, h << 4, k], table[b, h, half + k]  # the other half byte is 0
                for q in range(q_len):
                    out[b * 32 + h, q] += w_high * Q[q, b * per_byte + k]
                    out[b * 32 + 16 + h, q] += w_low * Q[q, b * per_byte + half + k]
    return out


@njit(cache=True, nogil=True)
def nibble_table_int8(Q, table, q_pad):
    """:func:`nibble_table` rounded to int8 per column: ``(lut [nbytes * 32, q_pad] int8, scale [q_pad])``.

    ``lut * scale`` approximates the float table; the largest entry of a column maps to ``limit`` =
    ``min(127, 32767 // (2 nbytes))``, so a token's ``2 nbytes`` rows sum exactly in int16
    (:func:`nibble_sums32`). The arithmetic is ``reference.nibble_table_int8``'s step for step, so both round alike.
    """
    lut = nibble_table(Q, table, q_pad)
    rows = lut.shape[0]
    limit = min(127, 32767 // max(1, rows // 16))
    scale = np.ones(q_pad, dtype=np.float32)
    out = np.zeros((rows, q_pad), dtype=np.int8)
    for q in range(q_pad):
        m = np.float32(0.0)
        for r in range(rows):
            m = max(m, abs(lut[r, q]))
        if m > 0:
            scale[q] = np.float32(np.float64(m) / limit)
            for r in range(rows):
                out[r, q] = np.int8(np.rint(np.float64(lut[r, q]) / np.float64(scale[q])))
    return out, scale


@intrinsic
def nibble_sums32(typingctx, out, oi, lut, li, packed, pi, nbytes, stride):
    """``out[oi:oi+32] = sum over b < nbytes`` of rows ``32 b + (v >> 4)`` and ``32 b + 16 + (v & 15)`` of
    ``lut`` (columns ``li:li+32``, ``stride`` items per row), ``v = packed[pi + b]``.

    1-D arrays (``out`` int16, ``lut`` int8, ``packed`` uint8); nothing is bounds-checked, nor the int16 sum
    for overflow (:func:`nibble_table_int8` bounds it). High and low halves accumulate in two ``<32 x i16>``
    registers: a row is one sign-extending load and add per 16 columns, and the int8 table of 32 query
    tokens (16 KiB at dim 64, 2 bits) stays in L1 where the float one (64 KiB) did not: stage 3 1.6-2x faster
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
