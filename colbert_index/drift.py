"""How far added documents sit from the codebook, and extending the codebook for them.

Two measures, both relative to what the codebook was trained on:

* ``outside``: of the residual coordinates (token minus its centroid, per dimension), the fraction beyond
  the codebook's outermost bucket weights; the manifest's ``drift_expected`` is that fraction on held-out
  training tokens (``1 / 2**nbits`` for an index that predates it: its weights were the outer buckets' medians).
* ``outliers``: of the tokens, the fraction whose residual norm exceeds the ``OUTLIER_QUANTILE`` quantile
  of the training tokens' (the manifest's ``outlier_norm``): about 1% on data like the training data.

When the outliers of an ``add`` exceed ``EXPAND_MIN_OUTLIERS``, the codebook is *extended* with centroids
trained on them (k-means, one centroid per as many tokens as the index has per centroid) before the new
documents are encoded: the new centroids are appended, so every existing code keeps its meaning and no
segment is rewritten. Without this, documents of new topics are coded against centroids of the old
ones, and the centroid-based stages of the search pass them over.
"""

from __future__ import annotations

import numpy as np

from colbert_index.codec import ResidualCodec, dequantize_centroids, quantize_centroids

OUTLIER_QUANTILE = 0.99
EXPAND_MIN_OUTLIERS = 0.05
_SAMPLE_TOKENS = 1 << 14  # tokens of an add checked for outliers before deciding to extend
_KMEANS_POINTS_PER_CENTROID = 64
_MIN_POINTS_PER_CENTROID = 40  # faiss wants >= 39 training points per centroid


def outside_count(x: np.ndarray, codes: np.ndarray, codec: ResidualCodec) -> int:
    """Residual coordinates of ``x`` (assigned ``codes``) beyond the outermost bucket weights."""
    r = x - codec.centroids[codes]
    return int(np.count_nonzero((r < codec.weights[:, 0]) | (r > codec.weights[:, -1])))


def figures(codec: ResidualCodec, heldout: np.ndarray) -> dict:
    """The manifest's reference figures of a codebook, from held-out training tokens: ``outlier_norm`` and
    ``drift_expected`` (the ``outside`` fraction on them)."""
    x = np.ascontiguousarray(heldout, dtype=np.float32)
    codes = codec.assign(x)
    norms = np.linalg.norm(x - codec.centroids[codes], axis=1)
    return {
        "outlier_norm": float(np.quantile(norms, OUTLIER_QUANTILE)),
        "drift_expected": round(outside_count(x, codes, codec) / max(1, x.size), 6),
    }


def expected_outside(manifest: dict, nbits: int) -> float:
    """The ``outside`` fraction on data like the training data (``1 / 2**nbits`` before it was recorded)."""
    return float(manifest.get("drift_expected", 1 / 2**nbits))


def residual_norms(codec: ResidualCodec, tokens: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(tokens, dtype=np.float32)
    return np.linalg.norm(x - codec.centroids[codec.assign(x)], axis=1)


def outlier_norm(codec: ResidualCodec, tokens: np.ndarray) -> float:
    """The ``OUTLIER_QUANTILE`` quantile of the residual norms of ``tokens`` (held-out training tokens)."""
    return float(np.quantile(residual_norms(codec, tokens), OUTLIER_QUANTILE))


def estimate_outlier_norm(segments, backend, seed: int = 0) -> float:
    """:func:`outlier_norm` for an index built before it was recorded, from a sample of its stored tokens
    (decompressed: an approximation of the training residuals)."""
    n = [len(s.data.codes) for s in segments]
    rng = np.random.default_rng(seed)
    picks = [np.sort(rng.choice(m, min(m, _SAMPLE_TOKENS * m // sum(n) + 1), replace=False)) for m in n]
    codec = segments[0].data.codec
    dec = [
        codec.decompress(np.asarray(s.data.codes)[p], np.asarray(s.data.residuals)[p], backend)
        for s, p in zip(segments, picks)
    ]
    return outlier_norm(codec, np.concatenate(dec))


def extend_codebook(
    codec: ResidualCodec,
    stored: tuple[np.ndarray, np.ndarray],
    spill,
    norm: float,
    tokens_per_centroid: float,
    kmeans_iters: int = 4,
    seed: int = 0,
) -> tuple[ResidualCodec, tuple[np.ndarray, np.ndarray], dict]:
    """Extend the codebook for the outliers among the spilled tokens, if there are enough of them.

    ``stored``: the codebook's int8 centroids and scales, as on disk. Returns the (possibly unchanged)
    codec, its stored arrays and ``{"outliers": fraction, "centroids_added": n}``.
    """
    n_tokens = spill.shape[0]
    rng = np.random.default_rng(seed)
    [sample] = spill.rows(np.sort(rng.choice(n_tokens, min(n_tokens, _SAMPLE_TOKENS), replace=False)))
    fraction = float(np.mean(residual_norms(codec, sample) > norm))
    info = {"outliers": round(fraction, 6), "centroids_added": 0}
    K = codec.n_centroids
    room = (65536 if K <= 65536 else 2**32 - 1) - K  # the code dtype of existing segments must not change
    n_new = min(room, int(fraction * n_tokens / max(tokens_per_centroid, _MIN_POINTS_PER_CENTROID)))
    if fraction <= EXPAND_MIN_OUTLIERS or n_new < 1:
        return codec, stored, info
    outliers = np.concatenate([block[residual_norms(codec, block) > norm] for _, block in spill.blocks()])
    n_new = min(n_new, len(outliers) // _MIN_POINTS_PER_CENTROID)
    if n_new < 1:
        return codec, stored, info
    n_train = min(len(outliers), n_new * _KMEANS_POINTS_PER_CENTROID)
    train = outliers[np.sort(rng.choice(len(outliers), n_train, replace=False))]
    new = ResidualCodec.train(train, train[:1], n_new, codec.nbits, kmeans_iters=kmeans_iters, seed=seed)
    q_new, s_new = quantize_centroids(new.centroids)
    q, s = np.concatenate([stored[0], q_new]), np.concatenate([stored[1], s_new])
    extended = ResidualCodec(dequantize_centroids(q, s), codec.cutoffs, codec.weights, codec.nbits, codec.normalize)
    info["centroids_added"] = n_new
    return extended, (q, s), info
