"""One committed version of an index, opened: its codebook, its segments and their tombstones, and the
mapping between external ids and positions. An :class:`~colbert_index.Index` answers from one snapshot until it
moves to a newer one (docs/live-index.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from colbert_index.codec import ResidualCodec, check_nbits_dim
from colbert_index.errors import IndexFormatError
from colbert_index.pooling import check_pool_factor
from colbert_index.search import SearchResult
from colbert_index.storage import metadata as meta_files
from colbert_index.storage import segments as seg_files
from colbert_index.storage.manifest import MANIFEST, load_manifest
from colbert_index.storage.segments import Segment

# Opening retries when a file vanished because a writer committed twice meanwhile.
_OPEN_ATTEMPTS = 5


class Snapshot:
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

    def stored(self, doc_ids, column: str, missing_ok: bool) -> list:
        """The metadata (``column="meta"``, parsed from its JSON) or texts (``"text"``) of live documents by external
        id; ``None`` for documents without. Ids that are not live raise ``KeyError`` naming them, unless ``missing_ok``
        (then they get ``None``)."""
        ids = as_id_list(doc_ids, self.id_type)
        pos = self.lookup(ids)
        if (pos < 0).any() and not missing_ok:
            missing = np.asarray(ids, dtype=object)[pos < 0].tolist()
            raise KeyError(f"{len(missing)} id(s) not in the index: {missing[:10]}")
        out: list[str | None] = [None] * len(pos)
        which = np.searchsorted(self.bases, pos, side="right") - 1
        for i, slots in self.locate(pos[pos >= 0]):
            store = self.segments[i].meta
            if store is None:
                continue
            rows = dict(zip(slots.tolist(), store.rows(slots, column)))
            for j in np.flatnonzero((which == i) & (pos >= 0)):
                value = rows[int(pos[j] - self.bases[i])]
                out[j] = value if column == "text" or value is None else meta_files.parse(value, store.path)
        return out

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


def as_id_list(doc_ids, id_type: str):
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


def read_snapshot(path: Path, previous: Snapshot | None, backend, mmap: bool, verify: bool = False) -> Snapshot:
    """The newest committed version at ``path``, reusing ``previous``'s unchanged segments. Retries when files
    vanish under it because writers committed again meanwhile (they keep only two versions' files)."""
    for attempt in range(_OPEN_ATTEMPTS):
        m = load_manifest(path)
        if previous is not None and (m.get("uuid"), m.get("generation")) == previous.version_key:
            return previous
        try:
            return _load_snapshot(path, m, previous, backend, mmap, verify)
        except IndexFormatError:
            again = load_manifest(path)
            if attempt == _OPEN_ATTEMPTS - 1 or (again.get("uuid"), again.get("generation")) == (
                m.get("uuid"),
                m.get("generation"),
            ):
                raise
    raise AssertionError("unreachable")


def _load_snapshot(path: Path, m: dict, previous: Snapshot | None, backend, mmap: bool, verify: bool) -> Snapshot:
    try:
        dim, nbits, K = int(m["dim"]), int(m["nbits"]), int(m["n_centroids"])
        normalize, id_type, generation = m["normalize"], m["id_type"], int(m["generation"])
        seg_entries = m["segments"]
        if not isinstance(normalize, bool):
            raise ValueError("normalize must be true or false")
        if id_type not in ("int", "str") or generation < 0 or not isinstance(seg_entries, list):
            raise ValueError(f"id_type {id_type!r}, generation {generation}, segments")
        check_nbits_dim(nbits, dim)
        check_pool_factor(m.get("pool_factor", 1))
    except (KeyError, TypeError, ValueError) as e:
        raise IndexFormatError(f"{path / MANIFEST}: invalid field ({e})") from None
    cache = {}
    if previous is not None and previous.manifest.get("codebook") == m.get("codebook"):
        codec = previous.codec
        cache = {seg_files.segment_key(s.entry): s for s in previous.segments}
    else:
        codec = seg_files.load_codebook(path, m.get("codebook"), dim, nbits, K, normalize, mmap, verify)
        if previous is not None and _extends(codec, previous.codec):  # an add appended centroids
            cache = {seg_files.segment_key(s.entry): _with_codec(s, codec) for s in previous.segments}
    segments = [seg_files.load_segment(path, e, codec, backend, mmap, verify, cache) for e in seg_entries]
    return Snapshot(m, codec, segments)
