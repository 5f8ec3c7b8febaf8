"""Validation and normalisation of user inputs: document embeddings, doc ids and queries."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from colbert_index.storage.originals import HEADER_BYTES, RowWriter


def show_progress(enabled: bool | None) -> bool:
    """Whether to draw progress bars: as asked, or (``None``) when stderr is a terminal."""
    return sys.stderr.isatty() if enabled is None else bool(enabled)


def _as_float_matrix(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().float().numpy()
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{what}: expected a float array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D [tokens, dim] array, got shape {a.shape}")
    return a


def _check_finite(a: np.ndarray, what: str) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{what}: contains NaN or inf (first at row {bad[0]}, column {bad[1]})")


def iter_documents(doc_embeddings, doc_lengths=None) -> Iterable[np.ndarray]:
    """Yield one ``[n_i, dim]`` array per document from any accepted input form.

    Accepted: a list of ``[n_i, dim]`` arrays; an iterable of such lists (batches); with
    ``doc_lengths``, one flat ``[n_tokens, dim]`` array; or a list of flat shards (e.g. ``.npy`` files
    opened with ``mmap_mode="r"``) with a list of their ``doc_lengths``, read one document at a time.
    """
    if isinstance(doc_lengths, (list, tuple)) and isinstance(doc_embeddings, (list, tuple)) and doc_lengths:
        if all(np.ndim(x) == 1 for x in doc_lengths) and all(np.ndim(x) == 2 for x in doc_embeddings):
            if len(doc_lengths) != len(doc_embeddings):
                raise ValueError(f"{len(doc_embeddings)} shards but {len(doc_lengths)} doc_lengths arrays")
            for shard, lengths in zip(doc_embeddings, doc_lengths):
                yield from iter_documents(shard, lengths)
            return
    if doc_lengths is not None:
        flat = _as_float_matrix(doc_embeddings, "doc_embeddings")
        lengths = np.asarray(doc_lengths, dtype=np.int64)
        if lengths.ndim != 1 or int(lengths.sum()) != len(flat):
            raise ValueError(
                f"doc_lengths must be 1-D and sum to the {len(flat)} rows of doc_embeddings "
                f"(got sum {int(lengths.sum()) if lengths.ndim == 1 else 'n/a'})"
            )
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for i in range(len(lengths)):
            yield flat[offsets[i] : offsets[i + 1]]
        return
    if isinstance(doc_embeddings, np.ndarray) and doc_embeddings.ndim == 2:
        raise ValueError("a flat [n_tokens, dim] array needs doc_lengths; or pass a list of per-document arrays")
    for item in doc_embeddings:
        if isinstance(item, (list, tuple)):  # a batch of documents
            yield from item
        elif isinstance(item, np.ndarray) and item.ndim == 3:  # a padded batch has no lengths: refuse
            raise ValueError("a 3-D batch is ambiguous (padding?); pass a list of [n_i, dim] arrays")
        else:
            yield item


def check_document(doc, i: int, dim: int | None) -> np.ndarray:
    """Validate document ``i`` (2-D float, non-empty, finite, same dim as the first) and return it."""
    a = _as_float_matrix(doc, f"document {i}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"document {i}: dim {a.shape[1]} differs from the first document's dim {dim}")
    if len(a) == 0:
        raise ValueError(f"document {i} is empty: every document needs at least one token embedding")
    _check_finite(a, f"document {i}")
    return a


class Spill:
    """Tokens spilled to a float16 ``.npy`` file ``[n_tokens, dim]`` (:class:`.storage.originals.RowWriter`), read
    back in sequential blocks. A segment written with ``keep_originals`` keeps it as its ``originals.npy``.

    Plain reads rather than a memory map: mapped pages would count towards the build's resident memory.
    """

    def __init__(self, path: Path, n_tokens: int, dim: int, block_tokens: int = 1 << 16) -> None:
        self.path, self.shape, self.block_tokens = path, (n_tokens, dim), block_tokens

    def blocks(self, dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, block)`` over the whole file, in order, as ``dtype`` (float16: as stored)."""
        n, dim = self.shape
        with open(self.path, "rb") as f:
            f.seek(HEADER_BYTES)
            for lo in range(0, n, self.block_tokens):
                count = min(self.block_tokens, n - lo) * dim
                yield lo, np.fromfile(f, dtype=np.float16, count=count).reshape(-1, dim).astype(dtype, copy=False)

    def rows(self, *indices: np.ndarray) -> list[np.ndarray]:
        """The float32 rows at each sorted index array, gathered in one sequential pass."""
        out = [np.empty((len(idx), self.shape[1]), np.float32) for idx in indices]
        for lo, block in self.blocks(np.float16):  # only the gathered rows are converted
            for idx, dst in zip(indices, out):
                a, b = np.searchsorted(idx, [lo, lo + len(block)])
                dst[a:b] = block[idx[a:b] - lo]
        return out


def spill_documents(doc_embeddings, doc_lengths, spill_path: Path, progress: bool = False, transform=None):
    """Validate every document while appending its tokens as float16 to ``spill_path``; ``transform`` (e.g.
    token pooling, :mod:`colbert_index.pooling`) maps each validated document to the tokens stored.

    Returns ``(Spill, doclens int64 [n_docs])``. Only the current document is held in memory, so a
    generator of any length can be indexed.
    """
    lengths = array("q")
    dim, out = None, None
    try:
        docs = iter_documents(doc_embeddings, doc_lengths)
        for i, doc in enumerate(tqdm(docs, desc="read", unit="doc", disable=not progress)):
            a = check_document(doc, i, dim)
            dim = a.shape[1]
            if transform is not None:
                a = transform(a)
            if a.dtype != np.float16 and np.abs(a).max() > np.finfo(np.float16).max:
                raise ValueError(f"document {i}: values beyond the float16 range (|x| > 65504)")
            out = RowWriter(spill_path, dim) if out is None else out
            out.write(a)
            lengths.append(len(a))
    finally:
        if out is not None:
            out.close()
    if not lengths:
        raise ValueError("empty corpus: doc_embeddings holds no documents")
    doclens = np.frombuffer(lengths, dtype=np.int64).copy()
    return Spill(spill_path, int(doclens.sum()), dim), doclens


def normalize_doc_ids(doc_ids, n_docs: int) -> np.ndarray | list[str] | None:
    """``None`` (ids are 0..n-1), an int64 array, or a list of strings. Raises on duplicates/length."""
    if doc_ids is None:
        return None
    ids = list(doc_ids) if not isinstance(doc_ids, np.ndarray) else doc_ids
    if len(ids) != n_docs:
        raise ValueError(f"doc_ids has {len(ids)} entries for {n_docs} documents")
    if all(isinstance(x, str) for x in ids):
        out: np.ndarray | list[str] = [str(x) for x in ids]
        n_unique = len(set(out))
    else:
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"doc_ids must be all integers or all strings, got dtype {arr.dtype}")
        out = arr.astype(np.int64)
        n_unique = len(np.unique(out))
    if n_unique != n_docs:
        raise ValueError(f"doc_ids contains {n_docs - n_unique} duplicate id(s)")
    return out


def normalize_queries(Q, dim: int, query_lengths: Sequence[int] | np.ndarray | None = None) -> list[np.ndarray]:
    """Turn ``[q_len, dim]``, ``[n_q, q_len, dim]`` (+ lengths or a boolean mask) or a list of 2-D
    arrays into a list of float32 C-contiguous ``[q_len_i, dim]`` queries."""
    if hasattr(Q, "detach"):
        Q = Q.detach().cpu().float().numpy()
    if isinstance(Q, (list, tuple)):
        queries = [_as_float_matrix(q, f"query {i}") for i, q in enumerate(Q)]
        if query_lengths is not None:
            raise ValueError("query_lengths applies to a padded 3-D batch, not to a list of queries")
    else:
        a = np.asarray(Q)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3:
            raise ValueError(f"queries: expected [q_len, dim] or [n_q, q_len, dim], got shape {a.shape}")
        if query_lengths is None:
            queries = list(a)
        else:
            lens = np.asarray(query_lengths)
            if lens.dtype == bool:  # a mask [n_q, q_len]
                if lens.shape != a.shape[:2]:
                    raise ValueError(f"query mask shape {lens.shape} does not match queries {a.shape[:2]}")
                queries = [a[i][lens[i]] for i in range(len(a))]
            else:
                if lens.shape != (len(a),) or (lens < 0).any() or (lens > a.shape[1]).any():
                    raise ValueError(f"query_lengths must be {len(a)} ints in [1, {a.shape[1]}]")
                queries = [a[i, : int(n)] for i, n in enumerate(lens)]
    out = []
    for i, q in enumerate(queries):
        if q.shape[-1] != dim:
            raise ValueError(f"query {i}: dim {q.shape[-1]} does not match the index dim {dim}")
        if len(q) == 0:
            raise ValueError(f"query {i} has no tokens")
        _check_finite(q, f"query {i}")
        out.append(np.ascontiguousarray(q, dtype=np.float32))
    if not out:
        raise ValueError("no queries given")
    return out
