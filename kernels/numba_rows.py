"""Row helpers shared by the Numba kernels: vector code LLVM does not find on its own.

Running maxima over rows (a document's best score per query token) are the inner loop of stages 2-4 and of
the probe. Written in place, ``best[q] = max(best[q], row[q])`` compiles to scalar code (LLVM does not
vectorise that store of a select of its own load); written to another buffer it becomes AVX ``vmaxps``.
So callers keep two rows of a buffer and alternate them after each row: 3-5x faster per row (32 query
tokens, rows in L1/L2, side by side).

Decompression adds each byte's 4 (2-bit) or 2 (4-bit) residual values to as many centroid values; written
out per element those adds compiled to scalar ``vaddss`` too, so :data:`add4` / :data:`add2` emit the one
vector add.
"""

from __future__ import annotations

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
