"""On-disk format: a directory of plain ``.npy`` arrays plus ``manifest.json``.

Writes happen in a hidden temporary directory beside the target that is renamed into place at the
end, so a crash never leaves a half-written index that opens. :func:`load_manifest` and
:func:`load_array` validate everything they hand on and raise :class:`IndexFormatError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

FORMAT_NAME = "colbert_index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Every file's sha256 is in the manifest; files up to this size are checked at every open,
# larger ones (codes, residuals of big indexes) only with ``verify=True``.
CHECKSUM_MAX_BYTES = 64 << 20


class IndexFormatError(ValueError):
    """The index directory is missing, truncated, corrupted or of an unknown format version."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_array(directory: Path, name: str, array: np.ndarray) -> dict:
    """Write ``name.npy`` and return its manifest entry (shape, dtype, size, sha256)."""
    path = directory / f"{name}.npy"
    np.save(path, np.ascontiguousarray(array))
    return file_entry(directory, name)


def file_entry(directory: Path, name: str) -> dict:
    """Manifest entry of an ``.npy`` already written in ``directory`` (e.g. through ``open_memmap``)."""
    path = directory / f"{name}.npy"
    arr = np.load(path, mmap_mode="r")
    entry = {"shape": list(arr.shape), "dtype": arr.dtype.str, "bytes": path.stat().st_size}
    del arr
    entry["sha256"] = _sha256(path)
    return entry


def write_manifest(directory: Path, manifest: dict) -> None:
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **manifest}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _fsync(tmp)
    os.replace(tmp, directory / MANIFEST)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` when the block succeeds.

    On an exception the temporary directory is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            _fsync(f)
        if path.exists():
            trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, trash)
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_manifest(path: str | os.PathLike) -> dict:
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
    if manifest.get("version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{mpath}: format version {manifest.get('version')!r}, this build reads version {FORMAT_VERSION}"
        )
    return manifest


def load_array(path: Path, manifest: dict, name: str, mmap: bool = True, verify: bool = False) -> np.ndarray:
    """Load ``name.npy`` and check it against its manifest entry (size, checksum, shape, dtype).

    The sha256 is checked for files up to :data:`CHECKSUM_MAX_BYTES`, and for all with ``verify=True``.
    """
    fpath = path / f"{name}.npy"
    entry = manifest.get("files", {}).get(name)
    if not isinstance(entry, dict):
        raise IndexFormatError(f"{path / MANIFEST}: no entry for {fpath.name}")
    if not fpath.is_file():
        raise IndexFormatError(f"{fpath}: missing")
    size = fpath.stat().st_size
    if size != entry.get("bytes"):
        raise IndexFormatError(f"{fpath}: {size} bytes, manifest says {entry.get('bytes')} (truncated or replaced?)")
    if (verify or size <= CHECKSUM_MAX_BYTES) and _sha256(fpath) != entry.get("sha256"):
        raise IndexFormatError(f"{fpath}: checksum mismatch (file corrupted)")
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
