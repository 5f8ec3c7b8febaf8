"""Row helpers shared by the Numba kernels: vector code LLVM does not find on its own.

Running maxima over rows (a document's best score per query token) are the inner loop of stages 2-4 and of
the probe. Written in place, ``best[q] = max(best[q], row[q])`` compiles to scalar code (LLVM does not
vectorise that store of a select of its own load); written to another buffer it becomes AVX ``vmaxps``.
So callers keep two rows of a buffer and alternate them after each row: 3-5x faster per row (32 query
tokens, rows in L1/L2, side by side).

Decompression adds each byte's 4 (2-bit) or 2 (4-bit) residual values to as many centroid values; written
out per element those adds compiled to scalar ``vaddss`` too, so :data:`add4` / :data:`add2` emit the one
vector add.

Stage 3 scores a token's residual against every query token through lookup tables (:func:`nibble_table`):
:func:`nibble_sums32` adds a token's table rows in registers (a loop of row adds through memory waits on
store-to-load forwarding at every byte, and LLVM did not vectorise the loop that sums them in place).
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


@njit(cache=True, nogil=True, fastmath=True)
def nibble_table(Q, table, q_pad):
    """``[nbytes * 32, q_pad]`` float32: what each half byte of a packed residual adds to each query token.

    Row ``32 b + h`` holds, for every query token, the dot product of the dimensions that the high half
    ``h`` of byte ``b`` encodes with their bucket weights; row ``32 b + 16 + l`` the same for the low half.
    Summed over a token's bytes (:func:`nibble_sums32`), that is ``Q @ residual`` for the token. Columns past
    ``len(Q)`` are 0. Half bytes rather than bytes: 64 KiB instead of 512 KiB at dim 64, 32 query tokens.
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


@intrinsic
def nibble_sums32(typingctx, out, oi, lut, li, packed, pi, nbytes, stride):
    """``out[oi:oi+32] = sum over b < nbytes`` of rows ``32 b + (v >> 4)`` and ``32 b + 16 + (v & 15)`` of
    ``lut`` (columns ``li:li+32``, ``stride`` floats per row), ``v = packed[pi + b]``.

    1-D arrays (``out``, ``lut`` float32, ``packed`` uint8); nothing is bounds-checked. High and low halves
    accumulate in two sets of four ``<8 x float>`` registers.
    """
    if not (isinstance(out, types.Array) and isinstance(lut, types.Array) and isinstance(packed, types.Array)):
        return None
    if out.dtype != types.float32 or lut.dtype != types.float32 or packed.dtype != types.uint8:
        return None
    if not all(isinstance(x, types.Integer) for x in (oi, li, pi, nbytes, stride)):
        return None

    def codegen(context, builder, signature, args):
        vt, i64 = ir.VectorType(ir.FloatType(), 8), ir.IntType(64)
        out_p, lut_p, packed_p = (
            context.make_array(signature.args[k])(context, builder, args[k]).data for k in (0, 2, 4)
        )
        oi, li, pi, nbytes, stride = (
            context.cast(builder, args[k], signature.args[k], types.int64) for k in (1, 3, 5, 6, 7)
        )

        def vec(ptr, i):
            return builder.bitcast(builder.gep(ptr, [i]), vt.as_pointer())

        accs = [cgutils.alloca_once_value(builder, ir.Constant(vt, [0.0] * 8)) for _ in range(8)]
        with cgutils.for_range(builder, nbytes) as loop:
            b = loop.index
            v = builder.zext(builder.load(builder.gep(packed_p, [builder.add(pi, b)])), i64)
            high = builder.add(builder.mul(b, i64(32)), builder.lshr(v, i64(4)))
            low = builder.add(builder.add(builder.mul(b, i64(32)), i64(16)), builder.and_(v, i64(15)))
            for first, row in ((0, high), (4, low)):
                start = builder.add(builder.mul(row, stride), li)
                for k in range(4):
                    x = builder.load(vec(lut_p, builder.add(start, i64(8 * k))), align=4)
                    builder.store(builder.fadd(builder.load(accs[first + k]), x), accs[first + k])
        for k in range(4):
            total = builder.fadd(builder.load(accs[k]), builder.load(accs[4 + k]))
            builder.store(total, vec(out_p, builder.add(oi, i64(8 * k))), align=4)
        return context.get_dummy_value()

    return types.void(out, oi, lut, li, packed, pi, nbytes, stride), codegen
