"""The PyLate drop-in index (:mod:`colbert_index.pylate`), without PyLate: a retriever that calls the index exactly
as PyLate 1.6's ``retrieve.ColBERT`` does, checked against ``Index.search_exact``; the input forms PyLate hands
over (lists of arrays, 2-D and 3-D arrays, torch float16 tensors); override / append / remove / update; subsets;
bad input. Where PyLate is installed, the real retriever too."""

from __future__ import annotations

import inspect
import math

import numba
import numpy as np
import pytest

from colbert_index import SearchParams
from colbert_index.datasets.synthetic import make_corpus
from colbert_index.pylate import PyLateIndex

N_DOCS, DIM = 240, 32
IDS = [f"doc-{i}" for i in range(N_DOCS)]
# every centroid probed, every document a candidate: the staged search returns the exact top k
EXHAUSTIVE = {"nprobe": 1024, "ndocs": 4096, "centroid_score_threshold": -100.0}


class FakeRetriever:
    """What ``pylate.retrieve.ColBERT(index=...).retrieve(...)`` does with an end-to-end index, copied from
    PyLate 1.6.0, ``pylate/retrieve/base.py``, ``BaseRetriever.retrieve``: the defaults are resolved, then, since
    ``index.is_end_to_end_index`` is true, the queries go to the index unchanged (no batching, no reranking) with
    keyword arguments, and its answer is returned as it is."""

    default_k_token = 100
    default_batch_size = 50

    def __init__(self, index) -> None:
        self.index = index

    def retrieve(self, queries_embeddings, k=10, k_token=None, device=None, batch_size=None, subset=None):
        k_token = self.default_k_token if k_token is None else k_token
        batch_size = self.default_batch_size if batch_size is None else batch_size
        if self.index.is_end_to_end_index:
            return self.index(queries_embeddings=queries_embeddings, k=k, subset=subset)
        raise AssertionError("the token path (Voyager-style indexes) is not taken for an end-to-end index")


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(N_DOCS, dim=DIM, n_queries=6, q_len=16, seed=11)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    """A drop-in index of the corpus under string ids, searched exhaustively."""
    folder = tmp_path_factory.mktemp("pylate")
    index = PyLateIndex(folder, "docs", override=True, show_progress=False, **EXHAUSTIVE)
    return index.add_documents(documents_ids=IDS, documents_embeddings=corpus.documents())


def _small(tmp_path, corpus, n=40, name="small", **kw) -> PyLateIndex:
    index = PyLateIndex(tmp_path, name, override=True, show_progress=False, **{**EXHAUSTIVE, **kw})
    return index.add_documents(IDS[:n], corpus.documents()[:n])


def _ids(hits) -> list[list]:
    return [[h["id"] for h in q] for q in hits]


def _check_exact(hits, exact) -> None:
    assert _ids(hits) == exact.ids.tolist()
    for q, scores in zip(hits, exact.scores):
        np.testing.assert_allclose([h["score"] for h in q], scores, rtol=1e-5, atol=1e-5)


def test_interface_follows_pylate_1_6():
    """The names and argument names PyLate 1.6 calls (``indexes/base.py``, ``indexes/plaid.py``,
    ``retrieve/base.py``)."""
    assert PyLateIndex.is_end_to_end_index is True
    for method, params in [
        ("__init__", ["index_folder", "index_name", "override"]),
        ("add_documents", ["documents_ids", "documents_embeddings"]),
        ("remove_documents", ["documents_ids"]),
        ("update_documents", ["documents_ids", "documents_embeddings"]),
        ("__call__", ["queries_embeddings", "k", "subset"]),
        ("get_documents_embeddings", ["documents_ids"]),
    ]:
        names = list(inspect.signature(getattr(PyLateIndex, method)).parameters)[1:]
        assert names[: len(params)] == params, method
    assert inspect.signature(PyLateIndex.__call__).parameters["k"].default == 10
    init = inspect.signature(PyLateIndex.__init__).parameters
    assert (init["index_folder"].default, init["index_name"].default, init["override"].default) == (
        "indexes",
        "colbert_index",
        False,
    )


def test_retriever_results_equal_search_exact(built, corpus):
    queries = [q for q in corpus.queries]  # PyLate's model.encode(..., is_query=True): a list of float32 arrays
    hits = FakeRetriever(built).retrieve(queries_embeddings=queries, k=5)
    assert len(hits) == len(queries) and all(set(h) == {"id", "score"} for q in hits for h in q)
    assert all(isinstance(h["id"], str) and isinstance(h["score"], float) for q in hits for h in q)
    _check_exact(hits, built.index.search_exact(queries, k=5))
    assert [q[0]["id"] for q in hits] == [IDS[t] for t in corpus.targets]  # each query finds its document
    # at the default search parameters the engine's own staged search gives the same as the drop-in
    plain = PyLateIndex(built.path.parent, built.path.name)
    assert _ids(plain(queries, k=5)) == built.index.search(queries, k=5).ids.tolist()


def test_query_forms(built, corpus):
    Q = corpus.queries
    want = _ids(built(list(Q), k=4))
    assert _ids(built(Q, k=4)) == want  # [n_q, q_len, dim]
    assert _ids(built(Q[2], k=4)) == [want[2]]  # one query [q_len, dim]: one result list
    assert _ids(built([q.tolist() for q in Q[:2]], k=4)) == want[:2]  # nested lists
    assert _ids(built(Q[:3].tolist(), k=4)) == want[:3]
    ragged = [Q[0][:5], Q[1]]
    _check_exact(built(ragged, k=4), built.index.search_exact(ragged, k=4))


def test_torch_float16_queries_and_documents(tmp_path, corpus):
    torch = pytest.importorskip("torch")
    docs16 = [torch.from_numpy(d).half() for d in corpus.documents()[:40]]
    index = PyLateIndex(tmp_path, "t16", override=True, show_progress=False, **EXHAUSTIVE)
    index.add_documents(IDS[:40], docs16)
    stored = index.get_documents_embeddings([IDS[:2]])[0]
    for got, doc in zip(stored, corpus.documents()[:2]):
        cos = (got * doc).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(doc, axis=1)
        assert got.shape == doc.shape and cos.mean() > 0.85  # 2-bit residuals of a small codebook
    q16 = torch.from_numpy(corpus.queries[:3]).half()
    rounded = [q.astype(np.float16).astype(np.float32) for q in corpus.queries[:3]]
    exact = index.index.search_exact(rounded, k=3)
    _check_exact(index(q16, k=3), exact)  # a 3-D tensor
    _check_exact(index(list(q16), k=3), exact)  # a list of 2-D tensors
    _check_exact(index(q16[0], k=3), index.index.search_exact(rounded[0], k=3))  # one 2-D tensor
    _check_exact(index(q16.bfloat16().float(), k=1), index.index.search_exact(q16.bfloat16().float().numpy(), k=1))


def test_document_forms(tmp_path, corpus):
    docs = corpus.documents()
    one = PyLateIndex(tmp_path, "one", override=True, show_progress=False)
    one.add_documents("only", docs[0])  # one str id and one 2-D array: one document
    assert len(one) == 1 and one(docs[0][:4], k=3) == [[{"id": "only", "score": pytest.approx(4.0, abs=0.5)}]]
    padded = np.stack([d[:20] for d in docs[:10]])  # [n_docs, n_tokens, dim]
    three = PyLateIndex(tmp_path, "three", override=True, show_progress=False)
    three.add_documents(IDS[:10], padded)
    assert len(three) == 10 and three.index.n_tokens == 200
    ints = PyLateIndex(tmp_path, "ints", override=True, show_progress=False)  # PyLate's example passes range()
    ints.add_documents(range(5), docs[:5]).add_documents(np.arange(5, 8), docs[5:8])
    assert ints(docs[6][:8], k=1)[0][0]["id"] == 6


def test_override_append_and_reopen(tmp_path, corpus):
    docs = corpus.documents()
    _small(tmp_path, corpus, n=30)
    again = PyLateIndex(tmp_path, "small", show_progress=False)  # override=False: reopened
    assert len(again) == 30
    assert again.add_documents(IDS[30:50], docs[30:50]) is again  # appended: a second segment
    assert len(again) == 50 and len(again.index.segment_info()) == 2
    assert again(docs[45][:8], k=1)[0][0]["id"] == IDS[45]
    with pytest.raises(ValueError, match="already"):
        again.add_documents(IDS[:1], docs[:1])
    assert len(PyLateIndex(tmp_path, "small")) == 50
    fresh = PyLateIndex(tmp_path, "small", override=True, show_progress=False)
    assert len(fresh) == 0
    with pytest.raises(ValueError, match="is empty: add documents"):
        fresh(docs[0], k=1)
    assert len(PyLateIndex(tmp_path, "small")) == 50  # replaced only by the first add, atomically
    fresh.add_documents(IDS[100:110], docs[100:110])
    assert len(fresh) == 10 and len(PyLateIndex(tmp_path, "small")) == 10
    assert IDS[0] not in fresh.index
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not an index")
    with pytest.raises(FileExistsError, match="not a colbert_index index; pass override=True"):
        PyLateIndex(tmp_path, "other")
    (tmp_path / "empty").mkdir()
    assert len(PyLateIndex(tmp_path, "empty").add_documents(IDS[:3], docs[:3], metadata=[{"a": 1}] * 3)) == 3


def test_remove_and_update(tmp_path, corpus):
    docs = corpus.documents()
    index = _small(tmp_path, corpus, n=40)
    assert index.remove_documents([IDS[3], "missing"]) is index  # unknown ids are skipped, as PyLate's FastPlaid
    assert len(index) == 39 and IDS[3] not in {h["id"] for h in index(docs[3][:8], k=39)[0]}
    index.remove_documents(IDS[4])  # one id
    with pytest.raises(KeyError, match="missing"):
        index.remove_documents(["missing"], missing_ok=False)
    assert len(index) == 38
    index.update_documents([IDS[5], "new"], [docs[7], docs[8]])  # replace doc-5, add "new"
    assert len(index) == 39
    top = index(docs[7][:10], k=2)[0]
    assert {h["id"] for h in top} == {IDS[5], IDS[7]} and math.isclose(top[0]["score"], top[1]["score"], rel_tol=1e-5)
    index.remove_documents(list(index.index.doc_ids()))
    assert len(index) == 0 and index(docs[0], k=3) == [[]]
    empty = PyLateIndex(tmp_path, "never", override=True)
    assert empty.remove_documents(["x"]) is empty
    with pytest.raises(KeyError):
        empty.remove_documents(["x"], missing_ok=False)
    assert len(empty.update_documents(["u"], [docs[0]])) == 1  # on an empty index: added


def test_subset(built, corpus):
    Q = list(corpus.queries[:3])
    allowed = IDS[100:140] + ["not-in-the-index"]
    hits = FakeRetriever(built).retrieve(queries_embeddings=Q, k=5, subset=allowed)
    _check_exact(hits, built.index.search_exact(Q, k=5, filter=IDS[100:140]))
    per_query = [IDS[:50], IDS[50:52], []]
    hits = built(Q, k=5, subset=per_query)
    assert len(hits) == 3 and hits[2] == []
    for q, ids, got in zip(Q, per_query[:2], hits):
        _check_exact([got], built.index.search_exact(q, k=5, filter=ids))
    assert built(Q, k=5, subset=[]) == [[], [], []]
    assert built(Q[0], k=5, subset=(IDS[7],))[0][0]["id"] == IDS[7]
    with pytest.raises(ValueError, match="2 lists of ids for 3 queries"):
        built(Q, k=5, subset=[IDS[:3], IDS[3:6]])
    with pytest.raises(TypeError, match="subset"):
        built(Q, k=5, subset="doc-1")


def test_get_documents_embeddings(built):
    nested = built.get_documents_embeddings([[IDS[0], IDS[9]], [IDS[3]], []])
    assert [len(g) for g in nested] == [2, 1, 0]
    np.testing.assert_array_equal(nested[0][1], built.index.reconstruct(IDS[9]))
    assert nested[1][0].dtype == np.float32 and nested[1][0].shape[1] == DIM
    flat = built.get_documents_embeddings([IDS[3]])
    np.testing.assert_array_equal(flat[0], nested[1][0])
    with pytest.raises(KeyError, match="unknown"):
        built.get_documents_embeddings([["unknown"]])


def test_parameters(tmp_path, corpus):
    p = PyLateIndex(tmp_path, "p", n_ivf_probe=3, n_full_scores=512, centroid_score_threshold=0.3).params
    assert p == SearchParams(nprobe=3, ndocs=512, centroid_score_threshold=0.3)
    p = PyLateIndex(tmp_path, "p", params=SearchParams(nprobe=2, nbound=64), ndocs=128, ncells=2).params
    assert p == SearchParams(nprobe=2, ndocs=128, nbound=64)
    ignored = {"use_fast": False, "max_points_per_centroid": 64, "n_samples_kmeans": 10, "use_triton": False}
    PyLateIndex(tmp_path, "p", batch_size=8, low_memory=True, **ignored)  # accepted, no effect
    index = _small(tmp_path, corpus, n=30, name="four", nbits=4, num_threads=1, embedding_size=DIM)
    assert index.index.nbits == 4 and index.index.manifest["build"]["kmeans_iters"] == 4
    before = numba.get_num_threads()
    index(corpus.queries, k=2)
    assert numba.get_num_threads() == before  # num_threads applies to the call only


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"nbits": 3}, ValueError, "nbits must be 2 or 4"),
        ({"nprobe": 2, "n_ivf_probe": 8}, ValueError, "nprobe given twice"),
        ({"ndocs": 256, "n_full_scores": 8192}, ValueError, "disagree"),
        ({"nprobe": 0}, ValueError, "nprobe must be >= 1"),
        ({"centroid_score_threshold": float("nan")}, ValueError, "finite"),
        ({"params": {"nprobe": 2}}, TypeError, "SearchParams"),
        ({"device": ["cuda:0", "cuda:1"]}, ValueError, "one device string"),
        ({"num_threads": 0}, ValueError, "num_threads"),
        ({"index_name": ""}, ValueError, "index_name"),
        ({"nranks": 2}, TypeError, "nranks"),  # Stanford-backend only: refused, not swallowed
        ({"n_probe": 2}, TypeError, "n_probe"),  # a typo is an error
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, match):
    kwargs = {"index_folder": tmp_path, "index_name": "x", **kwargs}
    with pytest.raises(error, match=match):
        PyLateIndex(**kwargs)


def test_bad_input(tmp_path, corpus, built):
    docs = corpus.documents()
    index = PyLateIndex(tmp_path, "bad", override=True, show_progress=False, embedding_size=DIM)
    with pytest.raises(ValueError, match="2 documents_ids but 1 documents_embeddings"):
        index.add_documents(["a", "b"], [docs[0]])
    with pytest.raises(ValueError, match="embedding_size=32 but the embeddings have dim 16"):
        index.add_documents(["a"], [docs[0][:, :16]])
    with pytest.raises(TypeError, match="ids are strings"):
        index.add_documents([1.5], [docs[0]])
    with pytest.raises(TypeError, match="ids are strings"):
        index.add_documents([True], [docs[0]])
    with pytest.raises(ValueError, match="no documents"):
        index.add_documents([], [])
    with pytest.raises(ValueError, match=r"documents_embeddings\[1\]: expected a 2-D"):
        index.add_documents(["a", "b"], [docs[0], docs[1][0]])
    with pytest.raises(ValueError, match="expected float embeddings"):
        index.add_documents(["a"], [np.array([["x"] * DIM])])
    with pytest.raises(TypeError, match="expected arrays"):
        index.add_documents(["a"], "text")
    with pytest.raises(ValueError, match="not a rectangular array"):
        index.add_documents(["a"], [[[0.1] * DIM], [[0.1] * DIM, [0.2] * 3]])
    with pytest.raises(ValueError, match="NaN"):
        index.add_documents(["a"], [np.full((3, DIM), np.nan, np.float32)])
    assert index.index is None  # nothing was built by the failed calls
    with pytest.raises(ValueError, match="dim 16 does not match the index dim 32"):
        built(corpus.queries[0][:, :16], k=3)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        built(corpus.queries[0], k=0)
    with pytest.raises(ValueError, match="expected a .* array, got shape"):
        built(np.zeros((2, 2, 2, DIM), np.float32), k=1)
    with pytest.raises(ValueError, match="NaN"):
        built(np.full((4, DIM), np.inf, np.float32), k=1)
    with pytest.raises(TypeError, match="string ids"):
        built(corpus.queries[0], k=3, subset=[1, 2])
    with pytest.raises(ValueError, match="string ids|already|dim"):
        built.add_documents([IDS[0]], [docs[0]])


def test_real_pylate_retriever(built, corpus):
    """Runs where PyLate is installed (``bench/pylate_compare.py``'s venv), not in CI."""
    retrieve = pytest.importorskip("pylate.retrieve")
    Q = list(corpus.queries[:4])
    retriever = retrieve.ColBERT(index=built)
    for kw in ({}, {"subset": IDS[:60]}, {"subset": [IDS[:60], IDS[60:], IDS, [IDS[9]]]}):
        assert retriever.retrieve(queries_embeddings=Q, k=4, **kw) == FakeRetriever(built).retrieve(Q, k=4, **kw)
    assert len(retriever.retrieve(queries_embeddings=Q[0], k=3)) == 1
