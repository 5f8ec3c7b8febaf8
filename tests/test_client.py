"""The Python client (:mod:`colbert_index.client`) against a real ``colbert-index serve`` process on 127.0.0.1:
every method, results equal to the in-process ``Index.search``, and each error status as its exception."""

from __future__ import annotations

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serving import free_port, serve, stop  # noqa: E402

from colbert_index import Index, SearchParams, SearchResult  # noqa: E402
from colbert_index.client import (  # noqa: E402
    AuthError,
    Client,
    ClientError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    RemoteSearchResult,
    ServerUnreachableError,
    ValidationError,
)
from colbert_index.datasets.synthetic import make_corpus  # noqa: E402

KEY = "client-test-key"
N_DOCS, DIM = 200, 32


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(N_DOCS, dim=DIM, n_queries=6, q_len=12, seed=21)


@pytest.fixture(scope="module")
def served(corpus, tmp_path_factory):
    """An index of 200 documents (ids 0..199, metadata {"lang", "year"}) behind an API key and a 1 MiB body limit;
    yields (client with the key, base url, index path)."""
    path = tmp_path_factory.mktemp("client") / "index"
    meta = [{"lang": ["en", "de"][i % 2], "year": 2000 + i % 20} for i in range(N_DOCS)]
    Index.build(path, corpus.documents(), metadata=meta, progress=False)
    proc, base = serve(path, "--api-key", KEY, "--max-body-mb", "1", "--refresh-s", "0.1")
    with Client(base, api_key=KEY, timeout=60) as client:
        yield client, base, path
    stop(proc)


def _same(res: SearchResult, want: SearchResult) -> None:
    assert res.ids.tolist() == want.ids.tolist()
    np.testing.assert_allclose(res.scores, want.scores, rtol=1e-5)


def test_health_and_stats(served):
    client, base, path = served
    assert client.health()["status"] == "ok"
    with Client(base) as bare:
        assert bare.health()["status"] == "ok"  # /health needs no key
    s = client.stats()
    idx = Index.open(path)
    assert (s["docs"], s["tokens"], s["bytes"], s["dim"]) == (idx.n_docs, idx.n_tokens, idx.disk_bytes(), DIM)
    assert s["generation"] == idx.generation == client.health()["generation"] and s["model"] is False


def test_search_equals_in_process_search(served, corpus):
    client, _, path = served
    idx = Index.open(path)
    Q = corpus.queries
    res = client.search(Q[0], k=5)
    assert isinstance(res, RemoteSearchResult) and isinstance(res, SearchResult)
    assert res.ids.shape == (1, 5) and res.ids.dtype == np.int64 and res.scores.dtype == np.float32
    _same(res, idx.search(Q[0], k=5))
    assert res.ids[0, 0] == corpus.targets[0] and res.generation == idx.generation and res.metadata is None
    batch = client.search_batch(list(Q), k=4)
    _same(batch, idx.search(list(Q), k=4))
    _same(client.search_batch(Q[:3], k=4), idx.search(Q[:3], k=4))  # a [n_q, q_len, dim] array
    _same(client.search_batch([Q[0][:5], Q[1]], k=4), idx.search([Q[0][:5], Q[1]], k=4))  # ragged queries


def test_filters_params_and_metadata_pass_through(served, corpus):
    client, _, path = served
    idx = Index.open(path)
    q = corpus.queries[1]
    flt = {"lang": "en", "year": {"$gte": 2010}}
    res = client.search(q, k=6, filter=flt, include_metadata=True)
    _same(res, idx.search(q, k=6, filter=flt))
    assert all(m["lang"] == "en" and m["year"] >= 2010 for m in res.metadata[0])
    assert res.metadata[0] == idx.metadata(res.ids[0].tolist())
    ids = np.array([3, 5, 7, 99999])  # numpy ids; an id not in the index is ignored
    assert sorted(client.search(q, k=10, filter=ids).ids[0].tolist()) == [3, 5, 7]
    p = SearchParams(nprobe=4, ndocs=2048, centroid_score_threshold=0.2, nbound=64)
    _same(client.search(q, k=5, params=p), idx.search(q, k=5, params=p))
    _same(client.search(q, k=5, params={"ndocs": 64}), idx.search(q, k=5, params=SearchParams(ndocs=64)))
    batch = client.search_batch(corpus.queries[:2], k=3, filter=[1, 2, 3, 4], include_metadata=True)
    _same(batch, idx.search(corpus.queries[:2], k=3, filter=[1, 2, 3, 4]))
    assert len(batch.metadata) == 2 and all(len(row) == 3 for row in batch.metadata)
    empty = client.search(q, k=3, filter={"lang": "xx"})
    assert empty.ids.shape == (1, 0) and empty.scores.shape == (1, 0)


def test_torch_queries(served, corpus):
    torch = pytest.importorskip("torch")
    client, _, path = served
    idx = Index.open(path)
    Q = torch.from_numpy(corpus.queries[:2])
    _same(client.search(Q[0], k=3), idx.search(corpus.queries[0], k=3))
    _same(client.search_batch(Q, k=3), idx.search(corpus.queries[:2], k=3))


def test_every_method_needs_the_key(served, corpus):
    _, base, _ = served
    doc = [corpus.documents()[0]]
    for key in (None, "wrong-key"):
        with Client(base, api_key=key) as client:
            for call in (
                client.stats,
                lambda c=client: c.search(corpus.queries[0], k=1),
                lambda c=client: c.search_batch(corpus.queries[:1], k=1),
                lambda c=client: c.add(doc, [9999]),
                lambda c=client: c.upsert(doc, [9999]),
                lambda c=client: c.delete([9999]),
                lambda c=client: c.compact(),
            ):
                with pytest.raises(AuthError, match="missing or wrong API key") as e:
                    call()
                assert e.value.status == 401 and isinstance(e.value, ClientError)


def test_writes(served, corpus):
    client, _, path = served
    docs = corpus.documents()
    gen = client.health()["generation"]
    info = client.add([docs[3][:20], docs[4][:30]], [5000, 5001], metadata=[{"lang": "xx"}, None])
    assert (info["added"], info["tokens"], info["generation"]) == (2, 50, gen + 1)
    res = client.search(docs[3][:10], k=2, filter=[5000, 5001], include_metadata=True)
    assert res.ids[0, 0] == 5000 and res.metadata[0][0] == {"lang": "xx"}
    with pytest.raises(ValidationError, match="already in the index") as e:
        client.add([docs[3]], [5000])
    assert e.value.status == 422 and "upsert" in e.value.detail
    info = client.upsert([docs[5][:10]], np.array([5001]), metadata=[{"v": 2}])
    assert info["replaced"] == 1 and info["added"] == 1
    assert Index.open(path).metadata([5001]) == [{"v": 2}]
    info = client.add([docs[6][:8]])  # no ids: the next free integer
    assert info["added"] == 1 and 5002 in Index.open(path)
    with pytest.raises(NotFoundError, match="123456") as e:
        client.delete([5000, 123456])
    assert e.value.status == 404
    assert client.delete([5000, 123456], missing_ok=True)["deleted"] == 1
    assert client.delete(5001)["deleted"] == 1  # one id
    assert client.stats()["segments"] > 1
    info = client.compact()
    assert info["generation"] == client.stats()["generation"] and info["removed"] >= 0
    assert client.stats()["segments"] == 1 and client.stats()["deleted"] == 0
    _same(client.search(docs[8][:10], k=4), Index.open(path).search(docs[8][:10], k=4))


def test_a_write_while_another_process_holds_the_lock(served, corpus):
    from colbert_index.storage.files import WriterLock

    client, _, path = served
    with WriterLock(path):
        with pytest.raises(ConflictError, match="another writer holds") as e:
            client.add([corpus.documents()[1]], [8500])
        assert e.value.status == 409
        assert client.search(corpus.queries[0], k=1).ids.shape == (1, 1)  # readers go on


def test_server_side_validation(served, corpus):
    client, _, _ = served
    with pytest.raises(PayloadTooLargeError, match="larger than 1048576 bytes") as e:
        client.add([np.full((4000, DIM), 0.123456789, np.float32)], [7000])  # about 3 MB of JSON
    assert e.value.status == 413
    with pytest.raises(ValidationError, match=r"query\[0\]: 31 values, the index has dim 32") as e:
        client.search(np.ones((3, 31), np.float32), k=1)
    assert e.value.status == 422
    with pytest.raises(ValidationError, match=r"queries\[1\]\[0\]: 30 values"):
        client.search_batch([np.ones((2, DIM)), np.ones((2, 30))], k=1)
    with pytest.raises(ValidationError, match=r"documents\[0\]\.embeddings\[0\]: 16 values"):
        client.add([np.ones((2, 16), np.float32)], [7001])
    with pytest.raises(ValidationError, match="k: Input should be greater than or equal to 1"):
        client.search(corpus.queries[0], k=0)
    with pytest.raises(ValidationError, match="this server has no model"):
        client.search(text="what is maxsim?")
    with pytest.raises(ValidationError, match="params.nprobe"):
        client.search(corpus.queries[0], k=1, params={"nprobe": 0})
    with pytest.raises(ValidationError, match="integer ids"):
        client.delete(["a-string"])
    with pytest.raises(ValidationError, match="unknown operator"):
        client.search(corpus.queries[0], k=1, filter={"lang": {"$regex": "."}})


def test_local_validation():
    client = Client("http://127.0.0.1:9")  # never reached: the errors come first
    Q = np.ones((4, DIM), np.float32)
    cases = [
        (lambda: client.search(), ValueError, "query .embeddings., text or text_query"),
        (lambda: client.search(Q, text="x"), ValueError, "not both"),
        (lambda: client.search(Q, text_query="x", fusoin="rrf"), TypeError, "unknown search options"),
        (lambda: client.search_batch(text_queries="one text"), TypeError, "list of strings"),
        (lambda: client.search(np.ones((2, 4, DIM))), ValueError, "search_batch takes several"),
        (lambda: client.search(np.full((2, DIM), np.nan)), ValueError, "NaN"),
        (lambda: client.search([["a"] * DIM]), ValueError, "float array"),
        (lambda: client.search_batch(Q), ValueError, r"\[n_q, q_len, dim\]"),
        (lambda: client.search_batch(texts="one text"), TypeError, "list of strings"),
        (lambda: client.search(Q, params=3), TypeError, "SearchParams"),
        (lambda: client.add(), ValueError, "doc_embeddings, texts, or both"),
        (lambda: client.add([Q], texts=["a", "b"]), ValueError, "2 texts for 1 documents"),
        (lambda: client.delete(), ValueError, "doc_ids or filter"),
        (lambda: client.delete([1], filter={"lang": "en"}), ValueError, "doc_ids or filter"),
        (lambda: client.add(np.ones((3, 4, DIM))), ValueError, "one per document"),
        (lambda: client.add([Q], [1, 2]), ValueError, "2 doc_ids for 1 documents"),
        (lambda: client.add([Q], metadata=[None, None]), ValueError, "2 metadata entries"),
        (lambda: client.upsert([Q]), ValueError, "upsert needs doc_ids"),
        (lambda: Client("http://x", api_key=""), ValueError, "api_key must not be empty"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    client.close()


def test_short_rows_are_padded_as_index_search_pads_them():
    rows = [[{"id": "a", "score": 2.0}, {"id": "b", "score": 1.0}], [{"id": "c", "score": 3.0}]]
    res = Client._result(rows, 4, include_metadata=False)
    assert res.ids.tolist() == [["a", "b"], ["c", None]] and res.scores[1, 1] == -np.inf
    res = Client._result([[{"id": 7, "score": 1.0}], []], 4, include_metadata=False)
    assert res.ids.dtype == np.int64 and res.ids.tolist() == [[7], [-1]] and res.generation == 4


def test_unreachable_server():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, timeout=5) as client:
        with pytest.raises(ServerUnreachableError, match="cannot reach the colbert_index server at") as e:
            client.health()
        assert url in str(e.value) and e.value.status is None
        with pytest.raises(ClientError, match="colbert-index serve"):
            client.search(np.ones((2, DIM), np.float32))


def test_text_queries_and_documents(tmp_path):
    """With ``--model``: text searches equal the in-process search of the encoded text; text documents are added."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from colbert_index import Encoder
    from colbert_index.encoder.fixtures import topic_texts, variant, write_pylate_checkpoint

    model = variant(write_pylate_checkpoint(tmp_path / "ckpt"), tmp_path / "model", {"do_query_expansion": False})
    enc = Encoder.from_pretrained(model)
    texts, _ = topic_texts()
    ids = [f"p{i}" for i in range(30)]
    Index.build(tmp_path / "index", enc.encode_documents(texts[:30]), doc_ids=ids, progress=False)
    proc, base = serve(tmp_path / "index", "--model", str(model))
    try:
        with Client(base) as client:  # a server without a key
            idx = Index.open(tmp_path / "index")
            Q, lengths = enc.encode_queries([texts[12], texts[25]])
            res = client.search(text=texts[12], k=3)
            assert res.ids.dtype == object and res.ids[0, 0] == "p12"
            _same(res, idx.search(Q[:1], k=3, query_lengths=lengths[:1]))
            _same(client.search_batch(texts=[texts[12], texts[25]], k=3), idx.search(Q, k=3, query_lengths=lengths))
            assert client.add(texts=[texts[40]], doc_ids=["new"], metadata=[{"t": 1}])["added"] == 1
            assert client.search(text=texts[40], k=1, include_metadata=True).metadata == [[{"t": 1}]]
            assert client.upsert(texts=[texts[41]], doc_ids=["new"])["replaced"] == 1
            with pytest.raises(ValidationError, match="string ids"):
                client.add(texts=[texts[42]])
    finally:
        stop(proc)


def test_hybrid_search_and_delete_by_filter(tmp_path):
    """Documents added with embeddings and texts: BM25 alone, fused with the embeddings (as ``Index.search`` fuses
    them), and a delete by metadata filter."""
    corpus = make_corpus(60, dim=DIM, n_queries=2, q_len=8, seed=5)
    docs = corpus.documents()
    texts = [f"passage {i} about {['cats', 'ranking', 'pruning'][i % 3]}" for i in range(60)]
    meta = [{"lang": ["en", "de"][i % 2]} for i in range(60)]
    path = tmp_path / "index"
    Index.build(path, docs[:40], metadata=meta[:40], texts=texts[:40], progress=False)
    proc, base = serve(path, "--refresh-s", "0.1")
    try:
        with Client(base, timeout=60) as client:
            added = client.add(docs[40:], list(range(40, 60)), texts=texts[40:], metadata=meta[40:])
            assert added["added"] == 20
            lexical = client.search(text_query="pruning", k=5)
            assert all(int(i) % 3 == 2 for i in lexical.ids[0])
            fused = client.search(docs[44][:8], text_query="ranking", k=5, fusion="rrf", alpha=0.5)
            with Index.open(path) as idx:
                want = idx.search(docs[44][:8], k=5, text_query="ranking", fusion="rrf", alpha=0.5)
            _same(fused, want)
            batch = client.search_batch([docs[1][:8], docs[2][:8]], text_queries=["cats", "pruning"], k=3)
            assert batch.ids.shape == (2, 3)
            gone = client.delete(filter={"lang": "de"})
            assert gone["deleted"] == 30
            left = client.search(text_query="passage", k=60)
            assert len(left.ids[0]) == 30 and all(int(i) % 2 == 0 for i in left.ids[0])
    finally:
        stop(proc)
