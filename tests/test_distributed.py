"""colbert_index.distributed: routing, planner, and (on a local Ray instance) sharded build, fan-out search,
actor restart and routed writes. The Ray tests skip, saying why, where Ray is missing or cannot start."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from colbert_index import Index, SearchParams
from colbert_index.datasets.synthetic import make_corpus
from colbert_index.distributed import merge_topk, plan, shard_of
from colbert_index.distributed.manifest import CLUSTER_MANIFEST, shard_path
from colbert_index.distributed.planner import layout_bytes

N_SHARDS = 4
TOL = 1e-4  # scores: sums of float32 dot products, summed in different block orders on the two sides


# ---------------------------------------------------------------------------- no Ray needed
def test_shard_of_is_stable_across_processes():
    """blake2b of the id's string form, not Python's salted hash(): pinned values, and another process
    with a different hash seed agrees."""
    assert [shard_of(x, 4) for x in ["doc-1", "doc-2", "a", 0, 1, 2, 12345]] == [2, 1, 0, 0, 2, 3, 0]
    assert shard_of(np.int64(12345), 4) == shard_of(12345, 4)
    code = "from colbert_index.distributed import shard_of; print(shard_of('x', 1000003))"
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONHASHSEED": "123", "PATH": ""}, capture_output=True, text=True
    )
    assert out.stdout.strip() == str(shard_of("x", 1000003)) == "481665"
    with pytest.raises(TypeError, match="ints or strings"):
        shard_of(1.5, 4)
    with pytest.raises(ValueError, match="n_shards"):
        shard_of(1, 0)


def test_merge_topk_orders_by_score_ties_to_lower_shard():
    a = (np.array([["a", "b"]], dtype=object), np.array([[0.9, 0.5]], np.float32))
    b = (np.array([["c"]], dtype=object), np.array([[0.9]], np.float32))  # a shard with fewer than k documents
    res = merge_topk([a, b], k=5)
    assert res.ids.tolist() == [["a", "c", "b"]] and res.scores[0].tolist() == pytest.approx([0.9, 0.9, 0.5])
    assert merge_topk([a, b], k=2).ids.tolist() == [["a", "c"]]
    with pytest.raises(ValueError, match="no shard"):
        merge_topk([(np.zeros((1, 0), np.int64), np.zeros((1, 0), np.float32))], k=3)


def test_plan_grows_with_the_corpus():
    small, big = plan(10_000_000, 64, 2, 64 << 30), plan(1_000_000_000, 64, 2, 64 << 30)
    assert small.n_shards == 1 and big.n_shards > 10
    assert big.ram_per_node <= 64 << 30
    # 600M tokens: the build rule gives K = 2^18 > 65536, so codes are uint32
    assert small.n_centroids == 1 << 18 and small.bytes_per_token == pytest.approx(4 + 16 + 12 / 60)
    tiny = plan(100_000, 64, 2, 64 << 30)  # 6M tokens: K = 32768, uint16 codes
    assert tiny.code_bytes == 2 and tiny.bytes_per_token == pytest.approx(2 + 16 + 12 / 60)
    with pytest.raises(ValueError, match="multiple of 8"):
        plan(1000, 50, 2, 1 << 30)
    with pytest.raises(ValueError, match="cannot hold"):
        plan(1_000_000_000, 128, 2, 1 << 30)


def test_plan_cli_prints_a_table():
    out = subprocess.run(
        [sys.executable, "-m", "colbert_index.distributed", "plan", "--passages", "1e7", "--dim", "48", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| 10,000,000 | 48 | 2 |" in out


def test_build_with_a_given_codec_encodes_identically(tiny_docs, tmp_path):
    """Index.build(codec=...) (the hook sharded builds use) skips training and encodes with that codebook."""
    a = Index.build(tmp_path / "a", tiny_docs, progress=False)
    b = Index.build(tmp_path / "b", tiny_docs, doc_ids=[f"d{i}" for i in range(len(tiny_docs))], codec=a.codec)
    assert np.array_equal(a._d.codes, b._d.codes) and np.array_equal(a._d.residuals, b._d.residuals)
    assert b.manifest["outlier_norm"] > 0
    with pytest.raises(ValueError, match="codec has dim 48"):
        Index.build(tmp_path / "c", [d[:, :32] for d in tiny_docs], codec=a.codec)
    with pytest.raises(ValueError, match="conflicts with the given codec"):
        Index.build(tmp_path / "c", tiny_docs, codec=a.codec, n_centroids=a.n_centroids + 1)
    with pytest.raises(TypeError, match="ResidualCodec"):
        Index.build(tmp_path / "c", tiny_docs, codec="codebook")


def test_layout_bytes_matches_a_real_index(tmp_path):
    """The planner's byte count of one index (int ids, stored) against Index.disk_bytes() of a real one."""
    c = make_corpus(400, dim=48, n_queries=1, seed=2)
    with Index.build(tmp_path / "x", c.documents(), doc_ids=3 * np.arange(400), progress=False) as ix:
        predicted = layout_bytes(ix.n_docs, ix.n_tokens, ix.dim, ix.nbits, ix.n_centroids)
        assert abs(predicted - ix.disk_bytes()) / ix.disk_bytes() < 0.01, (predicted, ix.disk_bytes())


# ---------------------------------------------------------------------------- on a local Ray instance
@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
    except ImportError as e:
        pytest.skip(f"Ray is not installed or does not import ({e}): pip install '.[distributed]'")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 << 20)
    except Exception as e:  # noqa: BLE001 - any failure to start means the tests cannot run here
        pytest.skip(f"a local Ray instance cannot start here: {type(e).__name__}: {e}")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus():
    c = make_corpus(1200, dim=64, n_queries=20, mean_doc_len=40, min_doc_len=5, max_doc_len=120, seed=11)
    return c, [f"doc-{i}" for i in range(len(c.doclens))]


@pytest.fixture(scope="module")
def built(ray_local, corpus, tmp_path_factory):
    """A 4-shard index, its actors, and one index of the same documents built with the shards' codebook."""
    from colbert_index.distributed import ShardedIndex, build_sharded

    c, ids = corpus
    root = tmp_path_factory.mktemp("dist") / "sharded"
    manifest = build_sharded(root, c.documents(), ids, n_shards=N_SHARDS, nbits=2)
    codec = Index.open(shard_path(root, manifest["shards"][0])).codec
    single = Index.build(root.parent / "single", c.documents(), ids, nbits=2, codec=codec, progress=False)
    sharded = ShardedIndex.open(root)
    sharded.search(c.queries[:2], k=10)  # first call compiles the kernels in each actor
    yield root, manifest, sharded, single
    sharded.close()


def same_topk(a, b, tol: float = TOL) -> None:
    """Equal top-k up to ties: scores equal within ``tol`` rank by rank, and the id sets equal except for
    documents whose score is within ``tol`` of the k-th (which of two tied documents makes the cut is not
    defined)."""
    np.testing.assert_allclose(a.scores, b.scores, atol=tol)
    for ia, ib, sa in zip(a.ids, b.ids, a.scores):
        clear = sa > sa[-1] + tol
        assert set(ia[clear]) == set(ib[clear]), (ia, ib)


def test_build_writes_manifest_and_routes_every_document(built, corpus):
    root, manifest, _, single = built
    _, ids = corpus
    on_disk = json.loads((root / CLUSTER_MANIFEST).read_text())
    assert on_disk["n_shards"] == N_SHARDS and on_disk["n_docs"] == len(ids) == single.n_docs
    assert len({s["path"] for s in on_disk["shards"]}) == N_SHARDS
    seen = []
    for s, entry in enumerate(manifest["shards"]):
        with Index.open(shard_path(root, entry), verify=True) as shard:
            assert shard.n_centroids == single.n_centroids and np.array_equal(
                shard.codec.centroids, single.codec.centroids
            )
            shard_ids = shard.doc_ids().tolist()
            assert all(shard_of(x, N_SHARDS) == s for x in shard_ids)
            seen += shard_ids
    assert sorted(seen) == sorted(ids)


def test_exact_fan_out_equals_one_index_with_the_same_codebook(built, corpus):
    """Same codebook, so every document has the same codes and residuals in both, hence the same exact
    score: the merged top-k of search_exact is the single index's (up to ties and float summation order)."""
    c, _ = corpus
    _, _, sharded, single = built
    same_topk(sharded.search_exact(c.queries, k=10), single.search_exact(c.queries, k=10))


def test_staged_fan_out_equals_single_where_both_are_exhaustive(built, corpus):
    """The staged search's candidate budget (ndocs) is per index, so with the defaults 4 shards rerank up to
    4x the candidates one index does: their top-k need not be equal. With every centroid probed and a budget
    above the corpus size, both searches are exact, and equal."""
    c, _ = corpus
    _, _, sharded, single = built
    p = SearchParams(nprobe=single.n_centroids, centroid_score_threshold=-10.0, ndocs=8 * single.n_docs)
    exact = single.search_exact(c.queries, k=10)
    same_topk(sharded.search(c.queries, k=10, params=p), exact)
    same_topk(single.search(c.queries, k=10, params=p), exact)


def test_staged_fan_out_at_defaults_scores_exactly_and_recalls_as_well(built, corpus):
    """At default parameters: every score the fan-out returns is that document's exact MaxSim, and its
    recall@10 against search_exact is no lower than one index's (it reranks a superset of candidates per
    shard at stage 2, so it is usually higher; measured on this corpus: both printed)."""
    c, _ = corpus
    _, _, sharded, single = built
    exact = single.search_exact(c.queries, k=len(c.doclens))  # every document's exact score
    score_of = [dict(zip(i.tolist(), s.tolist())) for i, s in zip(exact.ids, exact.scores)]
    fan, one = sharded.search(c.queries, k=10), single.search(c.queries, k=10)
    for q, (ids, scores) in enumerate(zip(fan.ids, fan.scores)):
        np.testing.assert_allclose(scores, [score_of[q][x] for x in ids], atol=TOL)

    def recall(res):
        return np.mean([len(set(a) & set(b[:10])) / 10 for a, b in zip(res.ids, exact.ids)])

    r_fan, r_one = recall(fan), recall(one)
    print(f"recall@10 vs exact at defaults: fan-out over {N_SHARDS} shards {r_fan:.3f}, one index {r_one:.3f}")
    assert r_fan >= r_one - 0.02 and r_fan >= 0.9


def test_killed_actor_restarts_and_search_still_answers(built, corpus, ray_local):
    c, _ = corpus
    _, _, sharded, single = built
    before = sharded.info()[1]
    ray_local.kill(sharded.actors[1][0], no_restart=False)  # max_restarts=-1: Ray starts it again
    same_topk(sharded.search_exact(c.queries, k=10), single.search_exact(c.queries, k=10))
    after = sharded.info()[1]
    assert after["pid"] != before["pid"] and after["n_docs"] == before["n_docs"]


def test_add_and_delete_route_to_the_owning_shard(built, corpus):
    c, _ = corpus
    _, _, sharded, single = built
    rng = np.random.default_rng(5)
    new = [c.documents()[i] + 0.01 * rng.standard_normal(c.documents()[i].shape).astype(np.float32) for i in range(8)]
    new = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in new]
    new_ids = [f"new-{i}" for i in range(8)]
    n0 = sharded.n_docs
    infos = sharded.add(new, new_ids)
    assert set(infos) == {shard_of(x, N_SHARDS) for x in new_ids}
    assert sharded.n_docs == n0 + 8
    for x in new_ids:
        assert sharded.holders(x) == [sharded.shard_of(x)]
    res = sharded.search_exact(new, k=2)
    assert all(x in row for x, row in zip(new_ids, res.ids.tolist()))  # each new document finds itself
    with pytest.raises(ValueError, match="already in the index"):
        sharded.add(new[:1], new_ids[:1])

    deleted = sharded.delete(new_ids[:4] + ["doc-0"])
    assert set(deleted) == {shard_of(x, N_SHARDS) for x in new_ids[:4] + ["doc-0"]}
    for x in new_ids[:4] + ["doc-0"]:
        assert sharded.holders(x) == []
    assert sharded.n_docs == n0 + 3
    res = sharded.search(new[:4] + [c.documents()[0]], k=10)
    assert not set(res.ids.ravel()) & set(new_ids[:4] + ["doc-0"])
    with pytest.raises(KeyError, match="not in the index"):
        sharded.delete(["new-0", "new-5"])
    assert sharded.holders("new-5") == [shard_of("new-5", N_SHARDS)]  # nothing deleted by the failed call

    sharded.upsert(new[5:6], ["new-5"])  # replaced in place, same shard
    assert sharded.holders("new-5") == [shard_of("new-5", N_SHARDS)]
    sharded.delete(new_ids[4:] + ["nope"], missing_ok=True)
    assert sharded.n_docs == n0 - 1


def test_planner_layout_matches_disk_bytes(built):
    """The planner's per-index byte count against each real shard's Index.disk_bytes()."""
    root, manifest, _, _ = built
    for entry in manifest["shards"]:
        with Index.open(shard_path(root, entry)) as shard:
            d = shard._d
            ids_bytes = shard._s.segments[0].entry["files"]
            id_bytes = sum(ids_bytes[f]["bytes"] for f in ("doc_id_bytes", "doc_id_offsets")) / shard.n_docs
            predicted = layout_bytes(shard.n_docs, shard.n_tokens, shard.dim, shard.nbits, shard.n_centroids, id_bytes)
            assert abs(predicted - shard.disk_bytes()) / shard.disk_bytes() < 0.02, (predicted, shard.disk_bytes())
            pairs = len(d.ivf_docs) / shard.n_tokens
            assert 0 < pairs <= 1.0


def test_open_errors_name_the_problem(ray_local, tmp_path, tiny_docs):
    from colbert_index.distributed import ShardedIndex, build_sharded

    Index.build(tmp_path / "one", tiny_docs, progress=False)
    with pytest.raises(FileNotFoundError, match="single index"):
        ShardedIndex.open(tmp_path / "one")
    with pytest.raises(ValueError, match="receive no documents"):
        build_sharded(tmp_path / "few", tiny_docs[:2], n_shards=8)


def test_build_from_corpus_parts_read_by_tasks(ray_local, tmp_path):
    """CorpusPart files are partitioned by Ray tasks; numbering continues across parts."""
    from colbert_index.distributed import CorpusPart, ShardedIndex, build_sharded

    c = make_corpus(300, dim=48, n_queries=3, mean_doc_len=30, min_doc_len=5, max_doc_len=60, seed=4)
    half = int(c.doclens[:150].sum())
    parts = []
    for i, (lo, hi, toks) in enumerate([(0, 150, slice(0, half)), (150, 300, slice(half, None))]):
        np.save(tmp_path / f"e{i}.npy", c.embeddings[toks])
        np.save(tmp_path / f"l{i}.npy", c.doclens[lo:hi])
        parts.append(CorpusPart(str(tmp_path / f"e{i}.npy"), str(tmp_path / f"l{i}.npy")))
    m = build_sharded(tmp_path / "sh", parts=parts, n_shards=2, nbits=2)
    assert m["n_docs"] == 300 and m["id_type"] == "int"
    single = Index.build(
        tmp_path / "one", c.documents(), codec=Index.open(shard_path(tmp_path / "sh", m["shards"][0])).codec
    )
    with ShardedIndex.open(tmp_path / "sh") as sharded:
        same_topk(sharded.search_exact(c.queries, k=5), single.search_exact(c.queries, k=5))


def test_shards_keep_their_vectors_for_the_rerank(ray_local, tmp_path):
    """build_sharded(keep_originals=True): every shard stores its vectors, adds follow, and the fan-out's exact
    and exhaustive staged searches give one index's answers on the same vectors."""
    from colbert_index.distributed import ShardedIndex, build_sharded

    c = make_corpus(300, dim=48, n_queries=4, mean_doc_len=30, min_doc_len=5, max_doc_len=60, seed=6)
    ids = [f"d{i}" for i in range(300)]
    m = build_sharded(tmp_path / "sh", c.documents()[:280], ids[:280], n_shards=2, keep_originals=True)
    assert m["keep_originals"] is True
    codec = Index.open(shard_path(tmp_path / "sh", m["shards"][0])).codec
    single = Index.build(tmp_path / "one", c.documents(), ids, codec=codec, keep_originals=True, progress=False)
    p = SearchParams(nprobe=codec.n_centroids, centroid_score_threshold=-10.0, ndocs=4096, rerank=4096)
    with ShardedIndex.open(tmp_path / "sh") as sharded:
        sharded.add(c.documents()[280:], ids[280:])
        for e in m["shards"]:
            with Index.open(shard_path(tmp_path / "sh", e)) as shard:
                assert all(s["originals"] for s in shard.segment_info()) and len(shard.segment_info()) == 2
        same_topk(sharded.search_exact(c.queries, k=5), single.search_exact(c.queries, k=5))
        same_topk(sharded.search(c.queries, k=5, params=p), single.search_exact(c.queries, k=5))
