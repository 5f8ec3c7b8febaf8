"""Segment and codebook files: write, merge and load them, with ids and tombstones.

A segment is an immutable set of compressed documents (``seg-NNNNNN/``: doclens, codes, residuals, the external
ids and, with ``keep_originals``, the float16 vectors: :mod:`.originals`) encoded with the index's one codebook
(``codebook-NNNNNN/``). Deleting documents never touches a segment: it writes a new tombstone file
(``del-<segment>-<generation>.npy``, one bit per document) that the next manifest names instead of the old one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap
from tqdm.auto import tqdm

from colbert_index.codec import ResidualCodec, dequantize_centroids, quantize_centroids
from colbert_index.errors import IndexFormatError
from colbert_index.inputs import Spill
from colbert_index.storage import metadata as meta_files
from colbert_index.storage import originals as orig_files
from colbert_index.storage.files import fsync_path, sync_tree
from colbert_index.storage.manifest import MANIFEST, file_entry, load_entry, save_array

CODEBOOK_FILES = ("centroids", "centroid_scales", "bucket_cutoffs", "bucket_weights")
_MERGE_CHUNK_DOCS = 4096


@dataclass
class SegmentData:
    """The arrays the search stages read for one segment (the IVF is derived at open, not stored)."""

    codec: ResidualCodec
    codes: np.ndarray
    residuals: np.ndarray
    offsets: np.ndarray
    ivf_offsets: np.ndarray
    ivf_docs: np.ndarray
    originals: orig_files.Originals | None = None  # the stored float16 vectors, when the segment keeps them

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1


@dataclass(frozen=True)
class DocIds:
    """External ids of a segment's documents: ``range`` (``start + slot``), ``int`` (int64 array) or
    ``str`` (UTF-8 blob + offsets)."""

    kind: str
    n: int
    start: int = 0
    values: np.ndarray | None = None
    blob: bytes | None = None
    offsets: np.ndarray | None = None
    source: str = ""  # the file of string ids, for errors

    def take(self, slots: np.ndarray) -> np.ndarray:
        """Ids of ``slots`` (same shape): int64, or an object array of str."""
        slots = np.asarray(slots, dtype=np.int64)
        if self.kind == "range":
            return slots + self.start
        if self.kind == "int":
            return self.values[slots]
        out = np.empty(slots.shape, dtype=object)
        try:
            for idx, s in np.ndenumerate(slots):
                out[idx] = self.blob[self.offsets[s] : self.offsets[s + 1]].decode("utf-8")
        except UnicodeDecodeError as e:  # a damaged file that was not checksummed at open (a large one)
            raise IndexFormatError(f"{self.source}: a document id is not UTF-8 ({e})") from None
        return out

    def max(self) -> int | None:
        if self.kind == "range":
            return self.start + self.n - 1
        return int(self.values.max()) if self.kind == "int" else None


@dataclass
class Segment:
    """One segment as a snapshot sees it: its arrays plus the tombstones of that manifest version."""

    id: int
    entry: dict
    data: SegmentData
    doclens: np.ndarray
    ids: DocIds
    deleted: np.ndarray | None = None  # bool [n_docs], None when nothing is deleted
    n_deleted: int = 0
    meta: meta_files.MetadataStore | None = None  # per-document metadata and texts, None when it has neither

    @property
    def n_docs(self) -> int:
        return self.data.n_docs

    @property
    def n_live(self) -> int:
        return self.n_docs - self.n_deleted

    def live(self) -> np.ndarray:
        return np.ones(self.n_docs, bool) if self.deleted is None else ~self.deleted

    @property
    def live_tokens(self) -> int:
        total = len(self.data.codes)
        return total if self.deleted is None else total - int(self.doclens[self.deleted].sum(dtype=np.int64))


def segment_name(seg_id: int) -> str:
    return f"seg-{seg_id:06d}"


def codebook_name(generation: int) -> str:
    return f"codebook-{generation:06d}"


def fresh_dir(root: Path, name: str) -> Path:
    """An empty ``root / name``; a leftover of an interrupted write (never referenced) is removed first."""
    d = root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    return d


# ---------------------------------------------------------------------------------------------- codebook
def save_codebook(root: Path, name: str, codec: ResidualCodec, stored: tuple | None = None) -> dict:
    """Write the codebook (centroids as int8 + per-centroid scales, bucket cutoffs and weights) to ``root/name``.

    ``stored``: the int8 centroids and scales to write, when they are known (an extended codebook keeps
    the bytes of the centroids it extends, so existing codes decompress exactly as before).
    """
    fresh_dir(root, name)
    q, scales = stored if stored is not None else quantize_centroids(codec.centroids)
    arrays = dict(zip(CODEBOOK_FILES, (q, scales, codec.cutoffs, codec.weights)))
    entries = {k: save_array(root, f"{name}/{k}.npy", a) for k, a in arrays.items()}
    sync_tree(root / name)
    return entries


def _load(root: Path, files: dict, name: str, shape: tuple, dtypes: tuple, mmap: bool, verify: bool) -> np.ndarray:
    arr = load_entry(root, files.get(name), mmap=mmap, verify=verify, name=name)
    if tuple(arr.shape) != shape or arr.dtype not in dtypes:
        raise IndexFormatError(
            f"{root / files[name]['path']}: expected shape {shape} {dtypes}, got {arr.shape} {arr.dtype}"
        )
    return arr


def load_codebook(
    root: Path, files: dict, dim: int, nbits: int, K: int, normalize: bool, mmap: bool, verify: bool
) -> ResidualCodec:
    f32 = (np.dtype(np.float32),)
    if not isinstance(files, dict):
        raise IndexFormatError(f"{root / MANIFEST}: invalid field ('codebook')")
    centroids = dequantize_centroids(
        np.asarray(_load(root, files, "centroids", (K, dim), (np.dtype(np.int8),), mmap, verify)),
        np.asarray(_load(root, files, "centroid_scales", (K,), f32, mmap, verify)),
    )
    cutoffs = np.ascontiguousarray(_load(root, files, "bucket_cutoffs", (dim, 2**nbits - 1), f32, mmap, verify))
    weights = np.ascontiguousarray(_load(root, files, "bucket_weights", (dim, 2**nbits), f32, mmap, verify))
    for name, arr in (("centroids", centroids), ("bucket_cutoffs", cutoffs), ("bucket_weights", weights)):
        if not np.isfinite(arr).all():
            raise IndexFormatError(f"{root / files[name]['path']}: contains NaN or inf")
    return ResidualCodec(np.ascontiguousarray(centroids), cutoffs, weights, nbits, normalize)


# ---------------------------------------------------------------------------------------------- writing
def _save_ids(root: Path, name: str, ids, files: dict) -> tuple[str, int]:
    """Write a segment's ids: an int (first id of a range, no file), an int64 array or a list of str."""
    if isinstance(ids, (int, np.integer)):
        return "range", int(ids)
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
        files["doc_ids"] = save_array(root, f"{name}/doc_ids.npy", ids.astype(np.int64))
        return "int", 0
    encoded = [s.encode("utf-8") for s in ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), np.uint8)
    files["doc_id_bytes"] = save_array(root, f"{name}/doc_id_bytes.npy", blob)
    files["doc_id_offsets"] = save_array(root, f"{name}/doc_id_offsets.npy", offsets)
    return "str", 0


def _finish_segment(root, seg_id, doclens, ids, files, outside, codec, metadata=None, texts=None) -> dict:
    name = segment_name(seg_id)
    files["doclens"] = save_array(root, f"{name}/doclens.npy", np.asarray(doclens, dtype=np.int32))
    id_type, id_start = _save_ids(root, name, ids, files)
    if metadata is not None or texts is not None:
        files["metadata"] = meta_files.write_store(root, name, len(doclens), metadata, texts)
        if files["metadata"]["rows"] != len(doclens):
            raise ValueError(f"metadata has {files['metadata']['rows']} entries for {len(doclens)} documents")
    sync_tree(root / name)
    n_tokens = int(np.sum(doclens, dtype=np.int64))
    return {
        "id": seg_id,
        "n_docs": len(doclens),
        "n_tokens": n_tokens,
        "id_type": id_type,
        "id_start": id_start,
        "files": files,
        "deleted": None,
        "drift": {"outside": round(outside / (n_tokens * codec.dim), 6), "tokens": n_tokens},
    }


def write_segment(
    root: Path,
    seg_id: int,
    spill: Spill,
    doclens: np.ndarray,
    ids,
    codec: ResidualCodec,
    kernels,
    progress=False,
    metadata=None,
    compress=None,
    texts=None,
    keep_originals: bool = False,
) -> dict:
    """Compress the spilled tokens with ``codec`` into ``root/seg-<id>/`` (created by :func:`fresh_dir`,
    where the spill lies; it is removed) and return the segment's manifest entry, with its drift.
    ``metadata``, ``texts``: the documents' metadata JSON texts and texts in order
    (:mod:`colbert_index.storage.metadata`), or None.
    ``compress``: ``float16 block -> (codes, packed residuals, outside count)`` to use instead of ``codec``
    with ``kernels`` (:class:`colbert_index.gpu.build.DeviceCompressor`). ``keep_originals``: the spill becomes
    the segment's ``originals.npy`` instead of being removed."""
    name = segment_name(seg_id)
    n_tokens, dim = spill.shape
    codes = open_memmap(root / name / "codes.npy", mode="w+", dtype=codec.code_dtype, shape=(n_tokens,))
    residuals = open_memmap(
        root / name / "residuals.npy", mode="w+", dtype=np.uint8, shape=(n_tokens, dim * codec.nbits // 8)
    )
    outside = 0
    bar = tqdm(total=n_tokens, desc="compress", unit="tok", disable=not progress)
    for lo, block in spill.blocks(np.float32 if compress is None else np.float16):
        hi = lo + len(block)
        if compress is None:
            codes[lo:hi], residuals[lo:hi], n_outside = codec.compress_counted(block, kernels)
        else:
            codes[lo:hi], residuals[lo:hi], n_outside = compress(block)
        outside += n_outside
        bar.update(hi - lo)
    bar.close()
    codes.flush()
    residuals.flush()
    del codes, residuals
    files = {k: file_entry(root, f"{name}/{k}.npy") for k in ("codes", "residuals")}
    if keep_originals:
        spill.path.replace(root / name / orig_files.FILE)
        files["originals"] = file_entry(root, f"{name}/{orig_files.FILE}")
    else:
        spill.path.unlink()
    return _finish_segment(root, seg_id, doclens, ids, files, outside, codec, metadata, texts)


def _live_blocks(segments: list[Segment], originals: bool = False) -> Iterator[tuple]:
    """``(codes, residuals, original vectors or None)`` of every live token, segment by segment in slot order, in
    blocks; the vectors (float16) when ``originals`` and the segment keeps them."""
    for seg in segments:
        live, off, kept = seg.live(), seg.data.offsets, seg.data.originals if originals else None
        for d0 in range(0, seg.n_docs, _MERGE_CHUNK_DOCS):
            d1 = min(d0 + _MERGE_CHUNK_DOCS, seg.n_docs)
            tok = np.repeat(live[d0:d1], seg.doclens[d0:d1])
            lo, hi = int(off[d0]), int(off[d1])
            vectors = None if kept is None else kept.rows(lo, hi)[tok]
            yield np.asarray(seg.data.codes[lo:hi])[tok], np.asarray(seg.data.residuals[lo:hi])[tok], vectors


def all_keep_originals(segments: list[Segment]) -> bool:
    """Every segment keeps its original vectors (what a merge of them needs to keep them)."""
    return bool(segments) and all(s.data.originals is not None for s in segments)


def live_doclens_and_ids(segments: list[Segment]):
    """(doclens int64, ids) of the live documents in order; ids are int64, or a list of str."""
    if not segments:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    doclens = np.concatenate([seg.doclens[seg.live()] for seg in segments]).astype(np.int64)
    ids = np.concatenate([seg.ids.take(np.flatnonzero(seg.live())) for seg in segments])
    return doclens, (list(ids) if ids.dtype == object else ids)


def write_merged(root: Path, seg_id: int, segments: list[Segment], codec: ResidualCodec) -> dict:
    """One segment of the live documents of ``segments`` (same codebook), codes and residuals copied as they are;
    their original vectors too when every segment keeps them (else the merged segment keeps none)."""
    name = segment_name(seg_id)
    fresh_dir(root, name)
    doclens, ids = live_doclens_and_ids(segments)
    n_tokens, width = int(doclens.sum()), segments[0].data.residuals.shape[1]
    codes = open_memmap(root / name / "codes.npy", mode="w+", dtype=codec.code_dtype, shape=(n_tokens,))
    residuals = open_memmap(root / name / "residuals.npy", mode="w+", dtype=np.uint8, shape=(n_tokens, width))
    keep = all_keep_originals(segments)
    pos = 0
    with orig_files.RowWriter(root / name / orig_files.FILE, codec.dim) if keep else contextlib.nullcontext() as out:
        for c, r, vectors in _live_blocks(segments, keep):
            codes[pos : pos + len(c)], residuals[pos : pos + len(c)] = c, r
            if keep:
                out.write(vectors)
            pos += len(c)
    codes.flush()
    residuals.flush()
    del codes, residuals
    files = {k: file_entry(root, f"{name}/{k}.npy") for k in ("codes", "residuals")}
    if keep:
        files["originals"] = file_entry(root, f"{name}/{orig_files.FILE}")
    # drift of the merged segment: the token-weighted mean of its parts' (deleted tokens included)
    parts = [s.entry.get("drift") for s in segments]
    measured = [(p["outside"], p["tokens"]) for p in parts if isinstance(p, dict)]
    tokens = sum(t for _, t in measured)
    outside = sum(o * t for o, t in measured) / tokens * n_tokens * codec.dim if tokens else 0.0
    meta, texts = live_metadata(segments), live_texts(segments)
    return _finish_segment(root, seg_id, doclens, ids, files, outside, codec, meta, texts)


def live_metadata(segments: list[Segment]):
    """The live documents' metadata in order for a merged segment, or None when no segment has any."""
    return meta_files.live_rows(segments) if any(s.meta is not None for s in segments) else None


def live_texts(segments: list[Segment]):
    """The live documents' texts in order for a merged segment, or None when no segment has any."""
    return meta_files.live_rows(segments, "text") if any(s.meta and s.meta.has_texts for s in segments) else None


def spill_live(segments: list[Segment], kernels, path: Path) -> tuple[Spill, np.ndarray, object]:
    """Every live token to a float16 spill file: its original vector where its segment keeps them, else
    decompressed. Returns ``(Spill, doclens, ids)``."""
    codec = segments[0].data.codec
    doclens, ids = live_doclens_and_ids(segments)
    with orig_files.RowWriter(path, codec.dim) as out:
        for c, r, vectors in _live_blocks(segments, originals=True):
            out.write(codec.decompress(c, r, kernels) if vectors is None else vectors)
    return Spill(path, int(doclens.sum()), codec.dim), doclens, ids


# ---------------------------------------------------------------------------------------------- tombstones
def tombstone_name(seg_id: int, generation: int) -> str:
    return f"del-{seg_id:06d}-{generation:06d}.npy"


def save_tombstones(root: Path, seg_id: int, generation: int, deleted: np.ndarray) -> dict:
    """Bit ``i`` set = slot ``i`` deleted, packed most significant bit first (``numpy.packbits``; the same
    bytes as a big-endian ``bitarray``); the entry carries the number of deleted documents."""
    relpath = tombstone_name(seg_id, generation)
    entry = save_array(root, relpath, np.packbits(deleted))
    fsync_path(root / relpath)
    entry["count"] = int(np.count_nonzero(deleted))
    return entry


def load_tombstones(root: Path, entry, n_docs: int, verify: bool) -> tuple[np.ndarray | None, int]:
    if entry is None:
        return None, 0
    packed = np.asarray(load_entry(root, entry, mmap=False, verify=verify, name="tombstones"))
    fpath = root / entry["path"]
    if packed.shape != ((n_docs + 7) // 8,) or packed.dtype != np.uint8:
        raise IndexFormatError(f"{fpath}: expected uint8 [{(n_docs + 7) // 8}] bits, got {packed.dtype} {packed.shape}")
    bits = np.unpackbits(packed).astype(bool)
    count = int(np.count_nonzero(bits[:n_docs]))
    if bits[n_docs:].any() or count != entry.get("count") or not 0 < count < n_docs:
        raise IndexFormatError(
            f"{fpath}: {count} deleted of {n_docs} (manifest says {entry.get('count')}), or bits past the end"
        )
    return bits[:n_docs], count


# ---------------------------------------------------------------------------------------------- loading
def load_segment(
    root: Path, entry, codec: ResidualCodec, kernels, mmap: bool, verify: bool, cache: dict[str, Segment]
) -> Segment:
    """Open (and validate) one segment of a manifest. ``cache`` maps segment keys of a previous snapshot to
    its segments: unchanged files are not read again and the IVF is not rebuilt, only tombstones are loaded."""
    try:
        seg_id, n_docs, n_tokens = int(entry["id"]), int(entry["n_docs"]), int(entry["n_tokens"])
        id_type, id_start, files = entry["id_type"], int(entry["id_start"]), entry["files"]
        if not isinstance(files, dict) or id_type not in ("range", "int", "str"):
            raise ValueError(f"id_type {id_type!r}" if isinstance(files, dict) else "files")
    except (KeyError, TypeError, ValueError) as e:
        raise IndexFormatError(f"{root / MANIFEST}: invalid segment entry ({e})") from None
    deleted, n_deleted = load_tombstones(root, entry.get("deleted"), n_docs, verify)
    key = segment_key(entry)
    if key in cache:
        return dataclasses.replace(cache[key], id=seg_id, entry=entry, deleted=deleted, n_deleted=n_deleted)

    def load(name, shape, dtype):
        return _load(root, files, name, shape, (np.dtype(dtype),), mmap, verify)

    doclens = np.asarray(load("doclens", (n_docs,), np.int32))
    codes = load("codes", (n_tokens,), codec.code_dtype)
    residuals = load("residuals", (n_tokens, codec.dim * codec.nbits // 8), np.uint8)
    where = root / files["doclens"]["path"]
    if n_docs < 1 or (doclens < 1).any() or int(doclens.sum(dtype=np.int64)) != n_tokens:
        raise IndexFormatError(f"{where}: document lengths must be >= 1 and sum to n_tokens={n_tokens}")
    if int(codes.max()) >= codec.n_centroids:
        raise IndexFormatError(
            f"{root / files['codes']['path']}: centroid id {int(codes.max())} out of range (K={codec.n_centroids})"
        )
    offsets = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(doclens, out=offsets[1:])
    if id_type == "range":
        ids = DocIds("range", n_docs, start=id_start)
    elif id_type == "int":
        ids = DocIds("int", n_docs, values=np.asarray(load("doc_ids", (n_docs,), np.int64)))
    else:
        id_offsets = np.asarray(load("doc_id_offsets", (n_docs + 1,), np.int64))
        blob = np.asarray(load_entry(root, files.get("doc_id_bytes"), False, verify, "doc_id_bytes"))
        if id_offsets[0] != 0 or (np.diff(id_offsets) < 0).any() or id_offsets[-1] != len(blob):
            raise IndexFormatError(
                f"{root / files['doc_id_offsets']['path']}: offsets not monotone within doc_id_bytes"
            )
        source = str(root / files["doc_id_bytes"]["path"])
        ids = DocIds("str", n_docs, blob=blob.tobytes(), offsets=id_offsets, source=source)
    meta = meta_files.open_store(root, files.get("metadata"), n_docs, verify)
    originals = None
    if "originals" in files:
        originals = orig_files.Originals.open(root, files["originals"], (n_tokens, codec.dim), verify)
    ivf_offsets, ivf_docs = kernels.build_ivf(codes, offsets, codec.n_centroids)
    data = SegmentData(codec, codes, residuals, offsets, ivf_offsets, ivf_docs, originals)
    return Segment(seg_id, entry, data, doclens, ids, deleted, n_deleted, meta)


def segment_key(entry: dict) -> str:
    """What identifies a segment's immutable files (paths and checksums)."""
    return json.dumps(entry["files"], sort_keys=True)
