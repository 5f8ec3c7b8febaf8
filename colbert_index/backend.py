"""Kernel backends: one namespace of functions per backend, chosen once when an index is opened."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from types import SimpleNamespace

from threadpoolctl import ThreadpoolController

from colbert_index.kernels import reference

KERNELS = (
    "decode_table",
    "compress_residuals",
    "decompress",
    "centroid_scores",
    "centroid_interaction",
    "centroid_interaction_tables",
    "centroid_interaction_from",
    "refined_interaction",
    "refined_interaction_tables",
    "refined_interaction_scores",
    "refined_interaction_from",
    "exact_maxsim",
    "segment_max_sums",
    "build_ivf",
    "probe_cells",
    "probe",
    "probe_bound",
)
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
    or leave the process at one when two calls interleave). Setting the libraries directly costs a few
    microseconds; threadpoolctl's ``limit()`` re-inspects them and took ~45 us per entry here.
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


def _numba_namespace() -> SimpleNamespace:
    try:
        from colbert_index.kernels import numba_codec, numba_ivf, numba_scoring, numba_vnni
    except ImportError as e:  # pragma: no cover - numba is a hard dependency
        raise ImportError(f"backend 'numba' needs numba: pip install numba ({e})") from e
    funcs = {}
    for mod in (numba_codec, numba_scoring, numba_ivf):
        funcs.update({name: getattr(mod, name) for name in KERNELS if hasattr(mod, name)})
    funcs["decode_table"] = reference.decode_table  # built once per index: no kernel needed
    # stages 0-1 and stage 2's table in one int8 pass where the CPU has VNNI (search.query_tables)
    funcs["query_tables_int8"] = numba_vnni.query_tables if numba_vnni.HAS_VNNI else None
    return SimpleNamespace(name="numba", **funcs)


def get_backend(name: str = "auto") -> SimpleNamespace:
    """Resolve ``"auto" | "numpy" | "numba"`` to a namespace holding every kernel of :data:`KERNELS`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if name == "numpy":
        return SimpleNamespace(name="numpy", **{k: getattr(reference, k) for k in KERNELS})
    if name == "auto":
        try:
            return _numba_namespace()
        except ImportError:
            return get_backend("numpy")
    return _numba_namespace()
