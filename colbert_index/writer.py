"""The live-index writes behind :meth:`Index.add`, :meth:`~Index.upsert`, :meth:`~Index.delete` and
:meth:`~Index.compact` (docs/live-index.md).

Each write takes the writer lock, moves the index to the newest committed version, writes its new files
(a segment, tombstones, a codebook), fsyncs them and commits by replacing the manifest; it then removes what
neither the new version nor the one before it uses, so a reader of the previous version can still open it.
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from colbert_index import drift as drift_stats
from colbert_index import filters
from colbert_index.build import check_k_centroids, check_keep_originals, pooling, train_codec
from colbert_index.codec import ResidualCodec, default_n_centroids
from colbert_index.inputs import normalize_doc_ids, show_progress, spill_documents
from colbert_index.pooling import check_pool_factor
from colbert_index.snapshot import Snapshot, as_id_list
from colbert_index.storage import metadata as meta_files
from colbert_index.storage import segments as seg_files
from colbert_index.storage.files import WriterLock, fsync_path
from colbert_index.storage.manifest import load_entry, load_manifest, referenced, remove_unreferenced, write_manifest

if TYPE_CHECKING:
    from colbert_index.index import Index


@dataclass(frozen=True)
class CommitInfo:
    """What a write did. ``generation`` is the manifest version it committed (unchanged when there was
    nothing to do). For an add (see :mod:`colbert_index.drift`): ``outliers`` is the fraction of the new
    tokens farther from their nearest centroid than 99% of the training tokens were (about 0.01 on data like
    the training data); above 0.05 the codebook was extended by ``centroids_added`` centroids trained on
    them. ``drift``: of the new tokens' residual coordinates, the fraction beyond the outermost bucket
    weights of the codebook they were encoded with; ``drift_expected`` is that fraction on held-out training
    tokens, so a ratio well above 1 means the documents sit far from the codebook."""

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


@contextlib.contextmanager
def _writing(index: Index):
    """Hold the writer lock and move to the newest committed version: writes apply to it. A write that fails
    before it commits (a full disk) leaves no file behind: what it wrote would hold the space until the next
    commit."""
    if index._snap is None:
        raise ValueError("index is closed")
    with WriterLock(index.path):
        index._snap = index._read_snapshot(index._snap)
        generation, before = index._snap.generation, {p.name for p in index.path.iterdir()}
        try:
            yield index._snap
        except BaseException:
            _discard_uncommitted(index, generation, before)
            raise


def _discard_uncommitted(index: Index, generation: int, before: set[str]) -> None:
    """Remove the files a failed write created (names not in ``before``), unless it committed after all (the
    manifest on disk moved past ``generation``, e.g. the failure came after the rename); a manifest that cannot
    be read leaves everything in place."""
    try:
        if int(load_manifest(index.path)["generation"]) != generation:
            return
    except (OSError, KeyError, TypeError, ValueError):  # IndexFormatError included
        return
    remove_unreferenced(index.path, before)


def _commit(index: Index, snap: Snapshot, manifest: dict) -> Snapshot:
    """Make ``manifest`` (whose new files are written and synced) the next version, then remove
    what neither it nor the version before it uses: a reader that read the previous manifest
    can still open its files."""
    manifest["generation"] = snap.generation + 1
    fsync_path(index.path)  # the entries of new segment directories and tombstone files
    write_manifest(index.path, manifest)
    remove_unreferenced(index.path, referenced(manifest) | referenced(snap.manifest))
    index._snap = index._read_snapshot(snap)
    return index._snap


def _next_manifest(snap: Snapshot, segments: list[dict], **changes) -> dict:
    m = copy.deepcopy(snap.manifest)
    m.pop("upgraded_from", None)
    m.update(changes, segments=segments)
    m["n_docs"] = sum(s["n_docs"] - (s["deleted"] or {}).get("count", 0) for s in segments)  # live
    m["n_tokens"] = sum(s["n_tokens"] for s in segments)  # stored, deleted documents' included
    if m.get("uuid") is None:
        m["uuid"] = uuid.uuid4().hex
    return m


def _tombstone(index: Index, snap: Snapshot, positions: np.ndarray, generation: int) -> list[dict]:
    """Segment entries with ``positions`` deleted: new tombstone files; fully deleted segments dropped."""
    entries = [copy.deepcopy(s.entry) for s in snap.segments]
    for i, slots in snap.locate(np.unique(positions)):
        seg = snap.segments[i]
        deleted = ~seg.live()
        deleted[slots] = True
        if deleted.all():
            entries[i] = None
        else:
            entries[i]["deleted"] = seg_files.save_tombstones(index.path, seg.id, generation, deleted)
    return [e for e in entries if e is not None]


def _extend_codebook(index: Index, snap: Snapshot, spill) -> tuple[ResidualCodec, dict, dict]:
    """The codebook to encode ``spill`` with: extended when it holds many outliers (:mod:`.drift`).
    Returns the codec, the manifest changes (a new codebook) and the outlier figures."""
    m = snap.manifest
    norm = m.get("outlier_norm")
    if norm is None and snap.segments:  # built before the figure was recorded
        norm = drift_stats.estimate_outlier_norm(snap.segments, index.backend)
    if norm is None:
        return snap.codec, {}, {"outliers": None, "centroids_added": 0}
    stored = tuple(
        np.asarray(load_entry(index.path, m["codebook"][name], mmap=False, name=name))
        for name in ("centroids", "centroid_scales")
    )
    K = snap.codec.n_centroids
    per_centroid = sum(len(s.data.codes) for s in snap.segments) / K if snap.segments else spill.shape[0] / K
    codec, stored, info = drift_stats.extend_codebook(snap.codec, stored, spill, norm, per_centroid, seed=K)
    changes = {"outlier_norm": norm}
    if info["centroids_added"]:
        name = seg_files.codebook_name(snap.generation + 1)
        changes.update(codebook=seg_files.save_codebook(index.path, name, codec, stored), n_centroids=codec.n_centroids)
    return codec, changes, info


def _new_segment(
    index: Index,
    snap: Snapshot,
    doc_embeddings,
    doc_ids,
    doc_lengths,
    progress,
    replace: bool,
    expand: bool,
    metadata,
    pool_factor: int | None,
    texts=None,
    keep_originals: bool | None = None,
):
    """Encode documents into a new segment with the index's codebook (extended first if ``expand`` and
    they need it), their tokens pooled by ``pool_factor`` (``None``: the index's), their vectors kept when the
    index keeps them (:func:`originals_choice`). Returns its entry, the
    positions of live documents it replaces (upsert), the manifest's next ``next_id``, the manifest changes of
    an extended codebook and the outlier figures."""
    seg_id = int(snap.manifest["next_segment"])
    keep = originals_choice(snap.manifest, keep_originals)
    name = seg_files.segment_name(seg_id)
    seg_dir = seg_files.fresh_dir(index.path, name)
    codec, changes, info = snap.codec, {}, {"outliers": None, "centroids_added": 0}
    pool_factor = check_pool_factor(snap.manifest.get("pool_factor", 1) if pool_factor is None else pool_factor)
    try:
        pool, spill_path = pooling(pool_factor, index.backend), seg_dir / "spill.f16"
        spill, doclens = spill_documents(doc_embeddings, doc_lengths, spill_path, show_progress(progress), pool)
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
            codec, changes, info = _extend_codebook(index, snap, spill)
        progress = show_progress(progress)
        meta = None if metadata is None else meta_files.check_metadata(metadata, len(doclens))
        txt = None if texts is None else meta_files.check_texts(texts, len(doclens))
        entry = seg_files.write_segment(
            index.path, seg_id, spill, doclens, ids, codec, index.backend, progress, meta, texts=txt,
            keep_originals=keep,
        )  # fmt: skip
        entry["pool_factor"] = pool_factor
    except BaseException:
        shutil.rmtree(seg_dir, ignore_errors=True)
        shutil.rmtree(index.path / seg_files.codebook_name(snap.generation + 1), ignore_errors=True)
        raise
    return entry, replaced, next_id, changes, info


def originals_choice(manifest: dict, keep_originals) -> bool:
    """Whether a new segment keeps its documents' vectors: as the index does (``keep_originals=None``, the
    manifest's choice at build). Another choice is refused: the rerank and compaction need the vectors of every
    segment, and vectors an index never kept cannot be recovered."""
    kept = bool(manifest.get("keep_originals", False))
    if keep_originals is not None and check_keep_originals(keep_originals) != kept:
        raise ValueError(
            f"keep_originals={keep_originals}, but this index was built with keep_originals={kept}: every segment "
            "follows the build's choice (rebuild the index from the embeddings to change it)"
        )
    return kept


def add(
    index: Index,
    op: str,
    doc_embeddings,
    doc_ids,
    doc_lengths,
    progress,
    expand: bool,
    metadata,
    pool_factor=None,
    texts=None,
    keep_originals: bool | None = None,
) -> CommitInfo:
    """:meth:`Index.add` (``op="add"``) or :meth:`Index.upsert` (``op="upsert"``)."""
    t0 = time.perf_counter()
    with _writing(index) as snap:
        replace = op == "upsert"
        entry, replaced, next_id, changes, info = _new_segment(
            index, snap, doc_embeddings, doc_ids, doc_lengths, progress, replace, expand, metadata, pool_factor, texts,
            keep_originals,
        )  # fmt: skip
        kept = _tombstone(index, snap, replaced, snap.generation + 1)
        m = _next_manifest(snap, kept + [entry], next_id=next_id, next_segment=entry["id"] + 1, last_op=op, **changes)
        new = _commit(index, snap, m)
    return CommitInfo(
        op,
        new.generation,
        docs_added=entry["n_docs"],
        docs_deleted=len(replaced),
        tokens_added=entry["n_tokens"],
        seconds=time.perf_counter() - t0,
        drift=entry["drift"]["outside"],
        drift_expected=drift_stats.expected_outside(snap.manifest, snap.codec.nbits),
        **info,
    )


def _filtered_positions(snap: Snapshot, filter) -> np.ndarray:
    """Global positions of the live documents a metadata filter (or a list of ids) allows."""
    if isinstance(filter, dict) and not filter:
        raise ValueError("delete(filter={}) would delete every document; pass the ids to delete them all")
    masks = filters.allowed(snap, filter)
    parts = [snap.bases[i] + np.flatnonzero(m) for i, m in enumerate(masks)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def delete(index: Index, doc_ids=None, *, missing_ok: bool = False, filter=None) -> CommitInfo:
    """:meth:`Index.delete`."""
    t0 = time.perf_counter()
    if (doc_ids is None) == (filter is None):
        raise ValueError("delete takes the ids of the documents to delete or a filter, not both or neither")
    with _writing(index) as snap:
        if filter is not None:
            pos = _filtered_positions(snap, filter)
        else:
            ids = as_id_list(doc_ids, snap.id_type)
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
        segments = _tombstone(index, snap, pos, snap.generation + 1)
        new = _commit(index, snap, _next_manifest(snap, segments, last_op="delete"))
    return CommitInfo("delete", new.generation, docs_deleted=len(pos), seconds=time.perf_counter() - t0)


def compact(
    index: Index,
    *,
    retrain: bool = False,
    n_centroids: int | None = None,
    kmeans_iters: int = 4,
    seed: int = 0,
    progress: bool | None = None,
) -> CommitInfo:
    """:meth:`Index.compact`."""
    t0 = time.perf_counter()
    with _writing(index) as snap:
        segs = snap.segments
        if not segs or (not retrain and len(segs) == 1 and segs[0].n_deleted == 0):
            return CommitInfo("compact", snap.generation, seconds=time.perf_counter() - t0)
        seg_id, gen = int(snap.manifest["next_segment"]), snap.generation + 1
        changes = {"next_segment": seg_id + 1, "last_op": "compact"}
        new_files = [index.path / seg_files.segment_name(seg_id), index.path / seg_files.codebook_name(gen)]
        try:
            if retrain:
                seg_dir = seg_files.fresh_dir(index.path, seg_files.segment_name(seg_id))
                spill, doclens, ids = seg_files.spill_live(segs, index.backend, seg_dir / "spill.f16")
                n_tok = spill.shape[0]
                K = default_n_centroids(n_tok, index.dim, index.nbits) if n_centroids is None else int(n_centroids)
                codec, figures = train_codec(
                    spill, check_k_centroids(K, n_tok), index.nbits, kmeans_iters, seed, index.codec.normalize
                )
                codebook = seg_files.save_codebook(index.path, seg_files.codebook_name(gen), codec)
                changes.update(n_centroids=K, codebook=codebook, **figures)
                meta, texts = seg_files.live_metadata(segs), seg_files.live_texts(segs)
                entry = seg_files.write_segment(
                    index.path, seg_id, spill, doclens, ids, codec, index.backend, show_progress(progress), meta,
                    texts=texts, keep_originals=seg_files.all_keep_originals(segs),
                )  # fmt: skip
            else:
                entry = seg_files.write_merged(index.path, seg_id, segs, snap.codec)
        except BaseException:
            for d in new_files:
                shutil.rmtree(d, ignore_errors=True)
            raise
        removed = sum(s.n_deleted for s in segs)
        new = _commit(index, snap, _next_manifest(snap, [entry], **changes))
    return CommitInfo("compact", new.generation, docs_deleted=removed, seconds=time.perf_counter() - t0)
