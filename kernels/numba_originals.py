"""Numba kernels of the full-precision rerank: a segment's stored float16 vectors (``originals.npy``) read by
position, only the candidates' rows, and exact MaxSim on them accumulated in float32.

Same contracts as :mod:`colbert_index.kernels.reference` (``exact_maxsim_originals``, ``read_rows``). Numba has
no float16 type on the CPU, so rows travel as their uint16 bits and are widened by :func:`half_to_float`: one
``vcvtph2ps`` per eight values where the target CPU has F16C (``fcvt`` on ARM), integer bit operations elsewhere
(:func:`.numba_llvm.half_in_hardware`). The reads are ``pread`` calls on the file, not a memory map: the rows go
through a buffer of the call, so a search touches no mapped page and the process's resident memory does not grow
with the rows it has reranked; they are announced to the kernel first, so that cold ones are read in parallel
(docs/design-notes.md).
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from . import reference
from .numba_llvm import half_in_hardware
from .numba_rows import row_scores
from .numba_scoring import segment_max_sum

HALF_IN_HARDWARE = half_in_hardware()
_BLOCK = 32  # documents per parallel work item
_BLOCK_TOKENS = 4096  # widened tokens per row_scores call (as stage 4's decompressed blocks)
_pread = types.ExternalFunction("pread", types.int64(types.int32, types.voidptr, types.uint64, types.int64))
_fadvise = types.ExternalFunction("posix_fadvise", types.int32(types.int32, types.int64, types.int64, types.int32))
# Announce every candidate's rows to the kernel before reading the first (POSIX_FADV_WILLNEED), so that on a cold page
# cache their reads overlap instead of following one another (where the OS has posix_fadvise: not macOS).
WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None) if hasattr(os, "posix_fadvise") else None


@intrinsic
def _half_hw(typingctx, h):
    """float16 bits (uint16) to float32 by LLVM's ``fpext half``: one instruction on F16C / ARMv8 targets."""
    if not isinstance(h, types.Integer) or h.bitwidth != 16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(h), codegen


@njit(cache=True, nogil=True, inline="always")
def _half_sw(h):
    """float16 bits (uint16) to float32 by integer operations, exact for every value (subnormals, inf, NaN)."""
    x = np.uint32(h)
    sign = (x & np.uint32(0x8000)) << np.uint32(16)
    em = x & np.uint32(0x7FFF)
    normal = (em << np.uint32(13)) + np.uint32((127 - 15) << 23)
    special = (em << np.uint32(13)) | np.uint32(0x7F800000)  # inf, NaN
    sub = np.float32(np.float32(em) * np.float32(2.0**-24)).view(np.uint32)  # subnormals and zero, exactly
    bits = special if em >= np.uint32(0x7C00) else (sub if em < np.uint32(0x0400) else normal)
    return np.uint32(bits | sign).view(np.float32)


half_to_float = _half_hw if HALF_IN_HARDWARE else _half_sw


@njit(cache=True, nogil=True, parallel=True)
def widen_docs(src, offsets, candidates, rows, out):
    """The float16 rows (uint16 bits, ``src [n, dim]``) of ``candidates[i]`` into ``out[rows[i] : rows[i + 1]]``
    as float32, one document after another."""
    n = candidates.shape[0]
    dim = src.shape[1]
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        for i in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            d = candidates[i]
            lo, r = offsets[d], rows[i]
            for t in range(offsets[d + 1] - lo):
                for j in range(dim):
                    out[r + t, j] = half_to_float(src[lo + t, j])


def exact_maxsim_originals(Q, originals, offsets, candidates):
    """``reference.exact_maxsim_originals``: blocks of about ``_BLOCK_TOKENS`` candidate tokens widened to float32
    (:func:`widen_docs`), scored by :func:`numba_rows.row_scores`, maxima per document (stage 4's structure, with
    the widening in place of the decompression). ``originals``: float16 ``[n, dim]`` (an array, a memory map, or
    the rows :func:`read_rows` gathered)."""
    candidates = np.asarray(candidates)
    n = len(candidates)
    out = np.zeros(n, dtype=np.float32)
    if n == 0:
        return out
    src = np.asarray(originals)
    if src.dtype != np.float16 or src.ndim != 2 or src.shape[1] != Q.shape[1]:
        raise ValueError(f"originals must be float16 [n, {Q.shape[1]}], got {src.dtype} {src.shape}")
    src = src.view(np.uint16)
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    lengths = offsets[candidates + 1] - offsets[candidates]
    local = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=local[1:])
    size = min(int(local[-1]), _BLOCK_TOKENS + int(lengths.max()))
    buf = np.empty((size, Q.shape[1]), np.float32)
    scores = np.empty((size, Q.shape[0]), np.float32)
    i = 0
    while i < n:
        j = min(n, max(i + 1, int(np.searchsorted(local, local[i] + _BLOCK_TOKENS, side="right")) - 1))
        m = int(local[j] - local[i])
        if m:
            rows = local[i : j + 1] - local[i]
            widen_docs(src, offsets, candidates[i:j], rows, buf)
            row_scores(buf[:m], Q, scores)
            out[i:j] = segment_max_sum(scores[:m], rows)
        i = j
    return out


@njit(cache=True, nogil=True)
def _announce(fd, data_offset, row_bytes, offsets, candidates, advice):
    """``posix_fadvise(advice)`` on each candidate's rows: with WILLNEED the kernel starts reading the uncached ones."""
    for i in range(candidates.shape[0]):
        d = candidates[i]
        n = (offsets[d + 1] - offsets[d]) * row_bytes
        if n > 0:  # a length of 0 would mean "to the end of the file"
            _fadvise(fd, data_offset + offsets[d] * row_bytes, n, advice)


@njit(cache=True, nogil=True)
def _read_rows(fd, data_offset, row_bytes, offsets, candidates, out):
    """``pread`` each candidate's rows into ``out`` (uint16, room checked by the caller); rows read, or -1."""
    base = out.ctypes.data
    pos = 0
    for i in range(candidates.shape[0]):
        d = candidates[i]
        want = (offsets[d + 1] - offsets[d]) * row_bytes
        at = data_offset + offsets[d] * row_bytes
        while want > 0:
            got = _pread(fd, base + pos, want, at)
            if got <= 0:
                return -1
            pos += got
            at += got
            want -= got
    return pos // row_bytes


def read_rows(fd, data_offset, offsets, candidates, out):
    """``reference.read_rows`` with one ``pread`` per document from a Numba loop (no GIL held), every document's
    rows announced first (:data:`WILLNEED`: 3.4x faster reads of 128 documents on a cold page cache, 5% slower on a
    warm one, docs/design-notes.md). A failed call
    (an interrupted one included) is retried through the reference, which retries interrupted reads and raises
    ``OSError`` on errors; -1 still means that the file ends before the rows."""
    candidates = np.asarray(candidates)
    total = int((offsets[candidates + 1] - offsets[candidates]).sum()) if len(candidates) else 0
    if not out.flags.c_contiguous or out.shape[0] < total or out.itemsize != 2:
        got = f"{out.dtype} {out.shape}"
        raise ValueError(f"read_rows: out must be C-contiguous 16-bit with >= {total} rows, got {got}")
    row_bytes = out.shape[1] * 2
    if WILLNEED is not None and len(candidates) > 1:
        _announce(int(fd), int(data_offset), row_bytes, offsets, candidates, WILLNEED)
    got = _read_rows(int(fd), int(data_offset), row_bytes, offsets, candidates, out.view(np.uint16))
    return got if got >= 0 else reference.read_rows(fd, data_offset, offsets, candidates, out)
