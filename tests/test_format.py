"""A damaged index must raise IndexFormatError naming the file, never crash or answer wrongly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from colbert_index import Index, IndexFormatError, storage

FILES = ["centroids", "centroid_scales", "bucket_cutoffs", "bucket_weights", "doclens", "codes", "residuals"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    rng = np.random.default_rng(11)
    docs = [rng.standard_normal((int(n), 64)).astype(np.float32) for n in rng.integers(1, 50, size=60)]
    docs = [d / np.linalg.norm(d, axis=1, keepdims=True) for d in docs]
    path = tmp_path_factory.mktemp("fmt") / "idx"
    Index.build(path, docs, doc_ids=[f"d{i}" for i in range(60)], progress=False)
    return path


@pytest.fixture
def copy(built, tmp_path):
    dst = tmp_path / "idx"
    shutil.copytree(built, dst)
    return dst


ALL_FILES = FILES + ["doc_id_bytes", "doc_id_offsets"]


@pytest.mark.parametrize("name", ALL_FILES)
@pytest.mark.parametrize("keep", [0, 10, -1])
def test_truncated_file(copy, name, keep):
    f = copy / f"{name}.npy"
    data = f.read_bytes()
    f.write_bytes(data[: keep if keep >= 0 else len(data) - 1])
    with pytest.raises(IndexFormatError, match=f"{name}.npy"):
        Index.open(copy)


@pytest.mark.parametrize("name", ALL_FILES)
def test_corrupted_bytes(copy, name):
    f = copy / f"{name}.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=f"{name}.npy: checksum mismatch"):
        Index.open(copy)


@pytest.mark.parametrize("name", ALL_FILES)
def test_missing_file(copy, name):
    (copy / f"{name}.npy").unlink()
    with pytest.raises(IndexFormatError, match=f"{name}.npy: missing"):
        Index.open(copy)


def _rewrite(path, name, array):
    """Replace an array and its manifest entry, as a buggy writer would: checksums then agree."""
    m = json.loads((path / "manifest.json").read_text())
    m["files"][name] = storage.save_array(path, name, array)
    (path / "manifest.json").write_text(json.dumps(m))


def test_code_out_of_range_is_caught_without_checksums(copy):
    codes = np.load(copy / "codes.npy").copy()
    codes[3] = 60000
    _rewrite(copy, "codes", codes)
    with pytest.raises(IndexFormatError, match="codes.npy: centroid id 60000 out of range"):
        Index.open(copy)


def test_wrong_dtype_is_caught(copy):
    _rewrite(copy, "codes", np.load(copy / "codes.npy").astype(np.int64))
    with pytest.raises(IndexFormatError, match="codes.npy: expected shape"):
        Index.open(copy)


def test_bad_doclens_are_caught(copy):
    doclens = np.load(copy / "doclens.npy").copy()
    doclens[0] += doclens[1]
    doclens[1] = 0  # same total, but an empty document: kernels assume >= 1 token
    _rewrite(copy, "doclens", doclens)
    with pytest.raises(IndexFormatError, match="doclens.npy"):
        Index.open(copy)


def test_nan_centroid_scale_is_caught(copy):
    scales = np.load(copy / "centroid_scales.npy").copy()
    scales[0] = np.nan
    _rewrite(copy, "centroid_scales", scales)
    with pytest.raises(IndexFormatError, match="NaN"):
        Index.open(copy)


def test_string_id_offsets_are_checked(copy):
    offs = np.load(copy / "doc_id_offsets.npy").copy()
    offs[5] = 10**9
    _rewrite(copy, "doc_id_offsets", offs)
    with pytest.raises(IndexFormatError, match="doc_id_offsets.npy"):
        Index.open(copy)


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda m: m.update(version=99), "format version 99"),
        (lambda m: m.update(format="faiss"), "not a colbert_index manifest"),
        (lambda m: m.update(nbits=3), "invalid field"),
        (lambda m: m.pop("dim"), "invalid field"),
        (lambda m: m.update(n_tokens=m["n_tokens"] + 1), "codes.npy: expected shape"),
        (lambda m: m.update(normalize="yes"), "invalid field"),
        (lambda m: m.update(id_type="uuid"), "unknown id_type"),
        (lambda m: m["files"].pop("residuals"), "no entry for residuals.npy"),
    ],
)
def test_manifest_problems(copy, edit, match):
    m = json.loads((copy / "manifest.json").read_text())
    edit(m)
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match=match):
        Index.open(copy)


def test_manifest_not_json(copy):
    (copy / "manifest.json").write_bytes(b"\x00\xff{garbage")
    with pytest.raises(IndexFormatError, match="unreadable JSON"):
        Index.open(copy)


def test_verify_checks_large_files_too(copy, monkeypatch):
    monkeypatch.setattr(storage, "CHECKSUM_MAX_BYTES", 0)  # as if every file were large
    f = copy / "residuals.npy"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x01
    f.write_bytes(bytes(data))
    assert Index.open(copy).n_docs == 60  # not read at open: the cost of a huge index
    with pytest.raises(IndexFormatError, match="residuals.npy: checksum mismatch"):
        Index.open(copy, verify=True)


def test_intact_copy_opens_and_searches(copy):
    idx = Index.open(copy, mmap=False)
    assert idx.n_docs == 60
    assert idx.search(np.ones((2, 64), np.float32), k=3).ids.shape == (1, 3)
