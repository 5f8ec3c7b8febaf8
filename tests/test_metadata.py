"""Per-document metadata: stored with the segments, kept right through reopen, delete, upsert, compaction and
crashes; validated at open."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import meta_ops
import numpy as np
import pytest

from colbert_index import Index, IndexFormatError
from colbert_index.storage.manifest import seal

N_KILLS = 20


def _meta(i: int) -> dict:
    return {"name": f"doc {i}", "n": i, "even": i % 2 == 0, "nested": {"x": [i, "é"]}}


@pytest.fixture
def indexed(tmp_path, tiny_docs):
    meta = [_meta(i) for i in range(len(tiny_docs))]
    meta[3] = None
    return Index.build(tmp_path / "m", tiny_docs, metadata=meta, progress=False), tiny_docs


def test_metadata_round_trips_and_survives_reopen(indexed):
    idx, docs = indexed
    assert idx.metadata([0, 3, 19]) == [_meta(0), None, _meta(19)]
    assert idx.metadata(5) == [_meta(5)]
    again = Index.open(idx.path, verify=True)
    assert again.metadata(list(range(len(docs)))) == idx.metadata(list(range(len(docs))))
    with pytest.raises(KeyError, match="99"):
        idx.metadata([1, 99])
    assert idx.metadata([99, 1], missing_ok=True) == [None, _meta(1)]
    entry = idx.manifest["segments"][0]["files"]["metadata"]
    assert entry["rows"] == len(docs) and entry["path"].endswith("metadata.sqlite")
    assert idx.disk_bytes() > entry["bytes"]


def test_delete_upsert_compact_keep_metadata_right(indexed, tmp_path):
    idx, docs = indexed
    idx.delete([1, 2])
    with pytest.raises(KeyError):
        idx.metadata([1])
    idx.upsert([docs[0], docs[4]], [4, 100], metadata=[{"v": 2}, {"new": True}])
    idx.add([docs[7]], [101])  # no metadata
    expected = {i: _meta(i) for i in range(len(docs)) if i not in (1, 2, 3, 4)}
    expected.update({3: None, 4: {"v": 2}, 100: {"new": True}, 101: None})
    ids = sorted(expected)
    assert idx.metadata(ids) == [expected[i] for i in ids]
    assert set(idx.search_exact(docs[0], k=50, filter={"even": True}).ids[0].tolist()) == {
        i for i, m in expected.items() if m and m.get("even")
    }
    other = Index.open(idx.path)  # a reader opened before the compactions keeps its snapshot
    idx.compact()
    assert len(idx.segment_info()) == 1 and idx.metadata(ids) == [expected[i] for i in ids]
    idx.delete([5])
    idx.compact(retrain=True, n_centroids=16)
    del expected[5]
    ids = sorted(expected)
    assert Index.open(idx.path, verify=True).metadata(ids) == [expected[i] for i in ids]
    assert other.metadata([5, 100]) == [_meta(5), {"new": True}]  # its files are gone, its handles are not
    assert other.refresh() and other.metadata(ids) == [expected[i] for i in ids]


def test_bad_metadata_is_refused_and_leaves_nothing(indexed):
    idx, docs = indexed
    idx.delete([0])  # the lock file exists from here on
    before = sorted(p.name for p in idx.path.iterdir())
    with pytest.raises(ValueError, match="metadata has 1 entries for 2 documents"):
        idx.add(docs[:2], [50, 51], metadata=[{"a": 1}])
    with pytest.raises(ValueError, match=r"metadata\[0\]: expected a dict"):
        idx.add(docs[:1], [50], metadata=["a"])
    with pytest.raises(ValueError, match=r"metadata\[1\]: not JSON-serialisable"):
        idx.add(docs[:2], [50, 51], metadata=[{}, {"x": object()}])
    with pytest.raises(ValueError, match="JSON-serialisable"):
        idx.add(docs[:1], [50], metadata=[{"x": float("nan")}])
    with pytest.raises(TypeError, match="one dict per document"):
        idx.add(docs[:1], [50], metadata={"a": 1})
    assert sorted(p.name for p in idx.path.iterdir()) == before and idx.generation == 1
    with pytest.raises(ValueError, match="metadata has 2 entries"):
        Index.build(idx.path.parent / "x", docs[:3], metadata=[{}, {}], progress=False)
    assert not (idx.path.parent / "x").exists()


def test_damaged_metadata_is_caught_at_open(indexed, tmp_path):
    idx, _ = indexed
    m = json.loads((idx.path / "manifest.json").read_text())
    db = idx.path / m["segments"][0]["files"]["metadata"]["path"]
    raw = bytearray(db.read_bytes())
    raw[-100] ^= 0xFF
    db.write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match="metadata.sqlite: checksum mismatch"):
        Index.open(idx.path)
    # a consistent-looking but wrong file (a row missing, manifest updated as a buggy writer would)
    db.unlink()
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE docs (slot INTEGER PRIMARY KEY, meta TEXT)")
        con.executemany("INSERT INTO docs VALUES (?, NULL)", [(i,) for i in range(5)])
    from colbert_index.storage.files import sha256

    m["segments"][0]["files"]["metadata"].update(bytes=db.stat().st_size, sha256=sha256(db))
    (idx.path / "manifest.json").write_text(json.dumps(seal(m)))
    with pytest.raises(IndexFormatError, match="5 rows"):
        Index.open(idx.path)


def test_metadata_of_committed_versions_only_after_sigkill(tmp_path):
    """A writer applying tests/meta_ops.py's schedule is killed at random points: after each kill, the index
    holds exactly the metadata and texts of its last committed version (replayed on a reference index): none of
    uncommitted documents, none lost; filters and lexical search see exactly its live documents."""
    path = tmp_path / "crash"
    meta_ops.build(path)
    reference = meta_ops.build(tmp_path / "reference")
    states, times = [meta_ops.state(reference)], []
    for _ in range(10):
        # a killed writer's successor opens the index before it writes: time both, as a child spends them
        times.append(time.perf_counter())
        reference.close()
        reference = Index.open(reference.path, backend="numpy")
        meta_ops.step(reference)
        times[-1] = time.perf_counter() - times[-1]
        states.append(meta_ops.state(reference))
    window = max(0.1, 8 * float(np.median(times)))  # kills spread over a few writes, however busy the machine
    zygote = subprocess.Popen(
        [sys.executable, meta_ops.__file__, "zygote", str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    rng = np.random.default_rng(0)
    generations, interrupted = [], 0
    try:
        for _ in range(N_KILLS):
            zygote.stdin.write(f"run {rng.uniform(0.0, window):.4f}\n")
            zygote.stdin.flush()
            assert zygote.stdout.readline().strip() == "killed"
            interrupted += _uncommitted(path)
            index = Index.open(path, verify=True, backend="numpy")
            g = index.generation
            while len(states) <= g:
                meta_ops.step(reference)
                states.append(meta_ops.state(reference))
            assert meta_ops.state(index) == states[g], f"generation {g}"
            allowed = index.search_exact(np.ones((1, meta_ops.DIM), np.float32), k=10_000, filter={"id": {"$gte": 0}})
            assert sorted(allowed.ids[0].tolist()) == sorted(states[g])  # filters see exactly the live documents
            # and lexical search too: every committed text is searchable, with the filter and without
            found = index.search(None, k=10_000, text_query="common", filter={"id": {"$gte": 0}})
            assert sorted(found.ids[0].tolist()) == sorted(states[g])
            found = index.search(None, k=10_000, text_query="w1 generation", text_mode="all")
            assert sorted(found.ids[0].tolist()) == [i for i in sorted(states[g]) if i % 3 == 1]
            generations.append(g)
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=60)
    print(f"reached generation {generations[-1]}, {interrupted} kills inside a write")
    assert generations[-1] >= 8 and len(set(generations)) >= 5  # the kills spread over many writes
    assert interrupted >= 2  # and some landed between a write's first file and its commit


def _uncommitted(path) -> bool:
    """A file only an interrupted write leaves: a segment newer than the manifest, or its temporary."""
    m = json.loads((path / "manifest.json").read_text())
    names = {p.name for p in path.iterdir()}
    return "manifest.json.tmp" in names or any(n.startswith("seg-") and int(n[4:]) >= m["next_segment"] for n in names)
