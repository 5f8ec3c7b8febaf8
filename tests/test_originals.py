"""The full-precision rerank tier (``keep_originals=True``): the stored float16 vectors, the rerank on them against
raw exact MaxSim, and every write, filter and device path with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from colbert_index.kernels.reference import maxsim

from colbert_index import Index, SearchParams
from colbert_index.datasets.synthetic import make_corpus
from colbert_index.storage.manifest import seal

EVERYTHING = SearchParams(nprobe=1 << 20, centroid_score_threshold=-1e9, ndocs=1 << 20, rerank=1 << 20)


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(600, dim=64, n_queries=12, seed=3)


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    """The corpus with and without the vectors kept (same seed: the same codebook)."""
    root = tmp_path_factory.mktemp("orig")
    docs = corpus.documents()
    with_ = Index.build(root / "with", docs, keep_originals=True, progress=False)
    without = Index.build(root / "without", docs, progress=False)
    return with_, without


def _raw_top(queries, docs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact MaxSim over the documents as stored: their float16 values, summed in float32."""
    stored = [d.astype(np.float16).astype(np.float32) for d in docs]
    scores = np.stack([maxsim(q, stored) for q in queries])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g.tolist()) & set(w.tolist())) / len(w) for g, w in zip(got, want)]))


def test_the_build_keeps_every_token_as_float16(corpus, built):
    index = built[0]
    seg = index.manifest["segments"][0]
    entry = seg["files"]["originals"]
    stored = np.load(index.path / entry["path"])
    assert stored.dtype == np.float16 and stored.shape == (seg["n_tokens"], 64)
    assert np.array_equal(stored, np.concatenate(corpus.documents()).astype(np.float16))
    assert index.manifest["keep_originals"] is True and built[1].manifest["keep_originals"] is False
    assert index.disk_bytes() - built[1].disk_bytes() == pytest.approx(entry["bytes"], abs=1024)  # + its manifest entry
    assert [s["originals"] for s in index.segment_info()] == [True]
    assert not any(p.name.startswith("spill") for p in (index.path / "seg-000000").iterdir())


def test_search_with_the_rerank_finds_raw_exact_maxsim(corpus, built):
    index, without = built
    queries = list(corpus.queries)
    want, want_scores = _raw_top(queries, corpus.documents(), 10)
    exact = index.search_exact(queries, k=10)  # brute force over the stored vectors
    assert np.array_equal(exact.ids, want)
    np.testing.assert_allclose(exact.scores, want_scores, rtol=1e-5, atol=1e-4)
    everything = index.search(queries, k=10, params=EVERYTHING)  # every document reaches the rerank
    assert np.array_equal(everything.ids, want)
    np.testing.assert_allclose(everything.scores, want_scores, rtol=1e-5, atol=1e-4)
    default = index.search(queries, k=10)
    assert _recall(default.ids, want) >= _recall(without.search(queries, k=10).ids, want)
    assert _recall(default.ids, want) >= 0.95
    more = [_recall(index.search(queries, k=10, params=SearchParams(rerank=r)).ids, want) for r in (10, 40, 200)]
    assert more == sorted(more)  # never fewer of the raw top 10 as more candidates reach the rerank


def test_rerank_zero_is_the_search_without_the_vectors(corpus, built):
    index, without = built
    queries = list(corpus.queries)
    off = index.search(queries, k=10, params=SearchParams(rerank=0))
    plain = without.search(queries, k=10)
    assert np.array_equal(off.ids, plain.ids) and np.array_equal(off.scores, plain.scores)
    decompressed = index.search_exact(queries, k=10, originals=False)
    assert np.array_equal(decompressed.ids, without.search_exact(queries, k=10).ids)
    with pytest.raises(ValueError, match="keeps no vectors"):
        without.search_exact(queries, k=10, originals=True)
    with pytest.raises(ValueError, match="rerank must be >= 0"):
        index.search(queries, k=10, params=SearchParams(rerank=-1))
    assert without.search(queries, k=5, params=SearchParams(rerank=50)).ids.shape == (len(queries), 5)  # ignored


@pytest.mark.parametrize("backend", ("numpy", "numba"))
def test_backends_agree_and_mmap_false_reads_the_vectors_from_the_file(corpus, built, backend):
    path = built[0].path
    queries = list(corpus.queries)[:4]
    want = built[0].search(queries, k=5)
    with Index.open(path, backend=backend, mmap=False) as index:
        got = index.search(queries, k=5)
    assert np.array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-4)


def test_filters_rerank_on_the_vectors(corpus, tmp_path):
    docs = corpus.documents()
    meta = [{"even": i % 2 == 0} for i in range(len(docs))]
    index = Index.build(tmp_path / "f", docs, metadata=meta, keep_originals=True, progress=False)
    queries = list(corpus.queries)[:6]
    for flt in ({"even": True}, [3, 5, 8, 13, 21]):  # a wide filter (staged search), a few ids (exact)
        allowed = [i for i in range(len(docs)) if (meta[i]["even"] if isinstance(flt, dict) else i in flt)]
        order, _ = _raw_top(queries, [docs[i] for i in allowed], 5)
        want = np.asarray(allowed)[order]
        assert np.array_equal(index.search_exact(queries, k=5, filter=flt).ids, want)
        assert np.array_equal(index.search(queries, k=5, filter=flt, params=EVERYTHING).ids, want)


def test_pooled_documents_keep_their_pooled_vectors(corpus, tmp_path):
    docs = corpus.documents()[:80]
    index = Index.build(tmp_path / "p", docs, pool_factor=2, keep_originals=True, progress=False)
    seg = index.manifest["segments"][0]
    stored = np.load(index.path / seg["files"]["originals"]["path"])
    assert stored.shape == (seg["n_tokens"], 64) and seg["n_tokens"] < sum(len(d) for d in docs)
    offsets = np.concatenate([[0], np.cumsum(np.load(index.path / seg["files"]["doclens"]["path"]))])
    one = stored[offsets[7] : offsets[8]].astype(np.float32)
    q = list(corpus.queries)[0]
    got = index.search_exact(q, k=80)
    assert got.scores[0][got.ids[0].tolist().index(7)] == pytest.approx(maxsim(q, [one])[0], rel=1e-5)


def _fresh(corpus, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for d in rng.choice(len(corpus.documents()), n, replace=False):
        x = corpus.documents()[d] + 0.05 * rng.standard_normal(corpus.documents()[d].shape).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def test_live_writes_keep_the_vectors_of_the_live_documents(corpus, tmp_path):
    docs = corpus.documents()[:300]
    index = Index.build(tmp_path / "live", docs, keep_originals=True, progress=False)
    live = dict(enumerate(docs))
    added = _fresh(corpus, 20, 1)
    index.add(added, doc_ids=list(range(1000, 1020)))
    live.update(zip(range(1000, 1020), added))
    index.delete(list(range(0, 60, 3)))
    for i in range(0, 60, 3):
        del live[i]
    replaced = _fresh(corpus, 2, 2)
    index.upsert(replaced, [5, 1001])
    live.update({5: replaced[0], 1001: replaced[1]})
    assert all(s["originals"] for s in index.segment_info()) and len(index.segment_info()) == 3

    def check():
        ids = np.asarray(sorted(live))
        queries = list(corpus.queries)[:5]
        order, scores = _raw_top(queries, [live[i] for i in ids], 10)
        exact = index.search_exact(queries, k=10)
        assert np.array_equal(exact.ids, ids[order])
        np.testing.assert_allclose(exact.scores, scores, rtol=1e-5, atol=1e-4)
        assert np.array_equal(index.search(queries, k=10, params=EVERYTHING).ids, ids[order])

    check()
    index.compact()  # the live rows copied
    assert [s["originals"] for s in index.segment_info()] == [True]
    check()
    index.compact(retrain=True)  # re-encoded from the vectors, which stay as they are
    assert [s["originals"] for s in index.segment_info()] == [True]
    check()
    Index.open(index.path, verify=True)


def test_retraining_from_the_vectors_equals_a_rebuild(corpus, tmp_path):
    """compact(retrain=True) learns from the kept vectors: the same codebook and codes as a build of the live
    documents from their embeddings (without the vectors it learns from decompressed tokens, which differ)."""
    docs = corpus.documents()[:200]
    index = Index.build(tmp_path / "r", docs, keep_originals=True, progress=False)
    index.delete(list(range(0, 200, 4)))
    index.compact(retrain=True)
    live = [docs[i] for i in range(200) if i % 4]
    rebuilt = Index.build(tmp_path / "b", live, progress=False)
    assert index.n_centroids == rebuilt.n_centroids
    np.testing.assert_array_equal(index.codec.centroids, rebuilt.codec.centroids)
    assert np.array_equal(index.reconstruct(1), rebuilt.reconstruct(0))


def test_adds_follow_the_builds_choice(corpus, built, tmp_path):
    without = Index.build(tmp_path / "no", corpus.documents()[:50], progress=False)
    with pytest.raises(ValueError, match="built with keep_originals=False"):
        without.add(_fresh(corpus, 2, 3), keep_originals=True)
    with pytest.raises(ValueError, match="built with keep_originals=True"):
        built[0].add(_fresh(corpus, 2, 3), keep_originals=False)
    with pytest.raises(TypeError, match="keep_originals must be True or False"):
        Index.build(tmp_path / "bad", corpus.documents()[:5], keep_originals="yes", progress=False)
    assert (
        without.generation == 0
        and sorted(p.name for p in without.path.iterdir() if p.name.startswith("seg"))[-1] == "seg-000000"
    )  # nothing written
    without.add(_fresh(corpus, 2, 3), keep_originals=False)  # the index's own choice, said aloud


def test_a_segment_without_vectors_is_reranked_decompressed(corpus, tmp_path):
    """A segment an older version added has no vectors: its candidates take stage 4, the others the rerank, and
    a compaction keeps the vectors only if every segment has them."""
    docs = corpus.documents()
    index = Index.build(tmp_path / "mixed", docs[:300], keep_originals=True, progress=False)
    index.add(docs[300:400], doc_ids=list(range(300, 400)))
    m = json.loads((index.path / "manifest.json").read_text())
    del m["segments"][1]["files"]["originals"]  # as an older writer leaves it
    (index.path / "manifest.json").write_text(json.dumps(seal(m)))
    index = Index.open(index.path)
    assert [s["originals"] for s in index.segment_info()] == [True, False]
    queries = list(corpus.queries)[:5]
    exact = index.search_exact(queries, k=10)
    assert np.array_equal(index.search(queries, k=10, params=EVERYTHING).ids, exact.ids)
    for q, ids, scores in zip(queries, exact.ids, exact.scores):
        old = np.asarray([i >= 300 for i in ids])  # segment 1's: decompressed scores
        if old.any():
            decompressed = index.search_exact(q, k=10, filter=ids[old].tolist(), originals=False)
            np.testing.assert_allclose(scores[old], decompressed.scores[0], rtol=1e-6)
    index.compact()
    assert [s["originals"] for s in index.segment_info()] == [False]


def test_the_device_pipeline_reranks_on_the_host(corpus, built):
    pytest.importorskip("torch")
    index = built[0]
    queries = list(corpus.queries)[:6]
    with Index.open(index.path, device="cpu", backend="torch") as on_device:
        got = on_device.search(queries, k=10, params=EVERYTHING)
        default = on_device.search(queries, k=10)
    want = index.search(queries, k=10, params=EVERYTHING)
    assert np.array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-4)
    assert _recall(default.ids, index.search(queries, k=10).ids) >= 0.9  # float sums in another order


def test_info_reports_the_vectors(built, capsys):
    from colbert_index.cli import main

    assert main(["info", str(built[0].path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["keep_originals"] is True and info["originals_bytes"] > 0
    assert info["segments"][0]["originals"] is True and info["segments"][0]["originals_bytes"] > 0
    assert main(["info", str(built[0].path)]) == 0
    assert "originals   kept" in capsys.readouterr().out
    assert main(["info", str(built[1].path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["keep_originals"] is False


def test_a_format_1_index_keeps_no_vectors_and_adds_follow(tmp_path, corpus):
    """An index written before kept vectors existed (format 1 here) opens without them, and its adds follow."""
    import shutil
    from pathlib import Path

    shutil.copytree(Path(__file__).parent / "data" / "v1_str", tmp_path / "v1")
    index = Index.open(tmp_path / "v1")
    assert "keep_originals" not in index.manifest and not index.segment_info()[0]["originals"]
    rng = np.random.default_rng(0)
    doc = rng.standard_normal((5, index.dim)).astype(np.float32)
    with pytest.raises(ValueError, match="built with keep_originals=False"):
        index.add([doc], ["new"], keep_originals=True)
    index.add([doc], ["new"])
    assert [s["originals"] for s in index.segment_info()] == [False, False]
    assert index.search(doc, k=1).ids[0].tolist() == ["new"]
