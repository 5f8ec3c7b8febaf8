"""The public :class:`Index`: a façade over the parts. Building is in :mod:`colbert_index.build`, the opened
version in :mod:`colbert_index.snapshot`, the live writes in :mod:`colbert_index.writer`, the stages in
:mod:`colbert_index.search` and :mod:`colbert_index.filters`, the files in :mod:`colbert_index.storage`."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np

from colbert_index import drift as drift_stats
from colbert_index import exact, filters, hybrid, writer
from colbert_index.backend import get_backend, one_blas_thread
from colbert_index.build import build_index
from colbert_index.codec import ResidualCodec
from colbert_index.errors import IndexFormatError
from colbert_index.gpu.device import resolve as resolve_device
from colbert_index.inputs import normalize_queries
from colbert_index.search import SearchParams, SearchResult, check_k, staged_search
from colbert_index.snapshot import Snapshot, as_id_list, read_snapshot
from colbert_index.storage.manifest import MANIFEST
from colbert_index.writer import CommitInfo


class Index:
    """A compressed late-interaction index on disk (docs/format.md).

    Build one with :meth:`build`, open an existing one with :meth:`open`. An opened index is a
    snapshot: it keeps answering from the manifest version it read, whatever writers do, until
    :meth:`refresh`. :meth:`add`, :meth:`delete`, :meth:`upsert` and :meth:`compact` commit a new version
    (one writer at a time, through a lock file) and move this object to it. Use as a context manager or
    call :meth:`close` to release the memory maps.
    """

    def __init__(self, path: Path, snapshot: Snapshot, backend, mmap: bool = True) -> None:
        self.path = path
        self._snap: Snapshot | None = snapshot
        self.backend = backend
        self._mmap = mmap
        self._device = None  # a colbert_index.gpu.device.DeviceSearcher when opened on a device

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        path: str | os.PathLike,
        doc_embeddings,
        doc_ids=None,
        nbits: int = 2,
        n_centroids: int | None = None,
        kmeans_iters: int = 4,
        seed: int = 0,
        *,
        doc_lengths=None,
        overwrite: bool = False,
        progress: bool | None = None,
        backend: str = "auto",
        metadata: list[dict | None] | None = None,
        codec: ResidualCodec | None = None,
        device: str = "cpu",
        pool_factor: int = 1,
        texts: list[str | None] | None = None,
        keep_originals: bool = False,
    ) -> Index:
        """Build an index at ``path`` and return it opened (on the CPU).

        Args:
            doc_embeddings: a list of float ``[n_i, dim]`` arrays (float16/float32, one per document),
                an iterable of such lists (batches), or a flat ``[n_tokens, dim]`` array with ``doc_lengths``.
            doc_ids: external ids (ints or strings, unique); default ``0..n_docs-1``.
            nbits: bits per residual dimension, 2 or 4.
            n_centroids: K; default :func:`colbert_index.codec.default_n_centroids`.
            kmeans_iters, seed: k-means iterations and the seed of every random choice (builds are
                deterministic for a given seed).
            overwrite: replace an existing index at ``path`` (taking its writer lock meanwhile).
            progress: show progress bars (default: when stderr is a terminal).
            metadata: one JSON-able dict (or ``None``) per document, stored in SQLite with the index
                (:mod:`colbert_index.storage.metadata`) for ``search(..., filter=...)`` and :meth:`metadata`.
            codec: encode with this already trained :class:`ResidualCodec` instead of training one (its dim
                and nbits must match; ``n_centroids`` must be None or its K). Sharded builds use it.
            device: ``"cuda"`` (or ``"cuda:N"``) runs k-means and compression on that GPU with torch, exact at
                any K (:mod:`colbert_index.gpu.build`); the files are the same kind. ``device="cpu"`` with
                ``backend="torch"`` runs that path on CPU tensors. Search the result on a GPU with
                ``Index.open(path, device="cuda")``.
            pool_factor: keep about ``n / pool_factor`` vectors per document, clustering similar tokens
                (:mod:`colbert_index.pooling`; 1: every token). Recorded in the manifest as the default of
                :meth:`add`.
            texts: one string (or ``None``) per document, stored with a full-text index for lexical and hybrid
                search (``search(..., text_query=...)``, :mod:`colbert_index.hybrid`) and :meth:`texts`. Like
                ``doc_ids`` and ``metadata``, read after the documents (a generator of batches may fill it).
            keep_originals: also store every token's vector as float16 (``dim * 2`` bytes a token more), which the
                search's last stage then scores exactly: the full-precision rerank (``SearchParams.rerank``). Later
                adds follow this choice.

        Nothing appears at ``path`` unless the whole build succeeds.
        """
        path = Path(path)
        backend = build_index(
            path, doc_embeddings, doc_ids, nbits, n_centroids, kmeans_iters, seed, doc_lengths, overwrite, progress,
            backend, metadata, codec, device, pool_factor, texts, keep_originals,
        )  # fmt: skip
        return cls.open(path, backend=backend)

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        mmap: bool = True,
        backend: str = "auto",
        verify: bool = False,
    ) -> Index:
        """Open the latest committed version of an index, memory-mapping its arrays (``mmap=False`` reads
        them into RAM).

        Everything handed to a kernel is validated first; a damaged index raises
        :class:`IndexFormatError` naming the file. ``verify=True`` also checksums the large arrays and
        checks that no external id is live twice.

        ``device="cuda"`` (or ``"cuda:N"``) copies the arrays search reads to that GPU once, here, and
        :meth:`search` runs every stage there: Triton kernels, or torch ones where triton is missing or does
        not work (logged); ``backend`` then picks ``"auto" | "triton" | "torch"``. On ``device="cpu"``,
        ``backend="torch"`` runs that device pipeline on CPU tensors (:mod:`colbert_index.gpu.device`).
        """
        backend, searcher = resolve_device(device, backend)
        path = Path(path)
        kernels = get_backend(backend)
        index = cls(path, None, kernels, mmap)
        index._snap = index._read_snapshot(None, verify=verify)
        if verify:
            ids = index._snap.live_ids()
            if len(set(ids.tolist())) != len(ids):
                raise IndexFormatError(f"{path / MANIFEST}: an external id is live in two segments")
        if searcher is not None:
            index._device = searcher
            searcher.prepare(index._snap)
        return index

    def _read_snapshot(self, previous: Snapshot | None, verify: bool = False) -> Snapshot:
        """The newest committed version (:func:`colbert_index.snapshot.read_snapshot`)."""
        return read_snapshot(self.path, previous, self.backend, self._mmap, verify)

    def refresh(self) -> bool:
        """Move to the newest committed version; True if there was a newer one. Searches already running
        finish on the version they started with."""
        snap = self._s
        self._snap = self._read_snapshot(snap)
        return self._snap is not snap

    def close(self) -> None:
        """Drop the memory maps; the object is unusable afterwards."""
        self._snap = None
        self._device = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ info
    @property
    def _s(self) -> Snapshot:
        if self._snap is None:
            raise ValueError("index is closed")
        return self._snap

    @property
    def _d(self):
        """The arrays of the only segment (:class:`colbert_index.storage.segments.SegmentData`)."""
        segs = self._s.segments
        if len(segs) != 1:
            raise ValueError(f"the index has {len(segs)} segments, not one; compact() merges them")
        return segs[0].data

    _data = _d

    @property
    def manifest(self) -> dict:
        """The manifest of the version this object reads."""
        return self._s.manifest

    @property
    def codec(self) -> ResidualCodec:
        """The codebook every segment is encoded with."""
        return self._s.codec

    @property
    def generation(self) -> int:
        """The manifest version this object reads (0 after a build, +1 per commit)."""
        return self._s.generation

    @property
    def dim(self) -> int:
        return self._s.codec.dim

    @property
    def nbits(self) -> int:
        return self._s.codec.nbits

    @property
    def n_centroids(self) -> int:
        return self._s.codec.n_centroids

    @property
    def n_docs(self) -> int:
        """Live documents (deleted ones excluded)."""
        return self._s.n_live

    def __len__(self) -> int:
        return self.n_docs

    @property
    def n_tokens(self) -> int:
        """Tokens of the live documents."""
        return sum(s.live_tokens for s in self._s.segments)

    @property
    def n_deleted(self) -> int:
        """Deleted documents whose tokens are still stored (until :meth:`compact`)."""
        return sum(s.n_deleted for s in self._s.segments)

    def segment_info(self) -> list[dict]:
        """Per segment: id, stored docs, deleted docs, stored tokens, drift (see :class:`CommitInfo`), the pool factor
        its tokens were pooled by, whether it keeps the vectors (``keep_originals``)."""
        return [
            {
                "id": s.id,
                "n_docs": s.n_docs,
                "n_deleted": s.n_deleted,
                "n_tokens": len(s.data.codes),
                "drift": (s.entry.get("drift") or {}).get("outside"),
                "pool_factor": s.entry.get("pool_factor", 1),
                "originals": s.data.originals is not None,
            }
            for s in self._s.segments
        ]

    def drift(self) -> dict:
        """Token-weighted drift over the segments (see :class:`CommitInfo`): ``outside`` measured,
        ``expected`` on data like the training data."""
        measured = [
            (s.entry["drift"]["outside"], s.entry["drift"]["tokens"]) for s in self._s.segments if s.entry.get("drift")
        ]
        tokens = sum(t for _, t in measured)
        outside = sum(o * t for o, t in measured) / tokens if tokens else None
        expected = drift_stats.expected_outside(self.manifest, self.nbits)
        return {"outside": outside, "expected": expected, "tokens": tokens}

    def doc_ids(self) -> np.ndarray:
        """External ids of the live documents (int64, or an object array of str), segment by segment."""
        return self._s.live_ids()

    def __contains__(self, doc_id) -> bool:
        try:
            return bool(self._s.lookup(as_id_list(doc_id, self._s.id_type))[0] >= 0)
        except TypeError:
            return False

    def reconstruct(self, doc_id) -> np.ndarray:
        """The decompressed ``[n_tokens, dim]`` float32 token embeddings of one live document."""
        snap = self._s
        pos = snap.lookup(as_id_list(doc_id, snap.id_type))
        if pos[0] < 0:
            raise KeyError(f"no live document with id {doc_id!r}")
        [(i, slots)] = snap.locate(pos)
        d = snap.segments[i].data
        lo, hi = int(d.offsets[slots[0]]), int(d.offsets[slots[0] + 1])
        return d.codec.decompress(np.asarray(d.codes[lo:hi]), np.asarray(d.residuals[lo:hi]), self.backend)

    def metadata(self, doc_ids, *, missing_ok: bool = False) -> list[dict | None]:
        """The metadata of live documents (one id or an iterable), ``None`` for documents added without any.
        Ids that are not live raise ``KeyError`` naming them, unless ``missing_ok`` (then they get ``None``)."""
        return self._s.stored(doc_ids, "meta", missing_ok)

    def texts(self, doc_ids, *, missing_ok: bool = False) -> list[str | None]:
        """The stored texts of live documents (see :meth:`build`), as :meth:`metadata` returns metadata."""
        return self._s.stored(doc_ids, "text", missing_ok)

    def disk_bytes(self) -> int:
        """Bytes of the files this version uses (the manifest included). Files of the previous version
        stay on disk until the next commit; tombstoned documents until :meth:`compact`."""
        m = self._s.manifest
        entries = list(m["codebook"].values())
        for s in m["segments"]:
            entries += list(s["files"].values()) + ([s["deleted"]] if s.get("deleted") else [])
        return sum(int(e["bytes"]) for e in entries) + (self.path / MANIFEST).stat().st_size

    def __repr__(self) -> str:
        if self._snap is None:
            return f"Index({str(self.path)!r}, closed)"
        return (
            f"Index({str(self.path)!r}, docs={self.n_docs}, tokens={self.n_tokens}, dim={self.dim}, "
            f"nbits={self.nbits}, K={self.n_centroids}, segments={len(self._s.segments)}, "
            f"deleted={self.n_deleted}, generation={self.generation}, backend={self.backend.name})"
        )

    def ids_of(self, positions: np.ndarray) -> np.ndarray:
        """External ids of documents by position (segment after segment, deleted ones included)."""
        return self._s.ids_of(positions)

    # ------------------------------------------------------------------ search
    def warmup(self) -> float:
        """Run a single query and a batch of two (made of centroids) so the search kernels are compiled, or
        loaded from Numba's disk cache, and the arrays touched, before real queries come. Returns the seconds
        it took: a fraction of a second with Numba's cache warm, tens of seconds on a fresh install (the compile
        that the first search pays otherwise). :func:`colbert_index.server.create_app` calls it before serving."""
        t0 = time.perf_counter()
        if self.n_docs:
            q = self.codec.centroids[: min(8, self.n_centroids)]
            self.search(q, k=min(10, self.n_docs))
            self.search([q, q[:1]], k=min(10, self.n_docs))
        return time.perf_counter() - t0

    def _search_one(self, snap: Snapshot, Q: np.ndarray, k: int, p: SearchParams, how=None, trace=None):
        """All segments as one index: each stage keeps its best candidates across them (their tombstones
        applied right after the probe). ``how``: the :class:`~colbert_index.filters.FilterPlan` of a filter;
        ``trace``: a dict for what the search did (``explain``)."""
        if not snap.segments:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if how is not None:
            if trace is not None:
                trace["filter"] = type(how).__name__
            return filters.search_filtered(Q, k, how, [s.data for s in snap.segments], self.backend)
        datas, deleted = [s.data for s in snap.segments], [s.deleted for s in snap.segments]
        return staged_search(Q, k, p, datas, self.backend, deleted=deleted, trace=trace)

    def search(
        self,
        Q,
        k: int = 10,
        params: SearchParams | None = None,
        query_lengths=None,
        filter: dict | list | None = None,
        *,
        text_query: str | list[str] | None = None,
        text_mode: str = "any",
        fusion: str | None = "rrf",
        alpha: float = 0.5,
        fusion_depth: int | None = None,
        explain: bool = False,
    ) -> SearchResult:
        """Top-``k`` live documents by approximate-then-exact MaxSim (PLAID's four stages), by BM25 over their
        stored texts, or by both fused.

        Args:
            Q: ``[q_len, dim]`` (one query), ``[n_q, q_len, dim]`` or a list of ``[q_len_i, dim]`` arrays; ``None``
                with a ``text_query``: lexical search alone.
            k: results per query. If the index holds fewer than ``k`` live documents, all of them are
                returned and the result has that many columns (no padding).
            params: :class:`SearchParams`; unset fields follow the PLAID defaults for ``k``.
            query_lengths: for a padded 3-D ``Q``, the real length of each query or a boolean mask
                ``[n_q, q_len]`` (queries need not be padded with [MASK] tokens).
            filter: only documents it allows are returned: a list of allowed ids (ids not in the index are
                ignored), or a dict of conditions on the documents' metadata such as
                ``{"lang": "en", "year": {"$gte": 2020}}`` (:mod:`colbert_index.filters`). When the allowed
                documents are few they are all scored exactly; otherwise the staged search runs on them
                alone with a probe widened by 1 / selectivity (:func:`colbert_index.filters.plan`).
            text_query: a text (a list of texts, one per query, for a batch) searched in the stored texts by BM25
                (:mod:`colbert_index.hybrid`); ``text_mode``: ``"any"`` of its words, ``"all"`` of them, or
                ``"fts5"``, FTS5's query syntax. With ``Q`` the two lists (``fusion_depth`` candidates each, default
                ``max(k, 100)``) are fused: ``fusion="rrf"`` (reciprocal rank) or ``"relative"`` (min-max normalised
                scores), ``alpha`` the dense list's weight; scores are then the fused ones. Rows with fewer matches
                than the longest are padded with score ``-inf``. A query without searchable words, or FTS5 syntax
                errors, raise ``ValueError``.
            explain: also fill ``SearchResult.explain``, one dict per query: the parameters the search used (the
                defaults for ``k`` and the index's size filled in) and each stage's candidates kept and
                milliseconds (docs/search.md).

        All segments are searched as one index: each stage keeps its best candidates across them.
        A batch runs its queries in parallel, one per Numba thread (``numba.set_num_threads``), each
        query's kernels single-threaded; a single query spreads its kernels over the threads instead.
        """
        k = check_k(k)
        snap = self._s
        if text_query is not None or Q is None:
            options = {"text_mode": text_mode, "fusion": fusion, "alpha": alpha, "fusion_depth": fusion_depth}
            return hybrid.search(self, snap, Q, k, params, query_lengths, filter, text_query, options)
        queries = normalize_queries(Q, snap.codec.dim, query_lengths)
        p = (params or SearchParams()).resolved(k, int(snap.bases[-1]))  # documents as default_ndocs counts them
        how = None
        if filter is not None:
            how = filters.plan(filters.allowed(snap, filter), [s.doclens for s in snap.segments], snap.n_live, p)
        traces = [{} for _ in queries] if explain else [None] * len(queries)
        res = snap.result(self._dense(snap, queries, k, p, how, traces))
        res.explain = traces if explain else None
        return res

    def _dense(self, snap: Snapshot, queries: list, k: int, p: SearchParams, how, traces=None) -> list[tuple]:
        """``(scores, positions)`` of each query by the staged search (on the device when there is one and no filter
        plan ``how``), a batch in parallel over the Numba threads; ``traces``: a dict or None per query."""
        traces = traces or [None] * len(queries)
        if self._device is not None and how is None:  # the whole batch on the device (filters stay on CPU)
            for t in filter(None, traces):  # no per-stage trace there
                t["device"] = True
            return self._device.search(snap, queries, k, p)
        n_workers = min(len(queries), numba.get_num_threads()) if self.backend.name == "numba" else 1
        if n_workers <= 1:  # BLAS limited once per call, not once per BLAS kernel (each entry resets the libraries)
            with one_blas_thread():
                return [self._search_one(snap, q, k, p, how, t) for q, t in zip(queries, traces)]

        def one(qt: tuple):
            numba.set_num_threads(1)  # thread-local: this worker's kernels stay on its own core
            return self._search_one(snap, qt[0], k, p, how, qt[1])

        # the kernels release the GIL (nogil=True); BLAS (the numpy backend's products) on one thread per worker
        with one_blas_thread(), ThreadPoolExecutor(n_workers) as pool:
            return list(pool.map(one, zip(queries, traces)))

    def search_exact(
        self, Q, k: int = 10, query_lengths=None, filter: dict | list | None = None, *, originals: bool | None = None
    ) -> SearchResult:
        """Brute-force MaxSim over every live document (the ground truth of :meth:`search`); with ``filter`` (as
        :meth:`search` takes it), over the documents it allows. On the stored float16 vectors where the index keeps
        them, as the search's last stage scores (``originals=None``); ``originals=False``: on decompressed tokens."""
        queries = normalize_queries(Q, self._s.codec.dim, query_lengths)
        return self._s.result(exact.search_exact(self._s, queries, check_k(k), self.backend, filter, originals))

    # ------------------------------------------------------------------ writes (colbert_index.writer)
    def add(
        self,
        doc_embeddings,
        doc_ids=None,
        *,
        doc_lengths=None,
        expand: bool = True,
        progress: bool | None = None,
        metadata: list[dict | None] | None = None,
        pool_factor: int | None = None,
        texts: list[str | None] | None = None,
        keep_originals: bool | None = None,
    ) -> CommitInfo:
        """Encode new documents with the index's codebook into a new segment and commit it.

        ``doc_embeddings`` / ``doc_lengths`` take the forms :meth:`build` takes. ``doc_ids``: ids that are
        not live in the index (``ValueError`` otherwise; :meth:`upsert` replaces); for an index of integer
        ids they default to the next unused integers. ``expand``: when more than 5% of the new tokens are
        outliers for the codebook (new topics), first extend it with centroids trained on them (existing
        segments are unaffected; see :mod:`colbert_index.drift`). Searches of this object see the documents
        on return; other readers after :meth:`refresh`. The returned :class:`CommitInfo` reports the drift.
        ``metadata``, ``texts``: one JSON-able dict, one string (or ``None``) per document, committed with them;
        ``pool_factor``: token pooling of the new documents (``None``: the index's); ``keep_originals``: the
        index's choice at build (``None``), any other raises ``ValueError``; see :meth:`build`.
        """
        args = (doc_embeddings, doc_ids, doc_lengths, progress, expand, metadata, pool_factor, texts, keep_originals)
        return writer.add(self, "add", *args)

    def upsert(
        self,
        doc_embeddings,
        doc_ids,
        *,
        doc_lengths=None,
        expand: bool = True,
        progress: bool | None = None,
        metadata: list[dict | None] | None = None,
        pool_factor: int | None = None,
        texts: list[str | None] | None = None,
        keep_originals: bool | None = None,
    ) -> CommitInfo:
        """Add documents, replacing the live documents with the same ids: delete + add in one commit. The
        replaced documents' metadata and texts go with them; the new ones have ``metadata`` and ``texts``."""
        args = (doc_embeddings, doc_ids, doc_lengths, progress, expand, metadata, pool_factor, texts, keep_originals)
        return writer.add(self, "upsert", *args)

    def delete(self, doc_ids=None, *, missing_ok: bool = False, filter: dict | None = None) -> CommitInfo:
        """Delete documents by external id (one id or an iterable), or the live documents a metadata ``filter``
        selects (as :meth:`search` takes it), and commit. Deleted documents are never returned again; their space
        is reclaimed by :meth:`compact`. Ids that are not live raise ``KeyError`` naming them, unless
        ``missing_ok``; if nothing is left to delete nothing is committed."""
        return writer.delete(self, doc_ids, missing_ok=missing_ok, filter=filter)

    def compact(
        self,
        *,
        retrain: bool = False,
        n_centroids: int | None = None,
        kmeans_iters: int = 4,
        seed: int = 0,
        progress: bool | None = None,
    ) -> CommitInfo:
        """Merge all segments into one without the deleted documents (the IVF is rebuilt at open) and commit.

        Codes, residuals and kept vectors are copied as they are, so search results do not change. ``retrain=True``
        re-runs k-means and the bucket tables on the live documents (``n_centroids`` defaults to the
        build rule for their token count) and re-encodes every token with the new codebook. It learns from the
        kept vectors (``keep_originals``), else from the decompressed tokens: a second quantisation of data
        already quantised (a rebuild from the raw embeddings is better when they are at hand).
        Nothing is committed when there is one segment, nothing deleted and no ``retrain``.
        """
        return writer.compact(
            self, retrain=retrain, n_centroids=n_centroids, kmeans_iters=kmeans_iters, seed=seed, progress=progress
        )
