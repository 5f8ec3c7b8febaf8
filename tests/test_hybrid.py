"""Texts stored with the documents, lexical search (FTS5 BM25 against a plain Python reference), fusion with
MaxSim, filters and deletes, delete by filter, and indexes written before texts existed."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections import Counter

import numpy as np
import pytest

from colbert_index import Index, IndexFormatError, hybrid
from colbert_index.storage import metadata as meta_files
from colbert_index.storage.files import sha256
from colbert_index.storage.manifest import seal

# words the porter stemmer leaves as they are, so the reference needs no stemmer
WORDS = (
    "cat dog bird fish lion wolf bear deer frog hawk owl fox crab duck goat hen moth newt seal swan toad yak "
    "ant bat cod eel elk gnu jay koi"
).split()
DIM = 16


def _docs(rng, n: int) -> list[np.ndarray]:
    out = []
    for m in rng.integers(2, 9, size=n):
        d = rng.standard_normal((int(m), DIM)).astype(np.float32)
        out.append(d / np.linalg.norm(d, axis=1, keepdims=True))
    return out


def _texts(rng, n: int) -> list[str]:
    p = 1.0 / np.arange(1, len(WORDS) + 1)  # Zipf: a few common words, many rare ones
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 15)), p=p / p.sum())) for _ in range(n)]


def bm25_reference(texts: dict, terms: list[str], prune: bool = False, k1: float = 1.2, b: float = 0.75) -> dict:
    """FTS5's bm25() (as its documentation defines it) of the documents ``texts`` (id -> text or None) matching any
    of ``terms``, with the statistics of those documents: ``{id: score}``, higher better. ``prune``: without the
    terms in at least half of the texts (unless all are), as mode "any" queries do."""
    docs = {i: re.findall(r"[^\W_]+", t.lower()) for i, t in texts.items() if t is not None}
    n, avgdl = len(docs), sum(map(len, docs.values())) / len(docs)
    kept = [t for t in terms if 0 < 2 * sum(t in d for d in docs.values()) < n]
    terms = [t for t in terms if 2 * sum(t in d for d in docs.values()) < n] if prune and kept else terms
    scores = {}
    for term in terms:
        hits = sum(term in d for d in docs.values())
        idf = math.log((n - hits + 0.5) / (hits + 0.5))
        idf = idf if idf > 0 else 1e-6
        for i, d in docs.items():
            tf = Counter(d)[term]
            if tf:
                scores[i] = scores.get(i, 0.0) + idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avgdl))
    return scores


def _lexical(index: Index, query: str, **kw) -> dict:
    res = index.search(None, k=10_000, text_query=query, **kw)
    scores = res.scores[0]
    assert (np.diff(scores[np.isfinite(scores)]) <= 1e-9).all()  # best first
    return {i: float(s) for i, s in zip(res.ids[0].tolist(), scores.tolist()) if np.isfinite(s)}


def _same_scores(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for i in want:
        assert got[i] == pytest.approx(want[i], rel=1e-5, abs=1e-9), i


@pytest.fixture
def texts_index(tmp_path):
    rng = np.random.default_rng(0)
    texts = _texts(rng, 80)
    texts[3], texts[4] = None, ""
    texts[7] = "Crème brûlée — a naïve ÉCLAIR at the café 東京"
    meta = [{"n": i, "even": i % 2 == 0} for i in range(80)]
    index = Index.build(tmp_path / "t", _docs(rng, 80), texts=texts, metadata=meta, progress=False, n_centroids=16)
    return index, texts


def test_texts_round_trip_and_survive_reopen_and_verify(texts_index):
    index, texts = texts_index
    assert index.texts([0, 3, 4, 7]) == [texts[0], None, "", texts[7]]
    entry = index.manifest["segments"][0]["files"]["metadata"]
    assert entry["texts"] == 79 and entry["rows"] == 80
    again = Index.open(index.path, verify=True)
    assert again.texts(list(range(80))) == texts
    assert again.metadata([5]) == [{"n": 5, "even": False}]
    with pytest.raises(KeyError, match="999"):
        index.texts([1, 999])
    assert index.texts([999], missing_ok=True) == [None]


def test_unicode_is_folded_like_the_tokenizer(texts_index):
    index, _ = texts_index
    for query in ("creme", "BRULEE", "naive eclair", "cafe", "東京"):
        assert list(_lexical(index, query)) == [7], query


def test_lexical_scores_equal_a_python_bm25(texts_index):
    index, texts = texts_index
    rng = np.random.default_rng(1)
    for _ in range(15):
        terms = list(rng.choice(WORDS, size=int(rng.integers(1, 4)), replace=False))
        _same_scores(_lexical(index, " ".join(terms)), bm25_reference(dict(enumerate(texts)), terms, prune=True))
        full = _lexical(index, " OR ".join(terms), text_mode="fts5")  # FTS5 syntax: every term
        _same_scores(full, bm25_reference(dict(enumerate(texts)), terms))
    # terms in half the texts or more are left out: scores within 2.2e-6 per term left out
    terms = ["cat", "owl", "dog"]
    assert [2 * sum(w in t.split() for t in texts if t) >= 79 for w in terms] == [True, False, True]
    full = bm25_reference(dict(enumerate(texts)), terms)
    pruned = _lexical(index, "cat owl dog")
    assert set(pruned) == {i for i, t in enumerate(texts) if t and "owl" in t.split()}
    assert all(0 <= full[i] - s <= 2 * 2.2e-6 for i, s in pruned.items())
    both = {i for i, t in enumerate(texts) if t and {"cat", "dog"} & set(t.split())}
    assert set(_lexical(index, "cat dog")) == both  # no other term: none left out
    # the ranking: k=5 is the reference's best five (no ties among them here)
    want = sorted(bm25_reference(dict(enumerate(texts)), ["owl", "seal"], prune=True).items(), key=lambda x: -x[1])
    res = index.search(None, k=5, text_query="owl seal")
    assert res.ids[0].tolist() == [i for i, _ in want[:5]]


def test_modes_any_all_phrases_and_raw_fts5(tmp_path):
    rng = np.random.default_rng(2)
    texts = ["red fox jumps", "fox red", "red apple", "blue sky", "the red fox"]
    index = Index.build(tmp_path / "m", _docs(rng, 5), texts=texts, progress=False, n_centroids=4)
    assert set(_lexical(index, "red fox")) == {0, 1, 2, 4}
    assert set(_lexical(index, "red fox", text_mode="all")) == {0, 1, 4}
    assert set(_lexical(index, '"red fox"')) == {0, 4}  # a quoted phrase stays a phrase
    assert set(_lexical(index, '"red fox" sky')) == {0, 3, 4}
    assert set(_lexical(index, "red NOT fox", text_mode="fts5")) == {2}
    assert set(_lexical(index, "NEAR(red jumps, 2) OR sky", text_mode="fts5")) == {0, 3}
    assert set(_lexical(index, "RED-fox's!")) == {0, 1, 2, 4}  # punctuation separates words, case folds
    assert set(_lexical(index, "AND OR NOT")) == set()  # operators are plain words outside mode fts5


@pytest.mark.parametrize(
    "query, mode, match",
    [
        ("red AND", "fts5", "not a valid FTS5 query"),
        ("NEAR(", "fts5", "not a valid FTS5 query"),
        ('"unclosed', "fts5", "not a valid FTS5 query"),
        ("meta: red", "fts5", "no such column"),
        ("!!! ???", "any", "no searchable word"),
        ('""', "all", "no searchable word"),
        ("", "any", "no searchable word"),
        ("red\x00", "any", "NUL"),
        ("x" * (hybrid.MAX_QUERY_CHARS + 1), "any", "longer than"),
        ("red", "some", "text_mode must be one of"),
    ],
)
def test_bad_text_queries_raise_value_error(texts_index, query, mode, match):
    index, _ = texts_index
    with pytest.raises(ValueError, match=match):
        index.search(None, text_query=query, text_mode=mode)


def test_user_text_never_reaches_the_sql(texts_index):
    index, _ = texts_index
    for query in ["'); DROP TABLE docs; --", 'cat" OR "dog', "cat) OR (dog", "cat*", "col:cat", "{cat}"]:
        index.search(None, text_query=query)  # quoted words: no error, no injection
    assert hybrid.match_expression('a "b c" d"e') == '"a" OR "b c" OR "d" OR "e"'
    assert hybrid.match_expression("Cat cat CAT", "all") == '"cat"'
    assert Index.open(index.path, verify=True).n_docs == 80


def test_filters_and_deletes_apply_to_lexical_and_fused_search(texts_index):
    index, texts = texts_index
    want = bm25_reference(dict(enumerate(texts)), ["owl", "cat"], prune=True)
    got = _lexical(index, "owl cat", filter={"even": True})
    _same_scores(got, {i: s for i, s in want.items() if i % 2 == 0})
    assert set(_lexical(index, "owl cat", filter=[1, 2, 3, 999])) == {1, 2, 3} & set(want)
    gone = sorted(want)[:5]
    index.delete(gone)
    got = _lexical(index, "owl cat")
    _same_scores(got, {i: s for i, s in want.items() if i not in gone})  # statistics keep the deleted until compact
    Q = np.ones((2, DIM), np.float32)
    res = index.search(Q, k=80, text_query="owl cat", filter={"even": True})
    assert not set(res.ids[0].tolist()) & set(gone) and all(i % 2 == 0 for i in res.ids[0].tolist())
    index.compact()
    live = {i: t for i, t in enumerate(texts) if i not in gone}
    _same_scores(_lexical(index, "owl cat"), bm25_reference(live, ["owl", "cat"], prune=True))


def test_segments_rank_with_their_own_statistics_until_compacted(tmp_path):
    """Each segment scores by BM25 over its own documents; compaction gives BM25 over the whole index."""
    rng = np.random.default_rng(5)
    texts = _texts(rng, 90)
    index = Index.build(tmp_path / "s", _docs(rng, 30), texts=texts[:30], progress=False, n_centroids=8)
    index.add(_docs(rng, 30), list(range(30, 60)), texts=texts[30:60])
    index.add(_docs(rng, 30), list(range(60, 90)), texts=texts[60:])
    parts = [dict(enumerate(texts[:30])), {i: texts[i] for i in range(30, 60)}, {i: texts[i] for i in range(60, 90)}]
    for terms in (["owl"], ["cat", "goat"], ["moth", "yak", "dog"]):
        want = {}
        for part in parts:
            want.update(bm25_reference(part, terms, prune=True))
        _same_scores(_lexical(index, " ".join(terms)), want)
    one = Index.build(tmp_path / "one", _docs(rng, 90), texts=texts, progress=False, n_centroids=8)
    index.compact()
    for terms in (["owl"], ["cat", "goat"], ["moth", "yak", "dog"]):
        q = " ".join(terms)
        assert index.search(None, k=20, text_query=q).ids.tolist() == one.search(None, k=20, text_query=q).ids.tolist()
        _same_scores(_lexical(index, q), bm25_reference(dict(enumerate(texts)), terms, prune=True))


def test_fusion_arithmetic():
    dense = (np.array([0.9, 0.8, 0.5]), np.array([10, 11, 12]))
    lex = (np.array([7.0, 3.0]), np.array([12, 13]))
    s, p = hybrid.fuse(dense, lex, 10, "rrf", 0.5)
    want = {10: 0.5 / 61, 11: 0.5 / 62, 12: 0.5 / 63 + 0.5 / 61, 13: 0.5 / 62}
    assert p.tolist() == [12, 10, 11, 13]  # 11 and 13 tie: the one in the dense list first
    assert s == pytest.approx([want[i] for i in p.tolist()])
    s, p = hybrid.fuse(dense, lex, 10, "relative", 0.25)
    want = {10: 0.25, 11: 0.25 * 0.75, 12: 1.0 * 0.75 + 0.0, 13: 0.0}
    assert dict(zip(p.tolist(), s.tolist())) == pytest.approx(want)
    assert p.tolist() == [12, 10, 11, 13]
    for fusion in ("rrf", "relative"):
        assert hybrid.fuse(dense, lex, 3, fusion, 1.0)[1].tolist() == [10, 11, 12]
        assert hybrid.fuse(dense, lex, 2, fusion, 0.0)[1].tolist() == [12, 13]
    one = hybrid.fuse((np.array([1.0]), np.array([4])), (np.zeros(0), np.zeros(0, np.int64)), 5, "relative", 0.5)
    assert one[1].tolist() == [4] and one[0].tolist() == [0.5]  # a list of one: normalised to 1


def test_alpha_one_and_zero_give_the_single_lists(texts_index):
    index, _ = texts_index
    Q = [index.reconstruct(i)[:3] for i in (5, 6)]
    dense = index.search(Q, k=10, params=None)
    lex = index.search(None, k=10, text_query=["owl cat", "dog"])
    for fusion in ("rrf", "relative"):
        res = index.search(Q, k=10, text_query=["owl cat", "dog"], fusion=fusion, alpha=1.0, fusion_depth=100)
        deep = index.search(Q, k=100)
        assert res.ids.tolist() == deep.ids[:, :10].tolist()
        res = index.search(Q, k=10, text_query=["owl cat", "dog"], fusion=fusion, alpha=0.0)
        assert res.ids.tolist() == lex.ids.tolist()
    assert dense.ids.shape == (2, 10)


def test_fused_search_finds_what_either_side_finds(texts_index):
    index, texts = texts_index
    Q = index.reconstruct(20)  # the document itself: MaxSim ranks it first
    res = index.search(Q, k=5, text_query="creme brulee")  # the text query names document 7
    assert {20, 7} <= set(res.ids[0].tolist())
    assert (np.diff(res.scores[0]) <= 0).all()


def test_bad_fusion_arguments(texts_index):
    index, _ = texts_index
    Q = np.ones((2, DIM), np.float32)
    with pytest.raises(ValueError, match="fusion must be one of"):
        index.search(Q, text_query="cat", fusion=None)
    with pytest.raises(ValueError, match="alpha must be"):
        index.search(Q, text_query="cat", alpha=1.5)
    with pytest.raises(ValueError, match="fusion_depth"):
        index.search(Q, k=10, text_query="cat", fusion_depth=5)
    with pytest.raises(ValueError, match="2 text queries for 1 queries"):
        index.search(Q, text_query=["cat", "dog"])
    with pytest.raises(ValueError, match="Q is None"):
        index.search(None)
    with pytest.raises(TypeError, match="text_query"):
        index.search(None, text_query=3)


def test_short_rows_are_padded(texts_index):
    index, _ = texts_index
    res = index.search(None, k=5, text_query=["creme", "cat"])
    assert res.ids.shape == (2, 5) and res.ids[0, 0] == 7
    assert res.ids[0, 1:].tolist() == [-1] * 4 and np.isneginf(res.scores[0, 1:]).all()
    assert np.isfinite(res.scores[1]).all()
    assert index.search(None, k=5, text_query="zebra").ids.shape == (1, 0)


def test_bad_texts_are_refused_and_leave_nothing(texts_index, monkeypatch):
    index, _ = texts_index
    rng = np.random.default_rng(3)
    index.delete([0])
    before = sorted(p.name for p in index.path.iterdir())
    for texts, err, match in [
        (["a"], ValueError, "texts has 1 entries for 2 documents"),
        (["a", 3], ValueError, r"texts\[1\]: expected a string"),
        (["a\x00b", "c"], ValueError, r"texts\[0\]: contains a NUL character \(at 1\)"),
        (["\ud800", "c"], ValueError, r"texts\[0\]: not encodable as UTF-8"),
        ("ab", TypeError, "one string per document"),
        (iter(["a", "b", "c"]), ValueError, "texts has 3 entries for 2 documents"),
    ]:
        with pytest.raises(err, match=match):
            index.add(_docs(rng, 2), [500, 501], texts=texts)
    monkeypatch.setattr(meta_files, "MAX_TEXT_BYTES", 10)
    with pytest.raises(ValueError, match=r"texts\[1\]: longer than 10 bytes"):
        index.add(_docs(rng, 2), [500, 501], texts=["short", "é" * 6])
    assert sorted(p.name for p in index.path.iterdir()) == before and 500 not in index
    with pytest.raises(ValueError, match="texts has 1 entries for 2 documents"):
        Index.build(index.path.parent / "x", _docs(rng, 2), texts=["a"], progress=False)
    assert not (index.path.parent / "x").exists()


def test_texts_read_after_the_documents_and_streamed(tmp_path):
    """Like doc_ids and metadata, texts may be a list that a generator of batches fills, or any iterable."""
    rng = np.random.default_rng(4)
    ids, texts = [], []

    def batches():
        for b in range(3):
            ids.extend(f"d{b}-{j}" for j in range(10))
            texts.extend(f"batch{b} item{j}" for j in range(10))
            yield _docs(rng, 10)

    index = Index.build(tmp_path / "g", batches(), doc_ids=ids, texts=texts, progress=False, n_centroids=8)
    assert index.texts(["d2-7"]) == ["batch2 item7"]
    assert index.add(_docs(rng, 2), ["x", "y"], texts=(t for t in ["alpha", None])).docs_added == 2
    assert _lexical(index, "alpha") and index.texts(["y"]) == [None]


def test_upsert_and_compaction_carry_texts(texts_index):
    index, texts = texts_index
    rng = np.random.default_rng(6)
    index.upsert(_docs(rng, 2), [1, 100], texts=["zebra one", None])
    index.add(_docs(rng, 1), [101])  # no texts: a segment without a full-text index
    assert index.texts([1, 100, 101, 2]) == ["zebra one", None, None, texts[2]]
    assert list(_lexical(index, "zebra")) == [1]
    for retrain in (False, True):
        index.compact(retrain=retrain, n_centroids=16 if retrain else None)
        assert index.texts([1, 100, 101, 2]) == ["zebra one", None, None, texts[2]]
        assert list(_lexical(index, "zebra")) == [1]
    assert Index.open(index.path, verify=True).manifest["segments"][0]["files"]["metadata"]["texts"] == 79


def test_delete_by_filter(texts_index):
    index, _ = texts_index
    info = index.delete(filter={"n": {"$lt": 10}, "even": True})
    assert info.docs_deleted == 5 and len(index) == 75 and 0 not in index and 1 in index
    assert index.delete(filter={"n": {"$lt": 10}, "even": True}).generation == info.generation  # nothing left
    with pytest.raises(ValueError, match="not both"):
        index.delete([1], filter={"n": 1})
    with pytest.raises(ValueError, match="every document"):
        index.delete(filter={})
    with pytest.raises(ValueError, match="unknown operator"):
        index.delete(filter={"n": {"$like": 1}})
    assert index.delete(filter={"n": {"$gte": 0}}).docs_deleted == 75 and len(index) == 0


def test_an_index_without_texts_and_files_of_the_old_schema(tmp_path, tiny_docs):
    """A metadata file written before texts existed (the docs table only, no texts in the manifest entry) opens,
    filters and searches; lexical search says the index has no texts; later adds bring texts."""
    meta = [{"i": i} for i in range(len(tiny_docs))]
    index = Index.build(tmp_path / "old", tiny_docs, metadata=meta, progress=False)
    m = json.loads((index.path / "manifest.json").read_text())
    entry = m["segments"][0]["files"]["metadata"]
    db = index.path / entry["path"]
    db.unlink()
    with sqlite3.connect(db) as con:  # the schema before texts, written directly
        con.execute("CREATE TABLE docs (slot INTEGER PRIMARY KEY, meta TEXT)")
        con.executemany("INSERT INTO docs VALUES (?, ?)", [(i, json.dumps(x)) for i, x in enumerate(meta)])
    con.close()
    entry.update(bytes=db.stat().st_size, sha256=sha256(db))
    entry.pop("texts", None)
    (index.path / "manifest.json").write_text(json.dumps(seal(m)))
    old = Index.open(index.path, verify=True)
    Q = tiny_docs[4][:3]
    assert old.search(Q, k=3, filter={"i": {"$lt": 10}}).ids.shape == (1, 3)
    assert old.metadata([4]) == [{"i": 4}] and old.texts([4]) == [None]
    with pytest.raises(ValueError, match="stores no texts"):
        old.search(None, text_query="cat")
    old.add([tiny_docs[0]], [100], texts=["a cat"])
    assert list(_lexical(old, "cat")) == [100]
    old.compact()
    assert old.texts([100, 4]) == ["a cat", None] and old.metadata([4]) == [{"i": 4}]


def test_texts_and_their_index_are_validated_at_open(texts_index):
    index, _ = texts_index
    path = index.path / "manifest.json"
    m = json.loads(path.read_text())
    entry = m["segments"][0]["files"]["metadata"]
    entry["texts"] = 78
    path.write_text(json.dumps(seal(m)))
    with pytest.raises(IndexFormatError, match="79 texts"):
        Index.open(index.path)
    del entry["texts"]
    path.write_text(json.dumps(seal(m)))
    with pytest.raises(IndexFormatError, match="has texts and full-text index, the manifest says otherwise"):
        Index.open(index.path)
    entry["texts"] = "many"
    path.write_text(json.dumps(seal(m)))
    with pytest.raises(IndexFormatError, match="invalid texts count"):
        Index.open(index.path)
