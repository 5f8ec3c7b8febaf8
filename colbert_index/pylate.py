"""A drop-in index for PyLate: ``retrieve.ColBERT(index=PyLateIndex(...))`` searches a colbert_index index.

PyLate (``pip install pylate``) encodes texts into token embeddings and retrieves with ``retrieve.ColBERT``, which
hands the queries to an *end-to-end* index (one whose ``is_end_to_end_index`` is true) as
``index(queries_embeddings=..., k=..., subset=...)`` and returns what the index returns: one list per query of
``{"id", "score"}`` dicts, best first. :class:`PyLateIndex` implements that interface of PyLate's
``indexes.PLAID`` (PyLate 1.6: ``pylate/indexes/base.py``, ``plaid.py``, ``retrieve/base.py``) on top of
:class:`colbert_index.Index`; this module never imports PyLate.

Example (``model`` a ``pylate.models.ColBERT``)::

    index = PyLateIndex(index_folder="indexes", index_name="docs", override=True)
    index.add_documents(documents_ids=ids, documents_embeddings=model.encode(texts, is_query=False))
    retriever = retrieve.ColBERT(index=index)
    hits = retriever.retrieve(queries_embeddings=model.encode(queries, is_query=True), k=10)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numba
import numpy as np

from colbert_index.index import Index
from colbert_index.search import SearchParams, check_k
from colbert_index.storage.manifest import MANIFEST

__all__ = ["PyLateIndex"]

Id = str | int


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """A torch tensor, an array or nested lists as a float16/float32 numpy array (other dtypes: float32)."""
    if hasattr(x, "detach"):  # torch.Tensor (bfloat16 has no numpy dtype: float32 first)
        x = x.detach().cpu()
        if str(x.dtype) not in ("torch.float16", "torch.float32"):
            x = x.float()
        x = x.numpy()
    try:
        a = np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{what}: not a rectangular array ({e}); pass a list of 2-D arrays") from None
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise ValueError(f"{what}: expected float embeddings, got dtype {a.dtype}")
    if a.dtype not in (np.float16, np.float32):
        a = a.astype(np.float32)
    return a


def _matrices(x: Any, what: str) -> list[np.ndarray]:
    """One ``[n, dim]`` array (one item), a ``[b, n, dim]`` array (``b`` items) or a sequence of 2-D ones."""
    if isinstance(x, np.ndarray) or hasattr(x, "detach"):
        a = _to_numpy(x, what)
        if a.ndim == 2:
            return [a]
        if a.ndim == 3:
            return list(a)
        raise ValueError(f"{what}: expected a [tokens, dim] or [batch, tokens, dim] array, got shape {a.shape}")
    if isinstance(x, (str, bytes)) or not isinstance(x, Iterable):
        raise TypeError(f"{what}: expected arrays, tensors or a list of them, got {type(x).__name__}")
    items = list(x)
    if items and not (isinstance(items[0], np.ndarray) or hasattr(items[0], "detach")):
        a = _to_numpy(items, what)  # nested lists: one [n, dim] item or a [b, n, dim] batch
        return _matrices(a, what)
    out = [_to_numpy(item, f"{what}[{i}]") for i, item in enumerate(items)]
    for i, a in enumerate(out):
        if a.ndim != 2:
            raise ValueError(f"{what}[{i}]: expected a 2-D [tokens, dim] array, got shape {a.shape}")
    return out


def _ids(documents_ids: Any) -> list[Id]:
    """One id or an iterable of ids as a list of str / int (numpy integers become int)."""
    if isinstance(documents_ids, (str, int, np.integer)):
        documents_ids = [documents_ids]
    if not isinstance(documents_ids, Iterable):
        raise TypeError(f"documents_ids: expected an id or a list of ids, got {type(documents_ids).__name__}")
    out: list[Id] = []
    for d in documents_ids:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (str, int, np.integer)):
            raise TypeError(f"documents_ids: ids are strings (or ints), got {d!r} of type {type(d).__name__}")
        out.append(d if isinstance(d, str) else int(d))
    return out


def _is_id_list(x: Any) -> bool:
    return isinstance(x, (list, tuple, np.ndarray))


class PyLateIndex:
    """A colbert_index index with the interface of PyLate's ``indexes.PLAID``.

    The index lives in the directory ``index_folder/index_name`` (:class:`colbert_index.Index`'s format; the
    compressed index itself is reachable as :attr:`index`).

    Args:
        index_folder, index_name: where the index lives (PyLate's arguments).
        override: ``False`` (PyLate's default): an existing index there is reopened and
            :meth:`add_documents` appends to it. ``True``: the index starts empty; the first
            :meth:`add_documents` replaces what is there (atomically: until then the old files stay).
        nbits: bits per residual dimension, 2 (default) or 4 (PyLate's PLAID defaults to 4).
        nprobe, ndocs, centroid_score_threshold: search parameters (:class:`colbert_index.SearchParams`);
            unset ones follow the defaults for ``k``. ``params``: a whole :class:`SearchParams`, which those three
            override when given.
        n_centroids, kmeans_niters, seed: k-means of the first build (K, iterations, seed).
        device: ``"cpu"`` (default, also for ``None``) or ``"cuda"`` / ``"cuda:N"``: build and search there.
        num_threads: Numba threads for each call (default: Numba's current count); restored afterwards.
        show_progress: progress bars while building / adding (default: when stderr is a terminal).

    Of PyLate's PLAID arguments, ``n_ivf_probe`` and ``ncells`` are taken as ``nprobe``, ``n_full_scores`` as
    ``ndocs`` (as PyLate's Stanford backend does) and ``embedding_size`` is checked against the documents' dim.
    ``use_fast``, ``max_points_per_centroid``, ``n_samples_kmeans``, ``use_triton``, ``batch_size`` and
    ``low_memory`` are accepted and ignored: they tune PyLate's own backends. Other arguments are a ``TypeError``.
    """

    is_end_to_end_index = True

    def __init__(
        self,
        index_folder: str | os.PathLike = "indexes",
        index_name: str = "colbert_index",
        override: bool = False,
        *,
        nbits: int = 2,
        nprobe: int | None = None,
        ndocs: int | None = None,
        centroid_score_threshold: float | None = None,
        params: SearchParams | None = None,
        n_centroids: int | None = None,
        kmeans_niters: int = 4,
        seed: int = 0,
        device: str | None = None,
        num_threads: int | None = None,
        show_progress: bool | None = None,
        # PyLate's PLAID arguments, mapped onto ours
        n_ivf_probe: int | None = None,
        ncells: int | None = None,
        n_full_scores: int | None = None,
        embedding_size: int | None = None,
        # PyLate's PLAID arguments without an effect here
        use_fast: bool = True,
        max_points_per_centroid: int = 256,
        n_samples_kmeans: int | None = None,
        use_triton: bool | None = None,
        batch_size: int = 1 << 18,
        low_memory: bool = False,
    ) -> None:
        if not index_name or not isinstance(index_name, str) or os.sep in index_name:
            raise ValueError(f"index_name must be a non-empty directory name, got {index_name!r}")
        if nbits not in (2, 4):
            raise ValueError(f"nbits must be 2 or 4, got {nbits!r}")
        if device is not None and not isinstance(device, str):
            raise ValueError(f"device: one device string such as 'cpu' or 'cuda:0', got {device!r}")
        probes = {
            n: v for n, v in (("nprobe", nprobe), ("n_ivf_probe", n_ivf_probe), ("ncells", ncells)) if v is not None
        }
        if len(set(probes.values())) > 1:
            raise ValueError(f"nprobe given twice with different values: {probes}")
        if ndocs is not None and n_full_scores is not None and ndocs != n_full_scores:
            raise ValueError(f"ndocs={ndocs} and n_full_scores={n_full_scores} disagree (both set ndocs)")
        p = params if params is not None else SearchParams()
        if not isinstance(p, SearchParams):
            raise TypeError(f"params must be a colbert_index.SearchParams, got {type(p).__name__}")
        given = {
            "nprobe": next(iter(probes.values()), None),
            "ndocs": ndocs if ndocs is not None else n_full_scores,
            "centroid_score_threshold": centroid_score_threshold,
        }
        self.params = replace(p, **{n: v for n, v in given.items() if v is not None})
        self.params.resolved(10)  # fails now on a bad value, not at the first search
        if num_threads is not None and not 1 <= int(num_threads) <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"num_threads must be in [1, {numba.config.NUMBA_NUM_THREADS}], got {num_threads}")
        self.path = Path(index_folder) / index_name
        self.nbits, self.n_centroids, self.kmeans_niters, self.seed = nbits, n_centroids, kmeans_niters, seed
        self.device = device or "cpu"
        self.num_threads = None if num_threads is None else int(num_threads)
        self.show_progress = show_progress
        self.embedding_size = embedding_size
        self._replace = bool(override)  # the first add_documents replaces what is at self.path
        self._index: Index | None = None
        if not override and (self.path / MANIFEST).is_file():
            self._index = Index.open(self.path, device=self.device)
            self._check_dim(self._index.dim)
        elif not override and self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise FileExistsError(
                f"{self.path} exists and is not a colbert_index index; pass override=True to replace it "
                "or choose another index_folder / index_name"
            )

    # ------------------------------------------------------------------ state
    @property
    def index(self) -> Index | None:
        """The :class:`colbert_index.Index` behind this object (``None`` before the first documents)."""
        return self._index

    def __len__(self) -> int:
        return 0 if self._index is None else self._index.n_docs

    def __repr__(self) -> str:
        return f"PyLateIndex({str(self.path)!r}, documents={len(self)})"

    def close(self) -> None:
        """Release the index's memory maps."""
        if self._index is not None:
            self._index.close()
            self._index = None

    def _check_dim(self, dim: int) -> None:
        if self.embedding_size is not None and dim != self.embedding_size:
            raise ValueError(f"embedding_size={self.embedding_size} but the embeddings have dim {dim}")

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """Run the block on ``num_threads`` Numba threads, then restore this thread's setting."""
        before = numba.get_num_threads()
        if self.num_threads is not None:
            numba.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            numba.set_num_threads(before)

    def _require(self) -> Index:
        if self._index is None:
            raise ValueError(f"the index at {self.path} is empty: add documents with add_documents() before searching")
        return self._index

    # ------------------------------------------------------------------ writes
    def _documents(self, documents_ids, documents_embeddings) -> tuple[list[Id], list[np.ndarray]]:
        ids = _ids(documents_ids)
        docs = _matrices(documents_embeddings, "documents_embeddings")
        if len(ids) != len(docs):
            raise ValueError(f"{len(ids)} documents_ids but {len(docs)} documents_embeddings")
        if not docs:
            raise ValueError("no documents given")
        self._check_dim(docs[0].shape[1])
        return ids, docs

    def add_documents(
        self,
        documents_ids: Id | Sequence[Id],
        documents_embeddings: Any,
        *,
        metadata: list[dict | None] | None = None,
        batch_size: int | None = None,
    ) -> PyLateIndex:
        """Add documents and return ``self`` (PyLate's ``PLAID.add_documents``).

        Args:
            documents_ids: one id or a list of ids, strings (ints work too; one kind per index). Ids must not be in
                the index already (``ValueError``; :meth:`update_documents` replaces).
            documents_embeddings: one ``[n_tokens, dim]`` array per document: a list of numpy arrays or torch
                tensors (float16 or float32), a ``[n_docs, n_tokens, dim]`` array, or one 2-D array for one id.
            metadata: one JSON-able dict (or ``None``) per document, for :class:`colbert_index.Index`'s filters.
            batch_size: accepted for PyLate's signature; ignored (the build streams its input).

        The first call builds the index (k-means on these documents' tokens, :meth:`colbert_index.Index.build`);
        later calls add a segment encoded with that codebook (:meth:`colbert_index.Index.add`).
        """
        ids, docs = self._documents(documents_ids, documents_embeddings)
        with self._threads():
            if self._index is None:
                self._index = Index.build(
                    self.path,
                    docs,
                    doc_ids=ids,
                    nbits=self.nbits,
                    n_centroids=self.n_centroids,
                    kmeans_iters=self.kmeans_niters,
                    seed=self.seed,
                    overwrite=self._replace or self.path.exists(),
                    progress=self.show_progress,
                    metadata=metadata,
                    device=self.device,
                )
                self._replace = False
                if self.device != "cpu":
                    self._index = Index.open(self.path, device=self.device)
            else:
                self._index.add(docs, ids, progress=self.show_progress, metadata=metadata)
        return self

    def update_documents(
        self, documents_ids: Id | Sequence[Id], documents_embeddings: Any, *, metadata: list[dict | None] | None = None
    ) -> PyLateIndex:
        """Replace the documents with these ids (those not in the index are added) in one commit; returns ``self``
        (PyLate's ``PLAID.update_documents``; :meth:`colbert_index.Index.upsert`)."""
        if self._index is None:
            return self.add_documents(documents_ids, documents_embeddings, metadata=metadata)
        ids, docs = self._documents(documents_ids, documents_embeddings)
        with self._threads():
            self._index.upsert(docs, ids, progress=self.show_progress, metadata=metadata)
        return self

    def remove_documents(self, documents_ids: Id | Sequence[Id], *, missing_ok: bool = True) -> PyLateIndex:
        """Delete documents by id and return ``self`` (PyLate's ``PLAID.remove_documents``). Ids not in the index are
        skipped, as PyLate's default backend does; ``missing_ok=False`` raises ``KeyError`` naming them instead.
        Their space is reclaimed by ``self.index.compact()``."""
        ids = _ids(documents_ids)
        if self._index is None:
            if ids and not missing_ok:
                raise KeyError(f"{len(ids)} id(s) not in the index (it is empty): {ids[:10]}")
            return self
        if ids:
            self._index.delete(ids, missing_ok=missing_ok)
        return self

    # ------------------------------------------------------------------ reads
    def __call__(
        self,
        queries_embeddings: Any,
        k: int = 10,
        subset: Sequence[Id] | Sequence[Sequence[Id]] | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Top-``k`` documents per query: one list per query of ``{"id": id, "score": float}``, best first.

        Args:
            queries_embeddings: one query ``[q_len, dim]``, a batch ``[n_q, q_len, dim]`` or a list of 2-D queries
                (numpy arrays or torch tensors, float16 or float32).
            k: results per query (fewer when fewer documents are live or allowed).
            subset: only these document ids: one list for every query, or one list per query (ids not in the index
                are ignored; an empty list gives no results).

        Scores are MaxSim over the decompressed residuals (:meth:`colbert_index.Index.search` with the parameters
        given at construction).
        """
        index = self._require()
        k = check_k(k)
        queries = _matrices(queries_embeddings, "queries_embeddings")
        if not queries:
            return []
        queries = [q.astype(np.float32, copy=False) for q in queries]
        if subset is None:
            filters: list[Any] = [None]
        elif not _is_id_list(subset):
            raise TypeError(f"subset: a list of ids or one list of ids per query, got {type(subset).__name__}")
        elif len(subset) and _is_id_list(subset[0]):
            if len(subset) != len(queries):
                raise ValueError(f"subset has {len(subset)} lists of ids for {len(queries)} queries")
            filters = [_ids(s) for s in subset]
        else:
            filters = [_ids(subset)]
        with self._threads():
            if len(filters) == 1:
                return self._search(index, queries, k, filters[0])
            return [self._search(index, [q], k, f)[0] for q, f in zip(queries, filters)]

    def _search(self, index: Index, queries: list[np.ndarray], k: int, allowed: list[Id] | None) -> list[list[dict]]:
        if allowed is not None and not allowed:
            return [[] for _ in queries]
        res = index.search(queries, k=k, params=self.params, filter=allowed)
        return [
            [{"id": i, "score": s} for i, s in zip(ids, scores)]
            for ids, scores in zip(res.ids.tolist(), res.scores.tolist())
        ]

    def get_documents_embeddings(self, documents_ids: Sequence[Sequence[Id]]) -> list[list[np.ndarray]]:
        """The (decompressed) ``[n_tokens, dim]`` float32 embeddings of documents, in the nesting of the ids: one list
        per group of ids (PyLate's ``Base.get_documents_embeddings``); a flat list of ids gives a flat list.
        Unknown ids raise ``KeyError``."""
        index = self._require()
        if not _is_id_list(documents_ids):
            raise TypeError("documents_ids: a list of lists of ids (or a list of ids)")
        if len(documents_ids) and not _is_id_list(documents_ids[0]):
            return [index.reconstruct(d) for d in _ids(documents_ids)]
        return [[index.reconstruct(d) for d in _ids(group)] for group in documents_ids]
