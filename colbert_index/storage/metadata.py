"""Per-document metadata and texts: one SQLite file per segment, as immutable as the segment's arrays.

``seg-S/metadata.sqlite`` holds a table ``docs(slot INTEGER PRIMARY KEY, meta TEXT)``: one row per document
of the segment, its metadata as JSON text (NULL for a document given none). A segment written with texts also
holds ``texts(slot INTEGER PRIMARY KEY, text TEXT)``, one row per document that has a text, and ``fts``, an FTS5
index over it (external content: ``content='texts'``, ``content_rowid='slot'``; tokenizer :data:`TOKENIZER`) that
answers lexical queries ranked by BM25 (:mod:`colbert_index.hybrid`). The file is written with the segment,
before the commit, fsynced, and named in the segment's manifest entry (``files.metadata``: path, bytes, sha256,
rows, and ``texts``, the number of texts, when it has them), so it becomes visible with the segment's documents
and never before; deletes need no change (tombstones hide the rows), upserts write the new rows in the new
segment, and compaction copies the live rows into the merged segment's file. A segment written with neither
metadata nor texts has no file: its documents have none.

Readers open the file read-only and ``immutable`` (no locking, nothing can write through the connection) and
keep it open, so a snapshot keeps its metadata after a later commit removes the file (POSIX semantics).
"""

from __future__ import annotations

import contextlib
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
MAX_TEXT_BYTES = 1 << 20  # one document's text, as UTF-8
# FTS5's tokenizer for the texts of new segments (each file records its own: readers need not know it). Porter
# stemming on unicode61 (case and diacritics folded) ranked better than unicode61 alone on bench/hybrid.py.
TOKENIZER = "porter unicode61 remove_diacritics 2"
_CACHED_FILTERS = 16  # per segment: bitmaps of the most recent distinct filters
_CACHED_COUNTS = 1 << 14  # per segment: texts matching a query phrase (cleared when full) ...
_CACHED_PHRASE_CHARS = 64  # ... for phrases up to this long
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


def _checked_text(i: int, t) -> str | None:
    if t is None:
        return None
    if not isinstance(t, str):
        raise ValueError(f"texts[{i}]: expected a string (or None), got {type(t).__name__}")
    if "\x00" in t:
        raise ValueError(f"texts[{i}]: contains a NUL character (at {t.index(chr(0))})")
    try:
        size = len(t.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ValueError(f"texts[{i}]: not encodable as UTF-8 ({e.reason} at {e.start})") from None
    if size > MAX_TEXT_BYTES:
        raise ValueError(f"texts[{i}]: longer than {MAX_TEXT_BYTES} bytes as UTF-8")
    return t


def check_texts(texts, n_docs: int | None = None):
    """Per-document texts (``str`` or ``None`` each), checked: ``ValueError`` names the first bad entry (not a
    string, a NUL character, not encodable as UTF-8, over :data:`MAX_TEXT_BYTES`) or a count that is not ``n_docs``.

    A list or tuple is checked at once and returned as a list; any other iterable is returned as an iterator that
    checks each text as it is read (the count is checked when the file is written), so texts can stream from disk.
    """
    if isinstance(texts, str):
        raise TypeError("texts is one string per document: pass a list of strings")
    if not isinstance(texts, (list, tuple)):
        return (_checked_text(i, t) for i, t in enumerate(texts))
    if n_docs is not None and len(texts) != n_docs:
        raise ValueError(f"texts has {len(texts)} entries for {n_docs} documents")
    return [_checked_text(i, t) for i, t in enumerate(texts)]


def _batched(con: sqlite3.Connection, sql: str, rows: Iterable[tuple]) -> None:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) == _BATCH:
            con.executemany(sql, batch)
            batch.clear()
    con.executemany(sql, batch)


def parse(text: str, path: Path) -> dict:
    """One document's metadata from its stored JSON text; a damaged text is an :class:`IndexFormatError`."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError) as e:
        raise IndexFormatError(f"{path}: damaged metadata ({e})") from None


def write_store(
    root: Path, seg_name: str, n_docs: int, meta: Iterable[str | None] | None, texts: Iterable[str | None] | None
) -> dict:
    """Write ``root/seg_name/metadata.sqlite`` from the segment's documents' metadata JSON texts and texts, each in
    slot order (``None``: the segment has none), fsync it, and return its manifest entry."""
    relpath = f"{seg_name}/{FILENAME}"
    path = root / relpath
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path, isolation_level=None)
    counts = [0, 0]

    def numbered(rows, which: int):
        for row in rows:
            counts[which] += 1
            yield counts[which] - 1, row

    try:
        con.execute("PRAGMA journal_mode=OFF")  # a fresh file, named by no manifest until the commit
        con.execute("PRAGMA synchronous=OFF")  # fsynced below, once
        con.execute("CREATE TABLE docs (slot INTEGER PRIMARY KEY, meta TEXT)")
        con.execute("BEGIN")
        _batched(con, "INSERT INTO docs VALUES (?, ?)", numbered(meta if meta is not None else [None] * n_docs, 0))
        entry_texts = {}
        if texts is not None:
            con.execute("CREATE TABLE texts (slot INTEGER PRIMARY KEY, text TEXT NOT NULL)")
            rows = ((slot, t) for slot, t in numbered(texts, 1) if t is not None)
            _batched(con, "INSERT INTO texts VALUES (?, ?)", rows)
            fts = f"fts5(text, content='texts', content_rowid='slot', tokenize='{TOKENIZER}')"
            con.execute(f"CREATE VIRTUAL TABLE fts USING {fts}")
            con.execute("INSERT INTO fts(fts) VALUES ('rebuild')")
            con.execute("INSERT INTO fts(fts) VALUES ('optimize')")
            con.execute("INSERT INTO fts(fts, rank) VALUES ('integrity-check', 1)")  # the index matches the texts
            entry_texts = {"texts": con.execute("SELECT count(*) FROM texts").fetchone()[0]}
        con.execute("COMMIT")
        if texts is not None:
            con.execute("VACUUM")  # the pages FTS5 freed when it merged its index into one b-tree (~20%)
    finally:
        con.close()
    if texts is not None and counts[1] != counts[0]:
        raise ValueError(f"texts has {counts[1]} entries for {counts[0]} documents")
    fsync_path(path)
    fsync_path(path.parent)
    return {"path": relpath, "bytes": path.stat().st_size, "sha256": sha256(path), "rows": counts[0], **entry_texts}


class MetadataStore:
    """The metadata (and texts, when ``n_texts`` is not ``None``) of one committed segment, opened read-only."""

    def __init__(self, path: Path, n_docs: int, n_texts: int | None = None) -> None:
        uri = f"file:{quote(os.fspath(path))}?mode=ro&immutable=1"
        self.path, self.n_docs, self.n_texts = path, n_docs, n_texts
        self._con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._con.execute("PRAGMA query_only=1")
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._counts: dict[str, int] = {}

    @property
    def has_texts(self) -> bool:
        return self.n_texts is not None

    def validate(self, verify: bool) -> None:
        try:
            with self._lock:
                n, lo, hi = self._con.execute("SELECT count(*), min(slot), max(slot) FROM docs").fetchone()
                tables = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                texts = indexed = None
                if {"texts", "fts"} <= tables:
                    texts = self._con.execute("SELECT count(*), min(slot), max(slot) FROM texts").fetchone()
                    indexed = self._con.execute("SELECT count(*) FROM fts_docsize").fetchone()[0] if verify else None
                ok = not verify or self._con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"{self.path}: not a readable metadata database ({e})") from None
        if (n, lo, hi) != (self.n_docs, 0, self.n_docs - 1) or not ok:
            raise IndexFormatError(
                f"{self.path}: {n} rows for slots {lo}..{hi}, expected one per each of {self.n_docs}"
            )
        if (texts is None) != (self.n_texts is None):
            has = "has" if texts is not None else "has no"
            raise IndexFormatError(f"{self.path}: {has} texts and full-text index, the manifest says otherwise")
        if texts is not None:
            count, lo, hi = texts
            if count != self.n_texts or (count and (lo < 0 or hi >= self.n_docs)) or indexed not in (None, count):
                raise IndexFormatError(
                    f"{self.path}: {count} texts for slots {lo}..{hi} ({indexed} indexed), the manifest says "
                    f"{self.n_texts} of {self.n_docs} documents"
                )

    def close(self) -> None:
        self._con.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the store's lock; SQLite's errors of a damaged file as :class:`IndexFormatError`
        (the SQL here is the engine's own, so an error means the file, not the query)."""
        with self._lock:
            try:
                yield self._con
            except sqlite3.DatabaseError as e:
                raise IndexFormatError(f"{self.path}: unreadable ({e})") from None

    def clear_cache(self) -> None:
        """Forget the cached filter bitmaps (benchmarks time the SQL evaluation with it)."""
        with self._lock:
            self._cache.clear()

    def matching(self, sql: str, params: tuple) -> np.ndarray:
        """bool ``[n_docs]``: documents whose metadata satisfies a compiled filter (:mod:`colbert_index.filters`)."""
        key = (sql, params)
        with self._reading() as con:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            slots = np.fromiter((r[0] for r in con.execute(f"SELECT slot FROM docs WHERE {sql}", params)), np.int64)
            mask = np.zeros(self.n_docs, dtype=bool)
            mask[slots] = True
            mask.flags.writeable = False
            self._cache[key] = mask
            if len(self._cache) > _CACHED_FILTERS:
                self._cache.popitem(last=False)
            return mask

    def rows(self, slots: Iterable[int] | None = None, column: str = "meta") -> Iterator[str | None]:
        """JSON texts (``column="meta"``) or texts (``"text"``; ``None`` for documents without one) of ``slots``
        (all, in order, when ``None``: read in chunks, so memory does not grow with the segment)."""
        if column == "text" and not self.has_texts:
            yield from (None for _ in (range(self.n_docs) if slots is None else slots))
            return
        table = {"meta": "docs", "text": "texts"}[column]
        if slots is None:
            for lo in range(0, self.n_docs, _BATCH):
                hi = min(lo + _BATCH, self.n_docs)
                with self._reading() as con:
                    got = dict(
                        con.execute(f"SELECT slot, {column} FROM {table} WHERE slot >= ? AND slot < ?", (lo, hi))
                    )
                yield from (got.get(s) for s in range(lo, hi))
            return
        slots = [int(s) for s in slots]
        for lo in range(0, len(slots), 500):
            part = slots[lo : lo + 500]
            with self._reading() as con:
                got = dict(
                    con.execute(f"SELECT slot, {column} FROM {table} WHERE slot IN ({','.join('?' * len(part))})", part)
                )
            yield from (got.get(s) for s in part)

    def count_matching(self, phrase: str) -> int:
        """Texts that match an FTS5 phrase (cached for short phrases: a segment never changes)."""
        with self._reading() as con:
            n = self._counts.get(phrase)
            if n is None:
                n = con.execute("SELECT count(*) FROM fts WHERE fts MATCH ?", (phrase,)).fetchone()[0]
                if len(phrase) <= _CACHED_PHRASE_CHARS:
                    if len(self._counts) >= _CACHED_COUNTS:
                        self._counts.clear()
                    self._counts[phrase] = n
            return n

    def lexical(self, expression: str, want: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best ``want`` documents that ``allowed`` (bool ``[n_docs]``) allows for an FTS5 query expression, by
        BM25 over this segment (FTS5's ``bm25()``, negated: higher is better). Returns ``(scores float64, slots
        int64)``, best first. ``sqlite3.OperationalError`` for an expression FTS5 cannot parse."""
        if not self.has_texts or want <= 0:
            return np.zeros(0), np.zeros(0, np.int64)
        limit = want
        while True:  # FTS5 ranks every match; the LIMIT lets it keep a heap. Grow it while filters drop too many.
            with self._lock:
                rows = self._con.execute(
                    "SELECT rowid, rank FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT ?", (expression, limit)
                ).fetchall()
            slots = np.fromiter((r[0] for r in rows), np.int64, len(rows))
            keep = allowed[slots]
            if int(keep.sum()) >= want or len(rows) < limit:
                scores = -np.fromiter((r[1] for r in rows), np.float64, len(rows))
                return scores[keep][:want], slots[keep][:want]
            limit *= 4


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
    n_texts = entry.get("texts")
    if n_texts is not None and (isinstance(n_texts, bool) or not isinstance(n_texts, int) or n_texts < 0):
        raise IndexFormatError(f"{root / MANIFEST}: invalid texts count {n_texts!r} in a metadata entry")
    path = check_file(root, entry, verify)
    store = MetadataStore(path, n_docs, n_texts)
    try:
        store.validate(verify)
    except IndexFormatError:
        store.close()
        raise
    return store


def live_rows(segments, column: str = "meta") -> Iterator[str | None]:
    """The metadata JSON texts (``column="meta"``) or texts (``"text"``) of the live documents of ``segments``, in
    order (what a merge keeps)."""
    for seg in segments:
        live = seg.live()
        if seg.meta is None:
            yield from (None for _ in range(int(live.sum())))
            continue
        for slot, text in enumerate(seg.meta.rows(column=column)):
            if live[slot]:
                yield text
