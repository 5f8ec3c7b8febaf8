"""The public :class:`Index`: build, open, search. Orchestration only; the work is in kernels."""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from numpy.lib.format import open_memmap
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from colbert_index import storage
from colbert_index.backend import get_backend
from colbert_index.codec import (
    ResidualCodec,
    check_nbits_dim,
    default_n_centroids,
    dequantize_centroids,
    quantize_centroids,
)
from colbert_index.inputs import normalize_doc_ids, normalize_queries, spill_documents
from colbert_index.search import SearchParams, SearchResult, brute_force, check_k, staged_search
from colbert_index.storage import IndexFormatError

_KMEANS_POINTS_PER_CENTROID = 64
_HELDOUT_TOKENS = 1 << 16


@dataclass
class _Data:
    """The arrays the search stages read."""

    codec: ResidualCodec
    codes: np.ndarray
    residuals: np.ndarray
    offsets: np.ndarray
    ivf_offsets: np.ndarray
    ivf_docs: np.ndarray

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1


def _progress(enabled: bool | None) -> bool:
    return sys.stderr.isatty() if enabled is None else bool(enabled)


def _save_doc_ids(directory: Path, ids: np.ndarray | list[str] | None, files: dict) -> str:
    """Write the external ids (none for 0..n-1, int64, or UTF-8 strings); returns the id_type."""
    if ids is None:
        return "range"
    if isinstance(ids, np.ndarray):
        files["doc_ids"] = storage.save_array(directory, "doc_ids", ids)
        return "int"
    encoded = [s.encode("utf-8") for s in ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    files["doc_id_bytes"] = storage.save_array(directory, "doc_id_bytes", np.frombuffer(b"".join(encoded), np.uint8))
    files["doc_id_offsets"] = storage.save_array(directory, "doc_id_offsets", offsets)
    return "str"


class Index:
    """A compressed late-interaction index on disk (see the README for the file format).

    Build one with :meth:`build`, open an existing one with :meth:`open`. Use as a context manager
    or call :meth:`close` to release the memory maps.
    """

    def __init__(self, path: Path, manifest: dict, data: _Data, doc_ids, backend) -> None:
        self.path = path
        self.manifest = manifest
        self._data = data
        self._doc_ids = doc_ids  # None (ids are slots), int64 array, or (utf-8 bytes, offsets)
        self.backend = backend

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        path: str | os.PathLike,
        doc_embeddings,
        doc_ids=None,
        nbits: int = 2,
        n_centroids: int | None = None,
        kmeans_iters: int = 4,
        seed: int = 0,
        *,
        doc_lengths=None,
        overwrite: bool = False,
        progress: bool | None = None,
        backend: str = "auto",
    ) -> Index:
        """Build an index at ``path`` and return it opened.

        Args:
            doc_embeddings: a list of float ``[n_i, dim]`` arrays (float16/float32, one per document),
                an iterable of such lists (batches), or a flat ``[n_tokens, dim]`` array with ``doc_lengths``.
            doc_ids: external ids (ints or strings, unique); default ``0..n_docs-1``.
            nbits: bits per residual dimension, 2 or 4.
            n_centroids: K; default :func:`colbert_index.codec.default_n_centroids`.
            kmeans_iters, seed: k-means iterations and the seed of every random choice (builds are
                deterministic for a given seed).
            overwrite: replace an existing index at ``path``.
            progress: show progress bars (default: when stderr is a terminal).

        Nothing appears at ``path`` unless the whole build succeeds.
        """
        path = Path(path)
        if nbits not in (2, 4):
            raise ValueError(f"nbits must be 2 or 4, got {nbits!r}")
        kernels = get_backend(backend)
        t0 = time.perf_counter()
        with storage.atomic_directory(path, overwrite=overwrite) as tmp:
            # Pass 1 streams the input to a float16 spill file, so memory does not grow with the corpus.
            spill_path = tmp / "spill.f16"
            spill, doclens = spill_documents(doc_embeddings, doc_lengths, spill_path, progress=_progress(progress))
            n_tokens, dim = spill.shape
            check_nbits_dim(nbits, dim)
            ids = normalize_doc_ids(doc_ids, len(doclens))
            K = default_n_centroids(n_tokens, dim, nbits) if n_centroids is None else int(n_centroids)
            if not 1 <= K <= n_tokens:
                raise ValueError(f"n_centroids must be in [1, n_tokens={n_tokens}], got {K}")

            rng = np.random.default_rng(seed)
            n_train = min(n_tokens, K * _KMEANS_POINTS_PER_CENTROID)
            train, heldout = spill.rows(
                np.sort(rng.choice(n_tokens, n_train, replace=False)),
                np.sort(rng.choice(n_tokens, min(n_tokens, _HELDOUT_TOKENS), replace=False)),
            )
            # ColBERT models emit unit vectors; then decompressed tokens are renormalised too.
            normalize = bool(np.allclose(np.linalg.norm(heldout, axis=1), 1.0, atol=2e-3))
            codec = ResidualCodec.train(
                train, heldout, K, nbits, kmeans_iters=kmeans_iters, seed=seed, normalize=normalize
            )
            del train, heldout
            t_train = time.perf_counter() - t0

            centroids_i8, centroid_scales = quantize_centroids(codec.centroids)
            files = {
                "centroids": storage.save_array(tmp, "centroids", centroids_i8),
                "centroid_scales": storage.save_array(tmp, "centroid_scales", centroid_scales),
                "bucket_cutoffs": storage.save_array(tmp, "bucket_cutoffs", codec.cutoffs),
                "bucket_weights": storage.save_array(tmp, "bucket_weights", codec.weights),
                "doclens": storage.save_array(tmp, "doclens", doclens.astype(np.int32)),
            }
            # Pass 2 compresses the spilled tokens chunk by chunk into the memory-mapped outputs.
            codes = open_memmap(tmp / "codes.npy", mode="w+", dtype=codec.code_dtype, shape=(n_tokens,))
            residuals = open_memmap(
                tmp / "residuals.npy", mode="w+", dtype=np.uint8, shape=(n_tokens, dim * nbits // 8)
            )
            bar = tqdm(total=n_tokens, desc="compress", unit="tok", disable=not _progress(progress))
            for lo, block in spill.blocks():
                hi = lo + len(block)
                codes[lo:hi], residuals[lo:hi] = codec.compress(block, kernels)
                bar.update(hi - lo)
            bar.close()
            spill_path.unlink()
            codes.flush()
            residuals.flush()
            del codes, residuals
            files["codes"] = storage.file_entry(tmp, "codes")
            files["residuals"] = storage.file_entry(tmp, "residuals")
            id_type = _save_doc_ids(tmp, ids, files)
            storage.write_manifest(
                tmp,
                {
                    "dim": dim,
                    "nbits": nbits,
                    "normalize": normalize,
                    "n_centroids": K,
                    "n_docs": len(doclens),
                    "n_tokens": n_tokens,
                    "id_type": id_type,
                    "build": {
                        "seed": seed,
                        "kmeans_iters": kmeans_iters,
                        "train_seconds": round(t_train, 3),
                        "seconds": round(time.perf_counter() - t0, 3),
                    },
                    "files": files,
                },
            )
        return cls.open(path, backend=backend)

    # ------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        device: str = "cpu",
        mmap: bool = True,
        backend: str = "auto",
        verify: bool = False,
    ) -> Index:
        """Open an index, memory-mapping its arrays (``mmap=False`` reads them into RAM).

        Everything handed to a kernel is validated first; a damaged index raises
        :class:`IndexFormatError` naming the file. ``verify=True`` also checksums the large arrays.
        """
        if device != "cpu":
            raise ValueError(f"device={device!r} is not supported yet; only 'cpu' (Numba) is available")
        path = Path(path)
        m = storage.load_manifest(path)
        try:
            dim, nbits, K = int(m["dim"]), int(m["nbits"]), int(m["n_centroids"])
            n_docs, n_tokens, id_type = int(m["n_docs"]), int(m["n_tokens"]), m["id_type"]
            normalize = m["normalize"]
            if not isinstance(normalize, bool):
                raise ValueError("normalize must be true or false")
            check_nbits_dim(nbits, dim)
        except (KeyError, TypeError, ValueError) as e:
            raise IndexFormatError(f"{path / storage.MANIFEST}: invalid field ({e})") from None

        def load(name, shape, dtypes):
            arr = storage.load_array(path, m, name, mmap=mmap, verify=verify)
            if tuple(arr.shape) != shape or arr.dtype not in dtypes:
                raise IndexFormatError(
                    f"{path / (name + '.npy')}: expected shape {shape} {dtypes}, got {arr.shape} {arr.dtype}"
                )
            return arr

        f32 = (np.dtype(np.float32),)
        code_dtype = np.dtype(np.uint16 if K <= 65536 else np.uint32)
        centroids = dequantize_centroids(
            np.asarray(load("centroids", (K, dim), (np.dtype(np.int8),))),
            np.asarray(load("centroid_scales", (K,), f32)),
        )
        cutoffs = np.ascontiguousarray(load("bucket_cutoffs", (dim, 2**nbits - 1), f32))
        weights = np.ascontiguousarray(load("bucket_weights", (dim, 2**nbits), f32))
        doclens = np.asarray(load("doclens", (n_docs,), (np.dtype(np.int32),)))
        codes = load("codes", (n_tokens,), (code_dtype,))
        residuals = load("residuals", (n_tokens, dim * nbits // 8), (np.dtype(np.uint8),))
        for name, arr in (("centroids", centroids), ("bucket_cutoffs", cutoffs), ("bucket_weights", weights)):
            if not np.isfinite(arr).all():
                raise IndexFormatError(f"{path / (name + '.npy')}: contains NaN or inf")
        if n_docs < 1 or (doclens < 1).any() or int(doclens.sum(dtype=np.int64)) != n_tokens:
            raise IndexFormatError(
                f"{path / 'doclens.npy'}: document lengths must be >= 1 and sum to n_tokens={n_tokens}"
            )
        if n_tokens and int(codes.max()) >= K:
            raise IndexFormatError(f"{path / 'codes.npy'}: centroid id {int(codes.max())} out of range (K={K})")
        offsets = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(doclens, out=offsets[1:])

        if id_type == "range":
            doc_ids = None
        elif id_type == "int":
            doc_ids = np.asarray(load("doc_ids", (n_docs,), (np.dtype(np.int64),)))
        elif id_type == "str":
            id_offsets = np.asarray(load("doc_id_offsets", (n_docs + 1,), (np.dtype(np.int64),)))
            blob = np.asarray(storage.load_array(path, m, "doc_id_bytes", mmap=False))
            if id_offsets[0] != 0 or (np.diff(id_offsets) < 0).any() or id_offsets[-1] != len(blob):
                raise IndexFormatError(f"{path / 'doc_id_offsets.npy'}: offsets not monotone within doc_id_bytes")
            doc_ids = (blob.tobytes(), id_offsets)
        else:
            raise IndexFormatError(f"{path / storage.MANIFEST}: unknown id_type {id_type!r}")

        kernels = get_backend(backend)
        codec = ResidualCodec(np.ascontiguousarray(centroids), cutoffs, weights, nbits, normalize)
        ivf_offsets, ivf_docs = kernels.build_ivf(codes, offsets, K)
        data = _Data(codec, codes, residuals, offsets, ivf_offsets, ivf_docs)
        return cls(path, m, data, doc_ids, kernels)

    def close(self) -> None:
        """Drop the memory maps; the object is unusable afterwards."""
        self._data = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ info
    @property
    def _d(self) -> _Data:
        if self._data is None:
            raise ValueError("index is closed")
        return self._data

    @property
    def dim(self) -> int:
        return self._d.codec.dim

    @property
    def nbits(self) -> int:
        return self._d.codec.nbits

    @property
    def n_centroids(self) -> int:
        return self._d.codec.n_centroids

    @property
    def n_docs(self) -> int:
        return self._d.n_docs

    @property
    def n_tokens(self) -> int:
        return len(self._d.codes)

    def disk_bytes(self) -> int:
        """Total size of the index directory in bytes."""
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def __repr__(self) -> str:
        if self._data is None:
            return f"Index({str(self.path)!r}, closed)"
        return (
            f"Index({str(self.path)!r}, docs={self.n_docs}, tokens={self.n_tokens}, dim={self.dim}, "
            f"nbits={self.nbits}, K={self.n_centroids}, backend={self.backend.name})"
        )

    def ids_of(self, slots: np.ndarray) -> np.ndarray:
        """External ids of internal document slots (same shape)."""
        slots = np.asarray(slots, dtype=np.int64)
        if self._doc_ids is None:
            return slots.copy()
        if isinstance(self._doc_ids, np.ndarray):
            return self._doc_ids[slots]
        blob, offs = self._doc_ids
        out = np.empty(slots.shape, dtype=object)
        for idx, s in np.ndenumerate(slots):
            out[idx] = blob[offs[s] : offs[s + 1]].decode("utf-8")
        return out

    # ------------------------------------------------------------------ search
    def _result(self, per_query: list[tuple[np.ndarray, np.ndarray]]) -> SearchResult:
        scores = np.stack([s for s, _ in per_query]).astype(np.float32)
        slots = np.stack([d for _, d in per_query])
        return SearchResult(ids=self.ids_of(slots), scores=scores)

    def search(self, Q, k: int = 10, params: SearchParams | None = None, query_lengths=None) -> SearchResult:
        """Top-``k`` documents by approximate-then-exact MaxSim (PLAID's four stages).

        Args:
            Q: ``[q_len, dim]`` (one query), ``[n_q, q_len, dim]`` or a list of ``[q_len_i, dim]`` arrays.
            k: results per query. If the index holds fewer than ``k`` documents, all of them are
                returned and the result has that many columns (no padding).
            params: :class:`SearchParams`; unset fields follow the PLAID defaults for ``k``.
            query_lengths: for a padded 3-D ``Q``, the real length of each query or a boolean mask
                ``[n_q, q_len]`` (queries need not be padded with [MASK] tokens).

        A batch runs its queries in parallel, one per Numba thread (``numba.set_num_threads``), each
        query's kernels single-threaded; a single query spreads its kernels over the threads instead.
        """
        k = check_k(k)
        data = self._d
        queries = normalize_queries(Q, self.dim, query_lengths)
        p = (params or SearchParams()).resolved(k)
        n_workers = min(len(queries), numba.get_num_threads()) if self.backend.name == "numba" else 1
        if n_workers <= 1:
            return self._result([staged_search(q, k, p, data, self.backend) for q in queries])

        def one(q: np.ndarray):
            numba.set_num_threads(1)  # thread-local: this worker's kernels stay on its own core
            return staged_search(q, k, p, data, self.backend)

        # the kernels release the GIL (nogil=True); BLAS (stage 0) stays on the calling worker's core
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(n_workers) as pool:
            return self._result(list(pool.map(one, queries)))

    def search_exact(self, Q, k: int = 10, query_lengths=None) -> SearchResult:
        """Brute-force MaxSim over every decompressed document (the ground truth of :meth:`search`)."""
        k = check_k(k)
        data = self._d
        queries = normalize_queries(Q, self.dim, query_lengths)
        codec = data.codec

        def chunk(lo: int, hi: int) -> np.ndarray:
            return codec.decompress(data.codes[lo:hi], data.residuals[lo:hi], self.backend)

        return self._result(brute_force(queries, data.offsets, chunk, k, self.backend.segment_max_sum))
