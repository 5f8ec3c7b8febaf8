"""Exact int8 dot products with AVX2 (``vpmaddubsw`` + ``vpmaddwd``), for stage 0 where the CPU has no VNNI.

``vpdpbusd`` (:mod:`.numba_vnni`) adds four unsigned x signed byte products to an int32 lane in one instruction.
AVX2 has ``vpmaddubsw``, which adds two such products into an int16 lane *with saturation*, then ``vpmaddwd``
by ones to add the int16 pairs into int32. With the centroids offset to unsigned bytes (0..255) and query bytes
up to +-127, a pair reaches 2 x 255 x 127 = 64,770 and saturates. So the unsigned operand is the centroid's
magnitude ``|c|`` (``vpabsb``: at most 128) and the signed one the query byte with the centroid's sign
(``vpsignb``: ``q * sign(c)``, at most 127 in magnitude, since the query bytes are clipped to +-127): a pair is
at most 2 x 128 x 127 = 32,512 < 32,767, never saturated, and ``|c| * (q * sign(c)) = c * q``. The sums are the
integer dot products exactly, without the offset's correction, so the scores are ``reference.centroid_scores_int8``'s
to the bit (docs/design-notes.md).

Four instructions per 32 byte products (``vpsignb``, ``vpmaddubsw``, ``vpmaddwd``, ``vpaddd``), two of them
multiplies, where float32 takes four FMAs: emitted through LLVM's x86 intrinsics, used only where
:func:`.numba_llvm.target_isa` finds AVX2 on the CPU Numba compiles for (:data:`HAS_AVX2`).
"""

from __future__ import annotations

from llvmlite import ir

from .numba_llvm import llvm_function, target_isa

HAS_AVX2 = "avx2" in target_isa()

_BYTES = ir.VectorType(ir.IntType(8), 32)
_PAIRS = ir.VectorType(ir.IntType(16), 16)
_LANES = ir.VectorType(ir.IntType(32), 8)


def centroid_operand(builder, words):
    """``(signed, magnitude)`` of broadcast centroid bytes: ``words`` ``<8 x i32>`` holds four bytes of a row of
    ``centroids_u8`` (int8 + 128) in every lane; ``signed`` is the int8 values, ``magnitude`` their ``|c|`` read
    unsigned (-128 gives 128). Computed once per group of four dimensions, shared by every query vector."""
    signed = builder.xor(builder.bitcast(words, _BYTES), ir.Constant(_BYTES, [0x80] * 32))
    absb = llvm_function(builder, "llvm.abs.v32i8", _BYTES, _BYTES, ir.IntType(1))
    return signed, builder.call(absb, [signed, ir.IntType(1)(0)])


def dot4(builder, acc, centroid, query):
    """``acc`` (``<8 x i32>``) plus, in each lane, the four products of the centroid's bytes (``centroid``:
    :func:`centroid_operand`'s pair) with the lane's four int8 query bytes (``query`` ``<8 x i32>``, values in
    +-127), exactly (module docstring)."""
    signed, magnitude = centroid
    psign = llvm_function(builder, "llvm.x86.avx2.psign.b", _BYTES, _BYTES, _BYTES)
    maddubs = llvm_function(builder, "llvm.x86.avx2.pmadd.ub.sw", _PAIRS, _BYTES, _BYTES)
    maddwd = llvm_function(builder, "llvm.x86.avx2.pmadd.wd", _LANES, _PAIRS, _PAIRS)
    q = builder.call(psign, [builder.bitcast(query, _BYTES), signed])
    pairs = builder.call(maddubs, [magnitude, q])
    return builder.add(acc, builder.call(maddwd, [pairs, ir.Constant(_PAIRS, [1] * 16)]))
