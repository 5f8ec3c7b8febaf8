"""Search on a torch device: which kernels, moving an index's arrays there once, batching queries.

``Index.open(path, device="cuda")`` resolves here (:func:`resolve`): the index's codes, residuals,
offsets, IVF and codec tables are copied to the GPU when it opens, and every stage of :meth:`Index.search`
runs there (:mod:`colbert_index.gpu.search`) with the Triton kernels, or, when triton is missing or
does not work on this GPU, with the torch kernels (a warning on the ``colbert_index.gpu.device`` logger says
so). ``device="cpu"`` keeps the Numba path; ``backend="torch"`` (or ``"triton"`` under
``TRITON_INTERPRET=1``) runs the device pipeline on CPU tensors instead, which is how it is tested.
Writes and :meth:`Index.search_exact` stay on the CPU; ``Index.build(device="cuda")`` builds on the GPU
(:mod:`colbert_index.gpu.build`).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from types import ModuleType

import numpy as np

from colbert_index.errors import DeviceUnavailableError

logger = logging.getLogger(__name__)

DEVICE_BACKENDS = ("triton", "torch")
_QUERY_BATCH_BYTES = 1 << 30  # device memory for one batch's centroid scores, probe cells and candidates
_MAX_BATCH = 256
_UPLOAD_ROWS = 1 << 22


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is a dependency
        raise ImportError(f"device search needs torch: pip install torch ({e})") from e
    return torch


def _interpret() -> bool:
    """``TRITON_INTERPRET`` as triton reads it (its ``getenv_bool``)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes", "y")


def resolve(device: str, backend: str) -> tuple[str, DeviceSearcher | None]:
    """``(backend for the CPU-side work, searcher)`` of ``Index.open(device=, backend=)``.

    The searcher is ``None`` for the Numba/numpy CPU path. Raises ``ValueError`` for an unknown device or
    a backend that cannot run on it, ``RuntimeError`` when CUDA is asked for and torch sees no GPU.
    """
    if _is_cpu(device) and backend not in DEVICE_BACKENDS:
        return backend, None
    tdev = torch_device(device)
    if backend not in ("auto", *DEVICE_BACKENDS):
        raise ValueError(f"backend {backend!r} runs on the CPU; with device={device!r} use 'auto', 'triton' or 'torch'")
    kernels, name = select_kernels(tdev, backend)
    return "auto", DeviceSearcher(tdev, kernels, name)


def _is_cpu(device: str) -> bool:
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    return device.strip().lower() == "cpu"


def torch_device(device: str):
    """``"cpu" | "cuda" | "cuda:N"`` as a ``torch.device``, checked: ``ValueError`` for an unknown or absent
    device, :class:`DeviceUnavailableError` (a ``RuntimeError``) when CUDA is asked for and torch sees no GPU."""
    torch = _torch()
    if _is_cpu(device):
        return torch.device("cpu")
    dev = device.strip().lower()
    if not (dev == "cuda" or dev.startswith("cuda:")):
        raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda' (or 'cuda:N')")
    if not torch.cuda.is_available():
        why = "a CPU-only build" if torch.version.cuda is None else "no GPU is visible"
        raise DeviceUnavailableError(
            f"device={device!r}, but CUDA is not available to torch {torch.__version__} ({why}). Install a "
            "CUDA build of torch (https://pytorch.org/get-started/locally/), or use device='cpu' (Numba)."
        )
    try:
        tdev = torch.device(dev)
    except RuntimeError as e:
        raise ValueError(f"invalid device {device!r}: {e}") from None
    if tdev.index is not None and tdev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return tdev


def select_kernels(device, backend: str = "auto") -> tuple[ModuleType, str]:
    """The kernel module for ``device``: Triton when asked for or when ``auto`` finds it working, else torch;
    checked against :data:`colbert_index.kernels.contract.DEVICE_KERNELS`."""
    from colbert_index.kernels.contract import DEVICE_KERNELS, check, from_module

    module, name = _pick_kernels(device, backend)
    check(from_module(module, DEVICE_KERNELS), DEVICE_KERNELS, name)
    return module, name


def _pick_kernels(device, backend: str) -> tuple[ModuleType, str]:
    from colbert_index.kernels import torch_scoring

    if backend == "torch":
        return torch_scoring, "torch"
    if device.type == "cpu" and not _interpret():
        if backend == "triton":
            raise ValueError(
                "backend='triton' on the CPU needs Triton's interpreter: set TRITON_INTERPRET=1 before anything "
                "imports triton, or use device='cuda', or backend='torch'"
            )
        return torch_scoring, "torch"
    try:  # through sys.modules, where a failed or blocked import of triton is recorded
        triton_scoring = importlib.import_module("colbert_index.kernels.triton_scoring")

        if backend == "auto":
            _smoke_test(triton_scoring, device)
    except Exception as e:  # noqa: BLE001 - ImportError, or a compiler/driver error of this platform
        if backend == "triton":
            raise ImportError(f"backend 'triton' is not usable on {device} ({e}); pip install triton") from e
        logger.warning("Triton is not usable on %s (%s: %s); searching with the torch fallback kernels", device,
                       type(e).__name__, e)  # fmt: skip
        return torch_scoring, "torch"
    logger.info("searching on %s with the Triton kernels", device)
    return triton_scoring, "triton"


def _smoke_test(module: ModuleType, device) -> None:
    """Compile and run the fused kernel once on a two-token document; raises what this platform raises."""
    torch = _torch()
    from colbert_index.kernels.reference import decode_table

    dim, nbits = 16, 2
    table = torch.from_numpy(decode_table(np.ones((dim, 4), np.float32), nbits)).to(device)
    out = module.exact_maxsim(
        torch.ones((1, dim), device=device),
        torch.zeros(2, dtype=torch.int32, device=device),
        torch.zeros((2, dim * nbits // 8), dtype=torch.uint8, device=device),
        torch.tensor([0, 2], device=device),
        torch.zeros(1, dtype=torch.int32, device=device),
        torch.zeros((1, dim), device=device),
        table,
        False,
    )
    if abs(float(out[0]) - dim) > 1e-3:
        raise RuntimeError(f"the fused kernel's smoke test returned {float(out[0])}, expected {dim}")


def _upload(a: np.ndarray, device):
    """A host array (memory-mapped or not) copied to ``device`` in chunks of rows."""
    torch = _torch()
    a = np.asarray(a)
    out = torch.empty(a.shape, dtype=torch.from_numpy(np.zeros(0, a.dtype)).dtype, device=device)
    for lo in range(0, len(a), _UPLOAD_ROWS):
        out[lo : lo + _UPLOAD_ROWS].copy_(torch.from_numpy(np.array(a[lo : lo + _UPLOAD_ROWS])))
    return out


def _merged_ivf(segments, bases: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """One IVF over segments concatenated (doc slot = base + slot); each list stays sorted."""
    if len(segments) == 1:
        return segments[0].data.ivf_offsets, segments[0].data.ivf_docs
    cents, docs = [], []
    for seg, base in zip(segments, bases):
        d = seg.data
        cents.append(np.repeat(np.arange(K, dtype=np.int64), np.diff(d.ivf_offsets[: K + 1])))
        docs.append(d.ivf_docs.astype(np.int64) + base)
    cents, docs = np.concatenate(cents), np.concatenate(docs)
    order = np.argsort(cents, kind="stable")
    offsets = np.zeros(K + 1, dtype=np.int64)
    np.cumsum(np.bincount(cents, minlength=K), out=offsets[1:])
    return offsets, docs[order].astype(np.int32)


def upload(snap, device):
    """:class:`colbert_index.gpu.search.DeviceData` of an index snapshot (all segments, one codebook)."""
    from colbert_index.gpu.search import DeviceData

    torch = _torch()
    codec, segments = snap.codec, snap.segments
    bases = np.zeros(len(segments) + 1, dtype=np.int64)
    np.cumsum([s.n_docs for s in segments], out=bases[1:])
    tok = np.cumsum([0] + [len(s.data.codes) for s in segments])
    offsets = np.concatenate([[0]] + [np.asarray(s.data.offsets[1:]) + t for s, t in zip(segments, tok)])
    deleted = None
    if any(s.deleted is not None for s in segments):
        deleted = np.concatenate([np.zeros(s.n_docs, bool) if s.deleted is None else s.deleted for s in segments])
    K = codec.n_centroids
    ivf_offsets, ivf_docs = _merged_ivf(segments, bases, K) if segments else (np.zeros(K + 1), np.zeros(0))

    def cat(name: str, dtype, width: tuple = ()):
        parts = [_upload(getattr(s.data, name), device) for s in segments]
        return torch.cat(parts) if parts else torch.zeros((0, *width), dtype=dtype, device=device)

    nbytes = codec.dim * codec.nbits // 8
    return DeviceData(
        centroids=_upload(codec.centroids.astype(np.float32), device),
        table=_upload(codec.table, device),
        normalize=bool(codec.normalize),
        codes=cat("codes", torch.int32),
        residuals=cat("residuals", torch.uint8, (nbytes,)),
        offsets=_upload(offsets.astype(np.int64), device),
        ivf_offsets=_upload(np.asarray(ivf_offsets, dtype=np.int64), device),
        ivf_docs=_upload(np.asarray(ivf_docs, dtype=np.int32), device),
        deleted=None if deleted is None else _upload(deleted, device),
    )


def rerank_on_host(snap, Q: np.ndarray, positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The full-precision rerank of one query's candidates (global positions) with the CPU kernels: each segment's
    on its stored vectors (decompressed tokens where a segment keeps none); ``(scores, positions)`` of the top k."""
    from colbert_index.backend import get_backend
    from colbert_index.search import final_scores

    backend = get_backend("auto")
    positions = np.sort(np.asarray(positions, dtype=np.int64))
    scores = [np.zeros(0, np.float32)]
    for i, slots in snap.locate(positions):
        scores.append(final_scores(Q, snap.segments[i].data, slots.astype(np.int64), backend, True))
    return backend.top_k(np.concatenate(scores), positions, min(k, len(positions)) or 1)


class DeviceSearcher:
    """Holds one snapshot's arrays on a device and runs batches of queries through the device pipeline.

    A new snapshot (after :meth:`Index.refresh` or a write) is uploaded at its first search.
    """

    def __init__(self, device, kernels: ModuleType, kernel_name: str) -> None:
        self.device, self.kernels, self.kernel_name = device, kernels, kernel_name
        self._lock = threading.Lock()
        self._snap = None
        self._data = None

    def prepare(self, snap):
        """The device arrays of ``snap``, uploading them unless they are those of the last snapshot."""
        with self._lock:
            if snap is not self._snap:
                self._data = None  # free the previous snapshot's arrays first
                self._data, self._snap = upload(snap, self.device), snap
            return self._data

    def search(self, snap, queries: list[np.ndarray], k: int, params) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(scores, global positions)`` of each query, as :func:`colbert_index.search.staged_search` gives. On an
        index that keeps its vectors, stages 0-3 run on the device and the full-precision rerank on the CPU, where
        the vectors are (:func:`rerank_on_host`)."""
        from colbert_index.gpu.search import staged_search_batched

        torch = _torch()
        data = self.prepare(snap)
        rerank = params.uses_originals and any(s.data.originals is not None for s in snap.segments)
        if data.n_docs == 0:
            return [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        K = data.centroids.shape[0]
        out = []
        i = 0
        while i < len(queries):
            q_max = max(len(q) for q in queries[i : i + _MAX_BATCH])
            n = max(1, min(_MAX_BATCH, _QUERY_BATCH_BYTES // (K * q_max * 13)))
            batch = queries[i : i + n]
            q_max = max(len(q) for q in batch)
            Q = np.zeros((len(batch), q_max, data.centroids.shape[1]), np.float32)
            for j, q in enumerate(batch):
                Q[j, : len(q)] = q
            q_lens = torch.tensor([len(q) for q in batch], dtype=torch.int32, device=self.device)
            with torch.no_grad():
                a, b = staged_search_batched(torch.from_numpy(Q).to(self.device), q_lens, k, params, data,
                                             self.kernels, rerank)  # fmt: skip
            a, b = a.cpu().numpy(), b.cpu().numpy()
            if rerank:  # a: the candidates, b: the query of each; reranked on the host
                out += [rerank_on_host(snap, q, a[b == j], k) for j, q in enumerate(batch)]
            else:  # a: scores, b: positions, [n_q, k]
                out += [(a[j], b[j]) for j in range(len(batch))]
            i += len(batch)
        return out
