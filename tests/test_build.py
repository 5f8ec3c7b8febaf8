"""Building and opening: input forms, ids, determinism, bad input, atomicity, sizes."""

from __future__ import annotations

import numpy as np
import pytest

from colbert_index import Index, IndexFormatError
from colbert_index.codec import default_n_centroids


def _unit(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("dim,nbits", [(48, 2), (48, 4), (64, 2), (64, 4), (96, 2), (96, 4), (128, 2), (128, 4)])
def test_build_every_dim_and_nbits(tmp_path, dim, nbits):
    rng = np.random.default_rng(dim + nbits)
    docs = [_unit(rng, int(n), dim) for n in rng.integers(1, 60, size=40)]
    idx = Index.build(tmp_path / "i", docs, nbits=nbits, progress=False)
    assert (idx.dim, idx.nbits, idx.n_docs) == (dim, nbits, 40)
    assert idx._data.residuals.shape == (idx.n_tokens, dim * nbits // 8)
    res = idx.search(docs[5], k=3)
    assert res.ids[0, 0] == 5  # a document is its own best match
    # decompression error is bounded: 4 bits much tighter than 2
    d = idx._data
    dec = d.codec.decompress(np.asarray(d.codes), np.asarray(d.residuals), idx.backend)
    raw = np.concatenate(docs)
    cos = np.sum(dec * raw, axis=1) / np.linalg.norm(dec, axis=1)
    assert cos.mean() > (0.97 if nbits == 4 else 0.85)


def test_input_forms_give_the_same_index(tmp_path, tiny_docs):
    flat = np.concatenate(tiny_docs)
    lengths = [len(d) for d in tiny_docs]
    a = Index.build(tmp_path / "list", tiny_docs, progress=False)
    b = Index.build(tmp_path / "flat", flat, doc_lengths=lengths, progress=False)
    c = Index.build(tmp_path / "batches", iter([tiny_docs[:7], tiny_docs[7:]]), progress=False)
    d = Index.build(tmp_path / "f16", [x.astype(np.float16) for x in tiny_docs], progress=False)
    for other in (b, c):
        np.testing.assert_array_equal(np.asarray(a._data.codes), np.asarray(other._data.codes))
        np.testing.assert_array_equal(np.asarray(a._data.residuals), np.asarray(other._data.residuals))
    assert d.n_tokens == a.n_tokens and d.search(tiny_docs[3], k=1).ids[0, 0] == 3


def test_build_from_memory_mapped_shards(tmp_path, tiny_docs):
    """A list of flat .npy shards opened with mmap_mode="r", with a list of their doc lengths."""
    a = Index.build(tmp_path / "list", tiny_docs, progress=False)
    shards, lengths = [], []
    for i, part in enumerate((tiny_docs[:5], tiny_docs[5:])):
        np.save(tmp_path / f"shard{i}.npy", np.concatenate(part))
        shards.append(np.load(tmp_path / f"shard{i}.npy", mmap_mode="r"))
        lengths.append(np.array([len(d) for d in part]))
    b = Index.build(tmp_path / "shards", shards, doc_lengths=lengths, progress=False)
    np.testing.assert_array_equal(np.asarray(a._data.codes), np.asarray(b._data.codes))
    np.testing.assert_array_equal(np.asarray(a._data.residuals), np.asarray(b._data.residuals))
    with pytest.raises(ValueError, match="2 shards but 1 doc_lengths"):
        Index.build(tmp_path / "bad", shards, doc_lengths=lengths[:1], progress=False)


def test_build_is_deterministic(tmp_path, corpus_2k):
    docs = corpus_2k.documents()[:500]
    a = Index.build(tmp_path / "a", docs, seed=3, progress=False)
    b = Index.build(tmp_path / "b", docs, seed=3, progress=False)

    def files(index):
        return {**index.manifest["codebook"], **index.manifest["segments"][0]["files"]}

    for name in ("centroids", "centroid_scales", "bucket_cutoffs", "bucket_weights", "codes", "residuals", "doclens"):
        assert files(a)[name]["sha256"] == files(b)[name]["sha256"], name
    c = Index.build(tmp_path / "c", docs, seed=4, progress=False)
    assert files(a)["centroids"]["sha256"] != files(c)["centroids"]["sha256"]


def test_string_and_int_ids_round_trip(tmp_path, tiny_docs):
    names = [f"doc-{i}-é" for i in range(len(tiny_docs))]
    s = Index.build(tmp_path / "s", tiny_docs, doc_ids=names, progress=False)
    assert Index.open(tmp_path / "s").search(tiny_docs[4], k=1).ids[0, 0] == "doc-4-é"
    ints = np.arange(len(tiny_docs), dtype=np.int64) * 1000 + 7
    i = Index.build(tmp_path / "i", tiny_docs, doc_ids=ints, progress=False)
    res = i.search([tiny_docs[2], tiny_docs[9]], k=2)
    assert res.ids.dtype == np.int64 and res.ids[0, 0] == 2007 and res.ids[1, 0] == 9007
    assert s.search_exact(tiny_docs[4], k=1).ids[0, 0] == "doc-4-é"


def test_bytes_per_token_within_bound(index_2k_2bit):
    # the DESIGN bound at dim 64, 2 bits: dim/4 + 3 bytes per token, all files included
    assert index_2k_2bit.disk_bytes() / index_2k_2bit.n_tokens <= 64 / 4 + 3


def test_default_centroids_shrink_for_small_corpora():
    assert default_n_centroids(1000, 64, 2) <= 250
    assert default_n_centroids(100, 64, 2) >= 1
    assert default_n_centroids(10**8, 128, 2) == 2**17


@pytest.mark.parametrize(
    "make_docs,match",
    [
        (lambda r: [], "empty corpus"),
        (lambda r: [_unit(r, 3, 64), np.zeros((0, 64), np.float32)], "document 1 is empty"),
        (lambda r: [_unit(r, 3, 64), _unit(r, 3, 32)], "dim 32 differs"),
        (lambda r: [np.full((2, 64), np.nan, np.float32)], "NaN or inf"),
        (lambda r: [np.full((2, 64), np.inf, np.float32)], "NaN or inf"),
        (lambda r: [_unit(r, 3, 62)], "multiple of 8"),
        (lambda r: [np.array(["a", "b"])], "expected a float array"),
        (lambda r: np.zeros((5, 64), np.float32), "needs doc_lengths"),
    ],
)
def test_bad_documents_raise(tmp_path, make_docs, match):
    with pytest.raises(ValueError, match=match):
        Index.build(tmp_path / "bad", make_docs(np.random.default_rng(0)), progress=False)
    assert not (tmp_path / "bad").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind


def test_bad_build_arguments(tmp_path, tiny_docs):
    with pytest.raises(ValueError, match="nbits must be 2 or 4"):
        Index.build(tmp_path / "a", tiny_docs, nbits=3)
    with pytest.raises(ValueError, match="duplicate"):
        Index.build(tmp_path / "a", tiny_docs, doc_ids=[1] * len(tiny_docs))
    with pytest.raises(ValueError, match="entries for"):
        Index.build(tmp_path / "a", tiny_docs, doc_ids=[1, 2])
    with pytest.raises(ValueError, match="n_centroids"):
        Index.build(tmp_path / "a", tiny_docs, n_centroids=10**6)
    with pytest.raises(ValueError, match="sum to"):
        Index.build(tmp_path / "a", np.concatenate(tiny_docs), doc_lengths=[1, 2])
    with pytest.raises(ValueError, match="unknown backend"):
        Index.build(tmp_path / "a", tiny_docs, backend="cuda-magic")


def test_existing_path_needs_overwrite(tmp_path, tiny_docs):
    Index.build(tmp_path / "a", tiny_docs[:5], progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        Index.build(tmp_path / "a", tiny_docs, progress=False)
    Index.build(tmp_path / "a", tiny_docs, overwrite=True, progress=False)
    assert Index.open(tmp_path / "a").n_docs == len(tiny_docs)


def test_failed_rebuild_keeps_the_old_index(tmp_path, tiny_docs, monkeypatch):
    Index.build(tmp_path / "a", tiny_docs[:5], progress=False)
    from colbert_index import build

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(build, "write_manifest", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        Index.build(tmp_path / "a", tiny_docs, overwrite=True, progress=False)
    assert Index.open(tmp_path / "a").n_docs == 5
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


@pytest.mark.parametrize(
    "query,kwargs,match",
    [
        (np.zeros((3, 32), np.float32), {}, "does not match the index dim"),
        (np.full((3, 48), np.nan, np.float32), {}, "NaN or inf"),
        (np.zeros((0, 48), np.float32), {}, "no tokens"),
        (np.zeros((2, 3, 4, 48), np.float32), {}, "expected"),
        (np.zeros((3, 48), np.float32), {"k": 0}, "k must be a positive integer"),
        (np.zeros((3, 48), np.float32), {"k": 2.5}, "k must be a positive integer"),
        (np.zeros((2, 3, 48), np.float32), {"query_lengths": [1, 9]}, "query_lengths"),
    ],
)
def test_bad_queries_raise(tiny_index, query, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_index.search(query, **kwargs)
    with pytest.raises(ValueError, match=match):
        tiny_index.search_exact(query, **kwargs)


def test_bad_search_params(tiny_index, tiny_docs):
    from colbert_index import SearchParams

    for p in (SearchParams(nprobe=0), SearchParams(ndocs=0), SearchParams(centroid_score_threshold=float("nan"))):
        with pytest.raises(ValueError):
            tiny_index.search(tiny_docs[0], params=p)


def test_open_errors(tmp_path):
    with pytest.raises(IndexFormatError, match="no index directory"):
        Index.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="manifest.json: missing"):
        Index.open(tmp_path / "empty")


def test_closed_index_refuses_search(tiny_docs, tmp_path):
    with Index.build(tmp_path / "a", tiny_docs, progress=False) as idx:
        assert "docs=20" in repr(idx)
    with pytest.raises(ValueError, match="closed"):
        idx.search(tiny_docs[0])


def test_build_from_a_generator_streams_through_a_spill_file(tmp_path, tiny_docs):
    consumed = []

    def docs():
        for i, d in enumerate(tiny_docs):
            consumed.append(i)
            yield d

    idx = Index.build(tmp_path / "g", docs(), progress=False)
    assert consumed == list(range(len(tiny_docs)))  # read once, in order
    assert idx.n_docs == len(tiny_docs)
    assert not any(p.suffix == ".f16" for p in (tmp_path / "g").iterdir())  # spill removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]
    assert idx.search(tiny_docs[7], k=1).ids[0, 0] == 7


def test_float16_overflow_is_refused(tmp_path):
    with pytest.raises(ValueError, match="float16 range"):
        Index.build(tmp_path / "x", [np.full((3, 48), 1e6, np.float32)], progress=False)


def test_large_k_assignment_path(tmp_path, corpus_2k, monkeypatch):
    """Above FLAT_ASSIGN_MAX_K, k-means runs in two levels and compression assigns through coarse cells over the
    centroids (ASSIGN_NPROBE probed); the fraction of tokens that miss their exact nearest centroid stays small."""
    from colbert_index import codec

    monkeypatch.setattr(codec, "FLAT_ASSIGN_MAX_K", 64)
    docs = corpus_2k.documents()
    idx = Index.build(tmp_path / "big-k", docs, n_centroids=4096, progress=False)  # 64 coarse cells
    agree, extra = idx._data.codec.assignment_agreement(np.concatenate(docs[:300]))
    assert 0.9 <= agree < 1.0 and 0 < extra < 0.05
    q = corpus_2k.queries[:10]
    from colbert_index.metrics import recall_at

    assert recall_at(idx.search(q, k=10).ids, idx.search_exact(q, k=10).ids, 10) >= 0.9
