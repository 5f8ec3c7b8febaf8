"""A sharded index does what one index does: metadata filters, hybrid (BM25 + MaxSim) search, search_exact and
writes with metadata and texts, compared with single indexes of the same documents; and a write that spans
shards is seen entirely or not at all, also when its driver is killed between the shard commits and the cluster
commit. On a local Ray instance (skipped, saying why, where Ray is missing or cannot start)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from colbert_index import Index, SearchParams
from colbert_index.datasets.synthetic import make_corpus
from colbert_index.distributed.manifest import shard_path
from colbert_index.distributed.routing import shards_of
from colbert_index.storage.manifest import load_manifest

N_SHARDS = 3
N_DOCS = 2000
TOL = 1e-4
WORDS = [f"w{i}" for i in range(300)]
# selectivities 50%, 10%, 1%, 0.1% of the documents (field "r" is i % 1000)
FILTERS = {0.5: {"r": {"$lt": 500}}, 0.1: {"r": {"$lt": 100}}, 0.01: {"r": {"$lt": 10}}, 0.001: {"r": 7}}


@pytest.fixture(scope="module")
def ray_local():
    try:
        import ray
    except ImportError as e:
        pytest.skip(f"Ray is not installed or does not import ({e}): pip install '.[distributed]'")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 << 20)
    except Exception as e:  # noqa: BLE001 - any failure to start means the tests cannot run here
        pytest.skip(f"a local Ray instance cannot start here: {type(e).__name__}: {e}")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data():
    c = make_corpus(N_DOCS, dim=48, n_queries=12, mean_doc_len=20, min_doc_len=4, max_doc_len=40, seed=21)
    rng = np.random.default_rng(21)
    ids = [f"d{i}" for i in range(N_DOCS)]
    meta = [{"r": i % 1000, "lang": ["en", "de"][i % 2]} for i in range(N_DOCS)]
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 15)))) for _ in range(N_DOCS)]
    return c, ids, meta, texts


@pytest.fixture(scope="module")
def built(ray_local, data, tmp_path_factory):
    """The sharded index, one index of the same documents (one segment), and one whose segments are the shards'
    documents in shard order (the same BM25 statistics per part as the shards), all with the shards' codebook."""
    from colbert_index.distributed import ShardedIndex, build_sharded

    c, ids, meta, texts = data
    docs = c.documents()
    root = tmp_path_factory.mktemp("features") / "sharded"
    m = build_sharded(root, docs, ids, n_shards=N_SHARDS, metadata=meta, texts=texts)
    codec = Index.open(shard_path(root, m["shards"][0])).codec
    one = Index.build(root.parent / "one", docs, ids, codec=codec, metadata=meta, texts=texts, progress=False)
    owner = shards_of(ids, N_SHARDS)
    parts = [np.flatnonzero(owner == s) for s in range(N_SHARDS)]

    def pick(xs, pos):
        return [xs[i] for i in pos]

    segs = Index.build(
        root.parent / "segs", pick(docs, parts[0]), pick(ids, parts[0]), codec=codec, metadata=pick(meta, parts[0]),
        texts=pick(texts, parts[0]), progress=False,
    )  # fmt: skip
    for pos in parts[1:]:
        segs.add(pick(docs, pos), pick(ids, pos), metadata=pick(meta, pos), texts=pick(texts, pos), expand=False)
    sharded = ShardedIndex.open(root)
    yield root, sharded, one, segs
    sharded.close()


def same_topk(a, b, tol: float = TOL) -> None:
    """Equal top-k up to ties (ids whose score is within ``tol`` of the k-th may differ)."""
    assert a.scores.shape == b.scores.shape, (a.scores.shape, b.scores.shape)
    np.testing.assert_allclose(a.scores, b.scores, atol=tol)
    for ia, ib, sa in zip(a.ids, b.ids, a.scores):
        clear = sa > sa[-1] + tol
        assert set(ia[clear]) == set(ib[clear]), (ia, ib)


def exhaustive(index: Index) -> SearchParams:
    return SearchParams(nprobe=index.n_centroids, centroid_score_threshold=-10.0, ndocs=8 * N_DOCS)


def test_build_stores_metadata_and_texts_in_the_owning_shards(built, data):
    _, ids, meta, texts = data
    _, sharded, _, _ = built
    pick = [0, 5, 17, 1999]
    assert sharded.metadata([ids[i] for i in pick] + ["nope"]) == [meta[i] for i in pick] + [None]
    assert sharded.texts([ids[i] for i in pick]) == [texts[i] for i in pick]


@pytest.mark.parametrize("selectivity", sorted(FILTERS))
def test_filtered_exact_search_equals_one_index(built, data, selectivity):
    c, ids, _, _ = data
    _, sharded, one, _ = built
    f = FILTERS[selectivity]
    got, want = sharded.search_exact(c.queries, k=10, filter=f), one.search_exact(c.queries, k=10, filter=f)
    same_topk(got, want)
    assert got.ids.shape[1] == min(10, round(selectivity * N_DOCS))
    allowed = [ids[i] for i in (0, 3, 1001, 1500)]
    same_topk(sharded.search_exact(c.queries, k=3, filter=allowed), one.search_exact(c.queries, k=3, filter=allowed))


def test_filtered_search_recalls_as_one_index_at_every_selectivity(built, data):
    """recall@10 against exact search over the allowed documents, sharded vs one index, at 50/10/1/0.1%: the
    shards' never lower by more than 0.01 (each shard plans its own filtered search; printed)."""
    c, _, _, _ = data
    _, sharded, one, _ = built
    for sel, f in sorted(FILTERS.items(), reverse=True):
        exact = one.search_exact(c.queries, k=10, filter=f)
        got, single = sharded.search(c.queries, k=10, filter=f), one.search(c.queries, k=10, filter=f)

        def recall(res, exact=exact):
            return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(res.ids, exact.ids)])

        print(f"selectivity {sel:.1%}: recall@10 sharded {recall(got):.3f}, one index {recall(single):.3f}")
        assert recall(got) >= recall(single) - 0.01


@pytest.mark.parametrize(("fusion", "alpha"), [("rrf", 0.5), ("relative", 0.3)])
def test_hybrid_equals_one_index_whose_segments_are_the_shards(built, data, fusion, alpha):
    """Each shard ranks BM25 with its own statistics, as each segment of one index does: against an index whose
    segments hold the shards' documents, dense, lexical and fused results are the same (exhaustive dense search,
    so both dense lists are exact); with a filter too."""
    c, _, _, texts = data
    _, sharded, _, segs = built
    p = exhaustive(segs)
    tq = [" ".join(texts[i].split()[:3]) for i in range(len(c.queries))]
    kw = {"text_query": tq, "fusion": fusion, "alpha": alpha, "fusion_depth": 50}
    same_topk(sharded.search(c.queries, k=10, params=p, **kw), segs.search(c.queries, k=10, params=p, **kw))
    f = FILTERS[0.1]
    same_topk(
        sharded.search(c.queries, k=10, params=p, filter=f, **kw),
        segs.search(c.queries, k=10, params=p, filter=f, **kw),
    )
    lex_s, lex_1 = sharded.search(None, k=10, text_query=tq), segs.search(None, k=10, text_query=tq)
    same_topk(lex_s, lex_1)
    assert np.isfinite(lex_s.scores).all()
    with pytest.raises(ValueError, match="no searchable word"):
        sharded.search(None, k=5, text_query="   ")
    with pytest.raises(ValueError, match="fusion must be"):
        sharded.search(c.queries, k=5, text_query=tq, fusion="max")


def test_writes_carry_metadata_and_texts_and_delete_by_filter(ray_local, data, tmp_path):
    """Adds route metadata and texts with their documents; delete(filter=) runs on every shard in one write; the
    results match one index given the same writes."""
    from colbert_index.distributed import ShardedIndex, build_sharded

    c, ids, meta, texts = data
    docs, n = c.documents(), 300
    m = build_sharded(tmp_path / "sh", docs[:n], ids[:n], n_shards=N_SHARDS, metadata=meta[:n], texts=texts[:n])
    codec = Index.open(shard_path(tmp_path / "sh", m["shards"][0])).codec
    one = Index.build(tmp_path / "one", docs[:n], ids[:n], codec=codec, metadata=meta[:n], texts=texts[:n])
    new = slice(n, n + 40)
    with ShardedIndex.open(tmp_path / "sh") as sharded:
        g0 = sharded.generation
        infos = sharded.add(docs[new], ids[new], metadata=meta[new], texts=texts[new], expand=False)
        one.add(docs[new], ids[new], metadata=meta[new], texts=texts[new], expand=False)
        assert len(infos) == N_SHARDS and sharded.generation == g0 + 1 and sharded.n_docs == n + 40
        assert sharded.metadata(ids[new][:3]) == meta[new][:3] and sharded.texts(ids[new][-2:]) == texts[new][-2:]
        f = {"lang": "de", "r": {"$gte": 200}}
        same_topk(sharded.search_exact(c.queries, k=10, filter=f), one.search_exact(c.queries, k=10, filter=f))
        removed = sharded.delete(filter={"r": {"$lt": 50}})
        one.delete(filter={"r": {"$lt": 50}})
        assert sum(i.docs_deleted for i in removed.values()) == 50 and sharded.n_docs == one.n_docs
        same_topk(sharded.search_exact(c.queries, k=10), one.search_exact(c.queries, k=10))
        sharded.upsert(docs[:2], ids[2:4], metadata=[{"r": 999}, {"r": 998}], texts=["x y", "z"])
        assert sharded.metadata(ids[2:4]) == [{"r": 999}, {"r": 998}] and sharded.texts(ids[2:4]) == ["x y", "z"]
        with pytest.raises(ValueError, match="every document"):
            sharded.delete(filter={})
        with pytest.raises(ValueError, match="metadata has 1 entries"):
            sharded.add(docs[:2], ["a", "b"], metadata=[{}])


# ---------------------------------------------------------------------------- cluster generations
def test_a_shard_version_the_cluster_never_committed_is_invisible_then_rolled_back(ray_local, data, tmp_path):
    """The state a write leaves when it dies after some shards committed and before cluster.json: a shard's own
    manifest names a document that no cluster generation names. Readers (open ones, new ones) do not see it; the
    next write rolls that shard back before applying itself."""
    from colbert_index.distributed import ShardedIndex, build_sharded

    c, ids, _, _ = data
    docs = c.documents()
    m = build_sharded(tmp_path / "sh", docs[:200], ids[:200], n_shards=N_SHARDS)
    ghost = "ghost-1"
    s = int(shards_of([ghost], N_SHARDS)[0])
    with ShardedIndex.open(tmp_path / "sh") as sharded:
        before = sharded.search_exact(docs[200:203], k=5)
        with Index.open(shard_path(tmp_path / "sh", m["shards"][s])) as direct:  # the shard half of a write
            direct.add([docs[200]], [ghost])
        assert not sharded.refresh() and sharded.holders(ghost) == [] and sharded.n_docs == 200
        same_topk(sharded.search_exact(docs[200:203], k=5), before)
    with ShardedIndex.open(tmp_path / "sh") as fresh:
        assert fresh.holders(ghost) == [] and fresh.n_docs == 200
        fresh.add([docs[201]], ["next-1"])  # a write: rolls the shard back first, then applies
        assert fresh.holders(ghost) == [] and fresh.holders("next-1") == [fresh.shard_of("next-1")]
    with Index.open(shard_path(tmp_path / "sh", m["shards"][s])) as direct:
        assert ghost not in direct and direct.manifest["last_op"] in ("rollback", "add")


def test_upsert_killed_before_the_cluster_commit_is_seen_by_nobody(ray_local, data, tmp_path):
    """A driver process upserts documents on every shard and is killed (os._exit) after all shards committed and
    before cluster.json: the shards' own manifests moved, yet readers see the old version entirely; the next
    write rolls the shards back."""
    from colbert_index.distributed import ShardedIndex, build_sharded

    c, ids, _, _ = data
    docs = c.documents()
    root = tmp_path / "sh"
    m = build_sharded(root, docs[:200], ids[:200], n_shards=N_SHARDS)
    np.save(tmp_path / "new.npy", np.concatenate(docs[300:330]))
    np.save(tmp_path / "lens.npy", np.array([len(d) for d in docs[300:330]]))
    shard_gens = [load_manifest(shard_path(root, e))["generation"] for e in m["shards"]]
    owner = shards_of(ids[:30], N_SHARDS)
    probe = {s: ids[int(np.flatnonzero(owner == s)[0])] for s in range(N_SHARDS)}  # an upserted id per shard
    recon = {}
    for s, e in enumerate(m["shards"]):
        with Index.open(shard_path(root, e)) as direct:
            recon[s] = direct.reconstruct(probe[s])
    with ShardedIndex.open(root) as reader:
        before = reader.search_exact(c.queries, k=10)
        script = textwrap.dedent(
            f"""
            import os, numpy as np, ray
            from colbert_index.distributed import ShardedIndex, commit
            ray.init(address={ray_local.get_runtime_context().gcs_address!r}, log_to_driver=False)
            def crash(*a, **k):
                os._exit(17)
            commit.write_cluster_manifest = crash  # dies right before the commit point
            index = ShardedIndex.open({str(root)!r})
            flat, lens = np.load({str(tmp_path / "new.npy")!r}), np.load({str(tmp_path / "lens.npy")!r})
            index.upsert(flat, {ids[:30]!r}, doc_lengths=lens)
            """
        )
        env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 17, out.stderr[-2000:]
        moved = [load_manifest(shard_path(root, e))["generation"] for e in m["shards"]]
        assert all(b > a for a, b in zip(shard_gens, moved)), (shard_gens, moved)  # every shard committed its part
        assert not reader.refresh()
        same_topk(reader.search_exact(c.queries, k=10), before)
    with ShardedIndex.open(root) as fresh:
        same_topk(fresh.search_exact(c.queries, k=10), before)
        fresh.compact()  # a write on every shard: each is rolled back first (then has nothing to compact)
        assert fresh.generation == 1
        same_topk(fresh.search_exact(c.queries, k=10), before)
    for s, e in enumerate(m["shards"]):
        with Index.open(shard_path(root, e)) as direct:
            assert direct.manifest["last_op"] == "rollback"
            np.testing.assert_array_equal(direct.reconstruct(probe[s]), recon[s])


# ---------------------------------------------------------------------------- replicas, older manifests
def test_replicas_fail_over_and_a_shard_with_none_left_fails_by_name(ray_local, data, tmp_path):
    """Two actors per shard: killing one leaves searches and writes working; killing both makes reads raise
    ShardUnavailableError naming the shard and writes ClusterWriteError, with nothing of the write visible."""
    import json

    from colbert_index.distributed import ClusterWriteError, ShardedIndex, ShardUnavailableError, build_sharded

    c, ids, _, _ = data
    docs = c.documents()
    m = build_sharded(tmp_path / "sh", docs[:200], ids[:200], n_shards=2)
    with ShardedIndex.open(tmp_path / "sh", replicas=2, max_restarts=0, retries=1, restart_timeout_s=2) as index:
        reference = index.search_exact(c.queries, k=10)
        ray_local.kill(index.actors[1][0], no_restart=True)
        for _ in range(3):  # the replicas are asked in turn: each search meets the dead one or the live one
            same_topk(index.search_exact(c.queries, k=10), reference)
        new_ids = [f"r{i}" for i in range(6)]
        index.add(docs[300:306], new_ids)
        assert [len(index.holders(x)) for x in new_ids] == [1] * 6
        ray_local.kill(index.actors[0][0], no_restart=True)  # writes fail over too: the replicas are asked in turn
        on0 = [x for x in (f"w{i}" for i in range(40)) if index.shard_of(x) == 0][:2]
        for i, x in enumerate(on0):
            index.upsert(docs[320 + i : 321 + i], [x])
        assert 0 in index.replicas._down[0]  # one of the two writes met the dead replica first
        assert [index.holders(x) for x in on0] == [[0], [0]]
        ray_local.kill(index.actors[1][1], no_restart=True)
        with pytest.raises(ShardUnavailableError, match=r"unavailable: \[1\]") as err:
            index.search_exact(c.queries, k=10)
        assert err.value.shards == [1]
        more = [f"q{i}" for i in range(8)]
        assert {index.shard_of(x) for x in more} == {0, 1}
        with pytest.raises(ClusterWriteError, match=r"shard\(s\) \[1\]"):
            index.upsert(docs[310:318], more)
        on_disk = json.loads((tmp_path / "sh" / "cluster.json").read_text())
        assert on_disk["generation"] == index.generation == 3
        with Index.open(shard_path(tmp_path / "sh", m["shards"][0])) as direct:  # shard 0's part undone
            assert not any(x in direct for x in more) and direct.manifest["last_op"] == "rollback"


def test_a_version_1_cluster_manifest_opens_and_the_first_write_upgrades_it(ray_local, data, tmp_path):
    import json

    from colbert_index.distributed import ShardedIndex, build_sharded

    c, ids, _, _ = data
    docs = c.documents()
    build_sharded(tmp_path / "sh", docs[:150], ids[:150], n_shards=2)
    path = tmp_path / "sh" / "cluster.json"
    m = json.loads(path.read_text())
    del m["generation"]
    m["version"] = 1
    for e in m["shards"]:
        del e["manifest"]
    path.write_text(json.dumps(m))
    with ShardedIndex.open(tmp_path / "sh") as index:
        assert index.generation == 0 and index.n_docs == 150
        index.add(docs[150:152], ["u1", "u2"])
    m = json.loads(path.read_text())
    assert m["version"] == 2 and m["generation"] == 1 and m["n_docs"] == 152
    assert all(e["manifest"]["checksum"] for e in m["shards"])


def test_a_reader_whose_pinned_version_is_gone_moves_to_the_newest_generation(ray_local, data, tmp_path):
    """A shard keeps the files of its two newest versions. A reader three writes behind whose actor restarts
    cannot open its generation any more: the read moves to the newest one instead of failing."""
    from colbert_index.distributed import ShardedIndex, build_sharded

    c, ids, _, _ = data
    docs = c.documents()
    build_sharded(tmp_path / "sh", docs[:200], ids[:200], n_shards=2)
    on0 = [x for x in ids[:200] if shards_of([x], 2)[0] == 0][:2]
    with ShardedIndex.open(tmp_path / "sh") as reader, ShardedIndex.open(tmp_path / "sh") as writer:
        reader.search_exact(c.queries, k=10)
        writer.delete(on0[:1])
        writer.compact()  # shard 0's documents move to a new segment
        writer.delete(on0[1:])  # ... and the segment generation 0 named is removed
        assert reader.generation == 0 and writer.generation == 3
        ray_local.kill(reader.actors[0][0], no_restart=False)  # restarts with nothing open
        got = reader.search_exact(c.queries, k=10)
        assert reader.generation == 3
        same_topk(got, writer.search_exact(c.queries, k=10))
