"""Index-time token pooling (docs/pooling.md): each document keeps about ``n / pool_factor`` vectors.

As PyLate pools: the first ``protected`` tokens (the [CLS] of a ColBERT document) are kept as they are, the
others are clustered with Ward's agglomerative clustering into ``max(1, n_rest // pool_factor)`` clusters
(the backend's ``ward_clusters`` kernel), and each cluster is replaced by the mean of its tokens, normalised
to unit length when the document's tokens are unit vectors (ColBERT's are). Clustering is quadratic in the
document's length, so longer documents are pooled in consecutive chunks of :data:`CHUNK_TOKENS` tokens.
"""

from __future__ import annotations

import numpy as np

CHUNK_TOKENS = 2048
PROTECTED_TOKENS = 1
_UNIT_TOLERANCE = 2e-3  # the codec's rule for unit vectors (colbert_index.build.train_codec)


def check_pool_factor(pool_factor) -> int:
    """``pool_factor`` as an int >= 1 (1: no pooling), or ``ValueError`` naming it."""
    if isinstance(pool_factor, bool) or not isinstance(pool_factor, (int, np.integer)) or pool_factor < 1:
        raise ValueError(f"pool_factor must be an integer >= 1 (1 keeps every token), got {pool_factor!r}")
    return int(pool_factor)


def pool_tokens(doc: np.ndarray, pool_factor: int, backend, protected: int = PROTECTED_TOKENS) -> np.ndarray:
    """``doc [n, dim]`` pooled to about ``n / pool_factor`` float32 vectors (see the module docstring); the
    protected tokens come first, then one vector per cluster in the order of the clusters' first tokens."""
    pool_factor = check_pool_factor(pool_factor)
    doc = np.asarray(doc, dtype=np.float32)
    if pool_factor == 1 or len(doc) <= protected + 1:
        return doc
    unit = bool(np.allclose(np.linalg.norm(doc, axis=1), 1.0, atol=_UNIT_TOLERANCE))
    parts = [doc[:protected]]
    rest = doc[protected:]
    for lo in range(0, len(rest), CHUNK_TOKENS):
        chunk = np.ascontiguousarray(rest[lo : lo + CHUNK_TOKENS])
        labels = backend.ward_clusters(chunk, max(1, len(chunk) // pool_factor))
        n_clusters = int(labels.max()) + 1
        sums = np.zeros((n_clusters, doc.shape[1]), dtype=np.float64)
        np.add.at(sums, labels, chunk)
        means = sums / np.bincount(labels, minlength=n_clusters)[:, None]
        if unit:
            means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        parts.append(means.astype(np.float32))
    return np.concatenate(parts)

