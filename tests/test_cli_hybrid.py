"""Texts on the command line: index-texts / build --input / add --input store the passages' texts (unless
--no-store-texts), search --text (lexical), --text with --queries or --model, --hybrid, delete --filter."""

from __future__ import annotations

import json

import numpy as np
import pytest

from colbert_index import Index
from colbert_index.cli import main

TOPICS = ("volcano", "piano")  # the topics of colbert_index.encoder.fixtures.topic_texts' first 8 passages


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from colbert_index.encoder.fixtures import write_pylate_checkpoint

    return str(write_pylate_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt"))


@pytest.fixture
def passages(tmp_path):
    from colbert_index.encoder.fixtures import topic_texts

    docs, _ = topic_texts()
    rows = [{"id": f"p{i}", "text": t, "year": 2000 + i} for i, t in enumerate(docs[:24])]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:20]))
    (tmp_path / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[20:]))
    return tmp_path, docs


def _hits(out: str) -> list[str]:
    return [line.split("\t")[1] for line in out.splitlines() if line and not line.startswith("#")]


def test_texts_stored_searched_fused_and_deleted_by_filter(model, passages, capsys):
    t, docs = passages
    idx = str(t / "idx")
    build = ["index-texts", "--model", model, "--input", str(t / "p.jsonl"), "--index", idx, "--chunk-size", "8"]
    assert main([*build, "--metadata-keys", "year"]) == 0
    index = Index.open(idx)
    assert index.texts(["p0", "p19"]) == [docs[0], docs[19]]
    capsys.readouterr()
    word = TOPICS[1]  # the topic of passages 4-7
    assert main(["search", idx, "--text", word, "-k", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {word}\n") and sorted(_hits(out)) == ["p4", "p5", "p6", "p7"]
    assert main(["search", "--model", model, "--index", idx, docs[5], "--hybrid", "-k", "3"]) == 0
    assert _hits(capsys.readouterr().out)[0] == "p5"
    assert main(["search", "--model", model, "--index", idx, "x", "--text", word, "--fusion", "relative"]) == 0
    assert "p5" in _hits(capsys.readouterr().out)
    np.save(t / "q.npy", index.reconstruct("p7")[None, :4])
    assert main(["search", idx, "--queries", str(t / "q.npy"), "--text", word, "--alpha", "0.9", "-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split("\t")[0].startswith("p7:")
    # errors: a bad FTS5 query, --hybrid without a model, a --text per query
    assert main(["search", idx, "--text", "a AND", "--text-mode", "fts5"]) == 2
    assert "not a valid FTS5 query" in capsys.readouterr().err
    assert main(["search", idx, "--text", "!!!"]) == 2 and "no searchable word" in capsys.readouterr().err
    assert main(["search", idx, "--hybrid", "--text", "x"]) == 2 and "--hybrid" in capsys.readouterr().err
    assert main(["search", idx, "--queries", str(t / "q.npy"), "--text", "a", "--text", "b"]) == 2
    assert "2 text queries for 1 queries" in capsys.readouterr().err
    # add --input stores texts too; --no-store-texts opts out
    assert main(["add", idx, "--input", str(t / "more.jsonl"), "--model", model, "--no-store-texts"]) == 0
    assert Index.open(idx).texts(["p20"]) == [None]
    assert main(["delete", idx, "p20", "p21", "p22", "p23"]) == 0
    assert main(["add", idx, "--input", str(t / "more.jsonl"), "--model", model]) == 0
    assert Index.open(idx).texts(["p20"]) == [docs[20]]
    # delete --filter
    capsys.readouterr()
    assert main(["delete", idx, "--filter", '{"year": {"$lt": 2005}}']) == 0
    assert "deleted 5 documents" in capsys.readouterr().out
    assert main(["delete", idx, "p6", "--filter", '{"year": 2006}']) == 2 and "not both" in capsys.readouterr().err
    assert main(["delete", idx, "--filter", "{}"]) == 2 and "every document" in capsys.readouterr().err
    assert "p0" not in Index.open(idx) and "p5" in Index.open(idx)


def test_build_input_without_texts(model, passages):
    t, _ = passages
    idx = str(t / "plain")
    assert main(["build", idx, "--input", str(t / "p.jsonl"), "--model", model, "--no-store-texts"]) == 0
    index = Index.open(idx)
    assert "metadata" not in index.manifest["segments"][0]["files"] and index.texts(["p0"]) == [None]
    assert main(["search", idx, "--text", "anything"]) == 2
