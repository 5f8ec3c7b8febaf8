"""Retrieval metrics shared by the demo, the tests and the benchmarks."""

from __future__ import annotations

import numpy as np


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of the fraction of the true top-``k`` found in the returned top-``k``.

    >>> recall_at(np.array([[1, 2, 3]]), np.array([[3, 4, 1]]), 3)
    0.6666666666666666
    """
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def mrr_at(found: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    """Mean reciprocal rank of each query's one relevant id within the top ``k`` (0 when absent).

    >>> mrr_at(np.array([[5, 7], [1, 2]]), np.array([7, 9]), 2)
    0.25
    """
    rr = []
    for row, rel in zip(found, relevant):
        hits = np.flatnonzero(np.asarray(row[:k]) == rel)
        rr.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
    return float(np.mean(rr))


def found_at(found: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    """Fraction of queries whose relevant id is in the top ``k``."""
    return float(np.mean([rel in row[:k] for row, rel in zip(found, relevant)]))
