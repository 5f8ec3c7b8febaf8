"""Building on a torch device (colbert_index.gpu.build) against the CPU build: the compressor against the
codec's reference compression, k-means against faiss's, a whole torch build against exact search. On CPU
tensors here; the same on a GPU where there is one (``@pytest.mark.gpu``). Also the synthetic stream's
parallel generator, which feeds the GPU benchmark's builds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from colbert_index.kernels import reference

from colbert_index import Index
from colbert_index.codec import ResidualCodec
from colbert_index.datasets.synthetic import SyntheticStream, make_corpus
from colbert_index.drift import outside_count
from colbert_index.gpu.build import DeviceCompressor, build_device, kmeans

HAS_CUDA = torch.cuda.is_available()
DEVICES = ("cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="no GPU")]))


@pytest.fixture(autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _objective(x: np.ndarray, centroids: np.ndarray) -> float:
    """Mean inner product of each point with its nearest centroid (what spherical k-means maximises)."""
    return float((x @ centroids.T).max(axis=1).mean())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nbits", (2, 4))
@pytest.mark.parametrize("dim", (48, 64, 128))
def test_compressor_matches_the_reference_compression(dim, nbits, device):
    c = make_corpus(150, dim=dim, n_queries=0, seed=dim + nbits)
    x = c.embeddings
    codec = ResidualCodec.train(x[::3], x[1::5], 64, nbits, seed=1)
    codes, packed, outside = DeviceCompressor(codec, torch.device(device))(x.astype(np.float16))
    x16 = x.astype(np.float16).astype(np.float32)  # what the build reads back from its float16 spill
    scores = x16 @ codec.centroids.T
    want_codes = scores.argmax(axis=1)
    ties = scores[np.arange(len(x16)), codes] >= scores[np.arange(len(x16)), want_codes] - 1e-5
    assert codes.dtype == codec.code_dtype and ties.all()
    same = codes == want_codes
    assert same.mean() > 0.999
    want_packed = reference.compress_residuals(x16 - codec.centroids[codes], codec.cutoffs, nbits)
    np.testing.assert_array_equal(packed, want_packed)
    assert outside == outside_count(x16, codes.astype(np.int64), codec)


def test_kmeans_matches_faiss_objective_and_is_deterministic():
    x = make_corpus(400, dim=64, n_queries=0, seed=5).embeddings[:20000]
    ours = kmeans(x, 128, 4, 0, torch.device("cpu"))
    again = kmeans(x, 128, 4, 0, torch.device("cpu"))
    np.testing.assert_array_equal(ours, again)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    faiss_codec = ResidualCodec.train(x, x[:1000], 128, 2, kmeans_iters=4, seed=0)
    assert _objective(x, ours) >= 0.99 * _objective(x, faiss_codec.centroids)


def test_kmeans_restarts_empty_clusters():
    rng = np.random.default_rng(0)
    points = rng.standard_normal((5, 16)).astype(np.float32)
    x = np.repeat(points / np.linalg.norm(points, axis=1, keepdims=True), 20, axis=0)  # 5 distinct points
    centroids = kmeans(x, 12, 3, 0, torch.device("cpu"))
    assert np.isfinite(centroids).all()
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    assert _objective(x, centroids) > 0.999  # every point sits on a centroid


@pytest.mark.parametrize("device", DEVICES)
def test_torch_build_searches_like_exact(corpus_2k, index_2k_2bit, tmp_path, device):
    backend = "torch" if device == "cpu" else "auto"
    idx = Index.build(tmp_path / "t", corpus_2k.documents(), nbits=2, progress=False, device=device, backend=backend)
    assert idx.manifest["build"]["device"].endswith("(torch)")
    assert idx.n_centroids == index_2k_2bit.n_centroids and idx.n_tokens == index_2k_2bit.n_tokens
    Index.open(idx.path, verify=True).close()
    Q = corpus_2k.queries
    got, exact = idx.search(Q, k=10).ids, idx.search_exact(Q, k=10).ids
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    cpu = index_2k_2bit.search(Q, k=10).ids
    cpu_recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(cpu, index_2k_2bit.search_exact(Q, k=10).ids)])
    assert recall >= min(0.97, cpu_recall - 0.02), (recall, cpu_recall)
    # the codec is as good as faiss's: residual norms of the stored tokens within 2%
    tok = corpus_2k.embeddings[:50000]
    assert idx.drift()["outside"] <= index_2k_2bit.drift()["outside"] * 1.05 + 1e-3
    norms = [np.linalg.norm(tok - i.codec.decompress(*i.codec.compress(tok, i.backend), i.backend), axis=1).mean()
             for i in (idx, index_2k_2bit)]  # fmt: skip
    assert norms[0] <= norms[1] * 1.02, norms
    idx.close()


def test_build_device_errors(monkeypatch):
    assert build_device("cpu", "auto") is None and build_device("cpu", "numba") is None
    assert build_device("cpu", "torch") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        build_device("tpu", "auto")
    with pytest.raises(TypeError, match="device must be a string"):
        build_device(0, "auto")
    if not HAS_CUDA:
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            build_device("cuda", "auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="builds on the CPU"):
        build_device("cuda", "numba")


def test_build_on_missing_cuda_writes_nothing(tiny_docs, tmp_path):
    if HAS_CUDA:
        pytest.skip("checks the error raised without CUDA")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        Index.build(tmp_path / "x", tiny_docs, device="cuda", progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("workers", (1, 2))
def test_stream_batches_are_the_documents_in_order(workers):
    s = SyntheticStream(700, 32, 0, mean_doc_len=30, seed=3)
    got = [d for batch in s.batches(batch_docs=64, workers=workers) for d in batch]
    assert len(got) == s.n_docs
    for d, doc in enumerate(got):
        assert doc.dtype == np.float16 and doc.shape == (s.doclens[d], 32)
        np.testing.assert_array_equal(doc, s.document(d).astype(np.float16))


def test_stream_batches_stop_early():
    s = SyntheticStream(500, 16, 0, mean_doc_len=20)
    batches = s.batches(batch_docs=10, workers=2)
    first = next(batches)
    batches.close()  # the worker pool is torn down, nothing hangs
    assert len(first) == 10
