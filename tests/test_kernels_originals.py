"""The full-precision rerank's kernels (kernels/numba_originals.py) against their numpy references: exact MaxSim on
float16 rows, and reading a file's rows by document."""

from __future__ import annotations

import os

import numpy as np
import pytest
from colbert_index.kernels import numba_originals, reference

DIMS = (48, 64, 128)
Q_LENS = (1, 7, 32)


def _rows(seed: int, dim: int, n_random: int = 40):
    """float16 ``[n, dim]`` rows of documents with the odd shapes up front (1 token, two of 41, an empty one),
    their int64 offsets and candidates (repeats, odd ones, random ones)."""
    rng = np.random.default_rng(seed)
    lengths = [1, 41, 41, 0] + rng.integers(1, 50, n_random).tolist()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    x = rng.standard_normal((int(offsets[-1]), dim)).astype(np.float32)
    rows = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
    candidates = np.concatenate([[0, 1, 2, 3, 1, 0], rng.integers(0, len(lengths), 20)]).astype(np.int32)
    return rows, offsets, candidates


def _query(seed: int, q_len: int, dim: int) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((q_len, dim)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize("q_len", Q_LENS)
@pytest.mark.parametrize("dim", DIMS)
def test_exact_maxsim_originals(dim, q_len):
    rows, offsets, candidates = _rows(dim + q_len, dim)
    Q = _query(q_len, q_len, dim)
    ref = reference.exact_maxsim_originals(Q, rows, offsets, candidates)
    got = numba_originals.exact_maxsim_originals(Q, rows, offsets, candidates)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-6 * q_len)
    assert got[3] == ref[3] == 0.0  # the empty document
    # against plain MaxSim on the same values widened to float32
    docs = [rows[offsets[d] : offsets[d + 1]].astype(np.float32) for d in candidates]
    np.testing.assert_allclose(got, reference.maxsim(Q, docs), rtol=1e-5, atol=2e-6 * q_len)


@pytest.mark.parametrize("cand_dtype", (np.int32, np.int64))
def test_exact_maxsim_originals_empty_and_single_token(cand_dtype):
    rows, offsets, _ = _rows(1, 64)
    Q = _query(2, 5, 64)
    for mod in (reference, numba_originals):
        out = mod.exact_maxsim_originals(Q, rows, offsets, np.zeros(0, cand_dtype))
        assert out.shape == (0,) and out.dtype == np.float32
    one = np.array([0], cand_dtype)  # a 1-token document: the sum of the query tokens' products with it
    expect = (Q @ rows[0].astype(np.float32)).sum()
    for mod in (reference, numba_originals):
        np.testing.assert_allclose(mod.exact_maxsim_originals(Q, rows, offsets, one), [expect], rtol=1e-5, atol=1e-6)


def test_exact_maxsim_originals_on_a_memory_map_and_many_blocks(tmp_path):
    """More tokens than one widening block (4096), read straight from a memory-mapped .npy."""
    rng = np.random.default_rng(5)
    lengths = rng.integers(1, 300, 200)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    np.save(tmp_path / "o.npy", rng.standard_normal((int(offsets[-1]), 48)).astype(np.float16))
    rows = np.load(tmp_path / "o.npy", mmap_mode="r")
    Q = _query(3, 9, 48)
    candidates = rng.permutation(200).astype(np.int64)
    np.testing.assert_allclose(
        numba_originals.exact_maxsim_originals(Q, rows, offsets, candidates),
        reference.exact_maxsim_originals(Q, rows, offsets, candidates),
        rtol=1e-5,
        atol=1e-4,
    )


def test_half_to_float_is_exact_for_every_float16():
    """Both widenings, the instruction and the integer one, give numpy's float32 of every float16 bit pattern."""
    bits = np.arange(1 << 16, dtype=np.uint16).reshape(-1, 64)
    want = bits.view(np.float16).astype(np.float32)
    for convert in (numba_originals._half_sw, numba_originals.half_to_float):
        got = np.empty(bits.shape, np.float32)
        _widen(convert)(bits, got)
        assert np.array_equal(got.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)])
        assert np.isnan(got[np.isnan(want)]).all()


def _widen(convert):
    from numba import njit

    @njit
    def widen(src, out):
        for i in range(src.shape[0]):
            for j in range(src.shape[1]):
                out[i, j] = convert(src[i, j])

    return widen


@pytest.mark.parametrize("mod", (reference, numba_originals), ids=("numpy", "numba"))
@pytest.mark.parametrize("dim", DIMS)
def test_read_rows_reads_the_candidates_rows_by_position(tmp_path, mod, dim):
    rows, offsets, candidates = _rows(dim, dim)
    np.save(tmp_path / "o.npy", rows)
    data_offset = np.load(tmp_path / "o.npy", mmap_mode="r").offset
    want = np.concatenate([rows[offsets[d] : offsets[d + 1]] for d in candidates])
    fd = os.open(tmp_path / "o.npy", os.O_RDONLY)
    try:
        out = np.full((len(want) + 3, dim), np.nan, np.float16)  # room to spare: left as it was
        assert mod.read_rows(fd, data_offset, offsets, candidates, out) == len(want)
        assert np.array_equal(out[: len(want)], want) and np.isnan(out[len(want) :]).all()
        assert mod.read_rows(fd, data_offset, offsets, np.zeros(0, np.int64), out) == 0
        with pytest.raises(ValueError, match="rows"):  # never writes past the buffer
            mod.read_rows(fd, data_offset, offsets, candidates, out[: len(want) - 1])
        os.truncate(tmp_path / "o.npy", data_offset + int(offsets[5]) * dim * 2)  # the file cut short
        assert mod.read_rows(fd, data_offset, offsets, np.array([6, 7]), out) == -1
    finally:
        os.close(fd)
