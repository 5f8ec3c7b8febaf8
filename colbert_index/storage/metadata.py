"""Per-document metadata: one SQLite file per segment, as immutable as the segment's arrays.

``seg-S/metadata.sqlite`` holds a table ``docs(slot INTEGER PRIMARY KEY, meta TEXT)``: one row per document
of the segment, its metadata as JSON text (NULL for a document given none). It is written with the segment,
before the commit, fsynced, and named in the segment's manifest entry (``files.metadata``: path, bytes,
sha256, rows), so it becomes visible with the segment's documents and never before; deletes need no change
(tombstones hide the rows), upserts write the new rows in the new segment, and compaction copies the live
rows into the merged segment's file. A segment written without metadata has no file: its documents have none.

Readers open the file read-only and ``immutable`` (no locking, nothing can write through the connection) and
keep it open, so a snapshot keeps its metadata after a later commit removes the file (POSIX semantics).
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np

from colbert_index.errors import IndexFormatError
from colbert_index.storage.files import fsync_path, sha256
from colbert_index.storage.manifest import MANIFEST, check_file

FILENAME = "metadata.sqlite"
MAX_JSON_BYTES = 1 << 20  # one document's metadata, serialised
_CACHED_FILTERS = 16  # per segment: bitmaps of the most recent distinct filters
_BATCH = 4096


def check_metadata(metadata, n_docs: int | None = None) -> list[str | None]:
    """Per-document metadata (a list of JSON-able dicts or ``None``) -> JSON texts, checked.

    Raises ``ValueError`` naming the first bad entry: not a dict, not JSON-serialisable, NaN or infinity,
    more than 1 MiB, or a list whose length is not ``n_docs``.
    """
    if isinstance(metadata, dict):
        raise TypeError("metadata is one dict per document: pass a list of dicts")
    items = list(metadata)
    if n_docs is not None and len(items) != n_docs:
        raise ValueError(f"metadata has {len(items)} entries for {n_docs} documents")
    out: list[str | None] = []
    for i, m in enumerate(items):
        if m is None:
            out.append(None)
            continue
        if not isinstance(m, dict):
            raise ValueError(f"metadata[{i}]: expected a dict (or None), got {type(m).__name__}")
        try:
            text = json.dumps(m, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise ValueError(f"metadata[{i}]: not JSON-serialisable ({e})") from None
        if len(text.encode("utf-8")) > MAX_JSON_BYTES:
            raise ValueError(f"metadata[{i}]: larger than {MAX_JSON_BYTES} bytes as JSON")
        out.append(text)
    return out


def write_store(root: Path, seg_name: str, rows: Iterable[str | None]) -> dict:
    """Write ``root/seg_name/metadata.sqlite`` from the JSON texts of the segment's documents in slot order,
    fsync it, and return its manifest entry."""
    relpath = f"{seg_name}/{FILENAME}"
    path = root / relpath
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    n = 0
    try:
        con.execute("PRAGMA journal_mode=OFF")  # a fresh file, named by no manifest until the commit
        con.execute("PRAGMA synchronous=OFF")  # fsynced below, once
        con.execute("CREATE TABLE docs (slot INTEGER PRIMARY KEY, meta TEXT)")
        con.execute("BEGIN")
        batch: list[tuple[int, str | None]] = []
        for text in rows:
            batch.append((n, text))
            n += 1
            if len(batch) == _BATCH:
                con.executemany("INSERT INTO docs VALUES (?, ?)", batch)
                batch.clear()
        con.executemany("INSERT INTO docs VALUES (?, ?)", batch)
        con.execute("COMMIT")
    finally:
        con.close()
    fsync_path(path)
    fsync_path(path.parent)
    return {"path": relpath, "bytes": path.stat().st_size, "sha256": sha256(path), "rows": n}


class MetadataStore:
    """The metadata of one committed segment, opened read-only."""

    def __init__(self, path: Path, n_docs: int) -> None:
        uri = f"file:{quote(os.fspath(path))}?mode=ro&immutable=1"
        self.path, self.n_docs = path, n_docs
        self._con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._con.execute("PRAGMA query_only=1")
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def validate(self, verify: bool) -> None:
        try:
            with self._lock:
                n, lo, hi = self._con.execute("SELECT count(*), min(slot), max(slot) FROM docs").fetchone()
                ok = not verify or self._con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"{self.path}: not a readable metadata database ({e})") from None
        if (n, lo, hi) != (self.n_docs, 0, self.n_docs - 1) or not ok:
            raise IndexFormatError(
                f"{self.path}: {n} rows for slots {lo}..{hi}, expected one per each of {self.n_docs}"
            )

    def close(self) -> None:
        self._con.close()

    def clear_cache(self) -> None:
        """Forget the cached filter bitmaps (benchmarks time the SQL evaluation with it)."""
        with self._lock:
            self._cache.clear()

    def matching(self, sql: str, params: tuple) -> np.ndarray:
        """bool ``[n_docs]``: documents whose metadata satisfies a compiled filter (:mod:`colbert_index.filters`)."""
        key = (sql, params)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            slots = np.fromiter(
                (r[0] for r in self._con.execute(f"SELECT slot FROM docs WHERE {sql}", params)), dtype=np.int64
            )
            mask = np.zeros(self.n_docs, dtype=bool)
            mask[slots] = True
            mask.flags.writeable = False
            self._cache[key] = mask
            if len(self._cache) > _CACHED_FILTERS:
                self._cache.popitem(last=False)
            return mask

    def rows(self, slots: Iterable[int] | None = None) -> Iterator[str | None]:
        """JSON texts of ``slots`` (all, in order, when ``None``)."""
        if slots is None:
            with self._lock:
                fetched = self._con.execute("SELECT meta FROM docs ORDER BY slot").fetchall()
            yield from (r[0] for r in fetched)
            return
        slots = [int(s) for s in slots]
        for lo in range(0, len(slots), 500):
            part = slots[lo : lo + 500]
            with self._lock:
                got = dict(
                    self._con.execute(
                        f"SELECT slot, meta FROM docs WHERE slot IN ({','.join('?' * len(part))})", part
                    ).fetchall()
                )
            yield from (got.get(s) for s in part)


_EMPTY_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _empty_db() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", check_same_thread=False)


def holds_without_metadata(sql: str, params: tuple) -> bool:
    """Whether a compiled filter holds for a document without metadata (``meta`` NULL): it then holds for
    every document of a segment that has no metadata file."""
    with _EMPTY_LOCK:
        return bool(_empty_db().execute(f"SELECT {sql} FROM (SELECT NULL AS meta)", params).fetchone()[0])


def open_store(root: Path, entry, n_docs: int, verify: bool) -> MetadataStore | None:
    """Open and check the metadata file a segment entry names (``None`` when it has none)."""
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise IndexFormatError(f"{root / MANIFEST}: invalid metadata entry")
    path = check_file(root, entry, verify)
    store = MetadataStore(path, n_docs)
    store.validate(verify)
    return store


def live_rows(segments) -> Iterator[str | None]:
    """The metadata JSON texts of the live documents of ``segments``, in order (what a merge keeps)."""
    for seg in segments:
        live = seg.live()
        if seg.meta is None:
            yield from (None for _ in range(int(live.sum())))
            continue
        for slot, text in enumerate(seg.meta.rows()):
            if live[slot]:
                yield text
