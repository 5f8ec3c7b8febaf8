"""Ray, imported on first use only: the rest of colbert_index installs and runs without it."""

from __future__ import annotations

import functools


def require_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(
            "colbert_index.distributed needs Ray: pip install 'colbert_index[distributed]' (or pip install 'ray>=2.9')"
        ) from e
    return ray


def connect(address: str | None = None, **init_kwargs) -> None:
    """Join a Ray cluster by ``address`` (e.g. ``"ray://head:10001"`` or ``"auto"``), or start a local
    instance when ``address`` is None (``num_cpus=`` etc. go to ``ray.init``). Does nothing when this process
    is already connected."""
    ray = require_ray()
    if ray.is_initialized():
        return
    ray.init(address=address, **init_kwargs)


def thread_env(threads: int) -> dict:
    """A runtime_env that caps a worker's Numba, OpenMP and BLAS threads (Ray's per-task CPU count is a
    scheduling label only; without a cap each worker would start one thread per core)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    n = str(int(threads))
    names = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return {"env_vars": dict.fromkeys(names, n)}


@functools.cache
def remote(fn):
    """``ray.remote(fn)``, made once per function (per-call settings go through ``.options``)."""
    return require_ray().remote(fn)


def node_resource(node: str | None) -> dict:
    """Ray's per-node resource that pins a task or actor to the node with IP ``node`` (none when None)."""
    return {} if node is None else {f"node:{node}": 0.001}
