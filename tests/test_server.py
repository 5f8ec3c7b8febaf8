"""The HTTP server, run as a real uvicorn process (``colbert-index serve``) on 127.0.0.1 and driven with httpx:
every endpoint, with and without an API key, bad input, concurrent reads and writes, text queries with a model."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serving import serve, stop  # noqa: E402

from colbert_index import Index, SearchParams  # noqa: E402
from colbert_index.datasets.synthetic import make_corpus  # noqa: E402
from colbert_index.server_models import Params  # noqa: E402

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
N_DOCS = 300


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(N_DOCS, dim=32, n_queries=8, seed=5)


@pytest.fixture(scope="module")
def server(corpus, tmp_path_factory):
    """An index of 300 documents (ids 0..299, metadata {"lang", "year"}, texts :func:`_text`, the vectors kept for the
    full-precision rerank) served with an API key."""
    path = tmp_path_factory.mktemp("srv") / "index"
    meta = [{"lang": ["en", "de"][i % 2], "year": 2000 + i % 30} for i in range(N_DOCS)]
    texts = [_text(i) for i in range(N_DOCS)]
    Index.build(path, corpus.documents(), metadata=meta, texts=texts, progress=False, keep_originals=True)
    proc, base = serve(path, "--api-key", KEY, "--max-body-mb", "1", "--refresh-s", "0.1")
    client = httpx.Client(base_url=base, headers=AUTH, timeout=60)
    yield client, path
    client.close()
    stop(proc)


def _text(i: int) -> str:
    return f"passage number{i} of group{i % 7} and tens{i // 10}"


def _q(corpus, d: int, n: int = 12) -> list:
    """A query made of the first tokens of document ``d`` (so ``d`` ranks first)."""
    return corpus.documents()[d][:n].tolist()


ENDPOINTS = [
    ("GET", "/stats", None),
    ("POST", "/search", {"query": [[0.1] * 32], "k": 1}),
    ("POST", "/search/batch", {"queries": [[[0.1] * 32]], "k": 1}),
    ("POST", "/documents", {"documents": [{"embeddings": [[0.1] * 32]}]}),
    ("POST", "/documents/upsert", {"documents": [{"id": 1, "embeddings": [[0.1] * 32]}]}),
    ("POST", "/documents/delete", {"ids": [1]}),
    ("POST", "/compact", {}),
]


def test_every_endpoint_but_health_needs_the_key(server):
    client, _ = server
    bare = httpx.Client(base_url=str(client.base_url), timeout=30)
    assert bare.get("/health").json()["status"] == "ok"
    for method, path, body in ENDPOINTS:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {KEY}"},
            {"Authorization": KEY},
        ):
            r = bare.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert "API key" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
    assert bare.get("/stats").status_code == 401 and client.get("/stats").status_code == 200
    bare.close()


def test_stats(server):
    client, path = server
    s = client.get("/stats").json()
    idx = Index.open(path)
    assert s["docs"] == idx.n_docs and s["tokens"] == idx.n_tokens and s["bytes"] == idx.disk_bytes()
    assert s["segments"] == len(idx.segment_info()) and s["dim"] == 32 and s["nbits"] == 2 and s["model"] is False
    assert s["warmup_s"] > 0  # the server ran its warm-up search before serving


def test_search_by_embeddings_with_filters_and_metadata(server, corpus):
    client, path = server
    idx = Index.open(path)
    r = client.post("/search", json={"query": _q(corpus, 7), "k": 5, "include_metadata": True})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    expected = idx.search(np.asarray(_q(corpus, 7), np.float32), k=5)
    assert [h["id"] for h in hits] == expected.ids[0].tolist() and hits[0]["id"] == 7
    np.testing.assert_allclose([h["score"] for h in hits], expected.scores[0], rtol=1e-5)
    assert hits[0]["metadata"] == {"lang": "de", "year": 2007}
    flt = {"lang": "en", "year": {"$gte": 2020}}
    hits = client.post("/search", json={"query": _q(corpus, 7), "k": 10, "filter": flt, "include_metadata": True})
    hits = hits.json()["results"]
    assert len(hits) == 10 and all(h["metadata"]["lang"] == "en" and h["metadata"]["year"] >= 2020 for h in hits)
    hits = client.post("/search", json={"query": _q(corpus, 7), "k": 3, "filter": [11, 12, 99999]}).json()["results"]
    assert sorted(h["id"] for h in hits) == [11, 12]
    params = {"nprobe": 64, "ndocs": 4096, "centroid_score_threshold": -10}
    r = client.post("/search", json={"query": _q(corpus, 3), "k": 3, "params": params})
    assert r.status_code == 200 and r.json()["results"][0]["id"] == 3
    bound = {"nbound": 8, "bound_cells": 4}
    assert Params(**bound).search_params() == SearchParams(nbound=8, bound_cells=4)
    r = client.post("/search", json={"query": _q(corpus, 5), "k": 5, "params": bound})
    want = idx.search(np.asarray(_q(corpus, 5), np.float32), k=5, params=SearchParams(nbound=8, bound_cells=4))
    assert r.status_code == 200 and [h["id"] for h in r.json()["results"]] == list(want.ids[0])
    for rerank in (0, 50):  # off (stage 4 on decompressed tokens), and 50 candidates on the kept vectors
        assert Params(rerank=rerank).search_params() == SearchParams(rerank=rerank)
        r = client.post("/search", json={"query": _q(corpus, 5), "k": 5, "params": {"rerank": rerank}})
        want = idx.search(np.asarray(_q(corpus, 5), np.float32), k=5, params=SearchParams(rerank=rerank))
        assert r.status_code == 200 and [h["id"] for h in r.json()["results"]] == list(want.ids[0])
        np.testing.assert_allclose([h["score"] for h in r.json()["results"]], want.scores[0], rtol=1e-5)


def test_batch_search_equals_single_searches(server, corpus):
    client, _ = server
    queries = [_q(corpus, d, n) for d, n in ((1, 5), (2, 20), (3, 9))]
    batch = client.post("/search/batch", json={"queries": queries, "k": 4}).json()["results"]
    single = [client.post("/search", json={"query": q, "k": 4}).json()["results"] for q in queries]
    assert [[h["id"] for h in r] for r in batch] == [[h["id"] for h in r] for r in single]
    assert [r[0]["id"] for r in batch] == [1, 2, 3]


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        (b'{"query": [[1, 2', 400, "malformed JSON"),
        (b"not json at all", 400, "malformed JSON"),
        ({"query": [[0.1] * 31], "k": 1}, 422, "query[0]: 31 values, the index has dim 32"),
        ({"query": [[0.1] * 32, [0.1] * 33], "k": 1}, 422, "query[1]"),
        ({"query": [[0.1] * 32], "k": 10**9}, 422, "k: Input should be less than or equal to 1000"),
        ({"query": [[0.1] * 32], "k": 0}, 422, "k: Input should be greater than or equal to 1"),
        ({"query": [[0.1] * 32], "k": "ten"}, 422, "k: "),
        ({"query": [[0.1] * 32] * 513}, 422, "query: List should have at most 512 items"),
        ({"query": []}, 422, "query: List should have at least 1 item"),
        ({"k": 3}, 422, "give query (embeddings), text (with a model) or text_query"),
        ({"query": [[0.1] * 32], "text": "x"}, 422, "give query (embeddings) or text, not both"),
        ({"text_query": "a AND", "text_mode": "fts5"}, 422, "text_query: not a valid FTS5 query"),
        ({"text_query": "(red", "text_mode": "fts5"}, 422, "text_query: not a valid FTS5 query"),
        ({"text_query": "?!"}, 422, "text_query: no searchable word"),
        ({"text_query": ""}, 422, "text_query: String should have at least 1 character"),
        ({"text_query": "x", "text_mode": "regex"}, 422, "text_mode: Input should be 'any', 'all' or 'fts5'"),
        ({"query": [[0.1] * 32], "text_query": "x", "fusion": "max"}, 422, "fusion: Input should be"),
        ({"query": [[0.1] * 32], "text_query": "x", "alpha": 1.5}, 422, "alpha: Input should be less than"),
        ({"query": [[0.1] * 32], "text_query": "x", "k": 20, "fusion_depth": 10}, 422, "fusion_depth must be"),
        ({"query": [[0.1] * 32], "hybrid": True}, 422, "hybrid: true searches the text by BM25 too"),
        ({"query": [[0.1] * 32], "kk": 3}, 422, "kk: Extra inputs are not permitted"),
        ({"query": [["a"] * 32]}, 422, "query.0.0"),
        ({"text": "hello"}, 422, "text: this server has no model"),
        ({"query": [[0.1] * 32], "filter": {"lang": {"$regex": "."}}}, 422, "unknown operator '$regex'"),
        ({"query": [[0.1] * 32], "filter": {"x') OR 1=1 --": 1}}, 422, "invalid filter field name"),
        ({"query": [[0.1] * 32], "filter": ["a"]}, 422, "integer ids"),
        ({"query": [[0.1] * 32], "params": {"nprobe": 0}}, 422, "params.nprobe"),
        ({"query": [[0.1] * 32], "params": {"nbound": 0}}, 422, "params.nbound"),
        ({"query": [[0.1] * 32], "params": {"bound_cells": -1}}, 422, "params.bound_cells"),
        ({"query": [[0.1] * 32], "params": {"rerank": -1}}, 422, "params.rerank"),
        ({"query": [[0.1] * 32], "params": {"nprob": 2}}, 422, "params.nprob: Extra inputs"),
    ],
)
def test_bad_search_input_gets_4xx_naming_the_field(server, body, status, names):
    client, _ = server
    if isinstance(body, bytes):
        r = client.post("/search", content=body, headers={"Content-Type": "application/json"})
    else:
        r = client.post("/search", json=body)
    assert r.status_code == status, r.text
    assert names in r.json()["detail"]


def test_nan_huge_body_and_bad_batches(server):
    client, _ = server
    r = client.post(
        "/search", content=b'{"query": [[NaN' + b", 0.1" * 31 + b"]]}", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "finite number" in r.json()["detail"]
    big = {"query": [[0.1] * 32], "filter": list(range(100_000)), "text": "x" * 500_000}  # > the 1 MiB it takes
    r = client.post("/search", json=big)
    assert r.status_code == 413 and "larger than 1048576 bytes" in r.json()["detail"]
    chunks = (b"[" * 65536 for _ in range(32))  # streamed without a Content-Length
    r = client.post("/search", content=chunks, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than 1048576 bytes" in r.json()["detail"]
    r = client.post("/search/batch", json={"queries": [[[0.1] * 32], [[0.1] * 30]]})
    assert r.status_code == 422 and "queries[1][0]: 30 values" in r.json()["detail"]
    r = client.post("/search/batch", json={"queries": []})
    assert r.status_code == 422 and "queries" in r.json()["detail"]
    assert client.get("/nope").status_code == 404


def test_writes(server, corpus):
    client, path = server
    gen = client.get("/stats").json()["generation"]
    doc = _q(corpus, 0, 20)
    new = [{"id": 5000 + i, "embeddings": doc, "metadata": {"lang": "xx", "i": i}} for i in range(2)]
    r = client.post("/documents", json={"documents": new})
    assert r.status_code == 200, r.text
    assert r.json()["generation"] == gen + 1 and r.json()["added"] == 2
    hits = client.post("/search", json={"query": doc, "k": 5, "filter": {"lang": "xx"}, "include_metadata": True})
    assert {h["id"] for h in hits.json()["results"]} == {5000, 5001}
    r = client.post("/documents", json={"documents": new[:1]})
    assert r.status_code == 422 and "already in the index" in r.json()["detail"] and "upsert" in r.json()["detail"]
    r = client.post("/documents/upsert", json={"documents": [{"id": 5000, "embeddings": doc, "metadata": {"v": 2}}]})
    assert r.status_code == 200 and r.json()["replaced"] == 1
    hits = client.post("/search", json={"query": doc, "k": 1, "filter": [5000], "include_metadata": True})
    assert hits.json()["results"][0]["metadata"] == {"v": 2}
    r = client.post("/documents", json={"documents": [{"embeddings": doc}]})  # no id: the next free integer
    assert r.status_code == 200
    r = client.post("/documents", json={"documents": [{"id": 7001, "embeddings": doc}, {"embeddings": doc}]})
    assert r.status_code == 422 and "documents[].id" in r.json()["detail"]
    r = client.post("/documents", json={"documents": [{"id": 7001, "embeddings": [[0.1] * 31]}]})
    assert r.status_code == 422 and "documents[0].embeddings[0]: 31 values" in r.json()["detail"]
    r = client.post("/documents/upsert", json={"documents": [{"embeddings": doc}]})
    assert r.status_code == 422 and "upsert needs the id" in r.json()["detail"]
    r = client.post("/documents/delete", json={"ids": [5001, 123456]})
    assert r.status_code == 404 and "123456" in r.json()["detail"]
    r = client.post("/documents/delete", json={"ids": ["5001"]})
    assert r.status_code == 422 and "integer ids" in r.json()["detail"]
    r = client.post("/documents/delete", json={"ids": [5001, 123456], "missing_ok": True})
    assert r.status_code == 200 and r.json()["deleted"] == 1
    hits = client.post("/search", json={"query": doc, "k": 5, "filter": {"lang": "xx"}}).json()["results"]
    assert hits == []
    r = client.post("/compact", json={})
    assert r.status_code == 200 and client.get("/stats").json()["segments"] == 1
    assert client.post("/compact").status_code == 200  # no body: the defaults
    after = Index.open(path, verify=True)
    assert after.metadata([5000]) == [{"v": 2}]
    assert [s["originals"] for s in after.segment_info()] == [True]  # the adds followed the build, compact kept them


def test_lexical_and_fused_search_equal_the_library(server, corpus):
    client, path = server
    idx = Index.open(path)
    r = client.post("/search", json={"text_query": "group3 tens12", "k": 8, "filter": {"lang": "en"}})
    assert r.status_code == 200, r.text
    want = idx.search(None, k=8, text_query="group3 tens12", filter={"lang": "en"})
    assert [h["id"] for h in r.json()["results"]] == want.ids[0].tolist()
    np.testing.assert_allclose([h["score"] for h in r.json()["results"]], want.scores[0], rtol=1e-5)
    body = {"query": _q(corpus, 40), "text_query": "number123", "fusion": "relative", "alpha": 0.3, "k": 4}
    hits = client.post("/search", json=body).json()["results"]
    want = idx.search(np.asarray(_q(corpus, 40), np.float32), k=4, text_query="number123", fusion="relative", alpha=0.3)
    assert [h["id"] for h in hits] == want.ids[0].tolist() and {40, 123} <= {h["id"] for h in hits}
    body = {"text_queries": ["number5", "group2 number9", "group3 number9"], "k": 3, "text_mode": "all"}
    batch = client.post("/search/batch", json=body).json()["results"]
    assert [[h["id"] for h in r] for r in batch] == [[5], [9], []]  # short rows: no padding in the answer
    body = {"queries": [_q(corpus, 1), _q(corpus, 2)], "text_queries": ["number2", "number1"], "k": 2}
    batch = client.post("/search/batch", json=body).json()["results"]
    assert [sorted(h["id"] for h in r) for r in batch] == [[1, 2], [1, 2]]
    body = {"queries": [_q(corpus, 1)], "text_queries": ["a", "b"]}
    r = client.post("/search/batch", json=body)
    assert r.status_code == 422 and "text_queries: 2 text queries for 1 queries" in r.json()["detail"]


def test_delete_by_filter(server, corpus):
    client, path = server
    docs = [{"id": 8000 + i, "embeddings": _q(corpus, i, 5), "metadata": {"tag": "tmp", "i": i}} for i in range(4)]
    assert client.post("/documents", json={"documents": docs}).status_code == 200
    r = client.post("/documents/delete", json={"filter": {"tag": "tmp", "i": {"$lt": 3}}})
    assert r.status_code == 200 and r.json()["deleted"] == 3
    assert Index.open(path).metadata([8003]) == [{"tag": "tmp", "i": 3}] and 8000 not in Index.open(path)
    for body, names in [
        ({"ids": [8003], "filter": {"tag": "tmp"}}, "give ids or filter"),
        ({}, "give ids or filter"),
        ({"filter": {}}, "every document"),
        ({"filter": {"tag": {"$like": "t"}}}, "unknown operator"),
    ]:
        r = client.post("/documents/delete", json=body)
        assert r.status_code == 422 and names in r.json()["detail"], (body, r.text)
    assert client.post("/documents/delete", json={"filter": {"tag": "tmp"}}).json()["deleted"] == 1


def test_a_write_while_another_process_holds_the_lock_gets_409(server, corpus):
    from colbert_index.storage.files import WriterLock

    client, path = server
    with WriterLock(path):
        r = client.post("/documents", json={"documents": [{"id": 8500, "embeddings": _q(corpus, 1)}]})
        assert r.status_code == 409 and "another writer holds" in r.json()["detail"]
        assert client.post("/search", json={"query": _q(corpus, 1), "k": 1}).status_code == 200  # readers go on


def test_searches_see_commits_of_other_processes(server, corpus):
    client, path = server
    writer = Index.open(path)
    writer.add([np.asarray(_q(corpus, 9, 15), np.float32)], [8000], metadata=[{"lang": "zz"}])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the server refreshes at most every 0.1 s
        hits = client.post("/search", json={"query": _q(corpus, 9, 15), "k": 1, "filter": {"lang": "zz"}}).json()
        if hits["results"]:
            break
        time.sleep(0.05)
    assert hits["results"][0]["id"] == 8000 and hits["generation"] == writer.generation


def test_concurrent_searches_during_writes(server, corpus):
    client, _ = server

    def search(i: int) -> tuple[int, int]:
        r = client.post("/search", json={"query": _q(corpus, i % 50), "k": 3, "filter": {"year": {"$lt": 2015}}})
        return r.status_code, (r.json()["results"][0]["id"] if r.status_code == 200 else -1)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(search, i) for i in range(48)]
        for j in range(3):
            body = {"documents": [{"id": 9000 + j, "embeddings": _q(corpus, 3), "metadata": {"year": 2001}}]}
            assert client.post("/documents", json=body).status_code == 200
        results = [f.result() for f in futures]
    assert all(status == 200 for status, _ in results)
    assert client.post("/documents/delete", json={"ids": [9000, 9001, 9002]}).status_code == 200


# ---------------------------------------------------------------------------------------------- with a model
@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    """A tiny random PyLate checkpoint (colbert_index.encoder.fixtures), an index of 40 of its passages, served without
    an API key."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from colbert_index import Encoder
    from colbert_index.encoder.fixtures import topic_texts, variant, write_pylate_checkpoint

    tmp = tmp_path_factory.mktemp("text")
    model = variant(write_pylate_checkpoint(tmp / "ckpt"), tmp / "model", {"do_query_expansion": False})
    enc = Encoder.from_pretrained(model)
    docs, _ = topic_texts()
    ids = [f"p{i}" for i in range(40)]
    Index.build(tmp / "index", enc.encode_documents(docs[:40]), doc_ids=ids, metadata=[{"i": i} for i in range(40)])
    proc, base = serve(tmp / "index", "--model", str(model))
    client = httpx.Client(base_url=base, timeout=60)
    yield client, enc, tmp / "index", docs, model
    client.close()
    stop(proc)


def test_text_search_and_text_documents_without_a_key(text_server):
    client, enc, path, docs, _ = text_server
    assert client.get("/stats").json()["model"] is True  # no key configured: no header needed
    idx = Index.open(path)
    Q, lengths = enc.encode_queries([docs[13]])
    expected = idx.search(Q, k=3, query_lengths=lengths)
    hits = client.post("/search", json={"text": docs[13], "k": 3}).json()["results"]
    assert [h["id"] for h in hits] == expected.ids[0].tolist() and hits[0]["id"] == "p13"
    batch = client.post("/search/batch", json={"texts": [docs[13], docs[27]], "k": 1}).json()["results"]
    assert [r[0]["id"] for r in batch] == ["p13", "p27"]
    r = client.post("/documents", json={"documents": [{"id": "new", "text": docs[50], "metadata": {"i": -1}}]})
    assert r.status_code == 200, r.text
    hits = client.post("/search", json={"text": docs[50], "k": 1, "filter": {"i": {"$lt": 0}}}).json()["results"]
    assert hits[0]["id"] == "new"
    r = client.post("/documents", json={"documents": [{"text": docs[51]}]})
    assert r.status_code == 422 and "string ids" in r.json()["detail"]
    r = client.post("/search", json={"query": [[0.1] * 32], "k": 1})
    assert r.status_code == 200
    # a document's text is stored (unless store_text is false) and searched by BM25, alone or with hybrid: true
    assert Index.open(path).texts(["new", "p0"]) == [docs[50], None]  # stored with the document added above
    r = client.post("/documents", json={"documents": [{"id": "t1", "text": docs[60]}]})
    assert r.status_code == 200, r.text
    embeddings = enc.encode_documents([docs[61]])[0].tolist()
    body = {"documents": [{"id": "t2", "text": docs[61], "embeddings": embeddings}], "store_text": False}
    assert client.post("/documents", json=body).status_code == 200
    assert Index.open(path).texts(["t1", "t2"]) == [docs[60], None]
    word = docs[60].split()[2]
    hits = client.post("/search", json={"text_query": word}).json()["results"]
    assert [h["id"] for h in hits] == ["t1"]
    hits = client.post("/search", json={"text": docs[60], "hybrid": True, "k": 2}).json()["results"]
    assert hits[0]["id"] == "t1"
    batch = client.post("/search/batch", json={"texts": [docs[60], docs[50]], "hybrid": True, "k": 1}).json()
    assert [r[0]["id"] for r in batch["results"]] == ["t1", "new"]


def test_app_refuses_a_model_of_another_dim_and_an_empty_key(text_server, tmp_path):
    from colbert_index.server import create_app

    Index.build(tmp_path / "i64", [np.ones((3, 64), np.float32)], progress=False)
    with pytest.raises(ValueError, match="the model gives 32-dim vectors, the index 64"):
        create_app(tmp_path / "i64", model=text_server[-1])
    with pytest.raises(ValueError, match="api_key must not be empty"):
        create_app(tmp_path / "i64", api_key="")


def test_a_full_disk_is_507_and_the_connection_stays_usable(tmp_path, monkeypatch):
    """A write failing with ENOSPC answers 507 with a JSON detail naming the lack of space (the index stays at its
    last commit), another storage error a JSON 500; searches keep being answered."""
    import errno

    from fastapi.testclient import TestClient

    from colbert_index.server import create_app

    docs = [np.random.default_rng(i).standard_normal((4, 8)).astype(np.float32) for i in range(20)]
    Index.build(tmp_path / "idx", docs, progress=False)
    with TestClient(create_app(tmp_path / "idx")) as client:
        generation = client.get("/health").json()["generation"]

        def full(*_args, **_kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", "manifest.json.tmp")

        monkeypatch.setattr(Index, "add", full)
        r = client.post("/documents", json={"documents": [{"embeddings": docs[0].tolist()}]})
        assert r.status_code == 507 and "no space left" in r.json()["detail"]
        monkeypatch.setattr(Index, "add", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        r = client.post("/documents", json={"documents": [{"embeddings": docs[0].tolist()}]})
        assert r.status_code == 500 and r.json()["detail"].startswith("storage error")
        r = client.post("/search", json={"query": docs[3].tolist(), "k": 1})
        assert r.status_code == 200 and r.json()["results"][0]["id"] == 3
        assert client.get("/health").json()["generation"] == generation
