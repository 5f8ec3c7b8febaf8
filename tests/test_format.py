"""A damaged index must raise IndexFormatError naming the file, never crash or answer wrongly.

Format 2 (what builds write: codebook + segments + tombstones) and format 1 (the arrays at the top of
the directory, `tests/data/v1_*`, written by colbert_index at commit d8047a9) are both checked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from colbert_index import Index, IndexFormatError, SearchParams
from colbert_index.storage import manifest
from colbert_index.storage.manifest import save_array, seal

DATA = Path(__file__).parent / "data"
CODEBOOK = ["centroids", "centroid_scales", "bucket_cutoffs", "bucket_weights"]
SEGMENT = ["doclens", "codes", "residuals", "doc_id_bytes", "doc_id_offsets"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """65 docs with string ids in two segments, 3 of the first deleted (a tombstone file), the vectors kept."""
    rng = np.random.default_rng(11)
    docs = [rng.standard_normal((int(n), 64)).astype(np.float32) for n in rng.integers(1, 50, size=65)]
    docs = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in docs]
    path = tmp_path_factory.mktemp("fmt") / "idx"
    idx = Index.build(path, docs[:60], doc_ids=[f"d{i}" for i in range(60)], progress=False, keep_originals=True)
    idx.add(docs[60:], [f"d{i}" for i in range(60, 65)])
    idx.delete(["d1", "d2", "d3"])
    return path


@pytest.fixture(params=["v2", "v1"])
def copy(request, built, tmp_path):
    dst = tmp_path / "idx"
    shutil.copytree(built if request.param == "v2" else DATA / "v1_str", dst)
    return dst


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _file(path: Path, name: str) -> Path:
    """Where the logical file ``name`` (of the first segment) lies, in either format."""
    m = _manifest(path)
    if m["version"] == 1:
        return path / f"{name}.npy"
    if name == "tombstones":
        return path / m["segments"][0]["deleted"]["path"]
    return path / {**m["codebook"], **m["segments"][0]["files"]}[name]["path"]


def _names(path: Path) -> list[str]:
    return CODEBOOK + SEGMENT + (["tombstones", "originals"] if _manifest(path)["version"] == 2 else [])


@pytest.mark.parametrize("keep", [0, 10, -1])
def test_truncated_file(copy, keep):
    for name in _names(copy):
        f = _file(copy, name)
        data = f.read_bytes()
        f.write_bytes(data[: keep if keep >= 0 else len(data) - 1])
        with pytest.raises(IndexFormatError, match=f.name):
            Index.open(copy)
        f.write_bytes(data)
    assert Index.open(copy).n_docs in (12, 62)


def test_corrupted_bytes(copy):
    for name in _names(copy):
        f = _file(copy, name)
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF
        f.write_bytes(bytes(data))
        with pytest.raises(IndexFormatError, match=f"{f.name}: checksum mismatch"):
            Index.open(copy)
        data[-1] ^= 0xFF
        f.write_bytes(bytes(data))


def test_missing_file(copy):
    for name in _names(copy):
        f = _file(copy, name)
        data = f.read_bytes()
        f.unlink()
        with pytest.raises(IndexFormatError, match=f"{f.name}: missing"):
            Index.open(copy)
        f.write_bytes(data)


def test_missing_segment_directory(built, tmp_path):
    shutil.copytree(built, tmp_path / "idx")
    shutil.rmtree(tmp_path / "idx" / "seg-000001")
    with pytest.raises(IndexFormatError, match="seg-000001/doclens.npy: missing"):
        Index.open(tmp_path / "idx")


def _rewrite(path, name, array):
    """Replace an array and its manifest entry, as a buggy writer would: checksums then agree."""
    m = _manifest(path)
    entries = m["segments"][0]["deleted"] if name == "tombstones" else {**m["codebook"], **m["segments"][0]["files"]}
    entry = entries if name == "tombstones" else entries[name]
    entry.update(save_array(path, entry["path"], array))
    (path / "manifest.json").write_text(json.dumps(seal(m)))


@pytest.fixture
def v2(built, tmp_path):
    dst = tmp_path / "idx"
    shutil.copytree(built, dst)
    return dst


def test_code_out_of_range_is_caught_without_checksums(v2):
    codes = np.load(_file(v2, "codes")).copy()
    codes[3] = 60000
    _rewrite(v2, "codes", codes)
    with pytest.raises(IndexFormatError, match="codes.npy: centroid id 60000 out of range"):
        Index.open(v2)


def test_wrong_dtype_is_caught(v2):
    _rewrite(v2, "codes", np.load(_file(v2, "codes")).astype(np.int64))
    with pytest.raises(IndexFormatError, match="codes.npy: expected shape"):
        Index.open(v2)


def test_bad_doclens_are_caught(v2):
    doclens = np.load(_file(v2, "doclens")).copy()
    doclens[0] += doclens[1]
    doclens[1] = 0  # same total, but an empty document: kernels assume >= 1 token
    _rewrite(v2, "doclens", doclens)
    with pytest.raises(IndexFormatError, match="doclens.npy"):
        Index.open(v2)


def test_nan_centroid_scale_is_caught(v2):
    scales = np.load(_file(v2, "centroid_scales")).copy()
    scales[0] = np.nan
    _rewrite(v2, "centroid_scales", scales)
    with pytest.raises(IndexFormatError, match="NaN"):
        Index.open(v2)


@pytest.mark.parametrize(
    "array,match",
    [
        (lambda a: a.astype(np.float32), "originals.npy: expected shape"),  # float32, not float16
        (lambda a: a[:-1], "originals.npy: expected shape"),  # a row short of the segment's tokens
        (lambda a: a[:, :-8], "originals.npy: expected shape"),  # another dim
        (lambda a: a.reshape(-1), "originals.npy: expected shape"),
    ],
)
def test_originals_of_the_wrong_shape_or_dtype_are_caught(v2, array, match):
    _rewrite(v2, "originals", array(np.load(_file(v2, "originals"))))
    with pytest.raises(IndexFormatError, match=match):
        Index.open(v2)


def test_originals_hold_the_documents_vectors_as_float16(v2):
    m = _manifest(v2)
    entry = _seg(m)["files"]["originals"]
    assert entry["dtype"] == "<f2" and entry["shape"] == [_seg(m)["n_tokens"], 64]
    assert np.load(_file(v2, "originals"), mmap_mode="r").dtype == np.float16
    assert m["keep_originals"] and "originals" in m["segments"][1]["files"]  # the add followed the build


def test_non_finite_originals_in_a_large_file_are_an_error_at_search(v2, monkeypatch):
    """A file over the checksum threshold is not read at open; a value a flipped bit made inf or NaN is caught
    when the search reads it (IndexFormatError, never a wrong ranking built on NaN)."""
    monkeypatch.setattr(manifest, "CHECKSUM_MAX_BYTES", 0)  # as if every file were large
    f = _file(v2, "originals")
    rows = np.load(f, mmap_mode="r+")
    rows[:] = np.inf  # every document of the segment
    rows.flush()
    del rows
    idx = Index.open(v2)
    q = np.ones((2, 64), np.float32)
    with pytest.raises(IndexFormatError, match="originals.npy: non-finite"):
        idx.search_exact(q, k=3)
    with pytest.raises(IndexFormatError, match="originals.npy: non-finite"):
        idx.search(q, k=3, params=SearchParams(nprobe=64, ndocs=4096, rerank=100))


def test_originals_truncated_after_open_are_an_error_not_a_crash(v2):
    idx = Index.open(v2)
    f = _file(v2, "originals")
    f.write_bytes(f.read_bytes()[:300])  # the open file sees the cut: no memory map to fault on
    with pytest.raises(IndexFormatError, match="originals.npy: shorter"):
        idx.search_exact(np.ones((2, 64), np.float32), k=3)


def test_string_id_offsets_are_checked(v2):
    offs = np.load(_file(v2, "doc_id_offsets")).copy()
    offs[5] = 10**9
    _rewrite(v2, "doc_id_offsets", offs)
    with pytest.raises(IndexFormatError, match="doc_id_offsets.npy"):
        Index.open(v2)


@pytest.mark.parametrize(
    "edit",
    [
        lambda bits: np.append(bits[:-1], bits[-1] | 1),  # a bit past the last document (60 docs: 4 spare)
        lambda bits: bits[:-1],  # too short for the segment
        lambda bits: np.full_like(bits, 0),  # no deletion, but the manifest counts 3
    ],
)
def test_bad_tombstones_are_caught(v2, edit):
    _rewrite(v2, "tombstones", edit(np.load(_file(v2, "tombstones"))))
    with pytest.raises(IndexFormatError, match="del-000000-"):
        Index.open(v2)


def _seg(m):
    return m["segments"][0]


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.update(version=99), "format version 99"),
        (lambda m: m.update(format="faiss"), "not a colbert_index manifest"),
        (lambda m: m.update(nbits=3), "invalid field"),
        (lambda m: m.pop("dim"), "invalid field"),
        (lambda m: m.update(generation=-1), "invalid field"),
        (lambda m: m.update(id_type="uuid"), "invalid field"),
        (lambda m: m.update(normalize="yes"), "invalid field"),
        (lambda m: _seg(m).update(n_tokens=_seg(m)["n_tokens"] + 1), "codes.npy: expected shape"),
        (lambda m: _seg(m).update(id_type="uuid"), "invalid segment entry"),
        (lambda m: _seg(m).pop("n_docs"), "invalid segment entry"),
        (lambda m: _seg(m)["files"].pop("residuals"), "no entry for residuals.npy"),
        (lambda m: m["codebook"].pop("centroids"), "no entry for centroids.npy"),
        (lambda m: _seg(m)["files"]["codes"].update(path="../../etc/passwd"), "invalid file path"),
        (lambda m: _seg(m)["files"]["codes"].update(path="/etc/passwd"), "invalid file path"),
        (lambda m: _seg(m)["deleted"].update(count=4), "del-000000-"),
    ],
)
def test_manifest_problems(v2, edit, match):
    m = _manifest(v2)
    edit(m)
    (v2 / "manifest.json").write_text(json.dumps(seal(m)))  # as a buggy writer would: the checksum agrees
    with pytest.raises(IndexFormatError, match=match):
        Index.open(v2)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.update(id_type="uuid"), "unknown id_type"),
        (lambda m: m["files"].pop("residuals"), "no entry for residuals.npy"),
        (lambda m: m.update(n_tokens=m["n_tokens"] + 1), "codes.npy: expected shape"),
        (lambda m: m.pop("files"), "invalid field"),
    ],
)
def test_v1_manifest_problems(tmp_path, edit, match):
    shutil.copytree(DATA / "v1_str", tmp_path / "idx")
    m = _manifest(tmp_path / "idx")
    edit(m)
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match=match):
        Index.open(tmp_path / "idx")


def test_manifest_not_json(copy):
    (copy / "manifest.json").write_bytes(b"\x00\xff{garbage")
    with pytest.raises(IndexFormatError, match="unreadable JSON"):
        Index.open(copy)


@pytest.mark.parametrize("name", ["residuals", "originals"])
def test_verify_checks_large_files_too(copy, monkeypatch, name):
    if name not in _names(copy):
        pytest.skip("format 1 keeps no vectors")
    monkeypatch.setattr(manifest, "CHECKSUM_MAX_BYTES", 0)  # as if every file were large
    f = _file(copy, name)
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    n = Index.open(copy).n_docs  # not read at open: the cost of a huge index
    assert n in (12, 62)
    with pytest.raises(IndexFormatError, match=f"{name}.npy: checksum mismatch"):
        Index.open(copy, verify=True)


def test_intact_copy_opens_and_searches(copy):
    idx = Index.open(copy, mmap=False, verify=True)
    assert idx.n_docs in (12, 62)
    assert idx.search(np.ones((2, idx.dim), np.float32), k=3).ids.shape == (1, 3)


def test_an_edited_manifest_is_refused_and_one_without_a_checksum_is_read(v2):
    """A field set to another valid value (tombstones dropped) still parses: the manifest's checksum catches it.
    Manifests written before the checksum existed have none and are read as they are."""
    m = _manifest(v2)
    assert m["checksum"] == seal(m)["checksum"]
    want = Index.open(v2).doc_ids().tolist()
    _seg(m)["deleted"] = None
    (v2 / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="manifest.json: checksum mismatch"):
        Index.open(v2)
    del m["checksum"]
    (v2 / "manifest.json").write_text(json.dumps(m))
    assert len(Index.open(v2).doc_ids()) > len(want)  # unchecked: read as written
