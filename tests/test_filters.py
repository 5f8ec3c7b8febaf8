"""Filtered search: the filter language, its SQL compilation (no injection), and recall at four selectivities
against exact MaxSim over the allowed documents."""

from __future__ import annotations

import hashlib
import sqlite3

import numpy as np
import pytest

from colbert_index import Index, filters
from colbert_index.datasets.synthetic import make_corpus

N_DOCS = 2000
SELECTIVITIES = {0.5: 500, 0.1: 100, 0.01: 10, 0.001: 1}  # fraction -> buckets of 1000 allowed


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(N_DOCS, dim=64, n_queries=30, seed=11)


@pytest.fixture(scope="module")
def bucket():
    """A random bucket 0..999 per document: the allowed documents are spread over every topic."""
    return np.random.default_rng(11).permutation(N_DOCS) % 1000


@pytest.fixture(scope="module")
def index(corpus, bucket, tmp_path_factory):
    meta = [{"bucket": int(b), "lang": ["en", "de", "fr"][i % 3], "year": 2000 + i % 25} for i, b in enumerate(bucket)]
    return Index.build(tmp_path_factory.mktemp("flt") / "idx", corpus.documents(), metadata=meta, progress=False)


@pytest.fixture(scope="module")
def exact_order(index, corpus):
    """Every document per query, best first by exact MaxSim on the decompressed index (brute force)."""
    return index.search_exact(corpus.queries, k=N_DOCS).ids


def _recall(found: np.ndarray, order: np.ndarray, allowed: np.ndarray, k: int = 10) -> float:
    rec = []
    for f, row in zip(found, order):
        truth = row[allowed[row]][:k]
        rec.append(len(set(f.tolist()) & set(truth.tolist())) / len(truth))
    return float(np.mean(rec))


@pytest.mark.parametrize("fraction", list(SELECTIVITIES))
@pytest.mark.parametrize("strategy", ["auto", "staged"])
def test_filtered_recall_at_every_selectivity(index, corpus, bucket, exact_order, fraction, strategy, monkeypatch):
    if strategy == "staged":  # the staged search with a widened probe, even where auto scores exactly
        monkeypatch.setattr(filters, "EXACT_MAX_TOKENS", -1)
    n = SELECTIVITIES[fraction]
    allowed = bucket < n
    res = index.search(corpus.queries, k=10, filter={"bucket": {"$lt": n}})
    assert set(res.ids.ravel().tolist()) <= set(np.flatnonzero(allowed).tolist())
    assert res.ids.shape == (len(corpus.queries), min(10, int(allowed.sum())))
    recall = _recall(res.ids, exact_order, allowed)
    assert recall >= 0.95, f"recall@10 {recall:.3f} at selectivity {fraction} ({strategy})"


def test_without_widening_recall_drops_at_1_percent(index, corpus, bucket, exact_order, monkeypatch):
    """What the widened probe buys (the staged search at default nprobe on 1% of the documents)."""
    monkeypatch.setattr(filters, "EXACT_MAX_TOKENS", -1)
    monkeypatch.setattr(filters, "MAX_NPROBE_WIDENING", 1)
    res = index.search(corpus.queries, k=10, filter={"bucket": {"$lt": 10}})
    assert _recall(res.ids, exact_order, bucket < 10) < 0.95


def test_small_allowed_sets_are_scored_exactly(index, corpus):
    flt = {"bucket": {"$lt": 10}}
    res, exact = index.search(corpus.queries, k=10, filter=flt), index.search_exact(corpus.queries, k=10, filter=flt)
    assert np.array_equal(res.ids, exact.ids)
    np.testing.assert_allclose(res.scores, exact.scores, rtol=1e-5, atol=1e-5)


def test_id_list_filter(index, corpus, exact_order):
    allowed_ids = [3, 17, 250, 999, 1500, 1999, 123456]  # an unknown id is ignored
    res = index.search(corpus.queries[:5], k=3, filter=allowed_ids)
    allowed = np.zeros(N_DOCS, bool)
    allowed[allowed_ids[:-1]] = True
    assert set(res.ids.ravel().tolist()) <= set(allowed_ids)
    assert _recall(res.ids, exact_order[:5], allowed, k=3) == 1.0
    assert index.search(corpus.queries[:2], k=3, filter=[]).ids.shape == (2, 0)
    with pytest.raises(TypeError, match="filter"):
        index.search(corpus.queries[0], k=3, filter="lang")
    with pytest.raises(TypeError, match="integer ids"):
        index.search(corpus.queries[0], k=3, filter=["a"])


def _ids(index, flt) -> set:
    """Every live document a filter allows (an exhaustive exact search)."""
    return set(index.search_exact(np.ones((1, index.dim), np.float32), k=N_DOCS, filter=flt).ids[0].tolist())


def test_filter_semantics(tmp_path, tiny_docs):
    meta = [
        {"lang": "en", "year": 2021, "score": 0.5, "draft": False, "tags": ["a"], "author": {"name": "x"}},
        {"lang": "de", "year": 2019, "score": 1.5, "draft": True},
        {"lang": "en", "year": "2022"},  # a string, not a number
        {"lang": None, "year": 2020},
        None,
    ] + [{"i": i} for i in range(len(tiny_docs) - 5)]
    idx = Index.build(tmp_path / "i", tiny_docs, metadata=meta, progress=False)
    assert _ids(idx, {"lang": "en"}) == {0, 2}
    assert _ids(idx, {"lang": "en", "year": {"$gte": 2020}}) == {0}  # "2022" is a string: never >= 2020
    assert _ids(idx, {"year": {"$gte": "2020"}}) == {2}
    assert _ids(idx, {"year": {"$gt": 2019, "$lte": 2021}}) == {0, 3}
    assert _ids(idx, {"year": {"$in": [2019, "2022"]}}) == {1, 2}
    assert _ids(idx, {"$or": [{"lang": "de"}, {"score": {"$lt": 1}}]}) == {0, 1}
    assert _ids(idx, {"draft": True}) == {1}
    assert _ids(idx, {"draft": False}) == {0}
    assert _ids(idx, {"draft": 0}) == set()  # False is not 0
    assert _ids(idx, {"lang": None}) == set(range(len(tiny_docs))) - {0, 1, 2}  # null or missing
    assert _ids(idx, {"lang": {"$ne": "en"}}) == set(range(len(tiny_docs))) - {0, 2}  # missing counts as not equal
    assert _ids(idx, {"author.name": "x"}) == {0}
    assert _ids(idx, {"tags": "a"}) == set()  # lists match no comparison
    assert _ids(idx, {"i": {"$lt": 3}, "$and": [{"i": {"$gte": 1}}]}) == {6, 7}
    assert _ids(idx, {}) == set(range(len(tiny_docs)))
    idx.add([tiny_docs[0]])  # a segment without metadata: its documents have none
    assert _ids(idx, {"lang": {"$ne": "en"}}) >= {len(tiny_docs)}
    assert len(tiny_docs) not in _ids(idx, {"lang": "en"})


@pytest.mark.parametrize(
    ("flt", "match"),
    [
        ({"lang": {"$regex": "x"}}, "unknown operator '\\$regex'"),
        ({"$nor": []}, "unknown filter operator"),
        ({"la ng": 1}, "invalid filter field name"),
        ({"lang": {"$in": "en"}}, "\\$in takes a non-empty list"),
        ({"lang": {"$gt": None}}, "needs a number or a string"),
        ({"lang": {"$gt": True}}, "needs a number or a string"),
        ({"lang": {"$eq": [1]}}, "takes a string, number, boolean or null"),
        ({"year": {"$lt": float("nan")}}, "finite"),
        ({"year": 1 << 70}, "64-bit"),
        ({"$or": {"a": 1}}, "non-empty list"),
        ({"lang": {}}, "empty condition"),
        ({"a": {"$in": list(range(300))}}, "more than 256 conditions"),
    ],
)
def test_bad_filters_raise_value_error(index, corpus, flt, match):
    with pytest.raises(ValueError, match=match):
        index.search(corpus.queries[0], k=3, filter=flt)


def _db_state(index) -> tuple:
    """sha256 of every metadata file and of the manifest, and the rows of the database (read afresh)."""
    digests = tuple(
        hashlib.sha256((index.path / "manifest.json").read_bytes()).hexdigest()
        + hashlib.sha256((index.path / s["files"]["metadata"]["path"]).read_bytes()).hexdigest()
        for s in index.manifest["segments"]
    )
    db = index.path / index.manifest["segments"][0]["files"]["metadata"]["path"]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT count(*), sum(length(meta)) FROM docs").fetchone()
        tables = con.execute("SELECT name FROM sqlite_master").fetchall()
    return digests, rows, tables


INJECTED_NAMES = [
    "lang') OR 1=1 --",
    'lang" OR 1=1',
    "lang; DROP TABLE docs",
    "$.lang",
    "lang[0]",
    "a.b'.c",
    "x' UNION SELECT slot FROM docs --",
    "1lang",
    "",
]
INJECTED_VALUES = [
    "en' OR '1'='1",
    "en'); DROP TABLE docs; --",
    "' UNION SELECT slot FROM docs --",
    "%",
    "*",
]


def test_sql_injection_is_rejected_or_matches_nothing(index, corpus):
    before = _db_state(index)
    for name in INJECTED_NAMES:
        with pytest.raises(ValueError, match="invalid filter field name|unknown filter operator"):
            index.search(corpus.queries[0], k=3, filter={name: "en"})
        with pytest.raises(ValueError, match="invalid filter field name|unknown filter operator"):
            index.search(corpus.queries[0], k=3, filter={"$or": [{"lang": "en"}, {name: {"$gt": 1}}]})
    for value in INJECTED_VALUES:
        for flt in ({"lang": value}, {"lang": {"$in": [value]}}, {"lang": {"$gte": value, "$lt": value + "z"}}):
            assert index.search(corpus.queries[0], k=3, filter=flt).ids.shape == (1, 0), flt
    for op in ("$where", "$eq'; --", "1=1"):
        with pytest.raises(ValueError, match="unknown"):
            index.search(corpus.queries[0], k=3, filter={"lang": {op: "en"}})
    assert _db_state(index) == before
    assert len(_ids(index, {"lang": "en"})) == sum(1 for i in range(N_DOCS) if i % 3 == 0)  # still all there


def test_compiled_sql_holds_no_user_text():
    sql, params = filters.compile_filter(
        {"lang": "en' OR 1=1", "year": {"$gte": 2020}, "$or": [{"tag": {"$in": ["x'", 3]}}, {"ok": True}]}
    )
    assert "en'" not in sql and "lang" not in sql and "year" not in sql and "tag" not in sql
    assert "$.lang" in params and "en' OR 1=1" in params
    assert sql.count("?") == len(params)
