"""Every Triton kernel against its numpy reference, on CPU tensors under ``TRITON_INTERPRET=1``.

Not collected by the main run (the name does not start with ``test_``): ``tests/test_triton_interpret.py``
runs this module in a subprocess whose environment sets ``TRITON_INTERPRET=1`` before anything imports
triton (the interpreter is chosen when ``@triton.jit`` decorates a kernel). Run it alone with
``TRITON_INTERPRET=1 pytest tests/triton_cases.py``. Shapes are small: the interpreter runs each program
in Python (about 5-10 ms per candidate).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if os.environ.get("TRITON_INTERPRET", "").strip().lower() not in ("1", "true", "on", "yes", "y"):
    pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported", allow_module_level=True)
pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

from colbert_index.kernels import reference  # noqa: E402
from colbert_index.kernels import triton_scoring as ts  # noqa: E402
from kernel_data import problem, tolerance, unit  # noqa: E402

from colbert_index import Index, SearchParams  # noqa: E402

DIMS = (48, 64, 96, 128)
NBITS = (2, 4)


def t(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


def _assert_matches(got: torch.Tensor, ref: np.ndarray, q_len: int) -> None:
    assert got.dtype == torch.float32 and tuple(got.shape) == ref.shape
    np.testing.assert_allclose(got.numpy(), ref, **tolerance(q_len))


def test_interpreter_is_on():
    assert ts.INTERPRET


@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", DIMS)
def test_bucket_weights_from_table(dim, nbits):
    p = problem(1, dim, nbits)
    np.testing.assert_array_equal(ts.bucket_weights(torch.from_numpy(p.table)).numpy(), p.weights)


@pytest.mark.parametrize("normalize", (False, True))
@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", DIMS)
def test_exact_maxsim(dim, nbits, normalize):
    p = problem(10 + dim + nbits, dim, nbits)
    args = p.codec_args(normalize)
    got = ts.exact_maxsim(*t(p.Q, *args[:-1]), normalize)
    _assert_matches(got, reference.exact_maxsim(p.Q, *args), len(p.Q))
    assert got[3] == 0.0  # the empty document


@pytest.mark.parametrize("q_len", (1, 32, 33))
def test_exact_maxsim_query_lengths(q_len):
    p = problem(20 + q_len, 48, 2, q_len=q_len)
    args = p.codec_args(True)
    _assert_matches(ts.exact_maxsim(*t(p.Q, *args[:-1]), True), reference.exact_maxsim(p.Q, *args), q_len)


@pytest.mark.parametrize("threshold", (-np.inf, 0.1, 10.0))
@pytest.mark.parametrize("q_len", (1, 7, 32))
def test_centroid_interaction(q_len, threshold):
    p = problem(30 + q_len, 64, 2, q_len=q_len)
    S = p.S
    got = ts.centroid_interaction(*t(S, p.codes, p.offsets, p.candidates), threshold)
    ref = reference.centroid_interaction(S, p.codes, p.offsets, p.candidates, threshold)
    _assert_matches(got, ref, q_len)
    if threshold == 10.0:  # every token pruned: every document scores 0
        assert not got.any()


@pytest.mark.parametrize("nbits", NBITS)
@pytest.mark.parametrize("dim", DIMS)
def test_stage_3_is_exact_maxsim_unnormalised(dim, nbits):
    """The device path runs stage 3 as exact_maxsim without normalisation: the CPU contract."""
    p = problem(40 + dim + nbits, dim, nbits)
    args = p.codec_args(False)
    got = ts.exact_maxsim(*t(p.Q, *args[:-1]), False)
    ref = reference.refined_interaction(p.Q, p.S, p.codes, p.packed, p.offsets, p.candidates, p.table)
    _assert_matches(got, ref, len(p.Q))


@pytest.mark.parametrize("nbits", NBITS)
def test_batched_queries_one_launch(nbits):
    """Three queries of 1, 7 and 20 tokens, each with its own candidates, against per-query references."""
    dim, q_lens = 96, (1, 7, 20)
    p = problem(60 + nbits, dim, nbits)
    rng = np.random.default_rng(61)
    queries = [unit(rng.standard_normal((n, dim))) for n in q_lens]
    Q = np.zeros((3, max(q_lens), dim), np.float32)
    for i, q in enumerate(queries):
        Q[i, : len(q)] = q
    lists = [p.candidates, p.candidates[::-1][:5], np.array([3, 2], np.int32)]
    cands = np.concatenate(lists).astype(np.int64)
    cand_q = np.repeat(np.arange(3), [len(c) for c in lists]).astype(np.int32)
    S = np.zeros((3, len(p.centroids), max(q_lens)), np.float32)
    for i, q in enumerate(queries):
        S[i, :, : len(q)] = reference.centroid_scores(p.centroids, q)
    q_lens_t = torch.tensor(q_lens, dtype=torch.int32)
    codec = t(p.centroids, p.table)
    lists_t = t(p.codes, p.packed, p.offsets, cands, cand_q)
    exact = ts.exact_maxsim_batched(*t(Q), q_lens_t, *lists_t, *codec, True)
    approx = ts.centroid_interaction_batched(*t(S), q_lens_t, *t(p.codes, p.offsets, cands, cand_q), 0.2)
    refined = ts.exact_maxsim_batched(*t(Q), q_lens_t, *lists_t, *codec, False)
    at = 0
    for i, (q, c) in enumerate(zip(queries, lists)):
        sl = slice(at, at + len(c))
        at += len(c)
        Si = np.ascontiguousarray(S[i, :, : len(q)])
        args = (p.codes, p.packed, p.offsets, c, p.centroids, p.table, True)
        _assert_matches(exact[sl], reference.exact_maxsim(q, *args), len(q))
        _assert_matches(approx[sl], reference.centroid_interaction(Si, p.codes, p.offsets, c, 0.2), len(q))
        ref = reference.refined_interaction(q, Si, p.codes, p.packed, p.offsets, c, p.table)
        _assert_matches(refined[sl], ref, len(q))


@pytest.mark.parametrize("code_dtype", (np.int32, np.uint32, np.int64))
def test_code_dtypes(code_dtype):
    p = problem(70, 64, 2)
    args = p.codec_args(True)
    got = ts.exact_maxsim(*t(p.Q, p.codes.astype(code_dtype), *args[1:-1]), True)
    _assert_matches(got, reference.exact_maxsim(p.Q, *args), len(p.Q))


def test_no_candidates_and_only_empty_docs():
    p = problem(80, 48, 4)
    args = list(t(p.Q, *p.codec_args(True)[:-1]))
    for cands in (np.zeros(0, np.int32), np.array([3, 3], np.int32)):
        args[4] = torch.from_numpy(cands)
        assert ts.exact_maxsim(*args, True).tolist() == [0.0] * len(cands)
        assert ts.centroid_interaction(*t(p.S, p.codes, p.offsets, cands), -np.inf).tolist() == [0.0] * len(cands)


def test_bad_inputs_raise_clear_errors():
    p = problem(90, 64, 2)
    args = list(t(p.Q, *p.codec_args(True)[:-1]))
    bad_q = [torch.from_numpy(p.Q.astype(np.float64)), *args[1:]]
    with pytest.raises(TypeError, match="Q must be one of"):
        ts.exact_maxsim(*bad_q, True)
    bad_table = [*args[:-1], torch.from_numpy(p.table[:-1].copy())]  # decodes 60 dims, not 64
    with pytest.raises(ValueError, match="does not decode"):
        ts.exact_maxsim(*bad_table, True)
    strided = [*args[:2], torch.from_numpy(np.repeat(p.packed, 2, axis=1))[:, ::2], *args[3:]]
    with pytest.raises(ValueError, match="contiguous"):
        ts.exact_maxsim(*strided, True)


def _spy(f, name: str, calls: list):
    def wrapped(*args):
        calls.append(name)
        return f(*args)

    return wrapped


def test_pipeline_matches_numba_on_a_tiny_index(tmp_path, monkeypatch):
    """The device pipeline with the Triton kernels (interpreted) returns the Numba path's results."""
    rng = np.random.default_rng(5)
    docs = [unit(rng.standard_normal((int(n), 48))) for n in rng.integers(1, 16, 60)]
    cpu = Index.build(tmp_path / "i", docs, nbits=2, n_centroids=16, progress=False)
    dev = Index.open(tmp_path / "i", backend="triton")
    assert dev._device.kernel_name == "triton"
    queries = [unit(rng.standard_normal((n, 48))) for n in (4, 9)]
    calls = []
    for name in ("centroid_interaction_batched", "exact_maxsim_batched"):
        monkeypatch.setattr(ts, name, _spy(getattr(ts, name), name, calls))
    # small ndocs: stage 2 over the probed candidates (or the bound's nbound best), stage 3 over ndocs of them,
    # then the exact rerank
    p2 = SearchParams(nprobe=2, ndocs=8, centroid_score_threshold=0.2)
    for k, params in ((5, SearchParams(ndocs=16)), (3, p2), (5, SearchParams(ndocs=16, nbound=32))):
        calls.clear()
        a, b = cpu.search(queries, k=k, params=params), dev.search(queries, k=k, params=params)
        assert calls == ["centroid_interaction_batched", "exact_maxsim_batched", "exact_maxsim_batched"]  # 2, 3, 4
        np.testing.assert_array_equal(b.ids, a.ids)
        np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5, atol=1e-5)
