"""The search's default parameters hold on a corpus they were not tuned on, and ``explain`` says what they were.

The corpus is a small instance of a held-out variant of :mod:`colbert_index.datasets.family` (set aside before
any tuning): recall@10 against the index's own ``search_exact`` at default parameters must stay at or above 0.95.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from colbert_index import Index, SearchParams
from colbert_index.cli import main
from colbert_index.datasets.family import VARIANTS
from colbert_index.datasets.synthetic import CorpusShape, SyntheticStream, make_corpus
from colbert_index.metrics import recall_at
from colbert_index.search import DEEPEN_CAP, DEEPER_FROM, ERROR_SLACK, _could_reach, _ranked_low

HELD_OUT = "crowded128"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    variant = VARIANTS[HELD_OUT]
    assert variant.held_out
    corpus = variant.corpus(2500, n_queries=40, seed=3)
    index = Index.build(tmp_path_factory.mktemp("defaults") / "idx", corpus.documents(), progress=False)
    return index, list(corpus.queries)


def test_defaults_find_95_percent_of_search_exact_on_a_held_out_corpus(held_out):
    index, queries = held_out
    found = index.search(queries, k=10).ids
    exact = index.search_exact(queries, k=10).ids
    assert recall_at(found, exact, 10) >= 0.95


def test_explain_reports_the_parameters_used_and_every_stage(held_out):
    index, queries = held_out
    res = index.search(queries[:5], k=10, explain=True)
    assert res.explain is not None and len(res.explain) == 5
    plain = index.search(queries[:5], k=10)
    np.testing.assert_array_equal(res.ids, plain.ids)  # explaining changes nothing
    for e in res.explain:
        p = e["params"]
        assert p["nprobe"] == SearchParams.default_nprobe(10, index.n_docs)
        kept = {row["stage"]: row.get("candidates") for row in e["stages"]}
        assert {"tables", "probe", "stage4"} <= set(kept) and all(row["ms"] >= 0 for row in e["stages"])
        counts = [kept[s] for s in ("probe", "stage2", "stage3", "stage4") if s in kept]
        assert counts == sorted(counts, reverse=True)  # each stage keeps at most what it was given
        assert kept["stage4"] == p["n_exact"] >= 10
        if "stage2" in kept:
            assert kept["stage2"] == p["ndocs"]
    assert index.search(queries[:1], k=10).explain is None


def test_set_fields_override_the_defaults(held_out):
    index, queries = held_out
    e = index.search(queries[0], k=10, params=SearchParams(ndocs=64), explain=True).explain[0]
    assert e["params"]["ndocs"] == 64
    kept = {row["stage"]: row.get("candidates") for row in e["stages"]}
    assert kept.get("stage2", 64) == 64 and kept["stage4"] == SearchParams.n_exact(10, 64)
    e = index.search(queries[0], k=10, params=SearchParams(nprobe=3), explain=True).explain[0]
    assert e["params"]["nprobe"] == 3


def test_cli_search_explain_and_bench(held_out, tmp_path, capsys):
    index, queries = held_out
    np.save(tmp_path / "q.npy", np.stack(queries[:4]))
    assert main(["search", str(index.path), "--queries", str(tmp_path / "q.npy"), "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    explained = [json.loads(x.removeprefix("# explain ")) for x in lines if x.startswith("# explain ")]
    want = SearchParams.default_ndocs(10, index.n_docs)
    assert len(explained) == 4
    for e in explained:  # sized per query: from the default up to DEEPEN_CAP times it, never past the probe
        probed = e["stages"][1]["candidates"]
        assert min(want, probed) <= e["params"]["ndocs"] <= min(DEEPEN_CAP * want, probed)
    assert main(["search", str(index.path), "--queries", str(tmp_path / "q.npy"), "--explain", "--exact"]) == 2
    capsys.readouterr()
    args = ["bench", str(index.path), "--queries", str(tmp_path / "q.npy"), "--json", "--threads", "1"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recall@10_vs_exact"] >= 0.9 and out["mean_kept_stage4"] >= 10 and out["p50_ms"] > 0


def test_corpus_shape_knobs_change_the_corpus_and_are_checked():
    plain = make_corpus(200, dim=32, n_queries=4, seed=1)
    same = make_corpus(200, dim=32, n_queries=4, seed=1, shape=CorpusShape())
    np.testing.assert_array_equal(plain.embeddings, same.embeddings)
    np.testing.assert_array_equal(plain.queries, same.queries)
    longer = SyntheticStream(200, 32, 0, mean_doc_len=100, seed=1, shape=CorpusShape(doclen_sigma=1.2))
    assert longer.doclens.std() > SyntheticStream(200, 32, 0, seed=1).doclens.std()
    noisy = make_corpus(200, dim=32, n_queries=4, seed=1, shape=CorpusShape(query_noise=3.0))
    np.testing.assert_array_equal(plain.embeddings, noisy.embeddings)
    assert not np.allclose(plain.queries, noisy.queries)
    mixed = make_corpus(200, dim=32, n_queries=0, seed=1, shape=CorpusShape(coherence=0.4, side_topics=3))
    assert mixed.embeddings.shape[1] == 32 and np.allclose(np.linalg.norm(mixed.embeddings, axis=1), 1, atol=1e-5)
    for bad in ({"coherence": 0.99}, {"side_topics": 0}, {"query_noise": -1.0}, {"common_share": 0.9}):
        with pytest.raises(ValueError):
            CorpusShape(**bad)


def test_the_family_holds_held_out_variants_of_every_dim():
    assert sum(v.held_out for v in VARIANTS.values()) >= 3 and len(VARIANTS) >= 8
    assert {v.dim for v in VARIANTS.values()} == {48, 64, 128}
    for v in VARIANTS.values():
        c = v.corpus(60, n_queries=2, seed=0)
        assert c.queries.shape == (2, v.q_len, v.dim) and c.doclens.min() >= v.min_doc_len


def test_stage3_goes_deeper_only_when_one_of_its_best_sits_deep_in_stage2s_ranking():
    head = np.array([9, 8, 7, 1, 1, 1, 1, 1, 1, 1], dtype=np.float32)  # stage 2's order agrees with stage 3's
    assert not _ranked_low(head, 3)
    deep = int(len(head) * DEEPER_FROM)  # the first position past the first DEEPER_FROM of them
    at = [np.array([9, 8] + [1] * 8, dtype=np.float32) for _ in range(2)]
    at[0][deep], at[1][deep - 1] = 7, 7
    assert _ranked_low(at[0], 3) and not _ranked_low(at[1], 3)
    assert not _ranked_low(np.array([9, 7, 8, 1, 1, 1, 1, 1, 1, 1], dtype=np.float32), 3)
    assert _ranked_low(np.array([9, 8, 1, 1, 1, 1, 1, 1, 1, 7], dtype=np.float32), 3)  # a top-3 at the end
    assert _ranked_low(head[:3], 3)  # no more than k scored: nothing to judge by, go on


def test_the_last_stage_takes_what_stage3s_error_could_lift_into_the_top_k():
    stage3 = np.array([10.0, 9.0, 8.0, 7.3, 7.2, 6.5, 1.0], np.float32)  # best first
    head = np.array([10.3, 9.0, 7.5, 7.3], np.float32)  # last-stage scores of the first four: errors up to +0.3
    kth = 7.5  # the 3rd best of head
    lift = 0.3 + ERROR_SLACK * kth
    want = int(np.count_nonzero(stage3[4:] + lift >= kth))
    assert _could_reach(head, stage3, 3) == want == 1  # 7.2 could reach 7.5, 6.5 and 1.0 could not
    exact = np.array([9.0, 8.5, 8.0, 7.0], np.float32)  # scores below stage 3's: errors <= 0, only the slack
    assert _could_reach(exact, stage3, 3) == int(np.count_nonzero(stage3[4:] + ERROR_SLACK * 8.0 >= 8.0)) == 0


def test_a_set_ndocs_turns_the_sizing_off(held_out):
    index, queries = held_out
    fixed = SearchParams(ndocs=SearchParams.default_ndocs(10, index.n_docs))
    for q in queries[:8]:
        p = index.search(q, k=10, params=fixed, explain=True).explain[0]["params"]
        assert (p["ndocs"], p["n_exact"]) == (fixed.ndocs, SearchParams.n_exact(10, fixed.ndocs))
        sized = index.search(q, k=10, explain=True).explain[0]["params"]
        assert sized["ndocs"] >= p["ndocs"] and sized["n_exact"] >= p["n_exact"]
