"""Stage 0 in int8: query tokens rounded to int8 against the int8 centroids the codec stores, on CPUs with VNNI or
AVX2.

``vpdpbusd`` (VNNI) multiplies four unsigned bytes by four signed bytes and adds them to an int32 lane: 32
products per 256-bit instruction where a float FMA does 8. The centroids are stored as int8 with one scale per
row (:func:`colbert_index.codec.quantize_centroids`); offset by 128 they are the unsigned operand, and the query
tokens, rounded to int8 with one scale each (:func:`quantize_query`), the signed one. Without VNNI, AVX2's
``vpmaddubsw`` + ``vpmaddwd`` compute the same sums from the centroids' magnitudes and the query bytes carrying
the centroids' signs, so that no int16 pair saturates (:mod:`.numba_avx2`). The integer products are exact either
way, so the scores are ``reference.centroid_scores_int8``'s to the bit; they differ from the float scores by the
query's rounding only. About twice as fast as the float kernels on AVX2, several times with VNNI, on large
codebooks (docs/design-notes.md).

The instruction set is the one of the CPU Numba compiles for (:data:`INT8_DOT`, from
:func:`.numba_llvm.target_isa`). Where it has neither, the float kernels stay: the backend's optional
``query_tables_int8`` is then ``None`` (kernels/contract.py).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import numba_avx2
from .numba_ivf import _trailing_zeros, probe_insert
from .numba_llvm import llvm_function, target_isa
from .numba_scoring import int8_rows

HAS_VNNI = "vnni" in target_isa()
# how the int8 kernels multiply bytes on Numba's target CPU: vpdpbusd, vpmaddubsw + vpmaddwd, or not at all (None)
INT8_DOT = "vnni" if HAS_VNNI else "avx2" if numba_avx2.HAS_AVX2 else None


@njit(cache=True, nogil=True)
def quantize_query(Q, dim_pad, q_pad):
    """``(packed [dim_pad // 4, q_pad] int32, scale [q_pad] float32, byte_sums [q_pad] int32)``.

    Query token ``q`` rounded to int8 over ``scale[q] = max |Q[q]| / 127`` (1 for an all-zero token), four
    consecutive dimensions per int32 (little end first), zero past ``dim`` and ``q_len``; ``byte_sums`` is
    128 times each token's sum of int8 values, what the offset of the centroid bytes adds to its dot products.
    Float32 arithmetic without fastmath: ``reference.quantize_query``'s to the bit.
    """
    q_len, dim = Q.shape
    packed = np.zeros((dim_pad // 4, q_pad, 4), dtype=np.int8)
    scale = np.ones(q_pad, dtype=np.float32)
    byte_sums = np.zeros(q_pad, dtype=np.int32)
    for q in range(q_len):
        peak = np.float32(0.0)
        for j in range(dim):
            peak = max(peak, abs(np.float32(Q[q, j])))
        s = peak / np.float32(127.0) if peak > 0 else np.float32(1.0)
        scale[q] = s
        total = 0
        for j in range(dim):
            v = np.int8(min(np.float32(127.0), max(np.float32(-127.0), np.rint(np.float32(Q[q, j]) / s))))
            packed[j // 4, q, j % 4] = v
            total += np.int32(v)
        byte_sums[q] = 128 * total
    return packed.reshape(dim_pad // 4, q_pad * 4).view(np.int32), scale, byte_sums


def _splat(builder, x, vt):
    """``x`` in every lane of a vector of type ``vt`` (8 lanes)."""
    undef = ir.Constant(vt, ir.Undefined)
    lane0 = ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8)
    return builder.shuffle_vector(builder.insert_element(undef, x, ir.IntType(32)(0)), undef, lane0)


def _row_dots(context, builder, isa, nvec, a, a_ty, a0, a1, qp, qp_ty, col):
    """The int32 dot products of two uint8 rows of ``a`` (at byte offsets ``a0``, ``a1``, multiples of 4; int64
    values) with ``nvec`` vectors of query columns from ``col`` of the packed query ``qp [groups, stride]``:
    ``2 * nvec`` allocas of ``<8 x i32>``, the first row's ``nvec`` first, summed over all groups of four bytes
    by ``vpdpbusd`` (``isa`` ``"vnni"``: with the centroid bytes' offset of 128, which the caller subtracts) or
    by :func:`numba_avx2.dot4` (``"avx2"``: the signed products, nothing to subtract). Also returns ``stride``."""
    i32, i64 = ir.IntType(32), ir.IntType(64)
    vi = ir.VectorType(i32, 8)
    a_p = context.make_array(a_ty)(context, builder, a).data
    qp_a = context.make_array(qp_ty)(context, builder, qp)
    groups, stride = (builder.extract_value(qp_a.shape, k) for k in (0, 1))
    if isa == "vnni":
        dp = llvm_function(builder, "llvm.x86.avx512.vpdpbusd.256", vi, vi, vi, vi)
    accs = [cgutils.alloca_once_value(builder, ir.Constant(vi, [0] * 8)) for _ in range(2 * nvec)]
    words = builder.bitcast(a_p, i32.as_pointer())
    w0, w1 = builder.lshr(a0, i64(2)), builder.lshr(a1, i64(2))
    with cgutils.for_range(builder, groups) as loop:
        g = loop.index
        x0 = _splat(builder, builder.load(builder.gep(words, [builder.add(w0, g)]), align=1), vi)
        x1 = _splat(builder, builder.load(builder.gep(words, [builder.add(w1, g)]), align=1), vi)
        if isa == "avx2":  # each row's signs and magnitudes, once for every query vector
            x0, x1 = numba_avx2.centroid_operand(builder, x0), numba_avx2.centroid_operand(builder, x1)
        row = builder.add(builder.mul(g, stride), col)
        for k in range(nvec):
            ptr = builder.bitcast(builder.gep(qp_a.data, [builder.add(row, i64(8 * k))]), vi.as_pointer())
            y = builder.load(ptr, align=4)
            for acc, x in ((accs[k], x0), (accs[nvec + k], x1)):
                if isa == "avx2":
                    builder.store(numba_avx2.dot4(builder, builder.load(acc), x, y), acc)
                else:
                    builder.store(builder.call(dp, [builder.load(acc), x, y]), acc)
    return accs, stride


def _dot2_int8(width: int, isa: str | None):
    """An intrinsic ``dot2(out, a, a0, a1, qp, col, scale, sums, s0, s1, floor, thr, valid, kept, rows16, r0, r1,
    div, room)``: for the two uint8 rows of ``a`` at byte offsets ``a0`` and ``a1`` (multiples of 4) and columns
    ``col:col+width`` of the packed query ``qp [groups, stride]`` (int32, 2-D), ``out[col:col+width] = dot *
    scale * s0`` and ``out[stride + col:...]`` likewise with ``s1`` (``out``: a pair of float rows), ``dot`` the
    int8 products summed over all groups (:func:`_row_dots`; ``sums``: :func:`quantize_query`'s byte sums, which
    the VNNI sums subtract); the same scores over ``div`` rounded and clipped to ``+-room`` go to the int16
    ``rows16[r0 + col:...]`` and ``rows16[r1 + col:...]`` (stage 3's rows, :func:`numba_rows.score_rows_int16`).
    Tested in registers over the first ``valid`` columns: returns the uint64 mask of the columns ``i`` where the
    first row's score exceeds ``floor[col + i]`` (bits 0-31) and the same for the second (bits 32-63), and ORs
    bit 0 (some score of the first row ``>= thr``) and bit 1 (the same for the second) into ``kept[0]``. Indices
    not checked. ``isa``: :data:`INT8_DOT` (``None``: no implementation)."""
    nvec = width // 8

    def dot2(
        typingctx, out, a, a0, a1, qp, col, scale, sums, s0, s1, floor, thr, valid, kept, rows16, r0, r1, div, room
    ):
        arrays = (
            (out, 1, types.float32),
            (rows16, 1, types.int16),
            (div, 1, types.float32),
            (a, 1, types.uint8),
            (qp, 2, types.int32),
            (scale, 1, types.float32),
            (sums, 1, types.int32),
            (floor, 1, types.float32),
            (kept, 1, types.int64),
        )
        if isa is None or not all(isinstance(x, types.Array) and x.ndim == n and x.dtype == t for x, n, t in arrays):
            return None
        if not (s0 == s1 == thr == room == types.float32):
            return None
        if not all(isinstance(x, types.Integer) for x in (a0, a1, col, valid, r0, r1)):
            return None

        def codegen(context, builder, sig, args):
            i32, i64, f32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
            vi, vf = ir.VectorType(i32, 8), ir.VectorType(f32, 8)
            names = ("out", "a", "a0", "a1", "qp", "col", "scale", "sums", "s0", "s1", "floor", "thr", "valid")
            names += ("kept", "rows16", "r0", "r1", "div", "room")
            arg = dict(zip(names, args))
            ty = dict(zip(names, sig.args))

            def data(name):
                return context.make_array(ty[name])(context, builder, arg[name]).data

            def index(name):
                return context.cast(builder, arg[name], ty[name], types.int64)

            out_p, scale_p, sums_p, floor_p, kept_p, rows16_p, div_p = (
                data(n) for n in ("out", "scale", "sums", "floor", "kept", "rows16", "div")
            )
            a0, a1, col, r0, r1 = (index(n) for n in ("a0", "a1", "col", "r0", "r1"))
            accs, stride = _row_dots(context, builder, isa, nvec, arg["a"], ty["a"], a0, a1, arg["qp"], ty["qp"], col)

            def at(ptr, i, vt):  # the vector at element i of ptr
                return builder.bitcast(builder.gep(ptr, [i]), vt.as_pointer())

            i1v, i16v = ir.VectorType(ir.IntType(1), 8), ir.VectorType(ir.IntType(16), 8)
            any_of = llvm_function(builder, "llvm.vector.reduce.or.v8i1", ir.IntType(1), i1v)
            rint = llvm_function(builder, "llvm.rint.v8f32", vf, vf)
            valid = _splat(builder, context.cast(builder, arg["valid"], ty["valid"], types.int32), vi)
            thr, room = _splat(builder, arg["thr"], vf), _splat(builder, arg["room"], vf)
            neg_room = builder.fsub(ir.Constant(vf, [0.0] * 8), room)
            above, keep = i64(0), i64(0)
            for first, s, r, row in ((0, arg["s0"], r0, 0), (nvec, arg["s1"], r1, 1)):
                row_keep = ir.Constant(i1v, [0] * 8)
                for k in range(nvec):
                    c = builder.add(col, i64(8 * k))
                    dot = builder.load(accs[first + k])
                    if isa == "vnni":  # the centroid bytes' offset of 128
                        dot = builder.sub(dot, builder.load(at(sums_p, c, vi), align=4))
                    v = builder.fmul(builder.sitofp(dot, vf), builder.load(at(scale_p, c, vf), align=4))
                    v = builder.fmul(v, _splat(builder, s, vf))
                    builder.store(v, at(out_p, builder.add(builder.mul(stride, i64(row)), c), vf), align=4)
                    q16 = builder.call(rint, [builder.fdiv(v, builder.load(at(div_p, c, vf), align=4))])
                    q16 = builder.select(builder.fcmp_ordered(">", q16, room), room, q16)
                    q16 = builder.select(builder.fcmp_ordered("<", q16, neg_room), neg_room, q16)
                    builder.store(builder.fptosi(q16, i16v), at(rows16_p, builder.add(r, c), i16v), align=2)
                    lanes = builder.icmp_signed("<", ir.Constant(vi, list(range(8 * k, 8 * k + 8))), valid)
                    gt = builder.fcmp_ordered(">", v, builder.load(at(floor_p, c, vf), align=4))
                    bits = builder.zext(builder.bitcast(builder.and_(gt, lanes), ir.IntType(8)), i64)
                    above = builder.or_(above, builder.shl(bits, i64(32 * row + 8 * k)))
                    row_keep = builder.or_(row_keep, builder.and_(builder.fcmp_ordered(">=", v, thr), lanes))
                keep = builder.or_(keep, builder.shl(builder.zext(builder.call(any_of, [row_keep]), i64), i64(row)))
            builder.store(builder.or_(builder.load(kept_p), keep), kept_p)
            return above

        sig = (out, a, a0, a1, qp, col, scale, sums, s0, s1, floor, thr, valid, kept, rows16, r0, r1, div, room)
        return types.uint64(*sig), codegen

    dot2.__name__ = f"dot2_int8x{width}"
    return intrinsic(dot2)


def _scores2_int8(width: int, isa: str | None):
    """An intrinsic ``scores2(out, o, a, a0, a1, qp, col, scale, sums, s0, s1)``: :func:`_dot2_int8`'s float
    scores of two rows, to ``out[o + col:o + col + width]`` and ``out[o + stride + col:...]``, and nothing else:
    stage 0 alone."""
    nvec = width // 8

    def scores2(typingctx, out, o, a, a0, a1, qp, col, scale, sums, s0, s1):
        arrays = ((out, 1, types.float32), (a, 1, types.uint8), (qp, 2, types.int32), (scale, 1, types.float32))
        arrays += ((sums, 1, types.int32),)
        if isa is None or not all(isinstance(x, types.Array) and x.ndim == n and x.dtype == t for x, n, t in arrays):
            return None
        if not (s0 == s1 == types.float32 and all(isinstance(x, types.Integer) for x in (o, a0, a1, col))):
            return None

        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            vi, vf = ir.VectorType(ir.IntType(32), 8), ir.VectorType(ir.FloatType(), 8)
            out_p, scale_p, sums_p = (
                context.make_array(sig.args[k])(context, builder, args[k]).data for k in (0, 7, 8)
            )
            o, a0, a1, col = (context.cast(builder, args[k], sig.args[k], types.int64) for k in (1, 3, 4, 6))
            accs, stride = _row_dots(
                context, builder, isa, nvec, args[2], sig.args[2], a0, a1, args[5], sig.args[5], col
            )

            def at(ptr, i, vt):
                return builder.bitcast(builder.gep(ptr, [i]), vt.as_pointer())

            for first, s, row in ((0, args[9], 0), (nvec, args[10], 1)):
                for k in range(nvec):
                    c = builder.add(col, i64(8 * k))
                    dot = builder.load(accs[first + k])
                    if isa == "vnni":
                        dot = builder.sub(dot, builder.load(at(sums_p, c, vi), align=4))
                    v = builder.fmul(builder.sitofp(dot, vf), builder.load(at(scale_p, c, vf), align=4))
                    v = builder.fmul(v, _splat(builder, s, vf))
                    builder.store(v, at(out_p, builder.add(o, builder.add(builder.mul(stride, i64(row)), c)), vf))
            return context.get_dummy_value()

        return types.void(out, o, a, a0, a1, qp, col, scale, sums, s0, s1), codegen

    scores2.__name__ = f"scores2_int8x{width}"
    return intrinsic(scores2)


dot2_int8x8, dot2_int8x16, dot2_int8x24, dot2_int8x32 = (_dot2_int8(w, INT8_DOT) for w in (8, 16, 24, 32))
scores2_int8x8, scores2_int8x16, scores2_int8x24, scores2_int8x32 = (
    _scores2_int8(w, INT8_DOT) for w in (8, 16, 24, 32)
)


def query_tables(centroids_u8, scales, Q, nprobe, threshold, stage3):
    """Stage 0 and what stages 1, 2 and 3 take from it, in one pass over the centroids: ``(rows16, cells, kept)``.

    The scores are ``reference.centroid_scores_int8``'s (the query tokens rounded to int8,
    :func:`quantize_query`, against ``centroids_u8 [K, dim_pad]``, the stored int8 centroids plus 128 with rows
    padded by 128 to a multiple of 4 bytes, times their ``scales [K]``); they are not kept as floats. ``rows16``:
    ``numba_scoring.refined_interaction_scores(stage3, S)`` (stage 3's int16 rows; ``stage3``: its tables).
    ``cells``: ``probe_cells(S, nprobe)``. ``kept``: ``kept_rows_int8(S, threshold)`` (stage 2's table). Each
    pair of rows is offered to the probe's top lists and the keep test in registers, instead of reading the float
    scores of every centroid again for each (docs/design-notes.md). Needs :data:`INT8_DOT`.
    """
    K = centroids_u8.shape[0]
    remap = np.empty(K, dtype=np.uint16 if K <= 65536 else np.uint32)
    nprobe = max(0, min(int(nprobe), K))
    _, div, room = stage3
    rows16, cells, rows, step = _query_tables(
        centroids_u8, scales, Q, nprobe, np.float32(threshold), remap, div, np.float32(room)
    )
    return rows16, cells, (remap, rows, step)


@njit(cache=True, nogil=True)
def _query_tables(centroids_u8, scales, Q, nprobe, thr, remap, div, room):
    K, dim_pad = centroids_u8.shape
    q_len, q_pad = Q.shape[0], div.shape[0]
    cols = (q_len + 7) // 8 * 8
    qp, scale, sums = quantize_query(Q, dim_pad, cols)
    rows16 = np.empty((K, q_pad), dtype=np.int16)
    if cols < q_pad:  # stage 3 reads whole 32-column blocks: the padding is 0
        rows16[:, cols:] = 0
    flat_a, flat16 = centroids_u8.reshape(K * dim_pad), rows16.reshape(K * q_pad)
    pair = np.empty(2 * cols, dtype=np.float32)  # the float scores of the two rows
    top_val = np.empty((q_len, nprobe), dtype=np.float32)  # stage 1: numba_ivf.probe_cells' top lists
    top_id = np.zeros((q_len, nprobe), dtype=np.int32)
    n_top = np.zeros(q_len, dtype=np.int64)
    # the last of each list once full, -inf before; +inf without a probe (and past q_len: whole vectors)
    floor = np.full(cols, -np.inf if nprobe > 0 else np.inf, dtype=np.float32)
    kept = np.empty(K, dtype=np.int64)  # stage 2: the kept centroids and their rows, packed
    kept_rows = np.empty((K, q_len), dtype=np.float32)  # only the first len(kept) rows are ever touched
    n_kept = 0
    keep = np.zeros(1, dtype=np.int64)
    for i in range(0, K, 2):
        i1 = min(i + 1, K - 1)  # an odd last row pairs with itself
        keep[0] = 0
        for j in range(0, cols, 32):
            w = min(32, cols - j)
            args = (qp, j, scale, sums, scales[i], scales[i1], floor, thr, min(32, q_len - j), keep)
            args2 = (flat16, i * q_pad, i1 * q_pad, div, room)
            if w == 32:
                above = dot2_int8x32(pair, flat_a, i * dim_pad, i1 * dim_pad, *args, *args2)
            elif w == 24:
                above = dot2_int8x24(pair, flat_a, i * dim_pad, i1 * dim_pad, *args, *args2)
            elif w == 16:
                above = dot2_int8x16(pair, flat_a, i * dim_pad, i1 * dim_pad, *args, *args2)
            else:
                above = dot2_int8x8(pair, flat_a, i * dim_pad, i1 * dim_pad, *args, *args2)
            if i1 == i:  # an odd last row: once
                above &= np.uint64(0xFFFFFFFF)
            while above:  # the columns where a row enters the top list (rare once the lists fill)
                b = _trailing_zeros(above)
                above &= above - np.uint64(1)
                c, q = (i, j + b) if b < 32 else (i1, j + b - 32)
                v = pair[q] if b < 32 else pair[cols + q]
                if v > floor[q]:  # again: the first row may just have raised it for the second
                    probe_insert(top_val, top_id, n_top, floor, q, v, c)
        for c, bit in ((i, 1), (i1, 2)):
            if keep[0] & bit and (bit == 1 or i1 > i):
                kept[n_kept] = c
                base = 0 if bit == 1 else cols
                for q in range(q_len):
                    kept_rows[n_kept, q] = pair[base + q]
                n_kept += 1
    peak = _abs_max(kept_rows[:n_kept])
    rows, step = int8_rows(kept_rows, np.arange(n_kept), kept[:n_kept], peak, remap)
    return rows16, top_id, rows, step


@njit(cache=True, nogil=True, fastmath=True)
def _abs_max(a):
    """The largest magnitude in ``a`` (finite: fastmath lets the loop vectorise), 0 when empty."""
    peak = np.float32(0.0)
    for r in range(a.shape[0]):
        for q in range(a.shape[1]):
            peak = max(peak, abs(a[r, q]))
    return peak


def centroid_scores_int8(centroids_u8, scales, Q):
    """Stage 0 alone in int8: ``reference.centroid_scores_int8``'s ``[K, q_len]`` float32 scores to the bit, two
    centroid rows at a time (:func:`query_tables`' arithmetic without its tables). Needs :data:`INT8_DOT`."""
    return _centroid_scores_int8(centroids_u8, scales, Q)


@njit(cache=True, nogil=True)
def _centroid_scores_int8(centroids_u8, scales, Q):
    K, dim_pad = centroids_u8.shape
    q_len = Q.shape[0]
    cols = (q_len + 7) // 8 * 8
    qp, scale, sums = quantize_query(Q, dim_pad, cols)
    out = np.empty((K, q_len), dtype=np.float32)
    flat_a, flat_out = centroids_u8.reshape(K * dim_pad), out.reshape(K * q_len)
    pair = np.empty(2 * cols, dtype=np.float32)  # two rows, when out's rows are not whole vectors
    for i in range(0, K, 2):
        i1 = min(i + 1, K - 1)  # an odd last row pairs with itself
        direct = cols == q_len and i1 > i
        dst, o = (flat_out, i * q_len) if direct else (pair, 0)
        for j in range(0, cols, 32):
            w = min(32, cols - j)
            args = (dst, o, flat_a, i * dim_pad, i1 * dim_pad, qp, j, scale, sums, scales[i], scales[i1])
            if w == 32:
                scores2_int8x32(*args)
            elif w == 24:
                scores2_int8x24(*args)
            elif w == 16:
                scores2_int8x16(*args)
            else:
                scores2_int8x8(*args)
        if not direct:
            for q in range(q_len):
                out[i, q] = pair[q]
                out[i1, q] = pair[cols + q]
    return out
