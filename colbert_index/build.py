"""What :meth:`colbert_index.Index.build` does: stream the documents to a float16 spill file, train the codec
on a sample of it (faiss k-means, or torch on a GPU), compress every token into the first segment (which keeps the
spill as its ``originals.npy`` with ``keep_originals``) and commit the first manifest, all inside a staging
directory that replaces ``path`` only when the whole build succeeds (docs/format.md)."""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path

import numpy as np

from colbert_index import drift as drift_stats
from colbert_index.backend import get_backend
from colbert_index.codec import ResidualCodec, check_nbits_dim, default_n_centroids
from colbert_index.gpu.build import BLOCK_TOKENS as DEVICE_BLOCK_TOKENS
from colbert_index.gpu.build import DeviceCompressor, build_device
from colbert_index.inputs import normalize_doc_ids, show_progress, spill_documents
from colbert_index.pooling import check_pool_factor, pool_tokens
from colbert_index.storage import metadata as meta_files
from colbert_index.storage import segments as seg_files
from colbert_index.storage.files import WriterLock, atomic_directory
from colbert_index.storage.manifest import MANIFEST, write_manifest

_KMEANS_POINTS_PER_CENTROID = 64
_HELDOUT_TOKENS = 1 << 16


def train_codec(spill, K: int, nbits: int, kmeans_iters: int, seed: int, normalize: bool | None = None, device=None):
    """k-means + bucket tables on a sample of the spilled tokens. ``normalize=None`` detects unit vectors;
    ``device``: a torch device to run k-means on (:mod:`colbert_index.gpu.build`), else faiss on the CPU."""
    n_tokens = spill.shape[0]
    rng = np.random.default_rng(seed)
    n_train = min(n_tokens, K * _KMEANS_POINTS_PER_CENTROID)
    train, heldout = spill.rows(
        np.sort(rng.choice(n_tokens, n_train, replace=False)),
        np.sort(rng.choice(n_tokens, min(n_tokens, _HELDOUT_TOKENS), replace=False)),
    )
    if normalize is None:  # ColBERT models emit unit vectors; then decompressed tokens are renormalised too.
        normalize = bool(np.allclose(np.linalg.norm(heldout, axis=1), 1.0, atol=2e-3))
    codec = ResidualCodec.train(
        train, heldout, K, nbits, kmeans_iters=kmeans_iters, seed=seed, normalize=normalize, device=device
    )
    return codec, drift_stats.figures(codec, heldout)


def _given_codec(codec: ResidualCodec, spill, nbits: int, n_centroids: int | None, seed: int) -> tuple[int, float]:
    """(K, outlier norm) of a codec given to :meth:`Index.build`, checked against the documents."""
    if not isinstance(codec, ResidualCodec):
        raise TypeError(f"codec must be a ResidualCodec, got {type(codec).__name__}")
    if (codec.dim, codec.nbits) != (spill.shape[1], nbits):
        raise ValueError(
            f"codec has dim {codec.dim}, nbits {codec.nbits}; the documents have dim {spill.shape[1]}, nbits={nbits}"
        )
    if n_centroids is not None and int(n_centroids) != codec.n_centroids:
        raise ValueError(f"n_centroids={n_centroids} conflicts with the given codec's K={codec.n_centroids}")
    rng = np.random.default_rng(seed)
    n_tokens = spill.shape[0]
    (heldout,) = spill.rows(np.sort(rng.choice(n_tokens, min(n_tokens, _HELDOUT_TOKENS), replace=False)))
    return codec.n_centroids, drift_stats.figures(codec, heldout)


def check_keep_originals(keep_originals) -> bool:
    if not isinstance(keep_originals, (bool, np.bool_)):
        raise TypeError(f"keep_originals must be True or False, got {keep_originals!r}")
    return bool(keep_originals)


def check_k_centroids(K: int, n_tokens: int) -> int:
    if not 1 <= K <= n_tokens:
        raise ValueError(f"n_centroids must be in [1, n_tokens={n_tokens}], got {K}")
    return K


def pooling(pool_factor: int, kernels):
    """The per-document transform that pools tokens (:mod:`colbert_index.pooling`), or ``None`` at factor 1."""
    if pool_factor == 1:
        return None
    return lambda doc: pool_tokens(doc, pool_factor, kernels)


def build_index(
    path: Path,
    doc_embeddings,
    doc_ids,
    nbits: int,
    n_centroids: int | None,
    kmeans_iters: int,
    seed: int,
    doc_lengths,
    overwrite: bool,
    progress: bool | None,
    backend: str,
    metadata: list[dict | None] | None,
    codec: ResidualCodec | None,
    device: str,
    pool_factor: int = 1,
    texts: list[str | None] | None = None,
    keep_originals: bool = False,
) -> str:
    """Build an index at ``path`` (the arguments of :meth:`colbert_index.Index.build`). Returns the kernel
    backend to open it with."""
    if nbits not in (2, 4):
        raise ValueError(f"nbits must be 2 or 4, got {nbits!r}")
    keep_originals = check_keep_originals(keep_originals)
    pool_factor = check_pool_factor(pool_factor)
    on_device = build_device(device, backend)
    if on_device is not None:
        backend = "auto"  # the CPU-side work left (IVF, checks) and the returned index: Numba
    kernels = get_backend(backend)
    t0 = time.perf_counter()
    replacing = overwrite and (path / MANIFEST).is_file()
    with (
        WriterLock(path) if replacing else contextlib.nullcontext(),
        atomic_directory(path, overwrite=overwrite) as tmp,
    ):
        # Pass 1 streams the input to a float16 spill file, so memory does not grow with the corpus.
        seg_dir = seg_files.fresh_dir(tmp, seg_files.segment_name(0))
        spill, doclens = spill_documents(
            doc_embeddings, doc_lengths, seg_dir / "spill.f16", show_progress(progress), pooling(pool_factor, kernels)
        )
        t_spill = time.perf_counter() - t0
        n_tokens, dim = spill.shape
        check_nbits_dim(nbits, dim)
        ids = normalize_doc_ids(doc_ids, len(doclens))
        if codec is None:
            K = check_k_centroids(
                default_n_centroids(n_tokens, dim, nbits) if n_centroids is None else int(n_centroids), n_tokens
            )
            codec, figures = train_codec(spill, K, nbits, kmeans_iters, seed, device=on_device)
        else:  # a codebook trained elsewhere (colbert_index.distributed: one codebook for all shards)
            K, figures = _given_codec(codec, spill, nbits, n_centroids, seed)
        t_train = time.perf_counter() - t0 - t_spill
        codebook = seg_files.save_codebook(tmp, seg_files.codebook_name(0), codec)
        # Pass 2 compresses the spilled tokens chunk by chunk into the memory-mapped outputs.
        # read after the documents, so that both may be lists a generator of batches fills as it goes
        meta = None if metadata is None else meta_files.check_metadata(metadata, len(doclens))
        txt = None if texts is None else meta_files.check_texts(texts, len(doclens))
        compress = None
        if on_device is not None:
            compress, spill.block_tokens = DeviceCompressor(codec, on_device), DEVICE_BLOCK_TOKENS
        segment = seg_files.write_segment(
            tmp, 0, spill, doclens, 0 if ids is None else ids, codec, kernels, show_progress(progress), meta, compress,
            texts=txt, keep_originals=keep_originals,
        )  # fmt: skip
        segment["pool_factor"] = pool_factor
        if isinstance(ids, list):
            id_type, next_id = "str", None
        else:
            id_type, next_id = "int", len(doclens) if ids is None else int(ids.max()) + 1
        t_total = time.perf_counter() - t0  # one reading: the phases sum to the total
        write_manifest(
            tmp,
            {
                "uuid": uuid.uuid4().hex,
                "generation": 0,
                "dim": dim,
                "nbits": nbits,
                "normalize": codec.normalize,
                "n_centroids": K,
                "n_docs": len(doclens),
                "n_tokens": n_tokens,
                "id_type": id_type,
                "next_id": next_id,
                "next_segment": 1,
                "codebook": codebook,
                **figures,  # outlier_norm, drift_expected
                "pool_factor": pool_factor,
                "keep_originals": keep_originals,
                "segments": [segment],
                "build": {
                    "seed": seed,
                    "kmeans_iters": kmeans_iters,
                    "device": "cpu" if on_device is None else f"{on_device} (torch)",
                    # the input read and spilled, k-means and tables, then compression and the segment's files
                    "spill_seconds": round(t_spill, 3),
                    "train_seconds": round(t_train, 3),
                    "compress_seconds": round(t_total - t_spill - t_train, 3),
                    "seconds": round(t_total, 3),
                },
            },
        )
    return backend
