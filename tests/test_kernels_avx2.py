"""The int8 stage 0 on AVX2 (``vpmaddubsw`` + ``vpmaddwd``, :mod:`colbert_index.kernels.numba_avx2`) against the
numpy references, bit for bit, and the choice of kernel for the CPU Numba compiles for.

The in-process tests run where the int8 kernels multiply with AVX2 (``numba_vnni.INT8_DOT == "avx2"``: AVX2
without VNNI); on a VNNI CPU the same kernels use ``vpdpbusd`` (tests/test_kernels.py) and the AVX2 products are
checked in a child process compiled for ``haswell``. Without AVX2 everything here skips.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from colbert_index.kernels import numba_llvm, numba_scoring, numba_vnni, reference
from llvmlite import binding

from colbert_index.codec import ResidualCodec, dequantize_centroids, quantize_centroids
from colbert_index.metrics import recall_at

avx2_here = pytest.mark.skipif(
    numba_vnni.INT8_DOT != "avx2", reason=f"the int8 kernels here multiply with {numba_vnni.INT8_DOT}, not AVX2"
)
x86 = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="not an x86-64 CPU")
host_avx2 = pytest.mark.skipif(
    not binding.get_host_cpu_features().get("avx2", False), reason="this CPU has no AVX2: nothing to run"
)


def _codec(centroids: np.ndarray) -> ResidualCodec:
    dim = centroids.shape[1]
    return ResidualCodec(centroids, np.zeros((dim, 3), np.float32), np.zeros((dim, 4), np.float32), 2)


def _stored(rng: np.random.Generator, K: int, dim: int) -> np.ndarray:
    c = rng.standard_normal((K, dim)).astype(np.float32)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return dequantize_centroids(*quantize_centroids(c))


def _check_fused(u8, scales, Q, threshold, nprobe=2):
    """``numba_vnni.query_tables`` against ``score_rows_int16``, ``probe_cells`` and ``kept_rows_int8`` of the
    reference int8 scores, and ``centroid_scores_int8`` against those scores: all to the bit."""
    want = reference.centroid_scores_int8(u8, scales, Q)
    np.testing.assert_array_equal(numba_vnni.centroid_scores_int8(u8, scales, Q), want)
    dim = Q.shape[1]
    table = reference.decode_table(np.linspace(-0.1, 0.1, 4 * dim, dtype=np.float32).reshape(dim, 4), 2)
    bound = np.abs(want).max(axis=0).astype(np.float64) if want.size else np.zeros(Q.shape[0])
    stage3 = numba_scoring.refined_interaction_tables(Q, table, bound)
    rows16, cells, kept = numba_vnni.query_tables(u8, scales, Q, nprobe, threshold, stage3)
    np.testing.assert_array_equal(rows16[:, : Q.shape[0]], reference.score_rows_int16(want, stage3[1], stage3[2]))
    np.testing.assert_array_equal(rows16[:, Q.shape[0] :], 0)
    np.testing.assert_array_equal(cells, reference.probe_cells(want, nprobe))
    for x, y in zip(kept, reference.kept_rows_int8(want, threshold)):
        np.testing.assert_array_equal(x, y)
    return want


def _saturating_pairs(u8: np.ndarray, qi: np.ndarray) -> int:
    """How many byte pairs ``vpmaddubsw`` would saturate with the offset centroid bytes as its unsigned operand
    (the scheme the AVX2 kernel avoids): ``u8[2i] q[2i] + u8[2i+1] q[2i+1]`` outside int16."""
    dim = qi.shape[1]
    prods = u8[:, None, :dim].astype(np.int64) * qi[None, :, :].astype(np.int64)
    pairs = prods[..., 0::2] + prods[..., 1::2]
    return int(np.count_nonzero((pairs > 32767) | (pairs < -32768)))


@avx2_here
@pytest.mark.parametrize("dim", (48, 64, 128))
def test_extreme_bytes_are_exact(dim):
    """Every centroid byte at the ends of its range (-128, -127, 127, and 0) against query bytes of +-127, in
    every sign combination of a pair: where the offset bytes would saturate ``vpmaddubsw``, the magnitude x
    signed-query products reach 2 x 128 x 127 and stay exact."""
    rng = np.random.default_rng(2800 + dim)
    signed = rng.choice(np.array([-128, -127, 127, 0, 1, -1], dtype=np.int16), size=(41, dim))
    signed[0], signed[1], signed[2] = -128, 127, -127  # whole rows at the ends
    u8 = (signed + 128).astype(np.uint8)
    scales = rng.uniform(0.001, 0.02, 41).astype(np.float32)
    Q = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(33, dim))  # int8: +-127 everywhere
    Q[0], Q[1] = -1.0, 1.0  # with rows 0 and 1: the largest dots
    Q[5] = 0.0
    Q[6, 1:] = 0.0  # one nonzero dimension
    qi, _ = reference.quantize_query(Q)
    assert np.abs(qi[:5]).min() == 127
    assert _saturating_pairs(u8, qi) > 0
    want = _check_fused(u8, scales, Q, threshold=0.0)
    dots = (signed.astype(np.int64) @ qi.T.astype(np.int64)).astype(np.float32)
    np.testing.assert_array_equal(want, dots * reference.quantize_query(Q)[1][None, :] * scales[:, None])
    assert signed[0].astype(np.int64) @ qi[0].astype(np.int64) == 128 * 127 * dim


@avx2_here
@pytest.mark.parametrize("K", (0, 1, 2, 37, 1031))  # 0: empty; odd K: the last row pairs with itself
@pytest.mark.parametrize("q_len", (1, 3, 7, 9, 12, 17, 23, 31, 33, 39, 40))  # every width of the last block
@pytest.mark.parametrize("dim", (48, 64, 128))
def test_avx2_kernels_match_references(dim, q_len, K):
    """Stage 0 alone and the fused pass (stage 3's rows, the probe's cells, stage 2's table) on stored centroids
    and unit query tokens, odd shapes included: the references' to the bit, ties (equal centroids) included."""
    rng = np.random.default_rng(2810 + dim + 41 * q_len + K)
    centroids = _stored(rng, K, dim)
    if K > 10:
        centroids[K // 3 : K // 3 + 4] = centroids[K // 2]
    Q = rng.standard_normal((q_len, dim)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    u8, scales = _codec(centroids).centroids_u8
    want = reference.centroid_scores_int8(u8, scales, Q)
    threshold = float(np.median(want.max(axis=1))) if K else 0.0
    for nprobe in (1, 3):
        _check_fused(u8, scales, Q, threshold, nprobe)


@avx2_here
def test_empty_query():
    """No query token: empty scores, no cells, no kept rows; the same as the references."""
    u8, scales = _codec(_stored(np.random.default_rng(2820), 9, 64)).centroids_u8
    Q = np.zeros((0, 64), np.float32)
    assert numba_vnni.centroid_scores_int8(u8, scales, Q).shape == (9, 0)
    np.testing.assert_array_equal(
        numba_vnni.centroid_scores_int8(u8, scales, Q), reference.centroid_scores_int8(u8, scales, Q)
    )


@avx2_here
@pytest.mark.parametrize("fixture", ("index_2k_2bit", "index_2k_4bit"))
def test_search_with_avx2_int8_path(fixture, corpus_2k, monkeypatch, request):
    """End to end: the index searches through the AVX2 pass (no float scores), and its recall@10 against
    ``search_exact`` is not lower than that of the float path (``query_tables_int8`` removed)."""
    index = request.getfixturevalue(fixture)
    assert index.backend.query_tables_int8 is numba_vnni.query_tables
    queries = corpus_2k.queries
    exact = index.search_exact(queries, k=10).ids
    int8 = index.search(queries, k=10)
    monkeypatch.setattr(index.backend, "query_tables_int8", None)
    flt = index.search(queries, k=10)
    r_int8, r_float = recall_at(int8.ids, exact, 10), recall_at(flt.ids, exact, 10)
    assert r_int8 >= r_float >= 0.9
    np.testing.assert_array_equal(int8.ids[:, 0], flt.ids[:, 0])


def _in_child(env: dict, code: str, tmp_path: Path) -> dict:
    """``code`` (printing one JSON line last) in a Python process with ``env`` set before Numba is imported and a
    Numba cache of its own (so nothing compiled for another target is loaded, and its assembly can be read)."""
    full = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    full.update(env, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_CHOICE = """
import json
from colbert_index.backend import get_backend
from colbert_index.kernels import numba_llvm, numba_vnni
fused = get_backend("numba").query_tables_int8
print(json.dumps({"isa": sorted(numba_llvm.target_isa()), "dot": numba_vnni.INT8_DOT,
                  "fused": fused is numba_vnni.query_tables}))
"""


@x86
@pytest.mark.parametrize(
    "env, isa, dot",
    (
        ({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}, ["avx2"], "avx2"),
        ({"NUMBA_CPU_NAME": "x86-64", "NUMBA_CPU_FEATURES": ""}, [], None),
        ({"NUMBA_CPU_NAME": "generic"}, [], None),  # Numba's portable target: features from the name
        ({"NUMBA_CPU_NAME": "alderlake", "NUMBA_CPU_FEATURES": ""}, ["avx2", "vnni"], "vnni"),  # AVX-VNNI
        ({"NUMBA_CPU_NAME": "x86-64", "NUMBA_CPU_FEATURES": "+avx2"}, ["avx2"], "avx2"),
    ),
)
def test_kernel_follows_numba_target(env, isa, dot, tmp_path):
    """The int8 kernel is chosen for the CPU Numba compiles for, not the host: AVX2 for Haswell, none for
    x86-64 (SSE2: the backend's ``query_tables_int8`` is ``None``, the float path), VNNI for Alder Lake."""
    got = _in_child(env, _CHOICE, tmp_path)
    assert got == {"isa": isa, "dot": dot, "fused": dot is not None}


@x86
@pytest.mark.skipif(
    bool({"NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES"} & set(os.environ)), reason="this process has a target of its own"
)
def test_cpu_name_alone_keeps_host_features(tmp_path):
    """``NUMBA_CPU_NAME`` without ``NUMBA_CPU_FEATURES``: Numba still passes the host's feature string to LLVM, so
    the target (and the kernel chosen) is the host's."""
    got = _in_child({"NUMBA_CPU_NAME": "x86-64"}, _CHOICE, tmp_path)
    assert got["isa"] == sorted(numba_llvm.target_isa()) and got["dot"] == numba_vnni.INT8_DOT


_ASM = """
import json
from numba import types
from colbert_index.kernels import numba_vnni
sig = (types.uint8[:, ::1], types.float32[::1], types.float32[:, ::1], types.int64, types.float32,
       types.uint16[::1], types.float32[::1], types.float32)
numba_vnni._query_tables.compile(sig)
asm = numba_vnni._query_tables.inspect_asm(numba_vnni._query_tables.signatures[0])
print(json.dumps({k: k in asm for k in ("{vex}\\tvpdpbusd", "vpdpbusd", "vpmaddubsw", "vpsignb", "zmm")}))
"""


@x86
@pytest.mark.parametrize(
    "cpu, found",
    (
        ("haswell", {"vpmaddubsw", "vpsignb"}),  # AVX2
        ("alderlake", {"{vex}\tvpdpbusd", "vpdpbusd"}),  # AVX-VNNI, no AVX-512
        ("znver4", {"vpdpbusd"}),  # AVX512-VNNI: the EVEX form
    ),
)
def test_fused_pass_instructions(cpu, found, tmp_path):
    """Compiled (not run) for each kind of target, the fused pass multiplies bytes with the instructions of that
    target: ``vpsignb`` + ``vpmaddubsw`` on AVX2, the VEX ``vpdpbusd`` on AVX-VNNI (no 512-bit register on
    either), the EVEX one on AVX512-VNNI."""
    got = _in_child({"NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": ""}, _ASM, tmp_path)
    assert {k for k, v in got.items() if v and k != "zmm"} == found
    assert not got["zmm"] or cpu == "znver4"  # elsewhere in the pass LLVM may use AVX-512 where it has it


_HASWELL_CHECK = """
import json, sys
sys.path.insert(0, {tests!r})
import numpy as np
import test_kernels_avx2 as t
from colbert_index.kernels import numba_vnni
assert numba_vnni.INT8_DOT == "avx2", numba_vnni.INT8_DOT
for dim, q_len, K in ((48, 9, 37), (64, 32, 300), (128, 40, 1031), (64, 1, 1)):
    t.test_avx2_kernels_match_references(dim, q_len, K)
for dim in (48, 128):
    t.test_extreme_bytes_are_exact(dim)
print(json.dumps({{"ok": True}}))
"""


@host_avx2
def test_avx2_kernels_compiled_for_haswell(tmp_path):
    """Where the kernels in process are not the AVX2 ones (a VNNI CPU), the AVX2 products are checked against
    the references in a process compiled for Haswell."""
    if numba_vnni.INT8_DOT == "avx2":
        pytest.skip("the AVX2 kernels run in this process: the tests above check them")
    code = _HASWELL_CHECK.format(tests=str(Path(__file__).parent))
    assert _in_child({"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}, code, tmp_path) == {"ok": True}
