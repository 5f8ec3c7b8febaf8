"""A software prefetch for Numba kernels that walk documents scattered over large arrays.

Stage 2 reads the codes of tens of thousands of candidate documents spread over the whole index
(120 MB of codes at 60M tokens): each document costs two dependent cache misses (its offset, then
its codes), and the hardware prefetcher cannot guess the next document. Prefetching a few documents
ahead overlaps those misses (docs/design-notes.md).
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .numba_llvm import llvm_function

# how far ahead (in documents) the offsets, and then the codes, of upcoming candidates are requested
AHEAD_OFFSETS = 32
AHEAD_CODES = 16
_MAX_LINES = 32  # lines requested per document (2 KiB): long documents' later lines come in time anyway


@intrinsic
def prefetch(typingctx, arr, idx):
    """Hint the CPU to bring ``arr[idx]`` into cache (``llvm.prefetch``, read, high locality).

    No effect on results; ``idx`` must be in bounds (the address is computed, not checked).
    """
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        ary_t = signature.args[0]
        ary = context.make_array(ary_t)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, ary_t, ary, [args[1]], wraparound=False)
        i32, i8p = ir.IntType(32), ir.IntType(8).as_pointer()
        fn = llvm_function(builder, "llvm.prefetch.p0", ir.VoidType(), i8p, i32, i32, i32)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def prefetch_range(arr, lo, hi):
    """Request every 64-byte line of ``arr[lo:hi]`` (1-D; one request per line's worth of items)."""
    for p in range(lo, hi, max(1, 64 // arr.itemsize)):
        prefetch(arr, p)


@njit(cache=True, nogil=True, inline="always")
def prefetch_candidate(offsets, candidates, i, arr, row_items):
    """Prefetch ahead of candidate ``i``: the offsets of a far one, the rows of a nearer one in ``arr``.

    ``arr`` is 1-D with ``row_items`` items per token (codes: 1; packed residuals: flattened, nbytes). Every
    64-byte line of the document's rows is requested, not just the first: a 60-token document's codes span
    2-3 lines, its 2-bit residuals 15 (1M index, alternating in one process over the first line alone: stage
    4's decompression 1.13-1.17x, stages 2 and 3 1-5%).
    """
    n = candidates.shape[0]
    if i + AHEAD_OFFSETS < n:
        prefetch(offsets, candidates[i + AHEAD_OFFSETS])
    if i + AHEAD_CODES < n:
        d = candidates[i + AHEAD_CODES]
        lo, hi = offsets[d] * row_items, offsets[d + 1] * row_items
        end = min(hi, lo + _MAX_LINES * (64 // arr.itemsize))
        prefetch_range(arr, lo, end)
        if hi > lo and end == hi:  # the last line, when the rows do not start on a line boundary
            prefetch(arr, hi - 1)
