"""Lexical and hybrid search: BM25 over the texts stored with the documents (each segment's SQLite FTS5 index,
:mod:`colbert_index.storage.metadata`), alone or fused with the MaxSim candidates of the staged search.

A text query becomes an FTS5 query expression (:func:`match_expression`): in mode ``"any"`` its words ORed (quoted
``"exact phrases"`` kept as phrases), in ``"all"`` ANDed, in ``"fts5"`` the user's own FTS5 syntax. Every word is
quoted, so no user text is read as FTS5 syntax outside mode ``"fts5"``, and the expression is bound as a parameter
of the SQL, never written into it.

Each segment ranks its matches by FTS5's ``bm25()`` with its own statistics (document count, document frequency of
each term, average length; tombstoned documents count until :meth:`~colbert_index.Index.compact`), and the
segments' best are merged by score, as shards are in Elasticsearch's default ``query_then_fetch``: an index of one
segment ranks by exact BM25, one of several by a close approximation (docs/hybrid.md measures how close).

Fusion (:func:`fuse`) of the dense list (the staged search's top ``depth``) and the lexical list (top ``depth``
by BM25): ``"rrf"``, reciprocal rank fusion, ``alpha / (60 + dense rank) + (1 - alpha) / (60 + lexical rank)``; or
``"relative"``, each list's scores min-max normalised to [0, 1], ``alpha * dense + (1 - alpha) * lexical``. A
document absent from a list gets 0 from it.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
import unicodedata
from dataclasses import dataclass

import numpy as np

from colbert_index import filters
from colbert_index.errors import IndexFormatError
from colbert_index.inputs import normalize_queries
from colbert_index.search import SearchParams, SearchResult
from colbert_index.snapshot import Snapshot

TEXT_MODES = ("any", "all", "fts5")
FUSIONS = ("rrf", "relative")
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al.)
FUSION_DEPTH = 100  # candidates of each list fused, at least k
MAX_QUERY_CHARS = 10_000  # characters of one text query
MAX_QUERY_TERMS = 256  # words and phrases of one text query
# a quoted phrase, or a run of letters and digits (what FTS5's unicode61 tokenizer keeps: categories L*, N*)
_TERM = re.compile(r'"([^"]*)"|[^\W_]+')


def _searchable(text: str) -> bool:
    """Whether FTS5's unicode61 tokenizer finds a token in ``text`` (a letter, a digit or a private-use character)."""
    return any(unicodedata.category(c)[0] in "LN" or unicodedata.category(c) == "Co" for c in text)


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


_CHECK_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _syntax_db() -> sqlite3.Connection:
    """An empty in-memory FTS5 table: FTS5 parses a query expression against it without touching an index."""
    con = sqlite3.connect(":memory:", check_same_thread=False)
    con.execute("CREATE VIRTUAL TABLE q USING fts5(text)")
    return con


def check_fts5_syntax(expression: str) -> None:
    """``ValueError`` naming FTS5's complaint when it cannot parse ``expression``."""
    with _CHECK_LOCK:
        try:
            _syntax_db().execute("SELECT rowid FROM q WHERE q MATCH ?", (expression,)).fetchall()
        except sqlite3.OperationalError as e:
            raise ValueError(f"text_query: not a valid FTS5 query ({e})") from None


@dataclass(frozen=True)
class TextQuery:
    """A text query as FTS5 reads it: ``expression``, and for mode ``"any"`` its quoted ``phrases`` (ORed)."""

    expression: str
    phrases: tuple[str, ...] = ()

    def for_segment(self, store) -> str:
        """The expression for one segment. In mode ``"any"``, phrases in at least half of the segment's texts are
        left out, unless no other phrase matches a text: FTS5's BM25 gives them an IDF of 1e-6, so each changes no
        score by more than ``1e-6 * (k1 + 1) = 2.2e-6``, yet ranking every document that holds one (``the``,
        ``of``) is most of the work of a query. Documents that hold only such phrases are then not returned."""
        if len(self.phrases) < 2:
            return self.expression
        counts = [store.count_matching(p) for p in self.phrases]
        kept = [p for p, c in zip(self.phrases, counts) if 2 * c < store.n_texts]
        matching = any(2 * c < store.n_texts and c > 0 for c in counts)
        return " OR ".join(kept) if matching and len(kept) < len(self.phrases) else self.expression


def parse_text_query(text_query: str, mode: str = "any") -> TextQuery:
    """The FTS5 query of a user's text query (see the module docstring for the modes). ``ValueError`` for a query
    with no searchable word, too long, or (mode ``"fts5"``) that FTS5 cannot parse."""
    if not isinstance(text_query, str):
        raise TypeError(f"text_query: expected a string, got {type(text_query).__name__}")
    if mode not in TEXT_MODES:
        raise ValueError(f"text_mode must be one of {', '.join(TEXT_MODES)}, got {mode!r}")
    if len(text_query) > MAX_QUERY_CHARS:
        raise ValueError(f"text_query: longer than {MAX_QUERY_CHARS} characters")
    if "\x00" in text_query:
        raise ValueError("text_query: contains a NUL character")
    if not _searchable(text_query):
        raise ValueError(f"text_query: no searchable word (letters or digits) in {text_query[:80]!r}")
    if mode == "fts5":
        check_fts5_syntax(text_query)
        return TextQuery(text_query)
    found = (m.group(1) if m.group(1) is not None else m.group(0) for m in _TERM.finditer(text_query))
    terms = list(dict.fromkeys(t.casefold() for t in found if _searchable(t)))  # case folds; a repeat counts once
    if not terms:
        raise ValueError(f"text_query: no searchable word outside empty phrases in {text_query[:80]!r}")
    if len(terms) > MAX_QUERY_TERMS:
        raise ValueError(f"text_query: {len(terms)} words and phrases, at most {MAX_QUERY_TERMS}")
    phrases = tuple(_quote(t) for t in terms)
    if mode == "all":
        return TextQuery(" AND ".join(phrases))
    return TextQuery(" OR ".join(phrases), phrases)


def match_expression(text_query: str, mode: str = "any") -> str:
    """The FTS5 query expression of a user's text query (:func:`parse_text_query`)."""
    return parse_text_query(text_query, mode).expression


def lexical(snap: Snapshot, query: TextQuery, want: int, allowed: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The best ``want`` documents by BM25 (each segment's own statistics) among those ``allowed`` (bool
    ``[n_docs]`` per segment, live documents only): ``(scores float64, global positions int64)``, best first."""
    scores, positions = [np.zeros(0)], [np.zeros(0, np.int64)]
    for i, seg in enumerate(snap.segments):
        if seg.meta is None or not seg.meta.has_texts:
            continue
        try:
            s, slots = seg.meta.lexical(query.for_segment(seg.meta), want, allowed[i])
        except sqlite3.OperationalError as e:  # only a raw FTS5 query can fail here, and it was parsed already
            raise ValueError(f"text_query: {e}") from None
        except sqlite3.DatabaseError as e:
            raise IndexFormatError(f"{seg.meta.path}: full-text index unreadable ({e})") from None
        scores.append(s)
        positions.append(slots + snap.bases[i])
    s, p = np.concatenate(scores), np.concatenate(positions)
    order = np.lexsort((p, -s))[:want]
    return s[order], p[order]


def _minmax(s: np.ndarray) -> np.ndarray:
    lo, hi = (float(s.min()), float(s.max())) if len(s) else (0.0, 0.0)
    return np.ones(len(s)) if hi - lo <= 1e-12 * max(1.0, abs(hi)) else (s - lo) / (hi - lo)


def fuse(dense: tuple, lex: tuple, k: int, fusion: str, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of two ranked lists ``(scores, positions)`` (best first) by fused score; ties go to the better
    rank in the list of the larger weight, then in the other, then to the lower position (so ``alpha`` 1 or 0
    gives that list's order). Returns ``(fused scores, positions)``."""
    (ds, dp), (ls, lp) = dense, lex
    pos = np.union1d(dp, lp).astype(np.int64)
    d_at, l_at = np.searchsorted(pos, dp), np.searchsorted(pos, lp)
    d, lx = np.zeros(len(pos)), np.zeros(len(pos))
    if fusion == "rrf":
        d[d_at] = 1.0 / (RRF_K + np.arange(1, len(dp) + 1))
        lx[l_at] = 1.0 / (RRF_K + np.arange(1, len(lp) + 1))
    else:
        d[d_at], lx[l_at] = _minmax(np.asarray(ds, np.float64)), _minmax(np.asarray(ls, np.float64))
    fused = alpha * d + (1.0 - alpha) * lx
    d_rank, l_rank = np.full(len(pos), len(pos)), np.full(len(pos), len(pos))  # absent: after the list
    d_rank[d_at], l_rank[l_at] = np.arange(len(dp)), np.arange(len(lp))
    first, second = (d_rank, l_rank) if alpha >= 0.5 else (l_rank, d_rank)  # ties: the heavier list decides
    order = np.lexsort((pos, second, first, -fused))[:k]
    return fused[order], pos[order]


def check_fusion(fusion, alpha) -> float:
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)} to combine text_query with Q, got {fusion!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (the weight of the dense list), got {alpha!r}")
    return float(alpha)


def _text_queries(text_query, n: int | None) -> list[str]:
    texts = [text_query] if isinstance(text_query, str) else text_query
    if not isinstance(texts, (list, tuple)) or not texts:
        raise TypeError("text_query: a string, or a non-empty list of strings (one per query)")
    if n is not None and len(texts) != n:
        raise ValueError(f"text_query: {len(texts)} text queries for {n} queries; give one per query")
    return list(texts)


def padded(snap: Snapshot, rows: list[tuple[np.ndarray, np.ndarray]]) -> SearchResult:
    """The :class:`SearchResult` of per-query ``(scores, positions)``; rows shorter than the longest (fewer
    documents matched) are padded with score ``-inf`` and id ``-1`` (integer ids) or ``None`` (string ids)."""
    width = max(len(s) for s, _ in rows)
    if all(len(s) == width for s, _ in rows):
        return snap.result(rows)
    scores = np.full((len(rows), width), -np.inf, np.float32)
    ids = np.full((len(rows), width), -1, np.int64) if snap.id_type == "int" else np.full((len(rows), width), None)
    for i, (s, p) in enumerate(rows):
        scores[i, : len(s)], ids[i, : len(s)] = s, snap.ids_of(p)
    return SearchResult(ids=ids, scores=scores)


def search(index, snap: Snapshot, Q, k: int, params, query_lengths, filter, text_query, options: dict) -> SearchResult:
    """:meth:`colbert_index.Index.search` with a ``text_query`` (``options``: ``text_mode``, ``fusion``, ``alpha``,
    ``fusion_depth``)."""
    if text_query is None:
        raise ValueError("Q is None: give query embeddings, or a text_query for a lexical search")
    queries = None if Q is None else normalize_queries(Q, snap.codec.dim, query_lengths)
    texts = _text_queries(text_query, None if queries is None else len(queries))
    expressions = [parse_text_query(t, options["text_mode"]) for t in texts]
    if not any(s.meta is not None and s.meta.has_texts for s in snap.segments):
        raise ValueError("text_query: this index stores no texts (build, add or upsert with texts=...)")
    if queries is not None:
        alpha = check_fusion(options["fusion"], options["alpha"])
    allowed = [s.live() for s in snap.segments] if filter is None else filters.allowed(snap, filter)
    if queries is None:
        return padded(snap, [lexical(snap, e, k, allowed) for e in expressions])
    depth = options["fusion_depth"]
    if depth is None:
        depth = max(k, FUSION_DEPTH)
    elif isinstance(depth, bool) or not isinstance(depth, int) or depth < k:
        raise ValueError(f"fusion_depth must be an integer >= k={k}, got {depth!r}")
    p = (params or SearchParams()).resolved(k, int(snap.bases[-1]))
    how = None
    if filter is not None:
        how = filters.plan(allowed, [s.doclens for s in snap.segments], snap.n_live, p)
    dense = index._dense(snap, queries, depth, p, how)
    fused = [fuse(d, lexical(snap, e, depth, allowed), k, options["fusion"], alpha) for d, e in zip(dense, expressions)]
    return padded(snap, fused)
