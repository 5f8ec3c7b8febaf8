"""The device pipeline (colbert_index.gpu.device / gpu.search) and its torch kernels, on CPU tensors; the
same on a GPU where there is one (``@pytest.mark.gpu``, skipped without CUDA). The Triton kernels are
tested under the interpreter by ``test_triton_interpret.py``."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch
from colbert_index.kernels import reference
from colbert_index.kernels import torch_scoring as tk
from kernel_data import problem, tolerance

from colbert_index import Index, SearchParams
from colbert_index.gpu.device import resolve, select_kernels

DIMS = (48, 64, 96, 128)
HAS_CUDA = torch.cuda.is_available()
PARAMS = (
    (10, None),
    (100, None),
    (10, SearchParams(ndocs=64)),
    (5, SearchParams(nprobe=3, ndocs=512, centroid_score_threshold=0.3)),
    (10, SearchParams(ndocs=64, nbound=64)),  # the stage 1 bound keeps 64: stage 2 does not run
    (10, SearchParams(nprobe=2, ndocs=64, nbound=256, bound_cells=5)),  # bound keeps 256, stage 2 keeps 64
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Torch ops on CPU tensors on one thread: with two, its OpenMP pool and Numba's (whose workers spin
    after the CPU searches here) took turns on a loaded 2-core VM and the pipeline ran 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def t(*arrays, device="cpu"):
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


def _same_results(got, want, atol: float = 1e-5) -> None:
    """Same ids in the same order; where the order differs, the scores there must tie within ``atol``."""
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=atol)
    differ = got.ids != want.ids
    if differ.any():
        for i in np.flatnonzero(differ.any(axis=1)):  # a swap of near-equal scores only
            assert set(got.ids[i]) == set(want.ids[i]) or np.ptp(want.scores[i][differ[i]]) <= atol, i


# ------------------------------------------------------------------------------------------ torch kernels
@pytest.mark.parametrize("normalize", (False, True))
@pytest.mark.parametrize("nbits", (2, 4))
@pytest.mark.parametrize("dim", DIMS)
def test_torch_kernels_match_references(dim, nbits, normalize):
    p = problem(dim + nbits, dim, nbits)
    S, q_len = p.S, len(p.Q)
    args = p.codec_args(normalize)
    targs = [*t(*args[:-1]), normalize]
    got = tk.exact_maxsim(*t(p.Q), *targs)
    np.testing.assert_allclose(got.numpy(), reference.exact_maxsim(p.Q, *args), **tolerance(q_len))
    assert got[3] == 0.0  # the empty document
    for thr in (-np.inf, 0.1, 10.0):
        got = tk.centroid_interaction(*t(S, p.codes, p.offsets, p.candidates), thr)
        want = reference.centroid_interaction(S, p.codes, p.offsets, p.candidates, thr)
        np.testing.assert_allclose(got.numpy(), want, **tolerance(q_len))
    if not normalize:  # stage 3 on a device: exact_maxsim without normalisation, the CPU kernel's contract
        want = reference.refined_interaction(p.Q, S, p.codes, p.packed, p.offsets, p.candidates, p.table)
        np.testing.assert_allclose(tk.exact_maxsim(*t(p.Q), *targs).numpy(), want, **tolerance(q_len))
    D = tk.decompress(*t(p.codes, p.packed, p.centroids, p.table), normalize)
    np.testing.assert_allclose(
        D.numpy(), reference.decompress(p.codes, p.packed, p.centroids, p.table, normalize), atol=1e-6
    )


def test_torch_kernels_chunk_boundaries(monkeypatch):
    """Candidates split over several chunks (one document longer than a chunk) give the same scores."""
    p = problem(7, 64, 2)
    args = p.codec_args(True)
    want = reference.exact_maxsim(p.Q, *args)
    monkeypatch.setattr(tk, "CHUNK_TOKENS", 30)
    np.testing.assert_allclose(tk.exact_maxsim(*t(p.Q, *args[:-1]), True).numpy(), want, **tolerance(len(p.Q)))


# ------------------------------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def torch_index(index_2k_2bit):
    return Index.open(index_2k_2bit.path, backend="torch")


@pytest.fixture(scope="module")
def float_index(index_2k_2bit):
    """The same index on the numpy backend: float stage 0 as the device pipeline computes it. Numba's int8 stage 0
    (AVX2 / VNNI) rounds the query tokens, so its stage-2 ranking may differ at the ``ndocs`` cut."""
    return Index.open(index_2k_2bit.path, backend="numpy")


@pytest.mark.parametrize("k, params", PARAMS)
def test_torch_pipeline_matches_the_float_pipeline(float_index, torch_index, corpus_2k, k, params):
    assert torch_index._device.kernel_name == "torch"
    want = float_index.search(corpus_2k.queries, k=k, params=params)
    got = torch_index.search(corpus_2k.queries, k=k, params=params)
    assert got.ids.shape == want.ids.shape == (len(corpus_2k.queries), k) and got.scores.dtype == np.float32
    _same_results(got, want)


def test_torch_pipeline_ragged_queries_in_one_batch(float_index, torch_index, corpus_2k):
    queries = [q[:n] for q, n in zip(corpus_2k.queries[:6], (1, 5, 32, 17, 2, 32))]
    # the device keeps fixed sizes (docs/gpu.md); the CPU's per-query sizing scores more for the 1-token query
    fixed = SearchParams(ndocs=SearchParams.default_ndocs(10, float_index.n_docs))
    _same_results(torch_index.search(queries, k=10), float_index.search(queries, k=10, params=fixed))


def test_torch_pipeline_segments_deletes_and_refresh(tmp_path, corpus_2k):
    """Several segments, tombstones and a write made by another object: the device copy follows."""
    docs = corpus_2k.documents()[:600]
    cpu = Index.build(tmp_path / "i", docs[:300], nbits=2, progress=False)
    cpu.add(docs[300:450])
    cpu.add(docs[450:])
    cpu.delete(list(range(0, 600, 7)))
    dev = Index.open(tmp_path / "i", backend="torch")
    queries = corpus_2k.queries[:10]
    for k, params in PARAMS:
        _same_results(dev.search(queries, k=k, params=params), cpu.search(queries, k=k, params=params))
    assert not set(dev.search(queries, k=50).ids.ravel().tolist()) & set(range(0, 600, 7))
    cpu.delete(list(range(1, 600, 5)), missing_ok=True)
    assert dev.refresh()
    got = dev.search(queries, k=10)
    _same_results(got, cpu.search(queries, k=10))
    assert not set(got.ids.ravel().tolist()) & set(range(1, 600, 5))


def test_torch_pipeline_fewer_docs_than_k(tiny_index, tiny_docs):
    dev = Index.open(tiny_index.path, backend="torch")
    Q = tiny_docs[4][:6]
    want, got = tiny_index.search(Q, k=50), dev.search(Q, k=50)
    assert got.ids.shape == want.ids.shape == (1, len(tiny_docs))
    _same_results(got, want)


# ------------------------------------------------------------------------------------------ selection
def test_cpu_device_keeps_numba():
    assert resolve("cpu", "auto") == ("auto", None)
    assert resolve("cpu", "numpy") == ("numpy", None)


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tiny_index):
    with pytest.raises(RuntimeError, match="CUDA is not available.*device='cpu'"):
        Index.open(tiny_index.path, device="cuda")


@pytest.mark.parametrize("device", ("tpu", "cuda0", ""))
def test_unknown_device(device):
    with pytest.raises(ValueError, match="unknown device"):
        resolve(device, "auto")


def test_cpu_backend_on_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve("cuda", "numba")
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        resolve("cuda:3", "auto")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        select_kernels(torch.device("cpu"), "triton")
    assert select_kernels(torch.device("cpu"), "auto")[1] == "torch"


def test_missing_triton_falls_back_to_torch_with_a_log_line(monkeypatch, caplog):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "colbert_index.kernels.triton_scoring", None)  # import fails
    with caplog.at_level(logging.WARNING, logger="colbert_index.gpu.device"):
        module, name = select_kernels(torch.device("cpu"), "auto")
    assert name == "torch" and module is tk
    assert "torch fallback" in caplog.text
    with pytest.raises(ImportError, match="pip install triton"):
        select_kernels(torch.device("cpu"), "triton")


# ------------------------------------------------------------------------------------------ GPU only
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ("auto", "torch"))
@pytest.mark.parametrize("k, params", PARAMS)
def test_cuda_search_matches_cpu(index_2k_2bit, float_index, corpus_2k, backend, k, params):
    dev = Index.open(index_2k_2bit.path, device="cuda", backend=backend)
    data = dev._device.prepare(dev._s)
    assert data.codes.is_cuda and data.residuals.is_cuda and data.ivf_docs.is_cuda
    want = float_index.search(corpus_2k.queries, k=k, params=params)
    _same_results(dev.search(corpus_2k.queries, k=k, params=params), want, atol=2e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("nbits", (2, 4))
@pytest.mark.parametrize("dim", DIMS)
def test_triton_kernels_on_gpu(dim, nbits):
    pytest.importorskip("triton")
    from colbert_index.kernels import triton_scoring as ts

    p = problem(100 + dim, dim, nbits, q_len=32, n_random=300, n_candidates=200)
    S = p.S
    args = p.codec_args(True)
    cuda = [*t(*args[:-1], device="cuda"), True]
    tol = {"rtol": 1e-4, "atol": 1e-4 * 32}  # tf32x3 tensor-core products
    got = ts.exact_maxsim(*t(p.Q, device="cuda"), *cuda).cpu().numpy()
    np.testing.assert_allclose(got, reference.exact_maxsim(p.Q, *args), **tol)
    got = ts.exact_maxsim(*t(p.Q, device="cuda"), *cuda[:-1], False).cpu().numpy()  # stage 3
    want = reference.refined_interaction(p.Q, S, p.codes, p.packed, p.offsets, p.candidates, p.table)
    np.testing.assert_allclose(got, want, **tol)
    got = ts.centroid_interaction(*t(S, p.codes, p.offsets, p.candidates, device="cuda"), 0.2).cpu().numpy()
    np.testing.assert_allclose(got, reference.centroid_interaction(S, p.codes, p.offsets, p.candidates, 0.2), **tol)
