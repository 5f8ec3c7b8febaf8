"""Index-time token pooling: the Ward clustering kernel against its reference (and scipy's where installed),
pool_tokens, and Index.build / add / the CLI / the Encoder with pool_factor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from colbert_index.kernels import numba_pool, reference

from colbert_index import Index, IndexFormatError
from colbert_index import pooling as pooling_module
from colbert_index.backend import get_backend
from colbert_index.cli import main
from colbert_index.metrics import recall_at
from colbert_index.pooling import pool_tokens
from colbert_index.storage.manifest import seal


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("dim", (48, 64, 128))
def test_ward_kernel_matches_reference(dim):
    rng = np.random.default_rng(dim)
    for n in (1, 2, 3, 17, 41, 90):
        x = _unit(rng.standard_normal((n, dim)))
        for t in sorted({1, max(1, n // 3), max(1, n // 2), n, n + 5}):
            want = reference.ward_clusters(x, t)
            got = numba_pool.ward_clusters(x, t)
            assert got.dtype == np.int64 and len(got) == n
            np.testing.assert_array_equal(got, want)
            assert got.max() + 1 == min(n, t) and got[0] == 0  # numbered by first row


def test_ward_kernel_matches_scipy():
    hierarchy = pytest.importorskip("scipy.cluster.hierarchy")
    rng = np.random.default_rng(3)
    for _ in range(40):
        n, t = int(rng.integers(2, 70)), int(rng.integers(1, 70))
        x = rng.standard_normal((n, 24)).astype(np.float32)
        flat = hierarchy.fcluster(hierarchy.linkage(x.astype(np.float64), method="ward"), t=t, criterion="maxclust")
        _, first = np.unique(flat, return_index=True)  # scipy's labels renumbered by first row
        renumber = {flat[f]: i for i, f in enumerate(sorted(first))}
        np.testing.assert_array_equal(numba_pool.ward_clusters(x, t), [renumber[v] for v in flat])


def test_ward_kernel_groups_obvious_clusters():
    rng = np.random.default_rng(4)
    centers = _unit(rng.standard_normal((3, 32)))
    x = np.concatenate([c + 0.01 * rng.standard_normal((5, 32)) for c in centers]).astype(np.float32)
    labels = numba_pool.ward_clusters(x[rng.permutation(15)], 3)
    assert sorted(np.bincount(labels).tolist()) == [5, 5, 5]


def test_pool_tokens_keeps_the_first_token_and_means_of_clusters():
    rng = np.random.default_rng(5)
    doc = _unit(rng.standard_normal((41, 64)))
    be = get_backend()
    out = pool_tokens(doc, 2, be)
    assert out.dtype == np.float32 and out.shape == (1 + 40 // 2, 64)
    np.testing.assert_array_equal(out[0], doc[0])  # protected, as PyLate keeps [CLS]
    labels = reference.ward_clusters(doc[1:], 20)
    for c in range(20):
        mean = doc[1:][labels == c].mean(axis=0)
        np.testing.assert_allclose(out[1 + c], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert pool_tokens(doc, 1, be) is not None and np.array_equal(pool_tokens(doc, 1, be), doc)
    assert pool_tokens(doc[:2], 3, be).shape == (2, 64)  # nothing to pool beside the protected token


def test_pool_tokens_leaves_non_unit_vectors_unnormalised_and_chunks_long_documents(monkeypatch):
    rng = np.random.default_rng(6)
    doc = (3 * rng.standard_normal((25, 16))).astype(np.float32)
    out = pool_tokens(doc, 4, get_backend())
    labels = reference.ward_clusters(doc[1:], 6)
    np.testing.assert_allclose(out[1:], [doc[1:][labels == c].mean(axis=0) for c in range(6)], rtol=1e-5)
    monkeypatch.setattr(pooling_module, "CHUNK_TOKENS", 10)  # 24 pooled tokens: chunks of 10, 10, 4
    assert pool_tokens(doc, 2, get_backend()).shape == (1 + 5 + 5 + 2, 16)


@pytest.mark.parametrize("bad", (0, -1, 1.5, "2", True))
def test_bad_pool_factor_is_refused(tmp_path, tiny_docs, bad):
    with pytest.raises(ValueError, match="pool_factor"):
        Index.build(tmp_path / "i", tiny_docs, pool_factor=bad, progress=False)


def test_build_and_add_with_pooling(tmp_path, corpus_2k):
    docs, queries = corpus_2k.documents()[:600], corpus_2k.queries[:20]
    full = Index.build(tmp_path / "full", docs, progress=False)
    pooled = Index.build(tmp_path / "pooled", docs, pool_factor=2, progress=False)
    assert pooled.manifest["pool_factor"] == 2 and pooled.segment_info()[0]["pool_factor"] == 2
    assert 0.45 < pooled.n_tokens / full.n_tokens < 0.55
    assert pooled.disk_bytes() < 0.6 * full.disk_bytes()
    exact = full.search_exact(queries, k=10).ids
    assert recall_at(pooled.search(queries, k=10).ids, exact, 10) >= 0.8
    info = pooled.add(docs[:4], doc_ids=[10_001, 10_002, 10_003, 10_004])  # the index's factor by default
    assert info.tokens_added < 0.6 * sum(len(d) for d in docs[:4])
    pooled.add(docs[4:6], doc_ids=[10_005, 10_006], pool_factor=1)
    assert [s["pool_factor"] for s in pooled.segment_info()] == [2, 2, 1]
    reopened = Index.open(tmp_path / "pooled")
    assert reopened.n_tokens == pooled.n_tokens
    assert reopened.reconstruct(10_005).shape == docs[4].shape  # added unpooled


def test_a_corrupted_pool_factor_is_a_format_error(tmp_path, tiny_docs):
    Index.build(tmp_path / "i", tiny_docs, pool_factor=2, progress=False)
    mpath = tmp_path / "i" / "manifest.json"
    m = json.loads(mpath.read_text())
    m["pool_factor"] = "two"
    mpath.write_text(json.dumps(seal(m)))
    with pytest.raises(IndexFormatError, match="pool_factor"):
        Index.open(tmp_path / "i")


def test_cli_build_and_info_with_pool_factor(tmp_path, capsys):
    rng = np.random.default_rng(7)
    lengths = rng.integers(5, 40, size=60)
    np.save(tmp_path / "X.npy", _unit(rng.standard_normal((int(lengths.sum()), 32))))
    np.save(tmp_path / "L.npy", lengths)
    index = str(tmp_path / "idx")
    args = ["build", index, "--embeddings", str(tmp_path / "X.npy"), "--doclens", str(tmp_path / "L.npy")]
    assert main([*args, "--pool-factor", "3"]) == 0
    assert main(["info", index, "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("bytes/token\n", 1)[1])
    assert info["pool_factor"] == 3 and info["segments"][0]["pool_factor"] == 3
    assert info["tokens"] < int(lengths.sum()) / 2.5


def test_encoder_pools_like_the_index(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from colbert_index import Encoder
    from colbert_index.encoder.fixtures import topic_texts, write_pylate_checkpoint

    enc = Encoder.from_pretrained(write_pylate_checkpoint(tmp_path / "ckpt"))
    texts = topic_texts()[0][:6]
    full = enc.encode_documents(texts, progress=False)
    pooled = enc.encode_documents(texts, progress=False, pool_factor=2)
    be = get_backend()
    for f, p in zip(full, pooled):
        np.testing.assert_allclose(p, pool_tokens(f, 2, be), rtol=1e-6, atol=1e-6)
        assert len(p) == 1 + (len(f) - 1) // 2
