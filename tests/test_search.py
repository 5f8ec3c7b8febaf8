"""End-to-end search quality: the staged search against exact MaxSim."""

from __future__ import annotations

import numpy as np
import pytest

from colbert_index import Index, SearchParams, maxsim
from colbert_index.backend import get_backend
from colbert_index.metrics import found_at, recall_at
from colbert_index.search import AGREE_CELLS, brute_force


@pytest.fixture(scope="module")
def raw_top100(corpus_2k):
    best = brute_force(
        list(corpus_2k.queries),
        corpus_2k.offsets,
        lambda lo, hi: corpus_2k.embeddings[lo:hi],
        100,
        get_backend("numba"),
    )
    return np.stack([slots for _, slots in best])


def test_brute_force_matches_plain_maxsim(corpus_2k, raw_top100):
    docs = corpus_2k.documents()
    for qi in (0, len(corpus_2k.queries) - 1):  # first and last block of columns in the one product
        scores = maxsim(corpus_2k.queries[qi], docs)
        expected = np.lexsort((np.arange(len(docs)), -scores))[:100]
        np.testing.assert_array_equal(raw_top100[qi], expected)


def test_brute_force_small_chunks_agree(corpus_2k, raw_top100):
    """Chunks of ~1k tokens (many chunks, each merged) find the same top-100 as the default chunking."""
    queries = list(corpus_2k.queries)
    be = get_backend("numba")
    best = brute_force(queries, corpus_2k.offsets, lambda lo, hi: corpus_2k.embeddings[lo:hi], 100, be, 1)
    np.testing.assert_array_equal(np.stack([slots for _, slots in best]), raw_top100)
    assert brute_force([], corpus_2k.offsets, lambda lo, hi: corpus_2k.embeddings[lo:hi], 100, be) == []


def test_search_exact_matches_reference_maxsim_on_decompressed(index_2k_2bit, corpus_2k):
    idx = index_2k_2bit
    d = idx._data
    dec = d.codec.decompress(np.asarray(d.codes), np.asarray(d.residuals), get_backend("numpy"))
    docs = [dec[d.offsets[i] : d.offsets[i + 1]] for i in range(idx.n_docs)]
    res = idx.search_exact(corpus_2k.queries[:3], k=5)
    for qi in range(3):
        s = maxsim(corpus_2k.queries[qi], docs)
        order = np.lexsort((np.arange(len(s)), -s))[:5]
        np.testing.assert_array_equal(res.ids[qi], order)
        np.testing.assert_allclose(res.scores[qi], s[order], rtol=1e-5, atol=1e-4)


def test_recall_vs_exact_at_defaults_2bit(index_2k_2bit, corpus_2k):
    res = index_2k_2bit.search(corpus_2k.queries, k=10)
    exact = index_2k_2bit.search_exact(corpus_2k.queries, k=10)
    assert res.ids.shape == (len(corpus_2k.queries), 10)
    assert recall_at(res.ids, exact.ids, 10) >= 0.9
    # scores are exact MaxSim on the decompressed docs, best first
    assert (np.diff(res.scores, axis=1) <= 0).all()


def test_4bit_is_closer_to_raw_exact_than_2bit(index_2k_2bit, index_2k_4bit, corpus_2k, raw_top100):
    r2 = recall_at(index_2k_2bit.search(corpus_2k.queries, k=10).ids, raw_top100, 10)
    r4 = recall_at(index_2k_4bit.search(corpus_2k.queries, k=10).ids, raw_top100, 10)
    assert r4 > r2
    assert r4 >= 0.9
    assert r2 >= 0.8


def test_source_doc_is_found(index_2k_2bit, corpus_2k):
    """Each query is made from one document; exact search ranks it top-10, so must a wide search.

    At PLAID's defaults the centroid-only stage 2 can drop it for some queries (its distinctive tokens
    sit far from their centroids); ``ndocs=1024`` keeps enough candidates to keep it.
    """

    t = corpus_2k.targets
    assert found_at(index_2k_2bit.search_exact(corpus_2k.queries, k=10).ids, t) >= 0.95
    assert found_at(index_2k_2bit.search(corpus_2k.queries, k=10, params=SearchParams(ndocs=1024)).ids, t) >= 0.95
    assert found_at(index_2k_2bit.search(corpus_2k.queries, k=10).ids, t) >= 0.75


def test_recall_never_drops_as_search_widens(index_2k_2bit, corpus_2k):
    exact = index_2k_2bit.search_exact(corpus_2k.queries, k=10).ids
    recalls = []
    for p in (SearchParams(nprobe=1, ndocs=64), SearchParams(nprobe=2, ndocs=256), SearchParams(nprobe=8, ndocs=4096)):
        recalls.append(recall_at(index_2k_2bit.search(corpus_2k.queries, k=10, params=p).ids, exact, 10))
    assert recalls == sorted(recalls)
    assert recalls[-1] >= 0.99


def test_numpy_and_numba_backends_agree(index_2k_2bit, corpus_2k):
    from colbert_index import Index

    ref = Index.open(index_2k_2bit.path, backend="numpy")
    q = corpus_2k.queries[:3]
    a, b = index_2k_2bit.search(q, k=10), ref.search(q, k=10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-4)


def test_numba_float_stage_0_as_on_cpus_without_vnni(index_2k_2bit, corpus_2k, monkeypatch):
    """Where the CPU has no VNNI the backend has no fused int8 pass: float scores, probe_cells and stage 2's own
    table. Forced here, it finds what the numpy backend finds and what exact search ranks first."""
    from colbert_index import Index

    monkeypatch.setattr(index_2k_2bit.backend, "query_tables_int8", None)
    q = corpus_2k.queries[:3]
    a, b = index_2k_2bit.search(q, k=10), Index.open(index_2k_2bit.path, backend="numpy").search(q, k=10)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-4)
    res = index_2k_2bit.search(corpus_2k.queries, k=10)
    assert recall_at(res.ids, index_2k_2bit.search_exact(corpus_2k.queries, k=10).ids, 10) >= 0.9


def test_variable_length_queries(index_2k_2bit, corpus_2k):
    Q = corpus_2k.queries[:3]
    lengths = np.array([32, 9, 1])
    padded = Q.copy()
    padded[1, 9:] = 123.0  # padding must be ignored
    padded[2, 1:] = -5.0
    res = index_2k_2bit.search(padded, k=5, query_lengths=lengths)
    listed = index_2k_2bit.search([Q[0], Q[1, :9], Q[2, :1]], k=5)
    masked = index_2k_2bit.search(padded, k=5, query_lengths=np.arange(32)[None, :] < lengths[:, None])
    np.testing.assert_array_equal(res.ids, listed.ids)
    np.testing.assert_array_equal(res.ids, masked.ids)
    np.testing.assert_allclose(res.scores, listed.scores)


def test_fewer_docs_than_k_returns_all(tiny_index, tiny_docs):
    res = tiny_index.search(tiny_docs[0][:3], k=50)
    assert res.ids.shape == (1, len(tiny_docs))
    assert sorted(res.ids[0].tolist()) == list(range(len(tiny_docs)))
    exact = tiny_index.search_exact(tiny_docs[0][:3], k=50)
    np.testing.assert_array_equal(res.ids, exact.ids)


def test_params_do_not_leak_between_calls(index_2k_2bit, corpus_2k):
    q = corpus_2k.queries[0]
    first = index_2k_2bit.search(q, k=10)
    index_2k_2bit.search(q, k=500, params=SearchParams(nprobe=4))
    again = index_2k_2bit.search(q, k=10)
    np.testing.assert_array_equal(first.ids, again.ids)


def test_search_params_defaults_follow_plaid_table():
    assert SearchParams.defaults(10) == SearchParams(1, 0.5, 256)
    assert SearchParams.defaults(100) == SearchParams(2, 0.45, 1024)
    assert SearchParams.defaults(1000) == SearchParams(4, 0.4, 4096)
    assert SearchParams(ndocs=64).resolved(10) == SearchParams(1, 0.5, 64, agree_cells=0)
    assert SearchParams().resolved(10) == SearchParams(1, 0.5, None, agree_cells=0)  # sized per index at search time


def test_default_ndocs_grows_with_the_square_root_of_the_corpus():
    assert SearchParams.default_ndocs(10, 2_000) == SearchParams.default_ndocs(10, 62_500) == 256
    assert SearchParams.default_ndocs(10, 500_000) == 736
    assert SearchParams.default_ndocs(10, 1_000_000) == 1536  # 1024, 1.5x beyond 500,000 documents
    assert SearchParams.default_ndocs(100, 1_000_000) == 4096
    assert 256 < SearchParams.default_ndocs(10, 100_000) < 1024


def test_default_probe_agrees_beyond_62500_documents_for_small_k():
    assert SearchParams.default_nprobe(10, 1_000_000) == 1 and SearchParams.default_nprobe(100, 1_000_000) == 2
    assert SearchParams.default_agree_cells(10, 62_500) == 0
    assert SearchParams.default_agree_cells(10, 62_501) == AGREE_CELLS
    assert SearchParams.default_agree_cells(100, 1_000_000) == 0  # larger k keep PLAID's stage 1
    assert SearchParams().resolved(10, 1_000_000) == SearchParams(1, 0.5, None, agree_cells=AGREE_CELLS)
    assert SearchParams(agree_cells=0).resolved(10, 1_000_000).agree_cells == 0  # a set value is kept
    with pytest.raises(ValueError, match="agree_cells"):
        SearchParams(agree_cells=-1).resolved(10)


@pytest.mark.parametrize("agree_cells", (2, 8))
def test_agreement_probe_adds_candidates_and_keeps_search_exact(index_2k_2bit, corpus_2k, agree_cells):
    """Stage 1 with agreement finds more candidates than the plain probe (a superset: the kernel tests), explain
    reports the cells it used, and the search finds at least as much of search_exact's top 10."""
    queries = corpus_2k.queries[:8]
    plain = index_2k_2bit.search(queries, k=10, params=SearchParams(ndocs=4096, agree_cells=0), explain=True)
    agreed = index_2k_2bit.search(queries, k=10, params=SearchParams(ndocs=4096, agree_cells=agree_cells), explain=True)
    exact = index_2k_2bit.search_exact(queries, k=10)
    for p, a in zip(plain.explain, agreed.explain):
        assert a["params"]["agree_cells"] == agree_cells and p["params"]["agree_cells"] == 0
        assert a["stages"][1]["candidates"] > p["stages"][1]["candidates"]
    found = lambda res: np.mean([np.isin(e, r).mean() for e, r in zip(exact.ids, res.ids)])  # noqa: E731
    assert found(agreed) >= found(plain) and found(agreed) > 0.9


@pytest.mark.parametrize("open_kw", ({}, {"device": "cpu", "backend": "torch"}))
def test_search_applies_the_size_dependent_defaults(index_2k_2bit, corpus_2k, monkeypatch, open_kw):
    """Index.search resolves the defaults for the size of the index it searches, on the CPU and device paths."""
    import colbert_index.index
    import colbert_index.search

    idx = Index.open(index_2k_2bit.path, **open_kw)
    seen = []
    if idx._device is None:
        real = colbert_index.index.staged_search
        monkeypatch.setattr(
            colbert_index.index, "staged_search", lambda Q, k, p, *a, **kw: seen.append(p) or real(Q, k, p, *a, **kw)
        )
    else:
        real = idx._device.search
        monkeypatch.setattr(idx._device, "search", lambda snap, qs, k, p: seen.append(p) or real(snap, qs, k, p))
    Q = corpus_2k.queries[:2]
    idx.search(Q, k=10)
    monkeypatch.setattr(colbert_index.search, "_NDOCS_SCALE_FROM", 1_000)  # the 2k index now counts as large
    wide = idx.search(Q, k=10)
    half = [0] * (len(seen) // 2)
    assert [p.agree_cells for p in seen] == half + [AGREE_CELLS] * len(half) and seen
    assert {p.nprobe for p in seen} == {1}
    np.testing.assert_array_equal(wide.ids, idx.search(Q, k=10, params=SearchParams(1, agree_cells=AGREE_CELLS)).ids)
    assert SearchParams.default_ndocs(10, idx.n_docs) == 352  # 256 x sqrt(2): what the search sized stage 2 from
    idx.close()


def test_metric_doctests():
    import doctest

    from colbert_index import codec, metrics

    for mod in (metrics, codec):
        result = doctest.testmod(mod)
        assert result.attempted > 0 and result.failed == 0


def test_parallel_batch_equals_one_query_at_a_time(index_2k_2bit, corpus_2k):
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        batch = index_2k_2bit.search(corpus_2k.queries[:8], k=10)
    finally:
        numba.set_num_threads(previous)
    singles = [index_2k_2bit.search(q, k=10) for q in corpus_2k.queries[:8]]
    np.testing.assert_array_equal(batch.ids, np.concatenate([s.ids for s in singles]))
    np.testing.assert_array_equal(batch.scores, np.concatenate([s.scores for s in singles]))
    assert numba.get_num_threads() == previous  # the worker threads' setting did not leak here


@pytest.mark.parametrize("fraction", (0.0, 0.5, 1.0))
def test_deleted_slots_never_returned(index_2k_2bit, corpus_2k, fraction):
    """With slots tombstoned, the staged search ranks exactly like search_exact over the live docs only."""
    from colbert_index.search import staged_search

    data, backend = index_2k_2bit._d, index_2k_2bit.backend
    rng = np.random.default_rng(3)
    deleted = rng.random(data.n_docs) < fraction
    exact = index_2k_2bit.search_exact(corpus_2k.queries, k=100)
    params = SearchParams().resolved(10)
    hits = []
    for Q, ex_ids in zip(corpus_2k.queries, exact.ids):
        scores, slots = staged_search(Q, 10, params, data, backend, deleted=deleted)
        assert len(slots) == min(10, int((~deleted).sum()))
        assert not deleted[slots].any()
        live_exact = [d for d in ex_ids if not deleted[d]][:10]
        hits.append(len(set(slots.tolist()) & set(live_exact)) / max(len(live_exact), 1) if len(slots) else 1.0)
    assert np.mean(hits) >= 0.9  # measured 1.000 at 0% and 50% deleted (corpus_2k, 40 queries)


def test_warmup_compiles_without_changing_anything(index_2k_2bit, corpus_2k, tiny_docs, tmp_path):
    before = index_2k_2bit.search(corpus_2k.queries[:4], k=10)
    generation = index_2k_2bit.generation
    assert index_2k_2bit.warmup() > 0
    after = index_2k_2bit.search(corpus_2k.queries[:4], k=10)
    np.testing.assert_array_equal(before.ids, after.ids)
    assert index_2k_2bit.generation == generation
    idx = Index.build(tmp_path / "one", tiny_docs[:3], progress=False)  # fewer documents than k
    assert idx.warmup() > 0
    idx.delete(list(idx.doc_ids()))  # nothing live: nothing to search, no error
    assert idx.warmup() >= 0
    idx.close()
