"""The codec's bucket tables: Lloyd-Max steps lower the squared error of PLAID's quantile tables, stay ordered,
and survive degenerate dimensions. Two-level k-means (large K) against flat k-means."""

from __future__ import annotations

import numpy as np
import pytest

from colbert_index.codec import bucket_tables, share_by_count, spherical_kmeans, two_level_kmeans


def _decoded(r: np.ndarray, cutoffs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each coordinate replaced by its bucket's weight (the bucket: how many cutoffs it reaches)."""
    buckets = (r[:, :, None] >= cutoffs[None]).sum(axis=2)
    return weights[np.arange(r.shape[1])[None, :], buckets]


@pytest.mark.parametrize("nbits", [2, 4])
def test_lloyd_tables_lower_the_error_of_the_quantile_tables(nbits):
    rng = np.random.default_rng(0)
    r = np.concatenate([rng.standard_normal((4000, 3)), rng.laplace(size=(4000, 3)) * 0.3], axis=1)
    quantile = bucket_tables(r, nbits, steps=0)
    lloyd = bucket_tables(r, nbits)
    mse = [float(np.mean((_decoded(r, *t) - r) ** 2)) for t in (quantile, lloyd)]
    assert mse[1] < 0.95 * mse[0], mse
    cutoffs, weights = lloyd
    assert cutoffs.shape == (6, 2**nbits - 1) and weights.shape == (6, 2**nbits)
    assert np.all(np.diff(weights, axis=1) > 0) and np.all((cutoffs > weights[:, :-1]) & (cutoffs < weights[:, 1:]))
    # near a Lloyd-Max fixed point: each weight close to the mean of its bucket (30 steps do not fully converge)
    buckets = (r[:, 0, None] >= cutoffs[0][None]).sum(axis=1)
    for b in range(2**nbits):
        np.testing.assert_allclose(weights[0, b], r[buckets == b, 0].mean(), rtol=0.01, atol=1e-3)


def test_a_constant_dimension_keeps_finite_tables():
    r = np.random.default_rng(1).standard_normal((500, 2)).astype(np.float32)
    r[:, 1] = 0.25
    cutoffs, weights = bucket_tables(r, 2)
    assert np.isfinite(cutoffs).all() and np.isfinite(weights).all()
    np.testing.assert_allclose(_decoded(r, cutoffs, weights)[:, 1], 0.25, atol=1e-6)


def test_share_by_count_splits_exactly_and_respects_counts():
    rng = np.random.default_rng(2)
    for _ in range(50):
        counts = rng.integers(0, 40, size=int(rng.integers(1, 30)))
        k = int(rng.integers(0, counts.sum() + 1))
        share = share_by_count(counts, k)
        assert share.sum() == k and np.all(share <= counts) and np.all(share >= 0)
        # proportional up to the rounding, unless a cap moved the rest elsewhere
        if np.all(share < counts):
            assert np.all(np.abs(share - counts * k / counts.sum()) < 1.0 + 1e-9)
    with pytest.raises(ValueError, match="cannot split"):
        share_by_count(np.array([1, 2]), 4)


def test_two_level_kmeans_is_close_to_flat_kmeans():
    """k unit centroids whose fit (mean best inner product of held-out points) is within 1% of flat k-means."""
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((40, 32))
    x = centers[rng.integers(0, 40, 30000)] + 0.4 * rng.standard_normal((30000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    train, held = x[:25000], x[25000:]
    flat, two = spherical_kmeans(train, 256, 4, 0), two_level_kmeans(train, 256, 4, 0)
    assert two.shape == (256, 32) and two.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(two, axis=1), 1.0, atol=1e-5)
    fit = [float((held @ c.T).max(axis=1).mean()) for c in (flat, two)]
    assert fit[1] > 0.99 * fit[0], fit
