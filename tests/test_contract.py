"""The kernel contract (kernels/contract.py): every backend provides every kernel with the stated parameters,
and one that does not fails when it is assembled, naming the kernel."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from colbert_index.kernels import reference
from colbert_index.kernels.contract import (
    CPU_KERNELS,
    DEVICE_KERNELS,
    KernelContractError,
    check,
    from_module,
    problems,
)

from colbert_index import backend as backend_module
from colbert_index.backend import get_backend


def _kernels(namespace) -> dict:
    return {k.name: getattr(namespace, k.name) for k in CPU_KERNELS}


@pytest.mark.parametrize("name", ("numpy", "numba"))
def test_cpu_backends_conform(name):
    be = get_backend(name)
    assert be.name == name
    assert problems(_kernels(be), CPU_KERNELS) == []
    required = [k.name for k in CPU_KERNELS if not k.optional]
    assert all(callable(getattr(be, k)) for k in required)


def test_numpy_backend_is_the_references():
    be = get_backend("numpy")
    for k in CPU_KERNELS:
        assert getattr(be, k.name) is getattr(reference, k.name, None)


def test_device_backends_conform():
    torch_scoring = pytest.importorskip("colbert_index.kernels.torch_scoring")
    assert problems(from_module(torch_scoring, DEVICE_KERNELS), DEVICE_KERNELS) == []
    pytest.importorskip("triton")
    from colbert_index.kernels import triton_scoring

    assert problems(from_module(triton_scoring, DEVICE_KERNELS), DEVICE_KERNELS) == []


def test_a_backend_missing_a_kernel_fails_naming_it():
    kernels = _kernels(get_backend("numba"))
    del kernels["probe"]
    with pytest.raises(KernelContractError, match=r"'numba'.*probe: missing"):
        check(kernels, CPU_KERNELS, "numba")
    kernels["probe"] = None  # present but empty: a required kernel may not be None
    with pytest.raises(KernelContractError, match="probe: missing"):
        check(kernels, CPU_KERNELS, "numba")


def test_an_optional_kernel_may_be_absent_but_not_misnamed():
    kernels = _kernels(get_backend("numpy"))
    kernels["query_tables_int8"] = None
    check(kernels, CPU_KERNELS, "numpy")  # optional: no error

    def exact_maxsim(Q, codes, residuals, offsets, candidates, centroids, table, normalize):  # "packed" renamed
        raise AssertionError("never called")

    kernels["exact_maxsim"] = exact_maxsim
    with pytest.raises(KernelContractError, match=r"exact_maxsim: parameters .*'residuals'"):
        check(kernels, CPU_KERNELS, "numpy")
    kernels = _kernels(get_backend("numpy")) | {"exact_maxsim_fast": reference.exact_maxsim}
    with pytest.raises(KernelContractError, match="exact_maxsim_fast: not in the contract"):
        check(kernels, CPU_KERNELS, "numpy")


def test_get_backend_refuses_a_backend_missing_a_kernel(monkeypatch):
    """The check runs where the backend is assembled: a kernel dropped from the Numba backend stops
    ``get_backend`` (and so ``Index.open``) instead of failing halfway through a search."""
    real = backend_module._numba_kernels

    def without_build_ivf():
        kernels = real()
        del kernels["build_ivf"]
        return kernels

    backend_module._checked.cache_clear()
    monkeypatch.setattr(backend_module, "_numba_kernels", without_build_ivf)
    try:
        with pytest.raises(KernelContractError, match="build_ivf: missing"):
            get_backend("numba")
    finally:
        backend_module._checked.cache_clear()


def test_device_kernels_are_checked_when_selected(monkeypatch):
    torch = pytest.importorskip("torch")
    from colbert_index.kernels import torch_scoring

    from colbert_index.gpu.device import select_kernels

    assert select_kernels(torch.device("cpu"), "torch")[1] == "torch"
    monkeypatch.delattr(torch_scoring, "centroid_interaction_batched")
    with pytest.raises(KernelContractError, match="centroid_interaction_batched: missing"):
        select_kernels(torch.device("cpu"), "torch")


def test_numpy_backend_runs_no_numba(tmp_path):
    """Build, search, search_exact and a live add with backend="numpy" in a fresh process: no Numba kernel
    module is imported, so none can run."""
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from colbert_index import Index

        rng = np.random.default_rng(0)
        docs = [rng.standard_normal((int(n), 32)).astype(np.float32) for n in rng.integers(1, 20, 40)]
        idx = Index.build({str(tmp_path / "i")!r}, docs, n_centroids=8, progress=False, backend="numpy")
        idx.search(docs[3][:4], k=5)
        idx.search_exact(docs[3][:4], k=5)
        idx.add(docs[:3])
        idx.search([docs[1][:3], docs[2][:2]], k=3)
        print(sorted(m for m in sys.modules if m.startswith("colbert_index.kernels.numba")))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_numpy_and_numba_backends_find_the_same_documents(index_2k_2bit, corpus_2k):
    """The stages' int8 / int16 tables of the Numba backend may order near-ties differently from the float
    references, so the two need not agree to the last rank; their results are exact MaxSim scores (stage 4)."""
    from colbert_index import Index
    from colbert_index.metrics import recall_at

    as_numpy = Index.open(index_2k_2bit.path, backend="numpy")
    assert as_numpy.backend.name == "numpy"
    q = corpus_2k.queries[:8]
    a, b = index_2k_2bit.search(q, k=10), as_numpy.search(q, k=10)
    assert recall_at(b.ids, a.ids, 10) >= 0.95
    exact = as_numpy.search_exact(q, k=10)
    np.testing.assert_array_equal(exact.ids, index_2k_2bit.search_exact(q, k=10).ids)
