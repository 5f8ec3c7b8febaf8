"""On-disk format: ``manifest.json`` listing plain ``.npy`` arrays (docs/format.md).

Format version 2: one shared codebook plus immutable segments, each file named in the manifest by a path
relative to the index directory, with its shape, dtype, size and sha256. Version 1 (one set of arrays at the
top level) is still read, as an index of one segment. A change writes new files, fsyncs them, then commits by
atomically replacing the manifest; :func:`load_manifest` and :func:`load_entry` validate everything they hand
on and raise :class:`~colbert_index.errors.IndexFormatError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from colbert_index.errors import IndexFormatError
from colbert_index.storage.files import replace_json, sha256

FORMAT_NAME = "colbert_index"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
# The manifest's own checksum: the sha256 of its canonical JSON without this field. A manifest edited or damaged
# in a way that still parses (a field set to another valid value) is then refused instead of read.
CHECKSUM_FIELD = "checksum"
# Every file's sha256 is in the manifest; files up to this size are checked at every open,
# larger ones (codes, residuals of big indexes) only with ``verify=True``.
CHECKSUM_MAX_BYTES = 64 << 20
# Names this package writes at the top of an index directory (besides the manifest and the lock);
# only these are ever removed by :func:`remove_unreferenced`.
_OWNED_PREFIXES = ("seg-", "del-", "codebook-")
V1_FILES = (
    "centroids",
    "centroid_scales",
    "bucket_cutoffs",
    "bucket_weights",
    "doclens",
    "codes",
    "residuals",
    "doc_ids",
    "doc_id_bytes",
    "doc_id_offsets",
)


def save_array(root: Path, relpath: str, array: np.ndarray) -> dict:
    """Write ``root / relpath`` (an ``.npy``) and return its manifest entry (path, shape, dtype, size, sha256)."""
    np.save(root / relpath, np.ascontiguousarray(array))
    return file_entry(root, relpath)


def file_entry(root: Path, relpath: str) -> dict:
    """Manifest entry of an ``.npy`` already written under ``root`` (e.g. through ``open_memmap``)."""
    path = root / relpath
    arr = np.load(path, mmap_mode="r")
    entry = {"path": relpath, "shape": list(arr.shape), "dtype": arr.dtype.str, "bytes": path.stat().st_size}
    del arr
    entry["sha256"] = sha256(path)
    return entry


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal(manifest: dict) -> dict:
    """``manifest`` with its checksum field set (:data:`CHECKSUM_FIELD`)."""
    body = {k: v for k, v in manifest.items() if k != CHECKSUM_FIELD}
    return {**body, CHECKSUM_FIELD: _digest(body)}


def write_manifest(directory: Path, manifest: dict) -> None:
    """Commit point: ``manifest.json`` replaced atomically (:func:`~colbert_index.storage.files.replace_json`)."""
    replace_json(directory, MANIFEST, seal({**manifest, "format": FORMAT_NAME, "version": FORMAT_VERSION}))


def load_manifest(path: str | os.PathLike) -> dict:
    """Read and check ``manifest.json``; a version 1 manifest is returned converted to version 2."""
    path = Path(path)
    if not path.is_dir():
        raise IndexFormatError(f"{path}: no index directory here (build one with Index.build)")
    mpath = path / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise IndexFormatError(f"{mpath}: missing; {path} is not a complete index") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{mpath}: unreadable JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{mpath}: not a {FORMAT_NAME} manifest")
    if manifest.get("version") not in READ_VERSIONS:
        raise IndexFormatError(
            f"{mpath}: format version {manifest.get('version')!r}, this build reads versions "
            f"{', '.join(map(str, READ_VERSIONS))} (a newer colbert_index wrote it?)"
        )
    if CHECKSUM_FIELD in manifest and seal(manifest)[CHECKSUM_FIELD] != manifest[CHECKSUM_FIELD]:
        raise IndexFormatError(f"{mpath}: checksum mismatch (the manifest was edited or is damaged)")
    if manifest["version"] == 1:
        manifest = _upgrade_v1(manifest, mpath)
    return manifest


def _upgrade_v1(m: dict, mpath: Path) -> dict:
    """A version 1 manifest (one set of arrays at the top level) as the version 2 manifest of one segment
    whose files stay where they are. Nothing is rewritten; the first commit writes this as version 2."""
    files = m.get("files")
    if not isinstance(files, dict):
        raise IndexFormatError(f"{mpath}: invalid field ('files')")

    def entry(name):
        if not isinstance(files.get(name), dict):
            raise IndexFormatError(f"{mpath}: no entry for {name}.npy")
        return {**files[name], "path": f"{name}.npy"}

    id_type = m.get("id_type")
    id_files = {"range": (), "int": ("doc_ids",), "str": ("doc_id_bytes", "doc_id_offsets")}.get(id_type)
    if id_files is None:
        raise IndexFormatError(f"{mpath}: unknown id_type {id_type!r}")
    segment = {
        "id": 0,
        "n_docs": m.get("n_docs"),
        "n_tokens": m.get("n_tokens"),
        "id_type": id_type,
        "id_start": 0,
        "files": {name: entry(name) for name in ("doclens", "codes", "residuals", *id_files)},
        "deleted": None,
    }
    out = {k: v for k, v in m.items() if k not in ("files", "id_type")}
    out.update(
        version=2,
        upgraded_from=1,
        uuid=None,
        generation=0,
        id_type="str" if id_type == "str" else "int",
        next_id=None,  # computed from the ids at open
        next_segment=1,
        codebook={name: entry(name) for name in ("centroids", "centroid_scales", "bucket_cutoffs", "bucket_weights")},
        segments=[segment],
    )
    return out


def check_relpath(root: Path, relpath) -> Path:
    """``root / relpath`` for a manifest path, refusing absolute paths and ``..`` (a manifest names
    files inside its own directory only)."""
    p = PurePosixPath(relpath) if isinstance(relpath, str) else None
    if p is None or p.is_absolute() or ".." in p.parts or not p.parts:
        raise IndexFormatError(f"{root / MANIFEST}: invalid file path {relpath!r}")
    return root / p


def check_file(root: Path, entry: dict, verify: bool = False) -> Path:
    """The path a manifest file entry names, checked: inside ``root``, present, of the recorded size, and
    of the recorded sha256 (files up to :data:`CHECKSUM_MAX_BYTES`, all with ``verify=True``)."""
    fpath = check_relpath(root, entry.get("path"))
    if not fpath.is_file():
        raise IndexFormatError(f"{fpath}: missing")
    size = fpath.stat().st_size
    if size != entry.get("bytes"):
        raise IndexFormatError(f"{fpath}: {size} bytes, manifest says {entry.get('bytes')} (truncated or replaced?)")
    if (verify or size <= CHECKSUM_MAX_BYTES) and sha256(fpath) != entry.get("sha256"):
        raise IndexFormatError(f"{fpath}: checksum mismatch (file corrupted)")
    return fpath


def load_entry(root: Path, entry, mmap: bool = True, verify: bool = False, name: str = "?") -> np.ndarray:
    """Load the ``.npy`` a manifest entry names and check it (size, checksum, shape, dtype).

    The sha256 is checked for files up to :data:`CHECKSUM_MAX_BYTES`, and for all with ``verify=True``.
    """
    if not isinstance(entry, dict):
        raise IndexFormatError(f"{root / MANIFEST}: no entry for {name}.npy")
    fpath = check_file(root, entry, verify)
    try:
        arr = np.load(fpath, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError/OSError/EOFError/... on damaged headers
        raise IndexFormatError(f"{fpath}: not a readable .npy array ({e})") from None
    if list(arr.shape) != entry.get("shape") or arr.dtype.str != entry.get("dtype"):
        raise IndexFormatError(
            f"{fpath}: shape {list(arr.shape)} dtype {arr.dtype.str}, manifest says "
            f"{entry.get('shape')} {entry.get('dtype')}"
        )
    return arr


def referenced(manifest: dict) -> set[str]:
    """Top-level names (files or directories) of an index directory that ``manifest`` uses."""
    entries = list(manifest.get("codebook", {}).values())
    for seg in manifest.get("segments", []):
        entries += list(seg.get("files", {}).values())
        if seg.get("deleted"):
            entries.append(seg["deleted"])
    return {PurePosixPath(e["path"]).parts[0] for e in entries}


def remove_unreferenced(root: Path, keep: Iterable[str]) -> list[str]:
    """Delete what this package wrote in ``root`` that no name in ``keep`` covers: segments, codebooks and
    tombstones of older generations, and leftovers of interrupted writes. Returns the removed names.
    Call it only while holding the writer lock."""
    keep = set(keep)
    removed = []
    for p in root.iterdir():
        name = p.name
        owned = name.startswith(_OWNED_PREFIXES) or name == MANIFEST + ".tmp" or name in {f"{n}.npy" for n in V1_FILES}
        if owned and name not in keep:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(name)
    return removed

