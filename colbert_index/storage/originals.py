"""A segment's stored token vectors, float16 (``seg-S/originals.npy``, written with ``keep_originals=True``): the
full-precision rerank reads its candidates' rows from it (docs/search.md, docs/format.md).

The file is a plain ``.npy`` ``[n_tokens, dim]`` float16, in the segment's token order. A build writes it as it
spills the documents (:class:`RowWriter`: the header, whose row count is known only at the end, is written last)
and keeps the spill instead of deleting it; compaction copies the live documents' rows. An opened segment reads
it by position (``pread``, :class:`Originals`), never through a memory map, so searches add nothing to the
process's resident memory.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from colbert_index.errors import IndexFormatError
from colbert_index.storage.manifest import load_entry

FILE = "originals.npy"
_DESCR = npy_format.dtype_to_descr(np.dtype(np.float16))


def npy_header(n_rows: int, dim: int) -> bytes:
    """The ``.npy`` header of float16 ``[n_rows, dim]``: always :data:`HEADER_BYTES` long (numpy pads the shape
    for growth), so that it can be written after the rows."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": _DESCR, "fortran_order": False, "shape": (int(n_rows), int(dim))})
    return buf.getvalue()


HEADER_BYTES = len(npy_header(0, 1))


class RowWriter:
    """float16 rows appended to an ``.npy`` file whose header is written by :meth:`close`, when their number is
    known. Only the rows of one :meth:`write` are in memory at a time."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim, self.n_rows = Path(path), int(dim), 0
        self._f = open(self.path, "wb")
        self._f.write(npy_header(0, self.dim))

    def write(self, rows: np.ndarray) -> None:
        self._f.write(np.ascontiguousarray(rows, dtype=np.float16).tobytes())
        self.n_rows += len(rows)

    def close(self) -> None:
        if self._f.closed:
            return
        header = npy_header(self.n_rows, self.dim)
        if len(header) != HEADER_BYTES:  # pragma: no cover - numpy pads every 2-D header to the same length
            raise RuntimeError(f"{self.path}: an .npy header of {len(header)} bytes, expected {HEADER_BYTES}")
        self._f.seek(0)
        self._f.write(header)
        self._f.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Originals:
    """One segment's ``originals.npy``, opened for positional reads. The file stays open while the object lives (a
    later commit may remove it: the open file keeps it readable, as memory maps keep the other arrays)."""

    def __init__(self, path: Path, data_offset: int, shape: tuple[int, int]) -> None:
        self.path, self.data_offset, self.shape = Path(path), int(data_offset), shape
        self._file = open(self.path, "rb", buffering=0)
        self.fd = self._file.fileno()

    @classmethod
    def open(cls, root: Path, entry, shape: tuple[int, int], verify: bool) -> Originals:
        """The file a segment entry names, checked as every array is (size, checksum, ``.npy`` header) and to be
        float16 of the segment's ``shape``."""
        arr = load_entry(root, entry, mmap=True, verify=verify, name="originals")
        if tuple(arr.shape) != shape or arr.dtype != np.float16:
            where = root / entry["path"]
            raise IndexFormatError(f"{where}: expected shape {shape} float16, got {arr.shape} {arr.dtype}")
        offset = arr.offset if isinstance(arr, np.memmap) else HEADER_BYTES
        del arr
        return cls(root / entry["path"], offset, shape)

    def _short(self) -> IndexFormatError:
        return IndexFormatError(f"{self.path}: shorter than its {self.shape[0]} rows (truncated after it was opened?)")

    def gather(self, offsets: np.ndarray, candidates: np.ndarray, kernels) -> tuple[np.ndarray, np.ndarray]:
        """The candidates' rows, one document after another (float16 ``[their tokens, dim]``), and where each
        starts (int64 ``[len(candidates) + 1]``)."""
        lengths = offsets[candidates + 1] - offsets[candidates]
        local = np.zeros(len(candidates) + 1, dtype=np.int64)
        np.cumsum(lengths, out=local[1:])
        out = np.empty((int(local[-1]), self.shape[1]), np.float16)
        if kernels.read_rows(self.fd, self.data_offset, offsets, candidates, out) != len(out):
            raise self._short()
        return out, local

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` (float16), in one read."""
        out = np.empty((hi - lo, self.shape[1]), np.float16)
        view, pos, at = memoryview(out.reshape(-1).view(np.uint8)), 0, self.data_offset + lo * self.shape[1] * 2
        while pos < len(view):
            got = os.preadv(self.fd, [view[pos:]], at + pos)
            if got <= 0:
                raise self._short()
            pos += got
        return out
