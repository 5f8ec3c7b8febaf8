"""Random but valid kernel inputs (numpy) for the device kernel tests: codes < K, sorted bucket weights,
CSR int64 offsets with the odd documents up front (1 token, two 41-token docs, an empty doc)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from colbert_index.kernels import reference


def unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=-1, keepdims=True), dtype=np.float32)


@dataclass
class Problem:
    """One collection with its codec, a query and candidates (slots 0..3 are the odd documents)."""

    Q: np.ndarray  # float32 [q_len, dim]
    codes: np.ndarray  # uint16 [n_tokens]
    packed: np.ndarray  # uint8 [n_tokens, dim * nbits // 8]
    offsets: np.ndarray  # int64 [n_docs + 1]
    candidates: np.ndarray  # int32
    centroids: np.ndarray  # float32 [K, dim]
    weights: np.ndarray  # float32 [dim, 2**nbits]
    table: np.ndarray  # reference.decode_table(weights, nbits)

    @property
    def S(self) -> np.ndarray:
        return reference.centroid_scores(self.centroids, self.Q)

    def codec_args(self, normalize: bool) -> tuple:
        """``(codes, packed, offsets, candidates, centroids, table, normalize)``: exact_maxsim's tail."""
        return self.codes, self.packed, self.offsets, self.candidates, self.centroids, self.table, normalize


def problem(
    seed: int, dim: int, nbits: int, q_len: int = 7, K: int = 37, n_random: int = 8, n_candidates: int = 6
) -> Problem:
    rng = np.random.default_rng(seed)
    lengths = [1, 41, 41, 0] + rng.integers(1, 50, n_random).tolist()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_tokens = int(offsets[-1])
    codes = rng.integers(0, K, n_tokens).astype(np.uint16)
    packed = rng.integers(0, 256, (n_tokens, dim * nbits // 8)).astype(np.uint8)
    centroids = unit(rng.standard_normal((K, dim)))
    weights = np.sort((0.05 * rng.standard_normal((dim, 2**nbits))).astype(np.float32), axis=1)
    n_docs = len(lengths)
    candidates = np.concatenate([[0, 1, 2, 3, 1, 0], rng.integers(0, n_docs, n_candidates)]).astype(np.int32)
    Q = unit(rng.standard_normal((q_len, dim)))
    return Problem(Q, codes, packed, offsets, candidates, centroids, weights, reference.decode_table(weights, nbits))


def tolerance(q_len: int) -> dict:
    """float32 sums of ``q_len`` maxima, each a dot product over ``dim`` terms, in another order."""
    return {"rtol": 1e-5, "atol": 2e-6 * q_len}
