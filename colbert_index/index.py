"""The public :class:`Index`: build, open, search, and the live-index writes (add, delete, upsert,
compact). Orchestration only; the work is in kernels, the file formats in storage and segments."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import shutil
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from colbert_index import drift as drift_stats
from colbert_index import filters, storage
from colbert_index import metadata as meta_files
from colbert_index import segments as seg_files
from colbert_index.backend import get_backend, one_blas_thread
from colbert_index.codec import ResidualCodec, check_nbits_dim, default_n_centroids
from colbert_index.device import resolve as resolve_device
from colbert_index.device_build import BLOCK_TOKENS as DEVICE_BLOCK_TOKENS
from colbert_index.device_build import DeviceCompressor, build_device
from colbert_index.inputs import normalize_doc_ids, normalize_queries, spill_documents
from colbert_index.search import SearchParams, SearchResult, brute_force, check_k, staged_search, top_k
from colbert_index.segments import Segment
from colbert_index.storage import IndexFormatError

_KMEANS_POINTS_PER_CENTROID = 64
_HELDOUT_TOKENS = 1 << 16
# Index.open / refresh retry when a file vanished because a writer committed twice meanwhile.
_OPEN_ATTEMPTS = 5


def _progress(enabled: bool | None) -> bool:
    return sys.stderr.isatty() if enabled is None else bool(enabled)


def _train_codec(spill, K: int, nbits: int, kmeans_iters: int, seed: int, normalize: bool | None = None, device=None):
    """k-means + bucket tables on a sample of the spilled tokens. ``normalize=None`` detects unit vectors;
    ``device``: a torch device to run k-means on (:mod:`colbert_index.device_build`), else faiss on the CPU."""
    n_tokens = spill.shape[0]
    rng = np.random.default_rng(seed)
    n_train = min(n_tokens, K * _KMEANS_POINTS_PER_CENTROID)
    train, heldout = spill.rows(
        np.sort(rng.choice(n_tokens, n_train, replace=False)),
        np.sort(rng.choice(n_tokens, min(n_tokens, _HELDOUT_TOKENS), replace=False)),
    )
    if normalize is None:  # ColBERT models emit unit vectors; then decompressed tokens are renormalised too.
        normalize = bool(np.allclose(np.linalg.norm(heldout, axis=1), 1.0, atol=2e-3))
    codec = ResidualCodec.train(
        train, heldout, K, nbits, kmeans_iters=kmeans_iters, seed=seed, normalize=normalize, device=device
    )
    return codec, drift_stats.outlier_norm(codec, heldout)


def _given_codec(codec: ResidualCodec, spill, nbits: int, n_centroids: int | None, seed: int) -> tuple[int, float]:
    """(K, outlier norm) of a codec given to :meth:`Index.build`, checked against the documents."""
    if not isinstance(codec, ResidualCodec):
        raise TypeError(f"codec must be a ResidualCodec, got {type(codec).__name__}")
    if (codec.dim, codec.nbits) != (spill.shape[1], nbits):
        raise ValueError(
            f"codec has dim {codec.dim}, nbits {codec.nbits}; the documents have dim {spill.shape[1]}, nbits={nbits}"
        )
    if n_centroids is not None and int(n_centroids) != codec.n_centroids:
        raise ValueError(f"n_centroids={n_centroids} conflicts with the given codec's K={codec.n_centroids}")
    rng = np.random.default_rng(seed)
    n_tokens = spill.shape[0]
    (heldout,) = spill.rows(np.sort(rng.choice(n_tokens, min(n_tokens, _HELDOUT_TOKENS), replace=False)))
    return codec.n_centroids, drift_stats.outlier_norm(codec, heldout)


def _check_k_centroids(K: int, n_tokens: int) -> int:
    if not 1 <= K <= n_tokens:
        raise ValueError(f"n_centroids must be in [1, n_tokens={n_tokens}], got {K}")
    return K


@dataclass(frozen=True)
class CommitInfo:
    """What a write did. ``generation`` is the manifest version it committed (unchanged when there was
    nothing to do). For an add (see :mod:`colbert_index.drift`): ``outliers`` is the fraction of the new
    tokens farther from their nearest centroid than 99% of the training tokens were (about 0.01 on data like
    the training data); above 0.05 the codebook was extended by ``centroids_added`` centroids trained on
    them. ``drift``: of the new tokens' residual coordinates, the fraction beyond the outermost bucket
    weights of the codebook they were encoded with; ``drift_expected`` (``1 / 2**nbits``) is that fraction
    on the training data, so a ratio well above 1 means the documents sit far from the codebook."""

    op: str
    generation: int
    docs_added: int = 0
    docs_deleted: int = 0
    tokens_added: int = 0
    seconds: float = 0.0
    drift: float | None = None
    drift_expected: float | None = None
    outliers: float | None = None
    centroids_added: int = 0


class _Snapshot:
    """One committed manifest version, opened: the codec, the segments and their tombstones."""

    def __init__(self, manifest: dict, codec: ResidualCodec, segments: list[Segment]) -> None:
        self.manifest, self.codec, self.segments = manifest, codec, segments
        self.bases = np.zeros(len(segments) + 1, dtype=np.int64)  # global position = bases[i] + slot
        np.cumsum([s.n_docs for s in segments], out=self.bases[1:])
        self.id_type = manifest["id_type"]
        self._lookup = None

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @property
    def version_key(self) -> tuple:
        return self.manifest.get("uuid"), self.generation

    @property
    def n_live(self) -> int:
        return sum(s.n_live for s in self.segments)

    def ids_of(self, positions: np.ndarray) -> np.ndarray:
        """External ids of global positions (same shape): int64, or an object array of str."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty(positions.shape, dtype=object if self.id_type == "str" else np.int64)
        which = np.searchsorted(self.bases, positions, side="right") - 1
        for i, seg in enumerate(self.segments):
            sel = which == i
            if sel.any():
                out[sel] = seg.ids.take(positions[sel] - self.bases[i])
        return out

    def result(self, per_query: list[tuple[np.ndarray, np.ndarray]]) -> SearchResult:
        scores = np.stack([s for s, _ in per_query]).astype(np.float32)
        return SearchResult(ids=self.ids_of(np.stack([p for _, p in per_query])), scores=scores)

    def live_ids(self) -> np.ndarray:
        ids = [seg.ids.take(np.flatnonzero(seg.live())) for seg in self.segments]
        if not ids:
            return np.zeros(0, dtype=object if self.id_type == "str" else np.int64)
        return np.concatenate(ids)

    def lookup(self, ids) -> np.ndarray:
        """Global positions of live documents with these external ids (int64, -1 where none)."""
        if self._lookup is None:
            parts = [self.bases[i] + np.flatnonzero(s.live()) for i, s in enumerate(self.segments)]
            live = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
            ext = self.ids_of(live)
            if self.id_type == "str":
                self._lookup = dict(zip(ext.tolist(), live.tolist()))
            else:
                order = np.argsort(ext, kind="stable")
                self._lookup = (ext[order], live[order])
        if self.id_type == "str":
            return np.array([self._lookup.get(x, -1) for x in ids], dtype=np.int64)
        keys, pos = self._lookup
        ids = np.asarray(ids, dtype=np.int64)
        if not len(keys):
            return np.full(len(ids), -1, np.int64)
        at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        return np.where(keys[at] == ids, pos[at], -1)

    def locate(self, positions: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(segment index, slots)`` for the segments that hold some of ``positions``."""
        which = np.searchsorted(self.bases, positions, side="right") - 1
        return [(i, positions[which == i] - self.bases[i]) for i in np.unique(which)]


def _extends(codec: ResidualCodec, old: ResidualCodec) -> bool:
    """``codec`` is ``old`` with centroids appended (what an add with ``expand`` commits)."""
    K = old.n_centroids
    return (
        codec.n_centroids >= K
        and codec.code_dtype == old.code_dtype
        and (codec.nbits, codec.normalize) == (old.nbits, old.normalize)
        and np.array_equal(codec.centroids[:K], old.centroids)
        and np.array_equal(codec.cutoffs, old.cutoffs)
        and np.array_equal(codec.weights, old.weights)
    )


def _with_codec(segment: Segment, codec: ResidualCodec) -> Segment:
    """A segment of the previous snapshot under an extended codebook: the new centroids' IVF lists are empty."""
    d = segment.data
    extra = np.full(codec.n_centroids - d.codec.n_centroids, d.ivf_offsets[-1], dtype=d.ivf_offsets.dtype)
    data = dataclasses.replace(d, codec=codec, ivf_offsets=np.concatenate([d.ivf_offsets, extra]))
    return dataclasses.replace(segment, data=data)


def _as_id_list(doc_ids, id_type: str):
    """Ids given to delete / lookup: one id or an iterable, checked against the index's id type."""
    if isinstance(doc_ids, (str, int, np.integer)):
        doc_ids = [doc_ids]
    ids = list(doc_ids)
    if id_type == "str":
        if not all(isinstance(x, str) for x in ids):
            raise TypeError("this index has string ids; got non-string ids")
        return ids
    arr = np.asarray(ids) if ids else np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"this index has integer ids; got {arr.dtype} ids")
    return arr.astype(np.int64)


class Index:
    """A compressed late-interaction index on disk (see the README for the file format).

    Build one with :meth:`build`, open an existing one with :meth:`open`. An opened index is a
    snapshot: it keeps answering from the manifest version it read, whatever writers do, until
    :meth:`refresh`. :meth:`add`, :meth:`delete`, :meth:`upsert` and :meth:`compact` commit a new version
    (one writer at a time, through a lock file) and move this object to it. Use as a context manager or
    call :meth:`close` to release the memory maps.
    """

    def __init__(self, path: Path, snapshot: _Snapshot, backend, mmap: bool = True) -> None:
        self.path = path
        self._snap: _Snapshot | None = snapshot
        self.backend = backend
        self._mmap = mmap
        self._device = None  # a colbert_index.device.DeviceSearcher when opened on a device

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
                (:mod:`colbert_index.metadata`) for ``search(..., filter=...)`` and :meth:`metadata`.
            codec: encode with this already trained :class:`ResidualCodec` instead of training one (its dim
                and nbits must match; ``n_centroids`` must be None or its K). Sharded builds use it.
            device: ``"cuda"`` (or ``"cuda:N"``) runs k-means and compression on that GPU with torch, exact at
                any K (:mod:`colbert_index.device_build`); the files are the same kind. ``device="cpu"`` with
                ``backend="torch"`` runs that path on CPU tensors. Search the result on a GPU with
                ``Index.open(path, device="cuda")``.

        Nothing appears at ``path`` unless the whole build succeeds.
        """
        path = Path(path)
        if nbits not in (2, 4):
            raise ValueError(f"nbits must be 2 or 4, got {nbits!r}")
        on_device = build_device(device, backend)
        if on_device is not None:
            backend = "auto"  # the CPU-side work left (IVF, checks) and the returned index: Numba
        kernels = get_backend(backend)
        t0 = time.perf_counter()
        replacing = overwrite and (path / storage.MANIFEST).is_file()
        with (
            storage.WriterLock(path) if replacing else contextlib.nullcontext(),
            storage.atomic_directory(path, overwrite=overwrite) as tmp,
        ):
            # Pass 1 streams the input to a float16 spill file, so memory does not grow with the corpus.
            seg_dir = seg_files.fresh_dir(tmp, seg_files.segment_name(0))
            spill, doclens = spill_documents(
                doc_embeddings, doc_lengths, seg_dir / "spill.f16", progress=_progress(progress)
            )
            n_tokens, dim = spill.shape
            check_nbits_dim(nbits, dim)
            ids = normalize_doc_ids(doc_ids, len(doclens))
            if codec is None:
                K = _check_k_centroids(
                    default_n_centroids(n_tokens, dim, nbits) if n_centroids is None else int(n_centroids), n_tokens
                )
                codec, outlier_norm = _train_codec(spill, K, nbits, kmeans_iters, seed, device=on_device)
            else:  # a codebook trained elsewhere (colbert_index.distributed: one codebook for all shards)
                K, outlier_norm = _given_codec(codec, spill, nbits, n_centroids, seed)
            t_train = time.perf_counter() - t0
            codebook = seg_files.save_codebook(tmp, seg_files.codebook_name(0), codec)
            # Pass 2 compresses the spilled tokens chunk by chunk into the memory-mapped outputs.
            # read after the documents, so that both may be lists a generator of batches fills as it goes
            meta = None if metadata is None else meta_files.check_metadata(metadata, len(doclens))
            compress = None
            if on_device is not None:
                compress, spill.block_tokens = DeviceCompressor(codec, on_device), DEVICE_BLOCK_TOKENS
            segment = seg_files.write_segment(
                tmp, 0, spill, doclens, 0 if ids is None else ids, codec, kernels, _progress(progress), meta, compress
            )
            if isinstance(ids, list):
                id_type, next_id = "str", None
            else:
                id_type, next_id = "int", len(doclens) if ids is None else int(ids.max()) + 1
            storage.write_manifest(
                tmp,
                {
                    "uuid": uuid.uuid4().hex,
                    "generation": 0,
                    "dim": dim,
                    "nbits": nbits,
                    "normalize": codec.normalize,
                    "n_centroids": K,
                    "n_docs": len(doclens),
                    "n_tokens": n_tokens,
                    "id_type": id_type,
                    "next_id": next_id,
                    "next_segment": 1,
                    "codebook": codebook,
                    "outlier_norm": outlier_norm,
                    "segments": [segment],
                    "build": {
                        "seed": seed,
                        "kmeans_iters": kmeans_iters,
                        "device": "cpu" if on_device is None else f"{on_device} (torch)",
                        "train_seconds": round(t_train, 3),
                        "seconds": round(time.perf_counter() - t0, 3),
                    },
                },
            )
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
        ``backend="torch"`` runs that device pipeline on CPU tensors (:mod:`colbert_index.device`).
        """
        backend, searcher = resolve_device(device, backend)
        path = Path(path)
        kernels = get_backend(backend)
        index = cls(path, None, kernels, mmap)
        index._snap = index._read_snapshot(None, verify=verify)
        if verify:
            ids = index._snap.live_ids()
            if len(set(ids.tolist())) != len(ids):
                raise IndexFormatError(f"{path / storage.MANIFEST}: an external id is live in two segments")
        if searcher is not None:
            index._device = searcher
            searcher.prepare(index._snap)
        return index

    def _read_snapshot(self, previous: _Snapshot | None, verify: bool = False) -> _Snapshot:
        """The newest committed version, reusing ``previous``'s unchanged segments. Retries when files
        vanish under it because writers committed again meanwhile (they keep only two versions' files)."""
        for attempt in range(_OPEN_ATTEMPTS):
            m = storage.load_manifest(self.path)
            if previous is not None and (m.get("uuid"), m.get("generation")) == previous.version_key:
                return previous
            try:
                return self._load_snapshot(m, previous, verify)
            except IndexFormatError:
                again = storage.load_manifest(self.path)
                if attempt == _OPEN_ATTEMPTS - 1 or (again.get("uuid"), again.get("generation")) == (
                    m.get("uuid"),
                    m.get("generation"),
                ):
                    raise
        raise AssertionError("unreachable")

    def _load_snapshot(self, m: dict, previous: _Snapshot | None, verify: bool) -> _Snapshot:
        path = self.path
        try:
            dim, nbits, K = int(m["dim"]), int(m["nbits"]), int(m["n_centroids"])
            normalize, id_type, generation = m["normalize"], m["id_type"], int(m["generation"])
            seg_entries = m["segments"]
            if not isinstance(normalize, bool):
                raise ValueError("normalize must be true or false")
            if id_type not in ("int", "str") or generation < 0 or not isinstance(seg_entries, list):
                raise ValueError(f"id_type {id_type!r}, generation {generation}, segments")
            check_nbits_dim(nbits, dim)
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{path / storage.MANIFEST}: invalid field ({e})") from None
        cache = {}
        if previous is not None and previous.manifest.get("codebook") == m.get("codebook"):
            codec = previous.codec
            cache = {seg_files.segment_key(s.entry): s for s in previous.segments}
        else:
            codec = seg_files.load_codebook(path, m.get("codebook"), dim, nbits, K, normalize, self._mmap, verify)
            if previous is not None and _extends(codec, previous.codec):  # an add appended centroids
                cache = {seg_files.segment_key(s.entry): _with_codec(s, codec) for s in previous.segments}
        segments = [
            seg_files.load_segment(path, e, codec, self.backend, self._mmap, verify, cache) for e in seg_entries
        ]
        return _Snapshot(m, codec, segments)

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
    def _s(self) -> _Snapshot:
        if self._snap is None:
            raise ValueError("index is closed")
        return self._snap

    @property
    def _d(self):
        """The arrays of the only segment (:class:`colbert_index.segments.SegmentData`)."""
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
        """Per segment: id, stored docs, deleted docs, stored tokens, drift (see :class:`CommitInfo`)."""
        return [
            {
                "id": s.id,
                "n_docs": s.n_docs,
                "n_deleted": s.n_deleted,
                "n_tokens": len(s.data.codes),
                "drift": (s.entry.get("drift") or {}).get("outside"),
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
        return {"outside": outside, "expected": 1 / 2**self.nbits, "tokens": tokens}

    def doc_ids(self) -> np.ndarray:
        """External ids of the live documents (int64, or an object array of str), segment by segment."""
        return self._s.live_ids()

    def __contains__(self, doc_id) -> bool:
        try:
            return bool(self._s.lookup(_as_id_list(doc_id, self._s.id_type))[0] >= 0)
        except TypeError:
            return False

    def reconstruct(self, doc_id) -> np.ndarray:
        """The decompressed ``[n_tokens, dim]`` float32 token embeddings of one live document."""
        snap = self._s
        pos = snap.lookup(_as_id_list(doc_id, snap.id_type))
        if pos[0] < 0:
            raise KeyError(f"no live document with id {doc_id!r}")
        [(i, slots)] = snap.locate(pos)
        d = snap.segments[i].data
        lo, hi = int(d.offsets[slots[0]]), int(d.offsets[slots[0] + 1])
        return d.codec.decompress(np.asarray(d.codes[lo:hi]), np.asarray(d.residuals[lo:hi]), self.backend)

    def metadata(self, doc_ids, *, missing_ok: bool = False) -> list[dict | None]:
        """The metadata of live documents (one id or an iterable), ``None`` for documents added without any.
        Ids that are not live raise ``KeyError`` naming them, unless ``missing_ok`` (then they get ``None``)."""
        snap = self._s
        ids = _as_id_list(doc_ids, snap.id_type)
        pos = snap.lookup(ids)
        if (pos < 0).any() and not missing_ok:
            missing = np.asarray(ids, dtype=object)[pos < 0].tolist()
            raise KeyError(f"{len(missing)} id(s) not in the index: {missing[:10]}")
        out: list[dict | None] = [None] * len(pos)
        for i, slots in snap.locate(pos[pos >= 0]):
            store = snap.segments[i].meta
            if store is None:
                continue
            texts = dict(zip(slots.tolist(), store.rows(slots)))
            for j in np.flatnonzero(np.searchsorted(snap.bases, pos, side="right") - 1 == i):
                text = texts[int(pos[j] - snap.bases[i])]
                out[j] = None if text is None else json.loads(text)
        return out

    def disk_bytes(self) -> int:
        """Bytes of the files this version uses (the manifest included). Files of the previous version
        stay on disk until the next commit; tombstoned documents until :meth:`compact`."""
        m = self._s.manifest
        entries = list(m["codebook"].values())
        for s in m["segments"]:
            entries += list(s["files"].values()) + ([s["deleted"]] if s.get("deleted") else [])
        return sum(int(e["bytes"]) for e in entries) + (self.path / storage.MANIFEST).stat().st_size

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
        it took: measured on the 2-vCPU VM, 0.09 s with Numba's cache warm and 21 s on a fresh install (the
        compile that the first search pays otherwise). :func:`colbert_index.server.create_app` calls it before
        serving."""
        t0 = time.perf_counter()
        if self.n_docs:
            q = self.codec.centroids[: min(8, self.n_centroids)]
            self.search(q, k=min(10, self.n_docs))
            self.search([q, q[:1]], k=min(10, self.n_docs))
        return time.perf_counter() - t0

    def _search_one(self, snap: _Snapshot, Q: np.ndarray, k: int, p: SearchParams, how=None):
        """All segments as one index: each stage keeps its best candidates across them (their tombstones
        applied right after the probe). ``how``: the :class:`~colbert_index.filters.FilterPlan` of a filter."""
        if not snap.segments:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        if how is not None:
            return filters.search_filtered(Q, k, how, [s.data for s in snap.segments], self.backend)
        datas, deleted = [s.data for s in snap.segments], [s.deleted for s in snap.segments]
        return staged_search(Q, k, p, datas, self.backend, deleted=deleted)

    def _allowed(self, snap: _Snapshot, filter: dict | list) -> list[np.ndarray]:
        """bool ``[n_docs]`` per segment: the live documents ``filter`` allows (see :meth:`search`)."""
        segs = snap.segments
        if filters.is_structured(filter):
            sql, params = filters.compile_filter(filter)
            out, without = [], None
            for s in segs:
                if s.meta is None:
                    if without is None:
                        without = meta_files.holds_without_metadata(sql, params)
                    out.append(np.full(s.n_docs, without) & s.live())
                else:
                    out.append(s.meta.matching(sql, params) & s.live())
            return out
        if isinstance(filter, (str, bytes)) or not isinstance(filter, (list, tuple, set, frozenset, np.ndarray)):
            raise TypeError(
                f"filter: a list of allowed ids or a dict of metadata conditions, got {type(filter).__name__}"
            )
        pos = snap.lookup(_as_id_list(list(filter), snap.id_type))
        out = [np.zeros(s.n_docs, bool) for s in segs]
        for i, slots in snap.locate(pos[pos >= 0]):
            out[i][slots] = True
        return out

    def search(
        self,
        Q,
        k: int = 10,
        params: SearchParams | None = None,
        query_lengths=None,
        filter: dict | list | None = None,
    ) -> SearchResult:
        """Top-``k`` live documents by approximate-then-exact MaxSim (PLAID's four stages).

        Args:
            Q: ``[q_len, dim]`` (one query), ``[n_q, q_len, dim]`` or a list of ``[q_len_i, dim]`` arrays.
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

        Each segment is searched with the same parameters and its top-``k`` merged by exact score.
        A batch runs its queries in parallel, one per Numba thread (``numba.set_num_threads``), each
        query's kernels single-threaded; a single query spreads its kernels over the threads instead.
        """
        k = check_k(k)
        snap = self._s
        queries = normalize_queries(Q, snap.codec.dim, query_lengths)
        p = (params or SearchParams()).resolved(k, int(snap.bases[-1]))  # documents as default_ndocs counts them
        how = None
        if filter is not None:
            how = filters.plan(self._allowed(snap, filter), [s.doclens for s in snap.segments], snap.n_live, p)
        if self._device is not None and how is None:  # the whole batch on the device (filters stay on CPU)
            return snap.result(self._device.search(snap, queries, k, p))
        n_workers = min(len(queries), numba.get_num_threads()) if self.backend.name == "numba" else 1
        if n_workers <= 1:  # BLAS limited once per call, not once per BLAS kernel (each entry resets the libraries)
            with one_blas_thread():
                return snap.result([self._search_one(snap, q, k, p, how) for q in queries])

        def one(q: np.ndarray):
            numba.set_num_threads(1)  # thread-local: this worker's kernels stay on its own core
            return self._search_one(snap, q, k, p, how)

        # the kernels release the GIL (nogil=True); BLAS (the numpy backend's products) on one thread per worker
        with one_blas_thread(), ThreadPoolExecutor(n_workers) as pool:
            return snap.result(list(pool.map(one, queries)))

    def search_exact(self, Q, k: int = 10, query_lengths=None, filter: dict | list | None = None) -> SearchResult:
        """Brute-force MaxSim over every decompressed live document (the ground truth of :meth:`search`);
        with ``filter`` (as :meth:`search` takes it), over the documents it allows."""
        k = check_k(k)
        snap = self._s
        queries = normalize_queries(Q, snap.codec.dim, query_lengths)
        if filter is not None:
            slots = [np.flatnonzero(a).astype(np.int32) for a in self._allowed(snap, filter)]
            datas = [s.data for s in snap.segments]
            return snap.result([filters.exact_subset(q, k, datas, slots, self.backend) for q in queries])
        best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        for seg, base in zip(snap.segments, snap.bases):
            data = seg.data

            def chunk(lo: int, hi: int, data=data) -> np.ndarray:
                return data.codec.decompress(data.codes[lo:hi], data.residuals[lo:hi], self.backend)

            # the top k + (deleted) of the segment holds its top k live documents
            found = brute_force(queries, data.offsets, chunk, k + seg.n_deleted, self.backend.segment_max_sums)
            for i, (scores, slots) in enumerate(found):
                if seg.deleted is not None:
                    keep = ~seg.deleted[slots]
                    scores, slots = scores[keep][:k], slots[keep][:k]
                best[i] = top_k(np.concatenate([best[i][0], scores]), np.concatenate([best[i][1], slots + base]), k)
        return snap.result(best)

    # ------------------------------------------------------------------ writes
    @contextlib.contextmanager
    def _writing(self):
        """Hold the writer lock and move to the newest committed version: writes apply to it."""
        if self._snap is None:
            raise ValueError("index is closed")
        with storage.WriterLock(self.path):
            self._snap = self._read_snapshot(self._snap)
            yield self._snap

    def _commit(self, snap: _Snapshot, manifest: dict) -> _Snapshot:
        """Make ``manifest`` (whose new files are written and synced) the next version, then remove
        what neither it nor the version before it uses: a reader that read the previous manifest
        can still open its files."""
        manifest["generation"] = snap.generation + 1
        storage.fsync_path(self.path)  # the entries of new segment directories and tombstone files
        storage.write_manifest(self.path, manifest)
        storage.remove_unreferenced(self.path, storage.referenced(manifest) | storage.referenced(snap.manifest))
        self._snap = self._read_snapshot(snap)
        return self._snap

    def _next_manifest(self, snap: _Snapshot, segments: list[dict], **changes) -> dict:
        m = copy.deepcopy(snap.manifest)
        m.pop("upgraded_from", None)
        m.update(changes, segments=segments)
        m["n_docs"] = sum(s["n_docs"] - (s["deleted"] or {}).get("count", 0) for s in segments)  # live
        m["n_tokens"] = sum(s["n_tokens"] for s in segments)  # stored, deleted documents' included
        if m.get("uuid") is None:
            m["uuid"] = uuid.uuid4().hex
        return m

    def _tombstone(self, snap: _Snapshot, positions: np.ndarray, generation: int) -> list[dict]:
        """Segment entries with ``positions`` deleted: new tombstone files; fully deleted segments dropped."""
        entries = [copy.deepcopy(s.entry) for s in snap.segments]
        for i, slots in snap.locate(np.unique(positions)):
            seg = snap.segments[i]
            deleted = ~seg.live()
            deleted[slots] = True
            if deleted.all():
                entries[i] = None
            else:
                entries[i]["deleted"] = seg_files.save_tombstones(self.path, seg.id, generation, deleted)
        return [e for e in entries if e is not None]

    def _extend_codebook(self, snap: _Snapshot, spill) -> tuple[ResidualCodec, dict, dict]:
        """The codebook to encode ``spill`` with: extended when it holds many outliers (:mod:`.drift`).
        Returns the codec, the manifest changes (a new codebook) and the outlier figures."""
        m = snap.manifest
        norm = m.get("outlier_norm")
        if norm is None and snap.segments:  # built before the figure was recorded
            norm = drift_stats.estimate_outlier_norm(snap.segments, self.backend)
        if norm is None:
            return snap.codec, {}, {"outliers": None, "centroids_added": 0}
        stored = tuple(
            np.asarray(storage.load_entry(self.path, m["codebook"][name], mmap=False, name=name))
            for name in ("centroids", "centroid_scales")
        )
        K = snap.codec.n_centroids
        per_centroid = sum(len(s.data.codes) for s in snap.segments) / K if snap.segments else spill.shape[0] / K
        codec, stored, info = drift_stats.extend_codebook(snap.codec, stored, spill, norm, per_centroid, seed=K)
        changes = {"outlier_norm": norm}
        if info["centroids_added"]:
            name = seg_files.codebook_name(snap.generation + 1)
            changes.update(
                codebook=seg_files.save_codebook(self.path, name, codec, stored), n_centroids=codec.n_centroids
            )
        return codec, changes, info

    def _new_segment(
        self, snap: _Snapshot, doc_embeddings, doc_ids, doc_lengths, progress, replace: bool, expand: bool, metadata
    ):
        """Encode documents into a new segment with the index's codebook (extended first if ``expand`` and
        they need it). Returns its entry, the positions of live documents it replaces (upsert), the
        manifest's next ``next_id``, the manifest changes of an extended codebook and the outlier figures."""
        seg_id = int(snap.manifest["next_segment"])
        name = seg_files.segment_name(seg_id)
        seg_dir = seg_files.fresh_dir(self.path, name)
        codec, changes, info = snap.codec, {}, {"outliers": None, "centroids_added": 0}
        try:
            spill, doclens = spill_documents(doc_embeddings, doc_lengths, seg_dir / "spill.f16", _progress(progress))
            if spill.shape[1] != snap.codec.dim:
                raise ValueError(f"documents have dim {spill.shape[1]}, the index has dim {snap.codec.dim}")
            ids = normalize_doc_ids(doc_ids, len(doclens))
            next_id = snap.manifest.get("next_id")
            if snap.id_type == "int" and next_id is None:  # an index upgraded from format 1
                next_id = max([s.ids.max() + 1 for s in snap.segments] + [0])
            replaced = np.zeros(0, np.int64)
            if ids is None:
                if snap.id_type == "str" or replace:
                    raise ValueError("upsert() needs doc_ids" if replace else "this index has string ids: pass doc_ids")
                ids, next_id = next_id, next_id + len(doclens)
            else:
                if (snap.id_type == "str") != isinstance(ids, list):
                    kind = "string" if snap.id_type == "str" else "integer"
                    raise TypeError(f"this index has {kind} ids; doc_ids must be {kind}s too")
                pos = snap.lookup(ids)
                replaced = pos[pos >= 0]
                if len(replaced) and not replace:
                    some = np.asarray(ids)[pos >= 0][:5].tolist()
                    raise ValueError(
                        f"{len(replaced)} id(s) already in the index (e.g. {some}); use upsert() to replace them"
                    )
                if snap.id_type == "int" and len(ids):
                    next_id = max(next_id, int(ids.max()) + 1)
            if expand:
                codec, changes, info = self._extend_codebook(snap, spill)
            progress = _progress(progress)
            meta = None if metadata is None else meta_files.check_metadata(metadata, len(doclens))
            entry = seg_files.write_segment(self.path, seg_id, spill, doclens, ids, codec, self.backend, progress, meta)
        except BaseException:
            shutil.rmtree(seg_dir, ignore_errors=True)
            shutil.rmtree(self.path / seg_files.codebook_name(snap.generation + 1), ignore_errors=True)
            raise
        return entry, replaced, next_id, changes, info

    def _add(self, op: str, doc_embeddings, doc_ids, doc_lengths, progress, expand: bool, metadata) -> CommitInfo:
        t0 = time.perf_counter()
        with self._writing() as snap:
            entry, replaced, next_id, changes, info = self._new_segment(
                snap, doc_embeddings, doc_ids, doc_lengths, progress, op == "upsert", expand, metadata
            )
            kept = self._tombstone(snap, replaced, snap.generation + 1)
            m = self._next_manifest(
                snap, kept + [entry], next_id=next_id, next_segment=entry["id"] + 1, last_op=op, **changes
            )
            new = self._commit(snap, m)
        return CommitInfo(
            op,
            new.generation,
            docs_added=entry["n_docs"],
            docs_deleted=len(replaced),
            tokens_added=entry["n_tokens"],
            seconds=time.perf_counter() - t0,
            drift=entry["drift"]["outside"],
            drift_expected=1 / 2**snap.codec.nbits,
            **info,
        )

    def add(
        self,
        doc_embeddings,
        doc_ids=None,
        *,
        doc_lengths=None,
        expand: bool = True,
        progress: bool | None = None,
        metadata: list[dict | None] | None = None,
    ) -> CommitInfo:
        """Encode new documents with the index's codebook into a new segment and commit it.

        ``doc_embeddings`` / ``doc_lengths`` take the forms :meth:`build` takes. ``doc_ids``: ids that are
        not live in the index (``ValueError`` otherwise; :meth:`upsert` replaces); for an index of integer
        ids they default to the next unused integers. ``expand``: when more than 5% of the new tokens are
        outliers for the codebook (new topics), first extend it with centroids trained on them (existing
        segments are unaffected; see :mod:`colbert_index.drift`). Searches of this object see the documents
        on return; other readers after :meth:`refresh`. The returned :class:`CommitInfo` reports the drift.
        ``metadata``: one JSON-able dict (or ``None``) per document, committed with them (see :meth:`build`).
        """
        return self._add("add", doc_embeddings, doc_ids, doc_lengths, progress, expand, metadata)

    def upsert(
        self,
        doc_embeddings,
        doc_ids,
        *,
        doc_lengths=None,
        expand: bool = True,
        progress: bool | None = None,
        metadata: list[dict | None] | None = None,
    ) -> CommitInfo:
        """Add documents, replacing the live documents with the same ids: delete + add in one commit. The
        replaced documents' metadata goes with them; the new documents have ``metadata`` (or none)."""
        return self._add("upsert", doc_embeddings, doc_ids, doc_lengths, progress, expand, metadata)

    def delete(self, doc_ids, *, missing_ok: bool = False) -> CommitInfo:
        """Delete documents by external id (one id or an iterable) and commit. Deleted documents are never
        returned again; their space is reclaimed by :meth:`compact`. Ids that are not live raise
        ``KeyError`` naming them, unless ``missing_ok``; if nothing is left to delete nothing is committed."""
        t0 = time.perf_counter()
        with self._writing() as snap:
            ids = _as_id_list(doc_ids, snap.id_type)
            pos = snap.lookup(ids)
            if (pos < 0).any() and not missing_ok:
                missing = np.asarray(ids)[pos < 0].tolist()
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                raise KeyError(
                    f"{len(missing)} id(s) not in the index: {missing[:10]}{more} (missing_ok=True ignores them)"
                )
            pos = np.unique(pos[pos >= 0])
            if not len(pos):
                return CommitInfo("delete", snap.generation, seconds=time.perf_counter() - t0)
            segments = self._tombstone(snap, pos, snap.generation + 1)
            new = self._commit(snap, self._next_manifest(snap, segments, last_op="delete"))
        return CommitInfo("delete", new.generation, docs_deleted=len(pos), seconds=time.perf_counter() - t0)

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

        Codes and residuals are copied as they are, so search results do not change. ``retrain=True``
        re-runs k-means and the bucket tables on the live documents (``n_centroids`` defaults to the
        build rule for their token count) and re-encodes every token with the new codebook. The index
        keeps no raw embeddings, so it learns from the decompressed tokens: a second quantisation of
        data already quantised (a rebuild from the raw embeddings is better when they are at hand).
        Nothing is committed when there is one segment, nothing deleted and no ``retrain``.
        """
        t0 = time.perf_counter()
        with self._writing() as snap:
            segs = snap.segments
            if not segs or (not retrain and len(segs) == 1 and segs[0].n_deleted == 0):
                return CommitInfo("compact", snap.generation, seconds=time.perf_counter() - t0)
            seg_id, gen = int(snap.manifest["next_segment"]), snap.generation + 1
            changes = {"next_segment": seg_id + 1, "last_op": "compact"}
            new_files = [self.path / seg_files.segment_name(seg_id), self.path / seg_files.codebook_name(gen)]
            try:
                if retrain:
                    seg_dir = seg_files.fresh_dir(self.path, seg_files.segment_name(seg_id))
                    spill, doclens, ids = seg_files.spill_live(segs, self.backend, seg_dir / "spill.f16")
                    n_tok = spill.shape[0]
                    K = default_n_centroids(n_tok, self.dim, self.nbits) if n_centroids is None else int(n_centroids)
                    codec, outlier_norm = _train_codec(
                        spill, _check_k_centroids(K, n_tok), self.nbits, kmeans_iters, seed, self.codec.normalize
                    )
                    codebook = seg_files.save_codebook(self.path, seg_files.codebook_name(gen), codec)
                    changes.update(n_centroids=K, codebook=codebook, outlier_norm=outlier_norm)
                    meta = seg_files.live_metadata(segs)
                    entry = seg_files.write_segment(
                        self.path, seg_id, spill, doclens, ids, codec, self.backend, _progress(progress), meta
                    )
                else:
                    entry = seg_files.write_merged(self.path, seg_id, segs, snap.codec)
            except BaseException:
                for d in new_files:
                    shutil.rmtree(d, ignore_errors=True)
                raise
            removed = sum(s.n_deleted for s in segs)
            new = self._commit(snap, self._next_manifest(snap, [entry], **changes))
        return CommitInfo("compact", new.generation, docs_deleted=removed, seconds=time.perf_counter() - t0)
