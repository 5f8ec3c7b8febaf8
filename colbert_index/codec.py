"""Residual codec: k-means centroids plus per-dimension 2/4-bit quantised residuals."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import faiss
import numpy as np

from colbert_index.kernels.reference import decode_table

NBITS = (2, 4)
# Up to this K, tokens are assigned to their exact nearest centroid (a BLAS product, ~K*dim flops per
# token). Beyond it that is too slow on a CPU (60M tokens x 65536 centroids: hours), so k-means runs in
# two levels (`two_level_kmeans`) and compression goes through coarse cells over the centroids, each row
# scored against the centroids of its ASSIGN_NPROBE nearest cells; `assignment_agreement` measures what
# that gives up.
FLAT_ASSIGN_MAX_K = 16384
ASSIGN_NPROBE = 8
ASSIGN_BLOCK = 1 << 18
# Lloyd steps over all centroids after `two_level_kmeans` fits them cell by cell.
GLOBAL_STEPS = 2
# Lloyd-Max steps of the per-dimension bucket tables (0: PLAID's quantile cutoffs and median weights).
LLOYD_STEPS = 30


def check_nbits_dim(nbits: int, dim: int) -> None:
    if nbits not in NBITS:
        raise ValueError(f"nbits must be 2 or 4, got {nbits!r}")
    if dim * nbits % 8:
        raise ValueError(f"dim * nbits must be a multiple of 8 to pack residuals into bytes (dim={dim}, nbits={nbits})")


def default_n_centroids(n_tokens: int, dim: int, nbits: int) -> int:
    """PLAID's K = 2**floor(log2(16*sqrt(n_tokens))), halved until the int8 codebook costs at most
    1/48 of the per-token payload (codes + residuals), so small corpora are not dominated by it.

    >>> default_n_centroids(60_000_000, 64, 2)
    65536
    >>> default_n_centroids(1_000_000, 128, 2)
    4096
    """
    k = 2 ** int(math.floor(math.log2(16 * math.sqrt(max(n_tokens, 1)))))
    payload = n_tokens * (dim * nbits // 8 + 2)
    while k > 16 and k * dim * 48 > payload:
        k //= 2
    return int(max(1, min(k, n_tokens // 40)))  # faiss wants >= 39 training points per centroid


def quantize_centroids(centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[K, dim]`` floats -> (int8 ``[K, dim]``, float32 per-centroid scales ``[K]``), the stored form."""
    scales = (np.abs(centroids).max(axis=1) / 127.0).astype(np.float32)
    scales[scales == 0] = 1.0
    q = np.clip(np.rint(centroids / scales[:, None]), -127, 127).astype(np.int8)
    return q, scales


def dequantize_centroids(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(q.astype(np.float32) * scales.astype(np.float32)[:, None])


def bucket_tables(residuals: np.ndarray, nbits: int, steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``(cutoffs [dim, 2**nbits - 1], weights [dim, 2**nbits])`` of ``residuals [n, dim]``.

    PLAID's tables (cutoffs at the quantiles ``i / 2**nbits``, weights at the bucket medians), then ``steps``
    (default :data:`LLOYD_STEPS`) Lloyd-Max steps per dimension: each weight moves to the mean of its bucket and
    each cutoff halfway between its neighbouring weights, which lowers the squared error of the decoded residuals
    at every step (a 1-D k-means). A bucket left empty keeps its weight.
    """
    levels = 2**nbits
    r = np.sort(np.asarray(residuals, dtype=np.float64), axis=0)  # [n, dim], each column sorted
    n, dim = r.shape
    cutoffs = np.quantile(r, np.arange(1, levels) / levels, axis=0).T
    weights = np.quantile(r, (np.arange(levels) + 0.5) / levels, axis=0).T
    csum = np.vstack([np.zeros((1, dim)), np.cumsum(r, axis=0)])  # prefix sums: a bucket's sum in O(1)
    cols = np.arange(dim)
    for _ in range(LLOYD_STEPS if steps is None else steps):
        cutoffs = (weights[:, 1:] + weights[:, :-1]) / 2
        # bucket b holds the sorted rows [edge[b], edge[b + 1]) of each column
        inner = np.stack([np.searchsorted(r[:, j], cutoffs[j], side="left") for j in range(dim)])  # [dim, levels-1]
        edges = np.concatenate([np.zeros((dim, 1), np.int64), inner, np.full((dim, 1), n)], axis=1)
        count = np.diff(edges, axis=1)
        total = csum[edges[:, 1:], cols[:, None]] - csum[edges[:, :-1], cols[:, None]]
        weights = np.where(count > 0, total / np.maximum(count, 1), weights)
    cutoffs = (weights[:, 1:] + weights[:, :-1]) / 2 if (LLOYD_STEPS if steps is None else steps) else cutoffs
    return np.ascontiguousarray(cutoffs, np.float32), np.ascontiguousarray(weights, np.float32)


def spherical_kmeans(sample: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """``k`` unit centroids of ``sample`` rows (faiss spherical k-means with exact assignment), float32 ``[k, dim]``."""
    if k == 1:
        c = sample.mean(axis=0, keepdims=True)
        return (c / max(float(np.linalg.norm(c)), 1e-12)).astype(np.float32)
    km = faiss.Clustering(sample.shape[1], k)
    km.niter, km.seed, km.spherical = niter, seed, True
    km.max_points_per_centroid, km.min_points_per_centroid = len(sample) // k + 1, 1
    km.train(sample, faiss.IndexFlatIP(sample.shape[1]))
    return faiss.vector_to_array(km.centroids).reshape(k, sample.shape[1])


def share_by_count(counts: np.ndarray, k: int) -> np.ndarray:
    """``k`` split among groups in proportion to ``counts`` (largest remainders), no group above its count.

    >>> share_by_count(np.array([50, 30, 20]), 10).tolist()
    [5, 3, 2]
    >>> share_by_count(np.array([1, 99]), 50).tolist()
    [1, 49]
    """
    counts = np.asarray(counts, dtype=np.int64)
    if k > counts.sum():
        raise ValueError(f"cannot split {k} centroids among {int(counts.sum())} points")
    exact = counts * (k / max(int(counts.sum()), 1))
    share = np.minimum(np.floor(exact).astype(np.int64), counts)
    while share.sum() < k:  # hand out the rest by largest remainder among groups with room
        room = share < counts
        gap = np.where(room, exact - share, -np.inf)
        take = np.argsort(-gap, kind="stable")[: min(k - int(share.sum()), int(room.sum()))]
        share[take] += 1
    return share


def two_level_kmeans(sample: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    """``k`` unit centroids in two levels: ``~sqrt(k)`` coarse k-means cells over ``sample``, then each cell split
    by a k-means of its own points into a share of ``k`` in proportion to them.

    Flat k-means with ``k`` in the tens of thousands costs ``k`` dot products per point and iteration (minutes
    even through an HNSW graph); here a point meets ``sqrt(k)`` coarse and ``~sqrt(k)`` fine centroids. Each
    centroid is fitted to the points of its own cell, then :data:`GLOBAL_STEPS` Lloyd steps over all of them
    (assigning through :class:`CoarseCells`) smooth the seams between cells.
    """
    n, dim = sample.shape
    nlist = min(coarse_cell_count(k), k)
    owner = np.zeros(n, dtype=np.int64)
    if nlist > 1:
        owner = _flat_ip(spherical_kmeans(sample, nlist, niter, seed)).search(sample, 1)[1][:, 0]
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(nlist + 1))
    share = share_by_count(np.diff(bounds), k)
    parts = [
        spherical_kmeans(sample[np.sort(order[bounds[c] : bounds[c + 1]])], int(share[c]), niter, seed + c)
        for c in range(nlist)
        if share[c]
    ]
    centroids = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    # Cells fitted apart leave seams where they meet; Lloyd steps over all of them (each point to its nearest
    # centroid as compression will find it) smooth them: fewer documents missed by the search's probe.
    for _ in range(GLOBAL_STEPS):
        owner = CoarseCells(centroids).assign(sample)
        sums = np.stack([np.bincount(owner, weights=sample[:, j], minlength=k) for j in range(dim)], axis=1)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = np.where(norms > 0, sums / np.maximum(norms, 1e-30), centroids).astype(np.float32)
    return centroids


def coarse_cell_count(k: int) -> int:
    """Coarse cells over ``k`` centroids (two-level k-means, :class:`CoarseCells`): the power of two nearest
    ``sqrt(k)``."""
    return 2 ** round(math.log2(math.sqrt(k)))


def _flat_ip(rows: np.ndarray) -> faiss.IndexFlatIP:
    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(np.ascontiguousarray(rows, dtype=np.float32))
    return index


class CoarseCells:
    """Approximate nearest-centroid assignment for large K: the centroids clustered into ``nlist ~ sqrt(K)`` coarse
    cells (a flat index over them), each cell's centroid ids and a flat index over their rows. A row is scored
    against the centroids of its ``ASSIGN_NPROBE`` nearest cells, as an inverted file would probe them, but cell by
    cell: the rows probing a cell in one flat search (BLAS blocks, the best member kept in cache), which beats
    faiss's row-by-row IndexIVFFlat for the same choices (docs/design-notes.md)."""

    def __init__(self, centroids: np.ndarray) -> None:
        self.centroids = centroids
        nlist = coarse_cell_count(len(centroids))
        km = faiss.Kmeans(centroids.shape[1], nlist, niter=10, seed=0, spherical=True, min_points_per_centroid=1)
        km.train(centroids)
        self.coarse = _flat_ip(km.centroids)
        owner = self.coarse.search(centroids, 1)[1][:, 0]
        self.members = [np.flatnonzero(owner == j) for j in range(nlist)]
        self.member_index = [_flat_ip(centroids[m]) for m in self.members]

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Each float32 row's nearest centroid among those of its nearest cells, as int64."""
        # in blocks: the probe lists cost ~50 bytes per row and probe
        return np.concatenate(
            [self._assign(x[lo : lo + ASSIGN_BLOCK]) for lo in range(0, len(x), ASSIGN_BLOCK)]
            or [np.zeros(0, np.int64)]
        )

    def _assign(self, x: np.ndarray) -> np.ndarray:
        nprobe = min(ASSIGN_NPROBE, len(self.members))
        cells = self.coarse.search(x, nprobe)[1].ravel()  # BLAS and a heap: faster than argpartition
        row_of = np.repeat(np.arange(len(x)), nprobe)
        order = np.argsort(cells.astype(np.uint16 if len(self.members) <= 65536 else np.int64), kind="stable")  # radix
        bounds = np.searchsorted(cells[order], np.arange(len(self.members) + 1))
        best = np.full(len(x), -np.inf, dtype=np.float32)
        out = np.zeros(len(x), dtype=np.int64)
        for j in np.flatnonzero(np.diff(bounds)):
            if not len(self.members[j]):
                continue
            rows = row_of[order[bounds[j] : bounds[j + 1]]]
            value, top = (a[:, 0] for a in self.member_index[j].search(x[rows], 1))
            better = value > best[rows]
            best[rows[better]] = value[better]
            out[rows[better]] = self.members[j][top[better]]
        missed = np.flatnonzero(best == -np.inf)  # every probed cell empty: cannot happen with k-means cells
        if len(missed):
            out[missed] = _flat_ip(self.centroids).search(x[missed], 1)[1][:, 0]
        return out


@dataclass(frozen=True)
class ResidualCodec:
    """Centroids ``[K, dim]`` plus per-dimension bucket ``cutoffs [dim, 2**nbits-1]`` and
    ``weights [dim, 2**nbits]``. A token is its nearest centroid (inner product) and, per dimension,
    the bucket its residual falls in; it decompresses to ``centroid + weight``, rescaled to unit norm
    when ``normalize`` (set for corpora of unit vectors: it brings decompressed tokens closer to them).
    """

    centroids: np.ndarray
    cutoffs: np.ndarray
    weights: np.ndarray
    nbits: int
    normalize: bool = False

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    @property
    def n_centroids(self) -> int:
        return self.centroids.shape[0]

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.uint16 if self.n_centroids <= 65536 else np.uint32)

    @classmethod
    def train(
        cls,
        kmeans_sample: np.ndarray,
        heldout: np.ndarray,
        n_centroids: int,
        nbits: int,
        kmeans_iters: int = 4,
        seed: int = 0,
        normalize: bool = False,
        device=None,
    ) -> ResidualCodec:
        """Spherical k-means (faiss) on ``kmeans_sample``; bucket cutoffs at the quantiles and weights
        at the bucket medians of the ``heldout`` tokens' residuals, for each dimension. With a torch
        ``device``, k-means runs there instead, with exact assignment (:mod:`colbert_index.gpu.build`),
        and the held-out tokens take their exact nearest centroid too."""
        dim = kmeans_sample.shape[1]
        check_nbits_dim(nbits, dim)
        sample = np.ascontiguousarray(kmeans_sample, dtype=np.float32)
        if n_centroids > 1 and device is not None:
            from colbert_index.gpu import build as gpu_build

            centroids = gpu_build.kmeans(sample, n_centroids, kmeans_iters, seed, device)
        else:
            kmeans = two_level_kmeans if n_centroids > FLAT_ASSIGN_MAX_K else spherical_kmeans
            centroids = kmeans(sample, n_centroids, kmeans_iters, seed)
        # Round to the stored int8 form now: residuals must be computed against exactly the
        # centroids that decompression will use.
        centroids = dequantize_centroids(*quantize_centroids(centroids))
        codec = cls(centroids, np.zeros((dim, 2**nbits - 1), np.float32), np.zeros((dim, 2**nbits), np.float32), nbits)
        held = np.ascontiguousarray(heldout, dtype=np.float32)
        residuals = held - centroids[codec.assign(held, exact=True if device is not None else None)]
        return cls(centroids, *bucket_tables(residuals, nbits), nbits, normalize)

    @cached_property
    def table(self) -> np.ndarray:
        """Byte decode table of the kernels (:func:`colbert_index.kernels.reference.decode_table`)."""
        return decode_table(self.weights, self.nbits)

    @cached_property
    def _flat_index(self) -> faiss.IndexFlatIP:
        return _flat_ip(self.centroids)

    @cached_property
    def _coarse_cells(self) -> CoarseCells:
        return CoarseCells(self.centroids)

    def assign(self, embeddings: np.ndarray, exact: bool | None = None) -> np.ndarray:
        """Nearest centroid (max inner product) of each row, as int64.

        ``exact`` defaults to ``K <= FLAT_ASSIGN_MAX_K``; otherwise through :class:`CoarseCells`.
        """
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if exact if exact is not None else self.n_centroids <= FLAT_ASSIGN_MAX_K:
            return self._flat_index.search(x, 1)[1][:, 0]
        return self._coarse_cells.assign(x)

    def assignment_agreement(self, embeddings: np.ndarray) -> tuple[float, float]:
        """(fraction of rows assigned their exact nearest centroid, mean relative increase of the
        squared residual norm) of :meth:`assign` on ``embeddings``; (1.0, 0.0) when exact."""
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        exact, used = self.assign(x, exact=True), self.assign(x)
        r_exact = np.sum((x - self.centroids[exact]) ** 2, axis=1)
        r_used = np.sum((x - self.centroids[used]) ** 2, axis=1)
        return float(np.mean(exact == used)), float(np.sum(r_used - r_exact) / max(np.sum(r_exact), 1e-30))

    def compress(self, embeddings: np.ndarray, backend) -> tuple[np.ndarray, np.ndarray]:
        """``[n, dim]`` floats -> (codes ``[n]`` in :attr:`code_dtype`, packed residuals ``[n, dim*nbits//8]``)."""
        return self.compress_counted(embeddings, backend)[:2]

    def compress_counted(self, embeddings: np.ndarray, backend) -> tuple[np.ndarray, np.ndarray, int]:
        """:meth:`compress`, and the residual coordinates beyond the outermost bucket weights, counted in the same
        pass (:func:`colbert_index.drift.outside_count`'s figure)."""
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        codes = self.assign(x)
        packed, outside = backend.compress_tokens(x, codes, self.centroids, self.cutoffs, self.weights, self.nbits)
        return codes.astype(self.code_dtype), packed, int(outside)

    @cached_property
    def max_centroid_norm(self) -> float:
        """The largest centroid norm: with a query token's norm, a bound on its centroid scores."""
        return (
            float(np.sqrt(np.einsum("kd,kd->k", self.centroids, self.centroids).max())) if len(self.centroids) else 0.0
        )

    @cached_property
    def centroids_u8(self) -> tuple[np.ndarray, np.ndarray]:
        """The centroids as stored (:func:`quantize_centroids`: int8 rows, float32 scales) with 128 added to the
        int8 values, rows padded with 128 (zero) to a multiple of 4 bytes: what the int8 stage 0 reads."""
        q, scales = quantize_centroids(self.centroids)
        u8 = np.full((len(q), -(-self.dim // 4) * 4), 128, dtype=np.uint8)
        u8[:, : self.dim] = q.view(np.uint8) ^ np.uint8(0x80)
        return u8, scales

    def decompress(self, codes: np.ndarray, packed: np.ndarray, backend) -> np.ndarray:
        return backend.decompress(codes, packed, self.centroids, self.table, self.normalize)
