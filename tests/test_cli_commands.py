"""The colbert-index subcommands beyond build/search: shards and metadata in build, add, delete, compact, info,
bench, search --filter, --help examples, and building / adding from JSONL texts with a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from colbert_index import Index
from colbert_index.cli import build_parser, main

COMMANDS = ("build", "index-texts", "add", "delete", "compact", "search", "serve", "info", "bench", "demo")


@pytest.fixture
def files(tmp_path, tiny_docs):
    """Two shards of the tiny documents, their lengths, string ids and metadata files."""
    half = len(tiny_docs) // 2
    for name, part in (("a", tiny_docs[:half]), ("b", tiny_docs[half:])):
        np.save(tmp_path / f"{name}.npy", np.concatenate(part))
        np.save(tmp_path / f"{name}_lens.npy", np.array([len(d) for d in part]))
    (tmp_path / "ids.txt").write_text("".join(f"doc{i}\n" for i in range(len(tiny_docs))))
    meta = [{"lang": "en" if i % 2 else "de", "i": i} for i in range(len(tiny_docs))]
    meta[0] = None
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    np.save(tmp_path / "q.npy", tiny_docs[5][:4])
    return tmp_path


def test_every_subcommand_has_examples(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert "examples:\n  colbert-index " + name in out, name


def test_build_shards_with_metadata_then_search_filter_add_delete_compact_info(files, tiny_docs, capsys):
    t, idx = files, str(files / "idx")
    args = ["build", idx, "--embeddings", str(t / "a.npy"), str(t / "b.npy")]
    args += ["--doclens", str(t / "a_lens.npy"), str(t / "b_lens.npy"), "--ids", str(t / "ids.txt")]
    assert main([*args, "--metadata", str(t / "meta.jsonl")]) == 0
    index = Index.open(idx)
    assert index.n_docs == len(tiny_docs) and index.metadata(["doc0", "doc3"]) == [None, {"lang": "en", "i": 3}]
    capsys.readouterr()
    assert main(["search", idx, "--queries", str(t / "q.npy"), "-k", "20", "--filter", '{"lang": "en"}']) == 0
    found = [x.split(":")[0] for x in capsys.readouterr().out.split("\t")]
    assert found[0] == "doc5" and all(int(x[3:]) % 2 for x in found)
    (t / "flt.json").write_text('["doc1", "doc2"]')
    assert main(["search", idx, "--queries", str(t / "q.npy"), "--filter", f"@{t / 'flt.json'}", "--exact"]) == 0
    assert sorted(x.split(":")[0] for x in capsys.readouterr().out.split("\t")) == ["doc1", "doc2"]

    np.save(t / "new.npy", np.concatenate(tiny_docs[:2]))
    np.save(t / "new_lens.npy", np.array([len(d) for d in tiny_docs[:2]]))
    (t / "new_ids.txt").write_text("n1\ndoc4\n")
    (t / "new_meta.jsonl").write_text('{"lang": "xx"}\nnull\n')
    add = ["add", idx, "--embeddings", str(t / "new.npy"), "--doclens", str(t / "new_lens.npy")]
    add += ["--ids", str(t / "new_ids.txt"), "--metadata", str(t / "new_meta.jsonl")]
    assert main(add) == 2 and "already in the index" in capsys.readouterr().err  # doc4 is live: needs --upsert
    assert main([*add, "--upsert"]) == 0 and "upsert: 2 documents" in capsys.readouterr().out
    assert Index.open(idx).metadata(["n1", "doc4"]) == [{"lang": "xx"}, None]
    assert main(["delete", idx, "doc1", "nope"]) == 2 and "'nope'" in capsys.readouterr().err
    assert main(["delete", idx, "doc1", "nope", "--missing-ok"]) == 0
    assert "deleted 1 documents" in capsys.readouterr().out
    assert main(["compact", idx]) == 0 and "2 -> 1 segments" in capsys.readouterr().out
    assert main(["info", idx, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["valid"] and info["verified"] and info["docs"] == len(tiny_docs) and len(info["segments"]) == 1
    assert info["segments"][0]["metadata_rows"] == len(tiny_docs)
    assert main(["info", idx]) == 0 and "validation  ok" in capsys.readouterr().out


def test_info_reports_damage_with_status_1(files, tiny_docs, capsys):
    idx = files / "idx"
    Index.build(idx, tiny_docs, progress=False)
    codes = next(idx.glob("seg-*/codes.npy"))
    raw = bytearray(codes.read_bytes())
    raw[-1] ^= 0xFF
    codes.write_bytes(bytes(raw))
    assert main(["info", str(idx)]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "codes.npy: checksum mismatch" in out


def test_int_ids_from_the_command_line(files, tiny_docs, capsys):
    idx = str(files / "idx")
    Index.build(idx, tiny_docs, progress=False)
    assert main(["delete", idx, "3", "x"]) == 2 and "'x' is not an integer" in capsys.readouterr().err
    (files / "del.txt").write_text("4\n5\n")
    assert main(["delete", idx, "3", "--ids-file", str(files / "del.txt")]) == 0
    assert Index.open(idx).n_docs == len(tiny_docs) - 3
    assert main(["delete", idx]) == 2 and "delete needs ids" in capsys.readouterr().err


def test_bench_on_an_index_and_on_a_synthetic_corpus(files, tiny_docs, capsys):
    idx = str(files / "idx")
    Index.build(idx, tiny_docs, progress=False)
    np.save(files / "qs.npy", np.stack([d[:1] for d in tiny_docs[:6]]))
    exhaustive = ["--nprobe", "1000", "--ndocs", "100000", "--threshold", "-100"]
    assert (
        main(["bench", idx, "--queries", str(files / "qs.npy"), "-k", "3", "--json", "--threads", "1", *exhaustive])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["queries"] == 6 and out["threads"] == 1 and out["recall@3_vs_exact"] == 1.0
    assert out["p50_ms"] <= out["p99_ms"]
    assert main(["bench", "--synthetic", "300", "--n-queries", "5", "--exact-queries", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["queries"] == 5 and 0.0 <= out["recall@10_vs_exact"] <= 1.0
    assert main(["bench", idx]) == 2 and "--queries" in capsys.readouterr().err


def test_build_and_add_from_jsonl_with_metadata_keys(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from colbert_index.encoder.fixtures import topic_texts, write_pylate_checkpoint

    model = str(write_pylate_checkpoint(tmp_path / "ckpt"))
    docs, _ = topic_texts()
    rows = [{"id": f"p{i}", "text": t, "lang": ["en", "de"][i % 2], "year": 2000 + i} for i, t in enumerate(docs[:12])]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:10]))
    (tmp_path / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[10:]))
    idx = str(tmp_path / "idx")
    args = ["build", idx, "--input", str(tmp_path / "p.jsonl"), "--model", model, "--chunk-size", "4"]
    assert main([*args, "--metadata-keys", "lang"]) == 0
    assert Index.open(idx).metadata(["p0", "p3"]) == [{"lang": "en"}, {"lang": "de"}]
    assert main(["build", str(tmp_path / "x"), "--input", str(tmp_path / "p.jsonl")]) == 2  # no model
    assert "needs --model" in capsys.readouterr().err
    add = ["add", idx, "--input", str(tmp_path / "more.jsonl"), "--model", model, "--metadata-keys", "*"]
    assert main(add) == 0
    index = Index.open(idx)
    assert index.n_docs == 12 and index.metadata(["p11"]) == [{"lang": "de", "year": 2011}]
    assert index.search(index.reconstruct("p11"), k=1, filter={"year": {"$gt": 2010}}).ids[0, 0] == "p11"


def test_keep_originals_from_build_to_info_and_search(files, tiny_docs, capsys):
    t, idx = files, str(files / "kept")
    args = ["build", idx, "--embeddings", str(t / "a.npy"), "--doclens", str(t / "a_lens.npy"), "--keep-originals"]
    assert main(args) == 0
    index = Index.open(idx)
    assert index.manifest["keep_originals"] and index.segment_info()[0]["originals"]
    np.save(t / "new.npy", np.concatenate(tiny_docs[-2:]))
    np.save(t / "new_lens.npy", np.array([len(d) for d in tiny_docs[-2:]]))
    assert main(["add", idx, "--embeddings", str(t / "new.npy"), "--doclens", str(t / "new_lens.npy")]) == 0
    capsys.readouterr()
    assert main(["info", idx]) == 0
    out = capsys.readouterr().out
    assert "originals   kept: float16 vectors" in out and out.count(", originals ") == 2  # both segments
    results = {}
    for rerank in ("0", "40"):
        assert main(["search", idx, "--queries", str(t / "q.npy"), "-k", "3", "--rerank", rerank]) == 0
        results[rerank] = [x.split(":") for x in capsys.readouterr().out.split()]
    assert results["0"][0][0] == results["40"][0][0] == "5"  # the query's document, first either way
    exact = Index.open(idx).search(np.load(t / "q.npy"), k=3)
    assert [int(i) for i, _ in results["40"]] == exact.ids[0].tolist()  # the default search: the rerank on
