"""The kernel contract: every kernel a backend provides, its arguments and what it returns.

Two families, each a table of :class:`Kernel` entries:

* :data:`CPU_KERNELS` take and return numpy arrays. Backends: ``numpy`` (:mod:`.reference`, the ground truth)
  and ``numba`` (the ``numba_*`` modules), assembled in :mod:`colbert_index.backend`.
* :data:`DEVICE_KERNELS` take and return torch tensors of one device. Backends: ``torch``
  (:mod:`.torch_scoring`) and ``triton`` (:mod:`.triton_scoring`), picked in :mod:`colbert_index.gpu.device`.

A backend is a mapping from kernel name to function. :func:`check` raises :class:`KernelContractError` naming
every required kernel that is missing, not callable, or whose leading parameters are not the ones listed here
(a backend may add parameters after them, with defaults). An optional kernel may be ``None``: callers test
for it and take the general path. Shapes below: ``n`` tokens, ``K`` centroids, ``q_len`` query tokens,
``nbytes = dim * nbits // 8``, ``m`` candidates; ``codes`` are uint16 (K <= 65536) or uint32; ``offsets`` int64
``[n_docs + 1]`` (document ``d`` holds tokens ``offsets[d]:offsets[d+1]``); ``table`` is :func:`decode_table`'s.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass


class KernelContractError(TypeError):
    """A backend does not provide a kernel of the contract, or provides it with other parameters."""


@dataclass(frozen=True)
class Kernel:
    """One kernel: its ``params`` as ``(name, shape and dtype)`` pairs, in order, and what it ``returns``."""

    name: str
    params: tuple[tuple[str, str], ...]
    returns: str
    optional: bool = False


_CODES = ("codes", "[n] uint16 | uint32")
_PACKED = ("packed", "[n, nbytes] uint8, bucket indices packed MSB-first")
_OFFSETS = ("offsets", "[n_docs + 1] int64")
_CANDIDATES = ("candidates", "[m] int32 | int64 document slots")
_S = ("centroid_scores", "[K, q_len] float32, one row of query-token scores per centroid")
_Q = ("Q", "[q_len, dim] float32")
_CENTROIDS = ("centroids", "[K, dim] float32")
_TABLE = ("table", "[nbytes, 256, 8 // nbits] float32, what each byte value decodes to")
_NORMALIZE = ("normalize", "bool, rescale decompressed tokens to unit norm")
_SCORES = "[m] float32, one score per candidate, in order"

CPU_KERNELS: tuple[Kernel, ...] = (
    Kernel("decode_table", (("bucket_weights", "[dim, 2**nbits] float32"), ("nbits", "2 | 4")), "table"),
    Kernel(
        "compress_tokens",
        (
            ("tokens", "[n, dim] float32"),
            ("codes", "[n] ints, each token's centroid"),
            _CENTROIDS,
            ("cutoffs", "[dim, 2**nbits - 1] float32"),
            ("weights", "[dim, 2**nbits] float32, bucket weights"),
            ("nbits", "2 | 4"),
        ),
        "(packed [n, nbytes] uint8, residual coordinates beyond the outermost weights: int)",
    ),
    Kernel("decompress", (_CODES, _PACKED, _CENTROIDS, _TABLE, _NORMALIZE), "[n, dim] float32 tokens"),
    Kernel("centroid_scores", (_CENTROIDS, _Q), "[K, q_len] float32 (stage 0)"),
    Kernel(
        "probe_cells", (_S, ("nprobe", "int")), "[q_len, min(nprobe, K)] int32, each token's best centroids, best first"
    ),
    Kernel(
        "probe",
        (("cells", "[q_len, c] int32"), ("ivf_offsets", "[K + 1] int64"), ("ivf_docs", "int32"), ("n_docs", "int")),
        "sorted int32 slots of the documents in the probed cells (stage 1)",
    ),
    Kernel(
        "probe_agreed",
        (
            ("cells", "[q_len, c] int32"),
            ("n_any", "int, the columns whose cells give all their documents"),
            ("ivf_offsets", "[K + 1] int64"),
            ("ivf_docs", "int32"),
            ("n_docs", "int"),
        ),
        "sorted int32 slots: the probe of the first n_any columns, and documents the cells of two tokens list",
    ),
    Kernel(
        "probe_bound",
        (
            _S,
            ("cells", "[q_len, c] int32"),
            ("nprobe", "int"),
            ("floor", "[q_len] float32, the score of each token's next centroid"),
            ("ivf_offsets", "[K + 1] int64"),
            ("ivf_docs", "int32"),
            ("n_docs", "int"),
        ),
        "(candidates int32, upper bound of each one's centroid interaction float32)",
    ),
    Kernel(
        "centroid_interaction",
        (_S, _CODES, _OFFSETS, _CANDIDATES, ("threshold", "float, centroids scoring below it are pruned")),
        _SCORES + " (stage 2)",
    ),
    Kernel(
        "centroid_interaction_tables", (_S, ("threshold", "float")), "stage 2's tables for one query (backend's own)"
    ),
    Kernel(
        "centroid_interaction_from",
        (("tables", "centroid_interaction_tables' result"), _CODES, _OFFSETS, _CANDIDATES),
        _SCORES,
    ),
    Kernel("refined_interaction", (_Q, _S, _CODES, _PACKED, _OFFSETS, _CANDIDATES, _TABLE), _SCORES + " (stage 3)"),
    Kernel(
        "refined_interaction_tables",
        (_Q, _TABLE, ("score_bound", "[q_len] float64, a bound of |centroid score| per query token")),
        "stage 3's tables for one query (backend's own)",
    ),
    Kernel(
        "refined_interaction_scores",
        (("tables", "refined_interaction_tables' result"), _S),
        "what stage 3 reads of the centroid scores (backend's own)",
    ),
    Kernel(
        "refined_interaction_from",
        (
            ("tables", "refined_interaction_tables' result"),
            ("score_rows", "refined_interaction_scores' result"),
            _CODES,
            _PACKED,
            _OFFSETS,
            _CANDIDATES,
        ),
        _SCORES,
    ),
    Kernel(
        "exact_maxsim",
        (_Q, _CODES, _PACKED, _OFFSETS, _CANDIDATES, _CENTROIDS, _TABLE, _NORMALIZE),
        _SCORES + " (stage 4: MaxSim on decompressed tokens)",
    ),
    Kernel(
        "exact_maxsim_originals",
        (_Q, ("originals", "[n, dim] float16, the documents' stored vectors"), _OFFSETS, _CANDIDATES),
        _SCORES + " (the full-precision rerank: MaxSim on the stored vectors, float32 sums)",
    ),
    Kernel(
        "read_rows",
        (
            ("fd", "int, a file open for reading"),
            ("data_offset", "int, the byte where row 0 starts"),
            _OFFSETS,
            _CANDIDATES,
            ("out", "[>= the candidates' rows, dim] float16 (or its uint16 bits), C-contiguous"),
        ),
        "rows read into out, the candidates' one after another (-1: the file ends first)",
    ),
    Kernel(
        "segment_max_sums",
        (
            ("token_scores", "[n, cols] float32"),
            ("offsets", "[n_docs + 1] int64, relative to the first row"),
            ("col_bounds", "[n_q + 1] int64, query i owns columns col_bounds[i]:col_bounds[i + 1]"),
        ),
        "[n_q, n_docs] float32, each document's sum of per-query-token maxima",
    ),
    Kernel(
        "build_ivf",
        (_CODES, _OFFSETS, ("n_centroids", "int")),
        "(ivf_offsets [K + 1] int64, ivf_docs int32): each centroid's sorted document slots",
    ),
    Kernel(
        "top_k",
        (("scores", "[n] float32"), ("slots", "[n] integers in [0, 2**32)"), ("k", "int >= 1")),
        "(scores float32, slots) of the k best, score descending, ties to the lower slot",
    ),
    Kernel(
        "ward_clusters",
        (("x", "[n, dim] float32, one document's tokens"), ("n_clusters", "int")),
        "[n] int64 labels of Ward's agglomerative clustering cut at n_clusters, numbered by first row (pooling)",
    ),
    Kernel(
        "query_tables_int8",
        (
            ("centroids_u8", "[K, dim_pad] uint8, int8 centroids + 128"),
            ("scales", "[K] float32"),
            _Q,
            ("nprobe", "int"),
            ("threshold", "float"),
            ("stage3", "refined_interaction_tables' result"),
        ),
        "(stage 3's score rows, probe_cells' cells, stage 2's tables) from one int8 pass over the centroids",
        optional=True,
    ),
)

_DQ = ("Q", "[n_q, q_max, dim] float32 tensor")
_QLENS = ("q_lens", "[n_q] int tensor")
_CAND_Q = ("cand_q", "[m] int tensor, the query of each candidate")

DEVICE_KERNELS: tuple[Kernel, ...] = (
    Kernel(
        "exact_maxsim",
        (_Q, _CODES, _PACKED, _OFFSETS, _CANDIDATES, _CENTROIDS, _TABLE, _NORMALIZE),
        _SCORES + " tensor",
    ),
    Kernel("centroid_interaction", (_S, _CODES, _OFFSETS, _CANDIDATES, ("threshold", "float")), _SCORES + " tensor"),
    Kernel(
        "exact_maxsim_batched",
        (_DQ, _QLENS, _CODES, _PACKED, _OFFSETS, _CANDIDATES, _CAND_Q, _CENTROIDS, _TABLE, _NORMALIZE),
        _SCORES + " tensor (stage 4; stage 3 with normalize=False)",
    ),
    Kernel(
        "centroid_interaction_batched",
        (
            ("S", "[n_q, K, q_max] float32 tensor"),
            _QLENS,
            _CODES,
            _OFFSETS,
            _CANDIDATES,
            _CAND_Q,
            ("threshold", "float"),
        ),
        _SCORES + " tensor (stage 2)",
    ),
)


def _leading_params(func: Callable) -> list[str]:
    func = getattr(func, "py_func", func)  # a Numba dispatcher: its Python function's signature
    return list(inspect.signature(func).parameters)


def problems(kernels: Mapping[str, Callable | None], contract: tuple[Kernel, ...]) -> list[str]:
    """What ``kernels`` lacks or gets wrong of ``contract``, one line each (empty when it conforms)."""
    out = []
    for k in contract:
        func = kernels.get(k.name)
        if func is None:
            if not k.optional:
                out.append(f"{k.name}: missing")
            continue
        if not callable(func):
            out.append(f"{k.name}: not callable ({type(func).__name__})")
            continue
        want = [name for name, _ in k.params]
        got = _leading_params(func)
        if got[: len(want)] != want:
            out.append(f"{k.name}: parameters {got}, the contract says {want}")
    unknown = sorted(set(kernels) - {k.name for k in contract})
    out += [f"{name}: not in the contract" for name in unknown]
    return out


def check(kernels: Mapping[str, Callable | None], contract: tuple[Kernel, ...], backend: str) -> None:
    """Raise :class:`KernelContractError` listing every way ``kernels`` breaks ``contract``."""
    found = problems(kernels, contract)
    if found:
        raise KernelContractError(f"kernel backend {backend!r} breaks the kernel contract: " + "; ".join(found))


def from_module(module, contract: tuple[Kernel, ...]) -> dict[str, Callable | None]:
    """The contract's kernels as a module defines them (``None`` where it has none: :func:`check` names those)."""
    return {k.name: getattr(module, k.name, None) for k in contract}
