"""Building on a torch device: k-means and token compression for ``Index.build(device="cuda")``.

The CPU build trains with faiss and, above ``codec.FLAT_ASSIGN_MAX_K`` centroids, finds each token's centroid
through an HNSW graph (k-means) or coarse cells (compression), because exact assignment of 60M tokens to
65536 centroids is hours of CPU. On a GPU it is seconds of matrix products, so this path is exact at any K:
Lloyd's iterations scoring every sample point against every centroid, and each token's nearest centroid by a
full product. It writes the same codec and the same files; a device build of the same tokens differs from a
CPU build in its k-means (same objective, another algorithm) and where the CPU's assignment missed the
nearest centroid. Float sums on a GPU are not in a fixed order, so two GPU builds may differ in the last bits
of the centroids. ``Index.build(device="cpu", backend="torch")`` runs this path on CPU tensors (the tests).
"""

from __future__ import annotations

import numpy as np

from colbert_index.codec import ResidualCodec
from colbert_index.gpu.device import _is_cpu, _torch, torch_device

# Rows of one assignment product, sized so that its float32 score matrix stays under this many bytes: on a GPU
# the caching allocator reuses it; on the CPU each one is fresh pages (a 1 GiB one spent more time in the
# kernel than in the product), so there it stays cache-sized.
_SCORE_BYTES_GPU, _SCORE_BYTES_CPU = 1 << 30, 1 << 24
# Spill tokens per compression step: large enough to keep a GPU busy, small enough for any card.
BLOCK_TOKENS = 1 << 19


def build_device(device: str, backend: str):
    """The torch device of ``Index.build(device=, backend=)``, or ``None`` for the CPU (faiss + Numba) build."""
    if _is_cpu(device) and backend != "torch":
        return None
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend {backend!r} builds on the CPU; with device={device!r} use 'auto' or 'torch'")
    return torch_device(device)


def nearest(x, centroids):
    """Index (int64) of the largest inner product with ``centroids [K, dim]`` for each row of ``x [n, dim]``."""
    torch = _torch()
    out = torch.empty(len(x), dtype=torch.int64, device=x.device)
    budget = _SCORE_BYTES_GPU if x.device.type == "cuda" else _SCORE_BYTES_CPU
    rows = max(1, budget // (4 * len(centroids)))
    for lo in range(0, len(x), rows):
        out[lo : lo + rows] = torch.argmax(x[lo : lo + rows] @ centroids.T, dim=1)
    return out


def _tensor(a: np.ndarray, device):
    a = np.ascontiguousarray(a, dtype=np.float32)
    return _torch().from_numpy(a if a.flags.writeable else a.copy()).to(device)


def kmeans(sample: np.ndarray, n_centroids: int, iters: int, seed: int, device) -> np.ndarray:
    """Spherical k-means of ``sample [n, dim]`` on ``device``: float32 unit centroids ``[K, dim]``.

    Like faiss's (``spherical=True``): K distinct sample points to start, each iteration assigns every point to
    its largest inner product and renormalises the mean of each cluster; a cluster left empty restarts at a
    random sample point (faiss splits a large cluster instead).
    """
    torch = _torch()
    rng = np.random.default_rng(seed)
    x = _tensor(sample, device)
    C = x[torch.from_numpy(rng.choice(len(x), n_centroids, replace=False)).to(device)]
    C = torch.nn.functional.normalize(C, dim=1)
    for _ in range(iters):
        assigned = nearest(x, C)
        sums = torch.zeros_like(C).index_add_(0, assigned, x)
        empty = torch.bincount(assigned, minlength=n_centroids) == 0
        n_empty = int(empty.sum())
        if n_empty:
            sums[empty] = x[torch.from_numpy(rng.integers(0, len(x), n_empty)).to(device)]
        C = torch.nn.functional.normalize(sums, dim=1)
    return C.cpu().numpy()


class DeviceCompressor:
    """``block [n, dim] -> (codes, packed residuals, outside count)`` on ``device``: what
    :meth:`ResidualCodec.compress_counted` gives on the CPU, with the
    exact nearest centroid at any K."""

    def __init__(self, codec: ResidualCodec, device) -> None:
        torch = _torch()
        self.codec, self.device = codec, device
        self.centroids, self.cutoffs = _tensor(codec.centroids, device), _tensor(codec.cutoffs, device)
        self.lowest, self.highest = _tensor(codec.weights[:, 0], device), _tensor(codec.weights[:, -1], device)
        per_byte = 8 // codec.nbits
        # bucket k of a byte sits at bits 8 - nbits * (k + 1), as kernels.reference.compress_residuals packs
        self.shifts = torch.tensor([8 - codec.nbits * (k + 1) for k in range(per_byte)], device=device)

    def __call__(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """``block``: float16 or float32 tokens ``[n, dim]`` (float16 goes over the bus, half the bytes)."""
        torch = _torch()
        x = torch.from_numpy(np.ascontiguousarray(block)).to(self.device).float()
        codes = nearest(x, self.centroids)
        r = x - self.centroids[codes]
        buckets = torch.zeros(r.shape, dtype=torch.uint8, device=self.device)
        for c in range(self.cutoffs.shape[1]):  # bucket = number of cutoffs <= r, per dimension
            buckets += r >= self.cutoffs[:, c]
        packed = (buckets.view(len(r), -1, len(self.shifts)) << self.shifts).sum(dim=2).to(torch.uint8)
        outside = int(torch.count_nonzero((r < self.lowest) | (r > self.highest)))
        return codes.cpu().numpy().astype(self.codec.code_dtype), packed.cpu().numpy(), outside
