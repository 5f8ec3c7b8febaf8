"""Every Numba kernel against its numpy reference in :mod:`colbert_index.kernels.reference`.

Inputs are built here (random but valid: codes < K, sorted cutoffs, CSR int64 offsets, float32 C-contiguous
arrays); each test draws from its own ``np.random.default_rng(seed)``.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from colbert_index.kernels import numba_codec, numba_ivf, numba_rows, numba_scoring, numba_vnni, reference
from colbert_index.kernels.numba_select import top_k

from colbert_index.backend import get_backend
from colbert_index.codec import ResidualCodec, dequantize_centroids, quantize_centroids
from colbert_index.search import SearchParams, query_tables, score_bound

DIMS = (48, 64, 96, 128)
NBITS = (2, 4)
Q_LENS = (1, 7, 32)  # 7: both the 4-query unrolled path and the remainder of exact_maxsim
RTOL = 1e-4


def _atol(q_len: int) -> float:
    return 1e-4 * q_len


def _unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=-1, keepdims=True), dtype=np.float32)


def _offsets(lengths) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64), out=offsets[1:])
    return offsets


def _lengths(rng: np.random.Generator, n_random: int = 40, empty_doc: bool = True) -> list[int]:
    """Doc lengths with the odd shapes up front: 1 token, two 41-token docs, (optionally) an empty doc."""
    fixed = [1, 41, 41] + ([0] if empty_doc else [])
    return fixed + rng.integers(1, 50, n_random).tolist()


def _collection(rng: np.random.Generator, lengths, K: int, dim: int, nbits: int):
    offsets = _offsets(lengths)
    n_tokens = int(offsets[-1])
    codes = rng.integers(0, K, n_tokens).astype(np.uint16)
    packed = rng.integers(0, 256, (n_tokens, dim * nbits // 8)).astype(np.uint8)
    return codes, packed, offsets


def _codec(rng: np.random.Generator, K: int, dim: int, nbits: int):
    centroids = _unit(rng.standard_normal((K, dim)))
    bucket_weights = (0.05 * rng.standard_normal((dim, 2**nbits))).astype(np.float32)
    bucket_weights.sort(axis=1)
    return centroids, bucket_weights, reference.decode_table(bucket_weights, nbits)


def _queries(rng: np.random.Generator, q_len: int, dim: int) -> np.ndarray:
    return _unit(rng.standard_normal((q_len, dim)))


def _candidates(rng: np.random.Generator, n_docs: int, n: int = 70) -> np.ndarray:
    """More than one 32-doc block, with repeats, and every odd-shaped doc (slots 0..3) included."""
    head = np.array([0, 1, 2, 3, 1, 0], dtype=np.int32)[: min(6, n_docs)]
    head = head[head < n_docs]
    return np.concatenate([head, rng.integers(0, n_docs, n).astype(np.int32)])


def _plain_decompress(codes, packed, centroids, bucket_weights, nbits, normalize) -> np.ndarray:
    """Decompression written out directly: unpack buckets, look each dimension up, add the centroid."""
    buckets = reference.unpack_bits(packed, nbits).astype(np.int64)
    dim = bucket_weights.shape[0]
    out = centroids[codes.astype(np.int64)].astype(np.float64) + bucket_weights[np.arange(dim)[None, :], buckets]
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


# --------------------------------------------------------------------------------------------- codec


@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", DIMS)
def test_pack_unpack_round_trip(dim, nbits):
    rng = np.random.default_rng(100 + dim + nbits)
    buckets = rng.integers(0, 2**nbits, (37, dim)).astype(np.uint8)
    packed = reference.pack_bits(buckets, nbits)
    assert packed.dtype == np.uint8 and packed.shape == (37, dim * nbits // 8)
    np.testing.assert_array_equal(reference.unpack_bits(packed, nbits), buckets)
    # and the other way: any byte pattern is a valid packing
    raw = rng.integers(0, 256, (29, dim * nbits // 8)).astype(np.uint8)
    np.testing.assert_array_equal(reference.pack_bits(reference.unpack_bits(raw, nbits), nbits), raw)


@pytest.mark.parametrize("nbits", NBITS)
def test_pack_bits_layout_msb_first(nbits):
    """First dimension lives in the highest bits of byte 0."""
    per_byte = 8 // nbits
    buckets = np.zeros((1, 2 * per_byte), dtype=np.uint8)
    buckets[0, 0] = 1
    buckets[0, per_byte + per_byte - 1] = (1 << nbits) - 1
    packed = reference.pack_bits(buckets, nbits)
    np.testing.assert_array_equal(packed, [[1 << (8 - nbits), (1 << nbits) - 1]])


@pytest.mark.parametrize("n", (0, 1, 203))
@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", DIMS)
def test_compress_tokens(dim, nbits, n):
    rng = np.random.default_rng(200 + dim * 7 + nbits + n)
    cutoffs = np.sort((0.05 * rng.standard_normal((dim, 2**nbits - 1))).astype(np.float32), axis=1)
    weights = np.sort((0.05 * rng.standard_normal((dim, 2**nbits))).astype(np.float32), axis=1)
    centroids = (0.3 * rng.standard_normal((5, dim))).astype(np.float32)
    codes = rng.integers(0, 5, n).astype(np.uint16)
    residuals = (0.05 * rng.standard_normal((n, dim))).astype(np.float32)
    if n > 1:  # values exactly on a cutoff go to the upper bucket (searchsorted side="right")
        j = rng.integers(0, dim, n // 2)
        residuals[np.arange(n // 2), j] = cutoffs[j, rng.integers(0, 2**nbits - 1, n // 2)]
        residuals[-1] = cutoffs[:, 0] - 1.0  # below every cutoff -> bucket 0
        residuals[-2] = cutoffs[:, -1] + 1.0  # above every cutoff -> top bucket
    tokens = centroids[codes] + residuals
    ref, ref_out = reference.compress_tokens(tokens, codes, centroids, cutoffs, weights, nbits)
    got, got_out = numba_codec.compress_tokens(tokens, codes, centroids, cutoffs, weights, nbits)
    assert ref.dtype == got.dtype == np.uint8
    assert ref.shape == got.shape == (n, dim * nbits // 8)
    np.testing.assert_array_equal(got, ref)
    assert got_out == ref_out
    # independent checks: the bucket is the number of cutoffs <= residual; outside: beyond the outermost weights
    r = tokens - centroids[codes]
    expected = (cutoffs[None, :, :] <= r[:, :, None]).sum(axis=2)
    np.testing.assert_array_equal(reference.unpack_bits(ref, nbits), expected)
    assert ref_out == int(np.sum((r < weights[:, 0]) | (r > weights[:, -1])))
    if n > 1:
        assert (expected[-1] == 0).all() and (expected[-2] == 2**nbits - 1).all() and ref_out >= 2 * dim


@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", DIMS)
def test_decode_table(dim, nbits):
    rng = np.random.default_rng(300 + dim + nbits)
    _, bucket_weights, table = _codec(rng, 4, dim, nbits)
    per_byte = 8 // nbits
    assert table.dtype == np.float32 and table.flags.c_contiguous
    assert table.shape == (dim // per_byte, 256, per_byte)
    v = np.arange(256)
    for k in range(per_byte):
        bucket = (v >> (8 - nbits * (k + 1))) & ((1 << nbits) - 1)
        for b in range(dim // per_byte):
            np.testing.assert_array_equal(table[b, :, k], bucket_weights[b * per_byte + k, bucket])


@pytest.mark.parametrize("normalize", (False, True))
@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", DIMS)
def test_decompress(dim, nbits, normalize):
    rng = np.random.default_rng(400 + dim + nbits + normalize)
    K = 17
    centroids, bucket_weights, table = _codec(rng, K, dim, nbits)
    codes, packed, _ = _collection(rng, [1, 41, 150], K, dim, nbits)
    expected = _plain_decompress(codes, packed, centroids, bucket_weights, nbits, normalize)
    ref = reference.decompress(codes, packed, centroids, table, normalize)
    got = numba_codec.decompress(codes, packed, centroids, table, normalize)
    assert ref.dtype == got.dtype == np.float32
    assert ref.shape == got.shape == (len(codes), dim)
    np.testing.assert_allclose(ref, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # one token at a time agrees with the batch
    np.testing.assert_allclose(
        numba_codec.decompress(codes[40:41], packed[40:41], centroids, table, normalize), got[40:41], rtol=1e-6
    )


@pytest.mark.parametrize("nbits", NBITS)
def test_decompress_zero_vector_normalized(nbits):
    """A token decompressing to the zero vector stays zero (norm clamped), a tiny one becomes unit norm."""
    dim = 64
    rng = np.random.default_rng(450 + nbits)
    centroids = np.zeros((2, dim), dtype=np.float32)
    centroids[1] = _unit(rng.standard_normal(dim))
    bucket_weights = np.zeros((dim, 2**nbits), dtype=np.float32)
    table = reference.decode_table(bucket_weights, nbits)
    centroids[1] *= 1e-3  # tiny but non-zero: still rescaled to unit norm
    codes = np.array([0, 1], dtype=np.uint16)
    packed = rng.integers(0, 256, (2, dim * nbits // 8)).astype(np.uint8)
    ref = reference.decompress(codes, packed, centroids, table, True)
    got = numba_codec.decompress(codes, packed, centroids, table, True)
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got[0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(got[1]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("normalize", (False, True))
def test_decompress_no_tokens(normalize):
    dim, nbits = 64, 2
    rng = np.random.default_rng(460 + normalize)
    centroids, _, table = _codec(rng, 3, dim, nbits)
    codes, packed = np.zeros(0, np.uint16), np.zeros((0, dim * nbits // 8), np.uint8)
    for mod in (reference, numba_codec):
        out = mod.decompress(codes, packed, centroids, table, normalize)
        assert out.shape == (0, dim) and out.dtype == np.float32


# ------------------------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("K", (0, 1, 2, 37))  # odd K: the last row pairs with itself
@pytest.mark.parametrize("q_len", (*Q_LENS, 8, 16, 24, 40, 64))  # every column block width, and two blocks
@pytest.mark.parametrize("dim", (8, *DIMS))
def test_centroid_scores(dim, q_len, K):
    rng = np.random.default_rng(500 + dim + q_len + K)
    centroids = _unit(rng.standard_normal((K, dim)))
    Q = _queries(rng, q_len, dim)
    expected = centroids.astype(np.float64) @ Q.astype(np.float64).T
    for mod in (reference, numba_scoring):
        got = mod.centroid_scores(centroids, Q)
        assert got.dtype == np.float32 and got.shape == (K, q_len) and got.flags.c_contiguous
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=1e-5)


def test_row_scores_leaves_other_rows():
    """``row_scores`` writes ``out[:len(A)]`` only, whether its rows are whole vectors (q_len 16) or not (5)."""
    rng = np.random.default_rng(505)
    A = rng.standard_normal((5, 48)).astype(np.float32)
    for q_len in (5, 16):
        Q = _queries(rng, q_len, 48)
        out = np.full((8, q_len), 7.0, dtype=np.float32)
        numba_rows.row_scores(A, Q, out)
        np.testing.assert_allclose(out[:5], A.astype(np.float64) @ Q.T.astype(np.float64), rtol=RTOL, atol=1e-5)
        np.testing.assert_array_equal(out[5:], 7.0)


def _plain_codec(centroids: np.ndarray) -> ResidualCodec:
    dim = centroids.shape[1]
    return ResidualCodec(centroids, np.zeros((dim, 3), np.float32), np.zeros((dim, 4), np.float32), 2)


@pytest.mark.parametrize("K", (0, 1, 37, 300))  # odd K: the last row pairs with itself
@pytest.mark.parametrize("q_len", (1, 5, 8, 16, 24, 32, 40, 64))  # every column block width, and two blocks
@pytest.mark.parametrize("dim", (6, 8, *DIMS))  # 6: rows padded to whole 4-byte groups
def test_query_tables_int8(dim, q_len, K):
    """Stage 0 in int8: the reference's scores are within the query's rounding of the float scores of the
    stored centroids (an all-zero query token scores 0); the VNNI kernel's stage-3 rows, cells and stage-2
    table, all from one pass, are ``score_rows_int16``', ``probe_cells``' and ``kept_rows_int8``' of those
    scores to the bit, ties (duplicate centroids) included."""
    rng = np.random.default_rng(520 + dim + q_len + K)
    centroids = _unit(rng.standard_normal((K, dim)))
    if K > 10:
        centroids[K // 3 : K // 3 + 5] = centroids[K // 2]  # tied scores: the lower id goes first
    centroids = dequantize_centroids(*quantize_centroids(centroids))
    Q = _queries(rng, q_len, dim)
    if q_len > 2:
        Q[1] = 0.0
    u8, scales = _plain_codec(centroids).centroids_u8
    assert u8.shape == (K, -(-dim // 4) * 4) and np.all(u8[:, dim:] == 128)
    want = reference.centroid_scores_int8(u8, scales, Q)
    assert want.dtype == np.float32 and want.shape == (K, q_len)
    qi, sq = reference.quantize_query(Q)
    error = (np.abs(centroids).sum(axis=1)[:, None] * sq[None, :] / 2) * (1 + 1e-5) + 1e-6  # half a step per dim
    assert np.all(np.abs(want - centroids.astype(np.float64) @ Q.T.astype(np.float64)) <= error)
    if q_len > 2:
        np.testing.assert_array_equal(want[:, 1], 0.0)
    if numba_vnni.INT8_DOT is None:
        pytest.skip("Numba's target CPU has neither VNNI nor AVX2: no int8 kernel (the reference is still checked)")
    threshold = float(np.median(want.max(axis=1))) if K and q_len else 0.0  # about half the centroids kept
    table = _codec(rng, 1, dim, 2 if dim % 4 == 0 else 4)[2]
    bound = np.abs(want).max(axis=0).astype(np.float64) if K else np.zeros(q_len)
    stage3 = numba_scoring.refined_interaction_tables(Q, table, bound)
    _, scale, room = stage3
    rows16 = np.zeros((K, len(scale)), np.int16)
    rows16[:, :q_len] = reference.score_rows_int16(want, scale, room)
    assert np.all(np.abs(rows16[:, :q_len] * scale[:q_len] - want) <= scale[:q_len] / 2 + 1e-6)  # unclipped
    np.testing.assert_array_equal(numba_vnni.centroid_scores_int8(u8, scales, Q), want)  # stage 0 alone
    for nprobe in (1, 2, 5):
        got, cells, kept = numba_vnni.query_tables(u8, scales, Q, nprobe, threshold, stage3)
        assert got.dtype == np.int16 and got.shape == (K, len(scale)) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, rows16)
        np.testing.assert_array_equal(cells, reference.probe_cells(want, nprobe))
        for x, y in zip(kept, reference.kept_rows_int8(want, threshold)):
            np.testing.assert_array_equal(x, y)
        assert kept[0].dtype == np.uint16


def test_quantize_query_matches_reference():
    rng = np.random.default_rng(530)
    Q = (rng.standard_normal((9, 12)) * np.logspace(-3, 1, 9)[:, None]).astype(np.float32)
    Q[4] = 0.0
    packed, scale, sums = numba_vnni.quantize_query(Q, 12, 16)
    qi, sq = reference.quantize_query(Q)
    np.testing.assert_array_equal(scale[:9], sq)
    np.testing.assert_array_equal(scale[9:], 1.0)
    np.testing.assert_array_equal(packed.view(np.int8).reshape(3, 16, 4).transpose(1, 0, 2).reshape(16, 12)[:9], qi)
    np.testing.assert_array_equal(sums[:9], 128 * qi.astype(np.int32).sum(axis=1))
    assert np.abs(qi).max(axis=1)[[0, 1, 2, 3, 5, 6, 7, 8]].tolist() == [127] * 8


def test_query_tables_picks_the_int8_kernel_where_the_backend_has_it():
    """``search.query_tables``: the fused int8 pass with Numba on a CPU with VNNI or AVX2 (no float scores kept);
    the float scores, their cells and no stage-2/3 tables (built when those stages run) otherwise."""
    rng = np.random.default_rng(531)
    codec = _plain_codec(dequantize_centroids(*quantize_centroids(_unit(rng.standard_normal((50, 64))))))
    Q = _queries(rng, 7, 64)
    params = SearchParams(nprobe=2, centroid_score_threshold=0.1)
    float_scores = reference.centroid_scores(codec.centroids, Q)
    for name in ("numpy", "numba"):
        be = get_backend(name)
        tables3 = be.refined_interaction_tables(Q, codec.table, score_bound(codec, Q))
        S, rows3, cells, stage2 = query_tables(codec, Q, be, params, tables3)
        assert (be.query_tables_int8 is not None) == (name == "numba" and numba_vnni.INT8_DOT is not None)
        if name == "numba" and numba_vnni.INT8_DOT is not None:
            want = reference.centroid_scores_int8(*codec.centroids_u8, Q)
            assert S is None
            np.testing.assert_array_equal(rows3[:, :7], reference.score_rows_int16(want, tables3[1], tables3[2]))
            for x, y in zip(stage2, reference.kept_rows_int8(want, 0.1)):
                np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(S, float_scores, rtol=RTOL, atol=1e-5)
            want = S
            assert rows3 is None and stage2 is None
        np.testing.assert_array_equal(cells, reference.probe_cells(want, 2))
    assert np.all(score_bound(codec, Q) >= np.abs(float_scores).max(axis=0))


def _interaction_inputs(seed: int, q_len: int, K: int):
    rng = np.random.default_rng(seed)
    dim = 64
    centroids = _unit(rng.standard_normal((K, dim)))
    S = reference.centroid_scores(centroids, _queries(rng, q_len, dim))
    codes, _, offsets = _collection(rng, _lengths(rng), K, dim, 2)
    return rng, S, codes, offsets


@pytest.mark.parametrize("pruning", ("median", "all", "none"))
@pytest.mark.parametrize("K", (1, 64))
@pytest.mark.parametrize("q_len", Q_LENS)
def test_centroid_interaction(q_len, K, pruning):
    rng, S, codes, offsets = _interaction_inputs(600 + q_len + K, q_len, K)
    n_docs = len(offsets) - 1
    candidates = _candidates(rng, n_docs)
    best = S.max(axis=1)
    if pruning == "none":
        threshold = -np.inf
    elif pruning == "all":
        threshold = float(best.max()) + 1.0
    else:  # a float32-representable threshold equal to one centroid's best score (tests ">=")
        threshold = float(np.sort(best)[K // 2])
    keep = best >= threshold
    if pruning == "median" and K > 1:
        assert keep.any() and not keep.all()
    ref = reference.centroid_interaction(S, codes, offsets, candidates, threshold)
    got = numba_scoring.centroid_interaction(S, codes, offsets, candidates, threshold)
    assert ref.dtype == got.dtype == np.float32 and got.shape == candidates.shape
    # the kernel's int8 arithmetic is the quantised reference's exactly, and within q_len half steps of float
    quantised = reference.centroid_interaction(S, codes, offsets, candidates, threshold, quantised=True)
    np.testing.assert_array_equal(got, quantised)
    np.testing.assert_allclose(got, ref, rtol=0, atol=_interaction_bound(S, threshold))
    assert got[candidates == 3].tolist() == [0.0] * int((candidates == 3).sum())  # the empty doc
    if pruning == "all":
        np.testing.assert_array_equal(got, 0.0)
    if pruning == "none":  # no pruning: plain MaxSim over the centroid scores of the doc's tokens
        for i, d in enumerate(candidates[:6]):
            c = codes[offsets[d] : offsets[d + 1]].astype(np.int64)
            expected = S[c].max(axis=0).sum() if len(c) else 0.0
            np.testing.assert_allclose(got[i], expected, rtol=0, atol=_interaction_bound(S, threshold))


def _interaction_bound(S, threshold) -> float:
    """The most the int8 rows can move a stage-2 score: half a step per query token (and float32 sums)."""
    step = reference.kept_rows_int8(S, threshold)[2]
    return float(S.shape[1] * step / 2 * (1 + 1e-5) + _atol(S.shape[1]))


@pytest.mark.parametrize("q_len", (*Q_LENS, 40))
def test_kept_rows_int8(q_len):
    """The kernel's stage-2 table is the reference's to the bit: kept centroids numbered from 0 in id order,
    32 query tokens per block, the last row all -128 (pruned), rows within half a step of the scores, padding 0."""
    rng = np.random.default_rng(610 + q_len)
    S = (0.4 * rng.standard_normal((200, q_len))).astype(np.float32)
    threshold = float(np.median(S.max(axis=1)))  # about half the centroids kept
    remap, rows, step = numba_scoring.kept_rows_int8(S, threshold)
    for got, want in zip((remap, rows, step), reference.kept_rows_int8(S, threshold)):
        np.testing.assert_array_equal(got, want)
    keep = S.max(axis=1) >= np.float32(threshold)
    n = int(keep.sum())
    assert 0 < n < len(S) and remap.dtype == np.uint16 and rows.shape == ((q_len + 31) // 32, n + 1, 32)
    np.testing.assert_array_equal(remap[keep], np.arange(n))
    np.testing.assert_array_equal(remap[~keep], n)
    flat = rows.transpose(1, 0, 2).reshape(n + 1, -1)  # [row, q_pad]
    assert np.all(flat[n] == -128) and np.all(flat[:n, q_len:] == 0) and np.abs(flat[:n]).max() == 127
    assert np.all(np.abs(flat[remap[keep], :q_len] * step - S[keep]) <= step / 2 * (1 + 1e-5))


def test_centroid_interaction_past_65536_centroids():
    """Codebooks over 65536 centroids have uint32 codes: stage 2 remaps them through a uint32 table."""
    rng = np.random.default_rng(611)
    K = 65536 + 300
    S = (0.4 * rng.standard_normal((K, 8))).astype(np.float32)
    S[::500] = -2.0  # pruned at threshold -1; the rest kept, so row numbers pass 65535 too
    codes = rng.integers(K - 600, K, 400).astype(np.uint32)  # ids on both sides of 65536
    codes[:20] = np.arange(0, K, 500)[-20:]  # document 0: pruned tokens only
    offsets = np.arange(0, 401, 20, dtype=np.int64)
    candidates = np.arange(20)
    remap = numba_scoring.kept_rows_int8(S, -1.0)[0]
    assert remap.dtype == np.uint32 and remap[codes[20:]].max() > 65535
    got = numba_scoring.centroid_interaction(S, codes, offsets, candidates, -1.0)
    want = reference.centroid_interaction(S, codes, offsets, candidates, -1.0, quantised=True)
    np.testing.assert_array_equal(got, want)
    assert got[0] == 0 and np.all(got[1:] > 0)


def test_centroid_interaction_fully_pruned_doc_scores_zero():
    """A doc whose every token is pruned scores 0 even when its unpruned score would be negative."""
    S = np.array([[-0.5, -0.25], [0.75, 0.5], [-1.0, -0.125]], dtype=np.float32)
    codes = np.array([0, 2, 1, 0], dtype=np.uint16)
    offsets = np.array([0, 2, 4], dtype=np.int64)
    candidates = np.array([0, 1, 0], dtype=np.int32)
    for threshold, expected in ((0.0, [0.0, 1.25, 0.0]), (-np.inf, [-0.625, 1.25, -0.625])):
        ref = reference.centroid_interaction(S, codes, offsets, candidates, threshold)
        got = numba_scoring.centroid_interaction(S, codes, offsets, candidates, threshold)
        np.testing.assert_allclose(ref, expected, rtol=1e-6)
        np.testing.assert_allclose(got, expected, rtol=0, atol=_interaction_bound(S, threshold))
        assert (got[[0, 2]] == 0.0).all() == (threshold == 0.0)  # exactly 0 when pruned


def test_centroid_interaction_threshold_not_float32_representable():
    """The threshold is compared in float32 by both (a float64 compare would prune this token)."""
    threshold = 0.45  # PLAID's default for k <= 100; float32(0.45) < 0.45
    S = np.array([[np.float32(threshold), 0.0]], dtype=np.float32)
    codes = np.zeros(1, dtype=np.uint16)
    offsets = np.array([0, 1], dtype=np.int64)
    candidates = np.zeros(1, dtype=np.int32)
    ref = reference.centroid_interaction(S, codes, offsets, candidates, threshold)
    got = numba_scoring.centroid_interaction(S, codes, offsets, candidates, threshold)
    assert ref[0] == np.float32(threshold)  # both compare in float32: the token is kept
    assert got[0] == np.float32(127) * (np.float32(threshold) / np.float32(127))  # its row: 127 steps


@pytest.mark.parametrize("q_len", Q_LENS)
@pytest.mark.parametrize("normalize", (False, True))
@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", DIMS)
def test_exact_maxsim(dim, nbits, normalize, q_len):
    rng = np.random.default_rng(700 + dim + nbits + normalize + q_len)
    K = 23
    centroids, bucket_weights, table = _codec(rng, K, dim, nbits)
    codes, packed, offsets = _collection(rng, _lengths(rng), K, dim, nbits)
    candidates = _candidates(rng, len(offsets) - 1)
    Q = _queries(rng, q_len, dim)
    ref = reference.exact_maxsim(Q, codes, packed, offsets, candidates, centroids, table, normalize)
    got = numba_scoring.exact_maxsim(Q, codes, packed, offsets, candidates, centroids, table, normalize)
    assert ref.dtype == got.dtype == np.float32 and got.shape == candidates.shape
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=_atol(q_len))
    # independent: float64 MaxSim over the plainly decompressed docs
    for i, d in enumerate(candidates[:8]):
        lo, hi = offsets[d], offsets[d + 1]
        D = _plain_decompress(codes[lo:hi], packed[lo:hi], centroids, bucket_weights, nbits, normalize)
        expected = (Q.astype(np.float64) @ D.T).max(axis=1).sum() if hi > lo else 0.0
        np.testing.assert_allclose(got[i], expected, rtol=RTOL, atol=_atol(q_len))
    assert got[candidates == 3].tolist() == [0.0] * int((candidates == 3).sum())  # the empty doc
    # repeated candidates score alike (not always to the bit: BLAS may sum a row at another place in the
    # block in another order)
    for d in (0, 1):
        np.testing.assert_allclose(got[candidates == d], got[candidates == d][0], rtol=1e-6, atol=_atol(q_len))


@pytest.mark.parametrize("nprobe", (1, 3))
def test_probe_cells(nprobe):
    rng = np.random.default_rng(740 + nprobe)
    K, q_len = 17, 9
    S = reference.centroid_scores(rng.standard_normal((K, 48)).astype(np.float32), _queries(rng, q_len, 48))
    cells = reference.probe_cells(S, nprobe)
    np.testing.assert_array_equal(numba_ivf.probe_cells(S, nprobe), cells)
    assert cells.shape == (q_len, min(nprobe, K)) and cells.dtype == np.int32
    best = np.sort(S, axis=0)[::-1][: min(nprobe, K)].T  # each token's best scores, best first
    np.testing.assert_array_equal(np.take_along_axis(S.T, cells.astype(np.int64), axis=1), best)


@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", (8, 48, 64, 96, 128))
def test_nibble_table(dim, nbits):
    """Rows 32 b + (v >> 4) and 32 b + 16 + (v & 15) sum to Q . (residual of byte value v at position b)."""
    rng = np.random.default_rng(730 + dim + nbits)
    _, _, table = _codec(rng, 5, dim, nbits)
    Q = _queries(rng, 7, dim)
    lut = numba_rows.nibble_table(Q, table, 32)
    assert lut.shape == (table.shape[0] * 32, 32) and lut.dtype == np.float64
    np.testing.assert_array_equal(lut[:, 7:], 0.0)  # padding columns
    per_byte = table.shape[2]
    for b in range(table.shape[0]):
        v = np.arange(256)
        got = lut[32 * b + (v >> 4)] + lut[32 * b + 16 + (v & 15)]
        want = table[b] @ Q[:, b * per_byte : (b + 1) * per_byte].T  # [256, q_len]
        np.testing.assert_allclose(got[:, :7], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("q_len", (1, 7, 40))
@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", (8, 48, 64, 128))
def test_byte_table_int8(dim, nbits, q_len):
    """The kernel's int8 table is the reference's to the bit (float64, products exact), padding columns are 0,
    and ``lut * scale`` is the float table within half a step; row ``256 b + v`` is the two half-byte rows."""
    rng = np.random.default_rng(735 + dim + nbits + q_len)
    _, _, table = _codec(rng, 5, dim, nbits)
    Q = _queries(rng, q_len, dim)
    q_pad = (q_len + 31) // 32 * 32
    nbytes = table.shape[0]
    limit, room = reference.int16_room(nbytes)
    half = numba_rows.nibble_table(Q, table, q_pad)[:, :q_len]
    v = np.arange(256)
    lut = np.concatenate([half[32 * b + (v >> 4)] + half[32 * b + 16 + (v & 15)] for b in range(nbytes)])
    big = np.abs(lut).max(axis=0) / limit * room * 3  # centroid scores 3x past what the table's step leaves room for
    for bound in (np.zeros(q_len), big):
        padded = np.zeros(q_pad)
        padded[:q_len] = bound
        got, got_scale = numba_rows.byte_table_int8(Q, table, q_pad, padded)
        want, scale = reference.byte_table_int8(Q, table, bound)
        assert got.dtype == want.dtype == np.int8 and got.shape == (nbytes * 256, q_pad)
        np.testing.assert_array_equal(got[:, :q_len], want)
        np.testing.assert_array_equal(got_scale[:q_len], scale)
        np.testing.assert_array_equal(got[:, q_len:], 0)
        assert np.all(np.abs(want * scale - lut) <= scale / 2 * (1 + 1e-5))
        assert np.all(bound / scale <= room * (1 + 1e-6))  # a score within the bound fits beside the rows
        peak = np.abs(want.astype(np.int64)).max(axis=0)
        if bound is big:  # the bound decides the step: a third of the limit
            assert np.all(peak <= limit // 3 + 1) and np.all(peak >= limit // 3 - 1)
        else:  # each column's peak takes the limit
            assert np.all(peak == limit)


def test_score_rows_int16_clips_to_the_room():
    """Stage 3's centroid scores in table units: the kernel is the reference to the bit, past ``q_len`` is 0, and
    scores beyond the room the rows' sums leave are clipped to it (an int16 sum never wraps)."""
    rng = np.random.default_rng(740)
    S = (rng.standard_normal((9, 5)) * 3).astype(np.float32)
    scale = np.ones(32, np.float32)
    scale[:5] = np.float32(1e-4)
    room = reference.int16_room(16)[1]  # dim 64, 2 bits: 32767 - 16 * 127
    got = numba_rows.score_rows_int16(S, scale, room)
    want = reference.score_rows_int16(S, scale, room)
    np.testing.assert_array_equal(got[:, :5], want)
    np.testing.assert_array_equal(got[:, 5:], 0)
    assert room == 30735 and np.abs(want).max() == room and 0 < np.abs(want).min() < room


def test_byte_table_int8_tiny_query_tokens():
    """A query token so small that its table's step underflows float32 gets a zero column (scale 1) in both
    the kernel and the reference, instead of a division by zero (Numba) or inf -> int8 (numpy); one whose
    step is subnormal stays within the limit."""
    table = reference.decode_table(np.tile(np.float32([-0.05, -0.01, 0.01, 0.05]), (8, 1)), 2)
    Q = np.zeros((3, 8), dtype=np.float32)
    Q[0], Q[1], Q[2] = 0.35, 1e-44, 1.79e-42
    got, got_scale = numba_rows.byte_table_int8(Q, table, 32, np.zeros(32))
    want, scale = reference.byte_table_int8(Q, table)
    np.testing.assert_array_equal(got[:, :3], want)
    np.testing.assert_array_equal(got_scale[:3], scale)
    assert np.all(want[:, 1] == 0) and scale[1] == 1.0
    assert np.abs(want.astype(np.int64)).max() <= 127
    S = np.zeros((2, 3), dtype=np.float32)
    codes, packed, offsets = np.zeros(2, np.uint16), np.full((2, 2), 0x1B, np.uint8), np.array([0, 2], np.int64)
    out = numba_scoring.refined_interaction(Q, S, codes, packed, offsets, np.array([0], np.int32), table)
    assert np.isfinite(out).all()


def _quantisation_bound(Q, table) -> float:
    """The most rounding the int8 tables can move a document's stage-3 score: half a step on each of a
    token's ``nbytes`` rows, for every query token."""
    return float(reference.byte_table_int8(Q, table)[1].sum() * table.shape[0] / 2)


@pytest.mark.parametrize("q_len", (*Q_LENS, 40))  # 40: two 32-column blocks of the lookup sums
@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", DIMS)
def test_refined_interaction(dim, nbits, q_len):
    _check_refined_interaction(750 + dim + nbits + q_len, 17, dim, nbits, q_len)


@pytest.mark.parametrize(("dim", "nbits"), ((4, 2), (12, 2), (6, 4)))  # 1 or 3 bytes: an odd last byte
def test_refined_interaction_odd_bytes(dim, nbits):
    """Residuals of an odd number of bytes: the kernel sums bytes in pairs, and the last one alone."""
    _check_refined_interaction(760 + dim + nbits, 5, dim, nbits, 7)


def _check_refined_interaction(seed: int, K: int, dim: int, nbits: int, q_len: int) -> None:
    """The kernel against the quantised reference, and against exact un-normalised MaxSim within the tables'
    rounding."""
    rng = np.random.default_rng(seed)
    centroids, _, table = _codec(rng, K, dim, nbits)
    codes, packed, offsets = _collection(rng, _lengths(rng), K, dim, nbits)
    candidates = _candidates(rng, len(offsets) - 1)
    Q = _queries(rng, q_len, dim)
    S = reference.centroid_scores(centroids, Q)
    args = (codes, packed, offsets, candidates, table)
    ref = reference.refined_interaction(Q, S, *args, quantised=True)
    got = numba_scoring.refined_interaction(Q, S, *args)
    assert ref.dtype == got.dtype == np.float32 and got.shape == candidates.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * q_len)
    # independent: exact MaxSim over the un-normalised decompressed tokens, within the rounding of the tables
    unnormalised = reference.exact_maxsim(Q, codes, packed, offsets, candidates, centroids, table, False)
    np.testing.assert_allclose(reference.refined_interaction(Q, S, *args), unnormalised, rtol=RTOL, atol=_atol(q_len))
    assert np.abs(got - unnormalised).max() <= _quantisation_bound(Q, table) + _atol(q_len)
    assert got[candidates == 3].tolist() == [0.0] * int((candidates == 3).sum())  # the empty doc


def test_refined_interaction_past_65536_centroids():
    """Codebooks over 65536 centroids have uint32 codes (ResidualCodec.code_dtype): stage 3 reads them too, and
    equals the reference, also for the tokens whose centroid ids pass 65535."""
    rng = np.random.default_rng(765)
    K, dim, nbits, q_len = 65536 + 300, 16, 2, 7
    _, _, table = _codec(rng, 3, dim, nbits)
    S = (0.3 * rng.standard_normal((K, q_len))).astype(np.float32)
    codes = rng.integers(K - 600, K, 400).astype(np.uint32)  # ids on both sides of 65536
    packed = rng.integers(0, 256, (400, dim * nbits // 8)).astype(np.uint8)
    offsets = np.arange(0, 401, 20, dtype=np.int64)
    candidates = np.arange(20)
    Q = _queries(rng, q_len, dim)
    got = numba_scoring.refined_interaction(Q, S, codes, packed, offsets, candidates, table)
    want = reference.refined_interaction(Q, S, codes, packed, offsets, candidates, table, quantised=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * q_len)
    low = (codes % 65536).astype(np.uint16)
    wrapped = numba_scoring.refined_interaction(Q, S, low, packed, offsets, candidates, table)
    assert not np.allclose(got, wrapped)  # the high ids matter: a uint16 view of them would score other centroids


@pytest.mark.parametrize("backend", ("numpy", "numba"))
def test_refined_interaction_tables_once(backend):
    """Stage 3 from tables built once per query (as search shares them between segments) = the one-call kernel,
    for every split of the candidates."""
    be = get_backend(backend)
    rng = np.random.default_rng(771)
    K, dim, nbits, q_len = 17, 64, 2, 32
    centroids, _, table = _codec(rng, K, dim, nbits)
    codes, packed, offsets = _collection(rng, _lengths(rng), K, dim, nbits)
    candidates = _candidates(rng, len(offsets) - 1)
    Q = _queries(rng, q_len, dim)
    S = reference.centroid_scores(centroids, Q)
    whole = be.refined_interaction(Q, S, codes, packed, offsets, candidates, table)
    tables = be.refined_interaction_tables(Q, table, np.abs(S).max(axis=0).astype(np.float64))
    rows = be.refined_interaction_scores(tables, S)
    split = np.array_split(candidates, 3)
    parts = [be.refined_interaction_from(tables, rows, codes, packed, offsets, c) for c in split]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    want = reference.refined_interaction(Q, S, codes, packed, offsets, candidates, table, quantised=backend == "numba")
    np.testing.assert_allclose(whole, want, rtol=1e-5, atol=1e-5 * q_len)


@pytest.mark.parametrize("dim", (256, 512))
def test_refined_interaction_int16_headroom(dim):
    """Every table entry at the limit and every byte selecting it: a token's sum is the largest the int16
    accumulators are sized for (dim 512, 4 bits: 256 rows of 127), and must not wrap."""
    nbits, K, q_len = 4, 3, 33
    nbytes = dim * nbits // 8
    table = np.full((nbytes, 256, 8 // nbits), 0.01, dtype=np.float32)
    Q = np.full((q_len, dim), dim**-0.5, dtype=np.float32)
    codes = np.zeros(5, dtype=np.uint16)
    packed = np.full((5, nbytes), 0xFF, dtype=np.uint8)
    offsets = np.array([0, 2, 5], dtype=np.int64)
    candidates = np.array([0, 1], dtype=np.int32)
    S = np.zeros((K, q_len), dtype=np.float32)
    lut, scale = reference.byte_table_int8(Q, table)
    assert np.all(lut == min(127, 32767 // nbytes))
    got = numba_scoring.refined_interaction(Q, S, codes, packed, offsets, candidates, table)
    want = np.float32(q_len * dim * 0.01 * dim**-0.5)  # every residual dimension 0.01, every query one 1/sqrt(dim)
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("cand_dtype", (np.int32, np.int64))
def test_empty_candidate_list(cand_dtype):
    rng = np.random.default_rng(800)
    dim, nbits, K, q_len = 64, 2, 5, 32
    centroids, _, table = _codec(rng, K, dim, nbits)
    codes, packed, offsets = _collection(rng, _lengths(rng, 5), K, dim, nbits)
    Q = _queries(rng, q_len, dim)
    S = reference.centroid_scores(centroids, Q)
    empty = np.zeros(0, dtype=cand_dtype)
    for threshold in (-np.inf, 0.0):
        for mod in (reference, numba_scoring):
            out = mod.centroid_interaction(S, codes, offsets, empty, threshold)
            assert out.shape == (0,) and out.dtype == np.float32
    for mod in (reference, numba_scoring):
        out = mod.exact_maxsim(Q, codes, packed, offsets, empty, centroids, table, True)
        assert out.shape == (0,) and out.dtype == np.float32
        out = mod.refined_interaction(Q, S, codes, packed, offsets, empty, table)
        assert out.shape == (0,) and out.dtype == np.float32


def test_only_empty_docs_as_candidates():
    """Every candidate is an empty doc: scratch buffers of length 0, every score 0."""
    rng = np.random.default_rng(810)
    dim, nbits, K, q_len = 48, 4, 3, 1
    centroids, _, table = _codec(rng, K, dim, nbits)
    codes, packed, offsets = _collection(rng, [2, 0, 0, 3], K, dim, nbits)
    candidates = np.array([1, 2, 1], dtype=np.int32)
    Q = _queries(rng, q_len, dim)
    S = reference.centroid_scores(centroids, Q)
    for mod in (reference, numba_scoring):
        np.testing.assert_array_equal(mod.centroid_interaction(S, codes, offsets, candidates, -np.inf), 0.0)
        np.testing.assert_array_equal(
            mod.exact_maxsim(Q, codes, packed, offsets, candidates, centroids, table, False), 0.0
        )
        np.testing.assert_array_equal(mod.refined_interaction(Q, S, codes, packed, offsets, candidates, table), 0.0)


def test_int64_candidates():
    rng = np.random.default_rng(820)
    dim, nbits, K, q_len = 96, 2, 11, 32
    centroids, _, table = _codec(rng, K, dim, nbits)
    codes, packed, offsets = _collection(rng, _lengths(rng), K, dim, nbits)
    c32 = _candidates(rng, len(offsets) - 1)
    c64 = c32.astype(np.int64)
    Q = _queries(rng, q_len, dim)
    S = reference.centroid_scores(centroids, Q)
    np.testing.assert_array_equal(
        numba_scoring.centroid_interaction(S, codes, offsets, c64, -np.inf),
        numba_scoring.centroid_interaction(S, codes, offsets, c32, -np.inf),
    )
    np.testing.assert_allclose(
        numba_scoring.exact_maxsim(Q, codes, packed, offsets, c64, centroids, table, True),
        reference.exact_maxsim(Q, codes, packed, offsets, c64, centroids, table, True),
        rtol=RTOL,
        atol=_atol(q_len),
    )


@pytest.mark.parametrize("q_len", Q_LENS)
def test_segment_max_sum(q_len):
    rng = np.random.default_rng(900 + q_len)
    offsets = _offsets(_lengths(rng) + [0])  # empty docs in the middle and at the end
    scores = rng.standard_normal((int(offsets[-1]), q_len)).astype(np.float32)
    ref = reference.segment_max_sum(scores, offsets)
    got = numba_scoring.segment_max_sum(scores, offsets)
    assert ref.dtype == got.dtype == np.float32 and got.shape == (len(offsets) - 1,)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=_atol(q_len))
    assert got[3] == 0.0 and got[-1] == 0.0
    np.testing.assert_allclose(got[0], scores[0].sum(), rtol=1e-6)  # the 1-token doc
    # all-negative scores: the max is negative, not clamped at 0
    neg = -np.abs(scores) - 1.0
    got_neg = numba_scoring.segment_max_sum(neg, offsets)
    np.testing.assert_allclose(got_neg, reference.segment_max_sum(neg, offsets), rtol=RTOL, atol=_atol(q_len))
    assert (got_neg[np.diff(offsets) > 0] < 0).all()


def test_segment_max_sum_no_docs():
    scores = np.zeros((0, 4), dtype=np.float32)
    offsets = np.zeros(1, dtype=np.int64)
    assert reference.segment_max_sum(scores, offsets).shape == (0,)
    assert numba_scoring.segment_max_sum(scores, offsets).shape == (0,)


def test_segment_max_sums_matches_one_query_at_a_time():
    rng = np.random.default_rng(905)
    offsets = _offsets(_lengths(rng) + [0])
    q_lens = [32, 1, 7, 48]
    bounds = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int64)
    scores = rng.standard_normal((int(offsets[-1]), int(bounds[-1]))).astype(np.float32) - 0.5
    got = numba_scoring.segment_max_sums(scores, offsets, bounds)
    ref = reference.segment_max_sums(scores, offsets, bounds)
    assert got.dtype == ref.dtype == np.float32 and got.shape == ref.shape == (len(q_lens), len(offsets) - 1)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        one = reference.segment_max_sum(np.ascontiguousarray(scores[:, a:b]), offsets)
        np.testing.assert_allclose(ref[i], one, rtol=RTOL, atol=_atol(q_lens[i]))
        np.testing.assert_allclose(got[i], one, rtol=RTOL, atol=_atol(q_lens[i]))
    assert (got[:, np.diff(offsets) == 0] == 0).all()
    none = np.zeros(1, dtype=np.int64)  # no queries
    assert numba_scoring.segment_max_sums(scores[:, :0], offsets, none).shape == (0, len(offsets) - 1)
    assert reference.segment_max_sums(scores[:, :0], offsets, none).shape == (0, len(offsets) - 1)


# --------------------------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("slot_dtype", (np.int32, np.int64))
@pytest.mark.parametrize("n,k", ((0, 5), (1, 1), (7, 10), (64, 10), (300, 1), (3000, 256)))
def test_top_k(n, k, slot_dtype):
    """numba_select.top_k (Numba keys) equals reference.top_k: order, ties at the cut to the lower slots, dtypes."""
    rng = np.random.default_rng(930 + n + k)
    for decimals in (0, 1, 6):  # few distinct scores (many ties) to nearly none
        scores = np.round(rng.standard_normal(n), decimals).astype(np.float32)
        scores[rng.random(n) < 0.1] = -np.inf
        scores[rng.random(n) < 0.1] = -0.0  # ties with 0.0
        slots = rng.choice(2**32 - 1 if slot_dtype == np.int64 else 2**31 - 1, n, replace=False).astype(slot_dtype)
        got, ref = top_k(scores, slots, k), reference.top_k(scores, slots, k)
        assert got[0].dtype == np.float32 and got[1].dtype == slot_dtype and len(got[0]) == min(n, k)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])


def test_top_k_rejects_bad_slots_and_k():
    scores = np.ones(3, dtype=np.float32)
    for bad in (-1, 2**32):
        with pytest.raises(ValueError, match="slots"):
            top_k(scores, np.array([0, bad, 2], dtype=np.int64), 2)
    with pytest.raises(ValueError, match="k must be"):
        top_k(scores, np.arange(3), 0)


# ----------------------------------------------------------------------------------------------- ivf


def _check_ivf(ivf_offsets, ivf_docs, codes, offsets, K):
    assert ivf_offsets.dtype == np.int64 and ivf_docs.dtype == np.int32
    assert ivf_offsets.shape == (K + 1,) and ivf_offsets[0] == 0 and ivf_offsets[-1] == len(ivf_docs)
    lists = [set() for _ in range(K)]
    for d in range(len(offsets) - 1):
        for c in codes[offsets[d] : offsets[d + 1]]:
            lists[int(c)].add(d)
    for c in range(K):
        assert ivf_docs[ivf_offsets[c] : ivf_offsets[c + 1]].tolist() == sorted(lists[c])


@pytest.mark.parametrize("K", (1, 7, 64))
def test_build_ivf(K):
    rng = np.random.default_rng(1000 + K)
    codes, _, offsets = _collection(rng, _lengths(rng, 60) + [0], K, 64, 2)
    ref = reference.build_ivf(codes, offsets, K)
    got = numba_ivf.build_ivf(codes, offsets, K)
    _check_ivf(*ref, codes, offsets, K)
    _check_ivf(*got, codes, offsets, K)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_build_ivf_unused_centroids_and_no_docs():
    K = 10
    codes = np.array([3, 3, 7, 3], dtype=np.uint16)
    offsets = np.array([0, 1, 1, 4], dtype=np.int64)
    for mod in (reference, numba_ivf):
        ivf_offsets, ivf_docs = mod.build_ivf(codes, offsets, K)
        _check_ivf(ivf_offsets, ivf_docs, codes, offsets, K)
        assert ivf_docs.tolist() == [0, 2, 2]
        ivf_offsets, ivf_docs = mod.build_ivf(np.zeros(0, np.uint16), np.zeros(1, np.int64), K)
        assert ivf_offsets.tolist() == [0] * (K + 1) and ivf_docs.shape == (0,)


def _probe_expected(S, nprobe, ivf_offsets, ivf_docs):
    """Brute force: per query token, the nprobe best centroids by (score desc, id asc)."""
    K, q_len = S.shape
    cells = set()
    for q in range(q_len):
        ranked = sorted(range(K), key=lambda c: (-float(S[c, q]), c))
        cells.update(ranked[:nprobe])
    return sorted({int(d) for c in cells for d in ivf_docs[ivf_offsets[c] : ivf_offsets[c + 1]]})


@pytest.mark.parametrize("ties", (False, True))
@pytest.mark.parametrize("nprobe", (1, 2, 1000))
@pytest.mark.parametrize("K", (1, 5, 64))
@pytest.mark.parametrize("q_len", Q_LENS)
def test_probe(q_len, K, nprobe, ties):
    rng = np.random.default_rng(1100 + q_len + K + nprobe + ties)
    S = rng.standard_normal((K, q_len)).astype(np.float32)
    if ties:  # few distinct values: tie-breaking towards the lower centroid id matters
        S = np.round(S).astype(np.float32)
    codes, _, offsets = _collection(rng, [1, 41, 41] + rng.integers(1, 6, 120).tolist(), K, 64, 2)
    n_docs = len(offsets) - 1
    ivf_offsets, ivf_docs = reference.build_ivf(codes, offsets, K)
    ref = reference.probe(reference.probe_cells(S, nprobe), ivf_offsets, ivf_docs, n_docs)
    got = numba_ivf.probe(numba_ivf.probe_cells(S, nprobe), ivf_offsets, ivf_docs, n_docs)
    assert ref.dtype == got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)
    assert got.tolist() == _probe_expected(S, nprobe, ivf_offsets, ivf_docs)
    if nprobe >= K:  # every cell probed: every doc
        assert got.tolist() == list(range(n_docs))


@pytest.mark.parametrize("n_any, n_cells", ((0, 3), (1, 1), (1, 4), (2, 6), (3, 70)))
@pytest.mark.parametrize("K", (5, 64))
@pytest.mark.parametrize("q_len", Q_LENS)
def test_probe_agreed(q_len, K, n_any, n_cells):
    """The probe of the first n_any columns, plus every document that the cells of two query tokens or more list
    (counted by brute force over each token's cells); cells shared by tokens and repeated within a token's row."""
    rng = np.random.default_rng(1130 + q_len + K + n_any + n_cells)
    S = rng.standard_normal((K, q_len)).astype(np.float32)
    S[:, : q_len // 2] = S[:, :1]  # tokens with the same cells: their documents agree
    codes, _, offsets = _collection(rng, [1, 41, 41] + rng.integers(1, 6, 120).tolist(), K, 64, 2)
    n_docs = len(offsets) - 1
    ivf = reference.build_ivf(codes, offsets, K)
    cells = reference.probe_cells(S, n_cells)
    ref = reference.probe_agreed(cells, n_any, *ivf, n_docs)
    got = numba_ivf.probe_agreed(cells, n_any, *ivf, n_docs)
    assert ref.dtype == got.dtype == np.int32
    np.testing.assert_array_equal(got, ref)
    tokens = np.zeros(n_docs, int)
    for q in range(q_len):
        tokens[sorted(set(_probe_expected(S[:, q : q + 1], n_cells, *ivf)))] += 1
    first = set(_probe_expected(S, n_any, *ivf)) if n_any else set()
    assert got.tolist() == sorted(first | set(np.flatnonzero(tokens >= 2).tolist()))
    if n_any:  # never fewer than the probe of its first columns
        assert set(reference.probe(cells[:, :n_any], *ivf, n_docs).tolist()) <= set(got.tolist())


@pytest.mark.parametrize("nprobe, n_cells", ((1, 1), (1, 4), (2, 2), (2, 8), (3, 70)))
@pytest.mark.parametrize("K", (5, 64))
@pytest.mark.parametrize("q_len", Q_LENS)
def test_probe_bound(q_len, K, nprobe, n_cells):
    """Candidates of the first nprobe cells (= the probe's); the bound equals brute force over each
    document's centroids (exact where a token's best centroid is among the cells, else the next centroid's
    score) and is never below the unpruned centroid interaction."""
    rng = np.random.default_rng(1120 + q_len + K + nprobe + n_cells)
    S = rng.standard_normal((K, q_len)).astype(np.float32)
    codes, _, offsets = _collection(rng, [1, 41, 41] + rng.integers(1, 6, 120).tolist(), K, 64, 2)
    n_docs = len(offsets) - 1
    ivf = reference.build_ivf(codes, offsets, K)
    ext = reference.probe_cells(S, n_cells + 1)
    cells = np.ascontiguousarray(ext[:, :n_cells])
    floor = S[ext[:, n_cells], np.arange(q_len)] if ext.shape[1] > n_cells else S.min(axis=0)
    ref_c, ref_b = reference.probe_bound(S, cells, nprobe, floor, *ivf, n_docs)
    got_c, got_b = numba_ivf.probe_bound(S, cells, nprobe, floor, *ivf, n_docs)
    np.testing.assert_array_equal(got_c, reference.probe(cells[:, :nprobe], *ivf, n_docs))
    np.testing.assert_array_equal(ref_c, got_c)
    assert got_b.dtype == ref_b.dtype == np.float32
    np.testing.assert_allclose(got_b, ref_b, rtol=RTOL, atol=_atol(q_len))
    expected = []
    for d in got_c:
        best = S[codes[offsets[d] : offsets[d + 1]].astype(np.int64)].max(axis=0)  # [q_len]
        in_cells = np.array([best[q] >= S[cells[q], q].min() for q in range(q_len)])
        expected.append(np.where(in_cells, best, floor).sum())
    np.testing.assert_allclose(got_b, expected, rtol=RTOL, atol=_atol(q_len))
    unpruned = reference.centroid_interaction(S, codes, offsets, got_c, -np.inf)
    assert np.all(got_b >= unpruned - _atol(q_len))
    if n_cells >= K:  # every centroid in the cells: the bound is the centroid interaction itself
        np.testing.assert_allclose(got_b, unpruned, rtol=RTOL, atol=_atol(q_len))


@pytest.mark.parametrize("ties", (False, True))
@pytest.mark.parametrize("nprobe", (1, 3, 40))
@pytest.mark.parametrize("K", (1, 15, 16, 17, 100))
def test_probe_cells_ids(K, nprobe, ties):
    """The blocked scan (blocks of 16 centroids skipped when none beats a token's floor) = argsort."""
    rng = np.random.default_rng(1150 + K + nprobe + ties)
    S = rng.standard_normal((K, 7)).astype(np.float32)
    if ties:
        S = np.round(S).astype(np.float32)
    S[K // 2] += 3.0  # a late winner after the floors have risen
    np.testing.assert_array_equal(numba_ivf.probe_cells(S, nprobe), reference.probe_cells(S, nprobe))


def test_probe_bitmap_word_edges():
    """Documents at the edges of the probe's 64-bit words (0, 63, 64, 127, 128, the last) and in no list."""
    n_docs, q_len = 200, 3
    lists = [[0, 63, 64, 199], [63, 127, 128], [1, 64, 190], [5]]
    ivf_offsets = np.cumsum([0] + [len(x) for x in lists]).astype(np.int64)
    ivf_docs = np.concatenate(lists).astype(np.int32)
    S = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.5, 0.4, 0.7], [0.0, 0.0, 0.0]], dtype=np.float32)
    for nprobe in (1, 2, 3):
        cells = reference.probe_cells(S, nprobe)
        got = numba_ivf.probe(cells, ivf_offsets, ivf_docs, n_docs)
        np.testing.assert_array_equal(got, reference.probe(cells, ivf_offsets, ivf_docs, n_docs))
        ext = reference.probe_cells(S, 4)
        floor = S[ext[:, 3], np.arange(q_len)]
        ref_c, ref_b = reference.probe_bound(S, ext[:, :3], nprobe, floor, ivf_offsets, ivf_docs, n_docs)
        got_c, got_b = numba_ivf.probe_bound(S, ext[:, :3], nprobe, floor, ivf_offsets, ivf_docs, n_docs)
        np.testing.assert_array_equal(got_c, ref_c)
        np.testing.assert_allclose(got_b, ref_b, rtol=1e-6, atol=1e-6)
    assert numba_ivf.probe(np.array([[0]], np.int32), ivf_offsets, ivf_docs, n_docs).tolist() == [0, 63, 64, 199]


def test_probe_tie_break_lower_id():
    # centroids 1 and 3 tie for best; nprobe=1 must pick 1, whose list holds only doc 0
    S = np.array([[0.0], [2.0], [1.0], [2.0]], dtype=np.float32)
    ivf_offsets = np.array([0, 1, 2, 3, 4], dtype=np.int64)
    ivf_docs = np.array([2, 0, 3, 1], dtype=np.int32)
    for mod in (reference, numba_ivf):
        assert mod.probe(mod.probe_cells(S, 1), ivf_offsets, ivf_docs, 4).tolist() == [0]
        assert mod.probe(mod.probe_cells(S, 2), ivf_offsets, ivf_docs, 4).tolist() == [0, 1]
        assert mod.probe(mod.probe_cells(S, 3), ivf_offsets, ivf_docs, 4).tolist() == [0, 1, 3]


def test_probe_empty_cells():
    """Probed centroids with empty IVF lists give an empty (int32) candidate list."""
    S = np.array([[3.0, 2.0], [1.0, 0.0]], dtype=np.float32)
    ivf_offsets = np.array([0, 0, 2], dtype=np.int64)
    ivf_docs = np.array([0, 1], dtype=np.int32)
    for mod in (reference, numba_ivf):
        out = mod.probe(mod.probe_cells(S, 1), ivf_offsets, ivf_docs, 2)
        assert out.dtype == np.int32 and out.shape == (0,)
        assert mod.probe(mod.probe_cells(S, 2), ivf_offsets, ivf_docs, 2).tolist() == [0, 1]


def test_probe_nprobe_zero_is_empty():
    S = np.array([[3.0], [1.0]], dtype=np.float32)
    ivf_offsets = np.array([0, 1, 2], dtype=np.int64)
    ivf_docs = np.array([0, 1], dtype=np.int32)
    for mod in (reference, numba_ivf):
        assert mod.probe(mod.probe_cells(S, 0), ivf_offsets, ivf_docs, 2).tolist() == []


# -------------------------------------------------------------------------------------- reference


def test_reference_doctests():
    result = doctest.testmod(reference)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize("normalize", (False, True))
@pytest.mark.parametrize("q_len", Q_LENS)
def test_reference_exact_maxsim_equals_maxsim(q_len, normalize):
    rng = np.random.default_rng(1200 + q_len + normalize)
    dim, nbits, K = 96, 4, 13
    centroids, _, table = _codec(rng, K, dim, nbits)
    codes, packed, offsets = _collection(rng, _lengths(rng, 10), K, dim, nbits)
    candidates = _candidates(rng, len(offsets) - 1, 10)
    Q = _queries(rng, q_len, dim)
    docs = []
    for d in candidates:
        lo, hi = offsets[d], offsets[d + 1]
        D = reference.decompress(codes[lo:hi], packed[lo:hi], centroids, table, normalize) if hi > lo else None
        docs.append(D if D is not None else np.zeros((0, dim), np.float32))
    expected = reference.maxsim(Q, docs)
    got = reference.exact_maxsim(Q, codes, packed, offsets, candidates, centroids, table, normalize)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * q_len)
    assert got[candidates == 3].tolist() == [0.0] * int((candidates == 3).sum())


def test_one_blas_thread_limits_and_restores():
    from threadpoolctl import threadpool_info, threadpool_limits

    from colbert_index.backend import one_blas_thread

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        with one_blas_thread():
            assert set(blas_threads()) <= {1}
            with one_blas_thread():  # nested: still one, and the inner exit does not restore
                pass
            assert set(blas_threads()) <= {1}
        assert blas_threads() == before
