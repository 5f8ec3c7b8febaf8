"""CPU kernel backends: one namespace of functions per backend, chosen once when an index is opened.

Each backend provides every kernel of :data:`colbert_index.kernels.contract.CPU_KERNELS` and is checked against
it when it is assembled: a missing or misnamed kernel raises there, not halfway through a search."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, lru_cache
from types import SimpleNamespace

from threadpoolctl import ThreadpoolController

from colbert_index.kernels import reference
from colbert_index.kernels.contract import CPU_KERNELS, check, from_module

BACKENDS = ("auto", "numpy", "numba")


@lru_cache(maxsize=1)
def _blas_libs() -> list:
    """The loaded BLAS libraries' thread controls, found once (inspecting the process is slow)."""
    return [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


_blas_lock = threading.Lock()
_blas_users = 0
_blas_saved: list[int] = []


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS limited to one thread while any caller, in any thread, is inside.

    The limit is process-wide, so concurrent searches share it: the first one in sets it, the last one out
    restores the original (a plain limit per call would let one thread restore two BLAS threads under another,
    or leave the process at one when two calls interleave). The libraries are set directly: threadpoolctl's
    ``limit()`` re-inspects them at every entry, which costs more than a small search.
    """
    global _blas_users, _blas_saved
    with _blas_lock:
        if _blas_users == 0:
            libs = _blas_libs()
            _blas_saved = [lib.num_threads for lib in libs]
            for lib in libs:
                lib.set_num_threads(1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                for lib, n in zip(_blas_libs(), _blas_saved):
                    lib.set_num_threads(n)


@cache
def _checked(name: str) -> dict:
    """The kernels of backend ``name``, checked against the contract once per process."""
    kernels = from_module(reference, CPU_KERNELS) if name == "numpy" else _numba_kernels()
    check(kernels, CPU_KERNELS, name)
    return kernels


def _numba_kernels() -> dict:
    try:
        from colbert_index.kernels import (
            numba_codec,
            numba_ivf,
            numba_originals,
            numba_pool,
            numba_scoring,
            numba_select,
            numba_vnni,
        )
    except ImportError as e:  # pragma: no cover - numba is a hard dependency
        raise ImportError(f"backend 'numba' needs numba: pip install numba ({e})") from e
    return {
        "decode_table": reference.decode_table,  # built once per index: no kernel needed
        "compress_tokens": numba_codec.compress_tokens,
        "decompress": numba_codec.decompress,
        "centroid_scores": numba_scoring.centroid_scores,
        "probe_cells": numba_ivf.probe_cells,
        "probe": numba_ivf.probe,
        "probe_bound": numba_ivf.probe_bound,
        "probe_agreed": numba_ivf.probe_agreed,
        "centroid_interaction": numba_scoring.centroid_interaction,
        "centroid_interaction_tables": numba_scoring.centroid_interaction_tables,
        "centroid_interaction_from": numba_scoring.centroid_interaction_from,
        "refined_interaction": numba_scoring.refined_interaction,
        "refined_interaction_tables": numba_scoring.refined_interaction_tables,
        "refined_interaction_scores": numba_scoring.refined_interaction_scores,
        "refined_interaction_from": numba_scoring.refined_interaction_from,
        "exact_maxsim": numba_scoring.exact_maxsim,
        "exact_maxsim_originals": numba_originals.exact_maxsim_originals,
        "read_rows": numba_originals.read_rows,
        "segment_max_sums": numba_scoring.segment_max_sums,
        "build_ivf": numba_ivf.build_ivf,
        "top_k": numba_select.top_k,
        "ward_clusters": numba_pool.ward_clusters,
        # stages 0-1 and stage 2's and 3's tables in one int8 pass where Numba's target CPU has VNNI or AVX2
        # (search.query_tables; numba_vnni.INT8_DOT)
        "query_tables_int8": numba_vnni.query_tables if numba_vnni.INT8_DOT else None,
    }


def get_backend(name: str = "auto") -> SimpleNamespace:
    """Resolve ``"auto" | "numpy" | "numba"`` to a namespace holding every kernel of the CPU contract
    (``"auto"``: Numba, or the numpy references where Numba cannot be imported)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if name == "auto":
        try:
            _checked("numba")
            name = "numba"
        except ImportError:
            name = "numpy"
    return SimpleNamespace(name=name, **_checked(name))  # a namespace of its own: tests may patch it
