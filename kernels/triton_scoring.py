"""Triton GPU scoring kernels: centroid interaction (stage 2) and fused decompression + MaxSim (stages 3/4).

Same contracts as :mod:`colbert_index.kernels.reference` (and the Numba kernels), on torch tensors of one
device. Every kernel is batched: many queries, each with its own candidate list, in one launch. A batch is

* ``Q [n_q, q_max, dim]`` float32, queries padded to ``q_max`` tokens, with ``q_lens [n_q]`` int32;
* ``candidates [n]`` document slots and ``cand_q [n]`` int32, the query each candidate belongs to;
* for stage 2, ``S [n_q, K, q_max]`` float32 query x centroid scores (one row per centroid, as on CPU).

One program scores one (query, candidate) pair: it walks the document's tokens ``BLOCK_T`` at a time,
unpacks the 2/4-bit residuals in registers (``bucket = byte >> shift & mask``, then the bucket weight of
that dimension), adds the centroid row, normalises when the codec does, and takes ``tl.dot`` of the query
tile with the token tile (tensor cores). Decompressed tokens never reach global memory. Dims that are not
powers of two (48, 96) are padded to the next one with masks; ``q_max`` and the token tile are padded
to at least 16 rows, as ``tl.dot`` needs.

Stage 3 (``reference.refined_interaction``) is :func:`exact_maxsim_batched` without normalisation. The
single-query functions :func:`centroid_interaction` and :func:`exact_maxsim` take the reference's arguments
(as tensors) and return a float32 tensor.

Importing this module imports triton; under ``TRITON_INTERPRET=1`` (set before the import) the kernels
run on CPU tensors through Triton's interpreter, which is how CI tests them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# how triton reads the variable (its getenv_bool), so this agrees with the choice made at @triton.jit
INTERPRET = os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes", "y")
# fp32 tl.dot precision: "tf32x3" uses the tensor cores at about fp32 accuracy (scores must rank as on
# CPU); "tf32" is faster and ~1e-3 off; "ieee" is plain fp32 FMA. Pre-Ampere GPUs get "ieee".
DOT_PRECISION = "tf32x3"


# COLBERT_INDEX_TRITON_TUNE=0: one config per kernel, no autotuning (tests of many shapes, where compiling six
# configs for every key would cost minutes and the results do not depend on the config)
TUNE = os.environ.get("COLBERT_INDEX_TRITON_TUNE", "1").strip() != "0"


def _configs() -> list[triton.Config]:
    if INTERPRET:  # one config: the interpreter cannot time anything
        return [triton.Config({"BLOCK_T": 16}, num_warps=1)]
    if not TUNE:
        return [triton.Config({"BLOCK_T": 32}, num_warps=4, num_stages=2)]
    # few configs: each is compiled and timed at the first launch of every key (dim, query block, codec)
    shapes = ((16, 2, 2), (32, 4, 2), (32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 8, 3))
    return [triton.Config({"BLOCK_T": bt}, num_warps=w, num_stages=s) for bt, w, s in shapes]


@triton.jit
def _decompress(code, t, mask, packed_ptr, nbytes, byte_col, shift, weights_ptr, centroids_ptr, rd, dim,
                NBITS: tl.constexpr, NORMALIZE: tl.constexpr):  # fmt: skip
    """``[BLOCK_T, BLOCK_D]`` tokens ``t`` (codes ``code``) decompressed in registers: bucket weight + centroid."""
    byte = tl.load(packed_ptr + t[:, None] * nbytes + byte_col[None, :], mask=mask, other=0).to(tl.int32)
    bucket = (byte >> shift[None, :]) & ((1 << NBITS) - 1)
    v = tl.load(weights_ptr + rd[None, :] * (1 << NBITS) + bucket, mask=mask, other=0.0)
    v += tl.load(centroids_ptr + code[:, None] * dim + rd[None, :], mask=mask, other=0.0)
    if NORMALIZE:
        v = v / tl.maximum(tl.sqrt(tl.sum(v * v, axis=1)), 1e-12)[:, None]
    return v


# ----------------------------------------------------------------------------------- stage 4: exact
@triton.autotune(configs=_configs(), key=["dim", "BLOCK_Q", "NBITS", "NORMALIZE"])
@triton.jit
def _exact_maxsim_kernel(
    # pointers
    q_ptr,
    q_lens_ptr,
    codes_ptr,
    packed_ptr,
    offsets_ptr,
    cand_ptr,
    cand_q_ptr,
    centroids_ptr,
    weights_ptr,
    out_ptr,
    # sizes and strides
    dim,
    nbytes,
    stride_qb,
    stride_qt,
    # constexpr
    NBITS: tl.constexpr,
    NORMALIZE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    i = tl.program_id(0)
    doc = tl.load(cand_ptr + i).to(tl.int64)
    qi = tl.load(cand_q_ptr + i).to(tl.int64)
    q_len = tl.load(q_lens_ptr + qi)
    lo = tl.load(offsets_ptr + doc)
    hi = tl.load(offsets_ptr + doc + 1)
    rq = tl.arange(0, BLOCK_Q)
    rd = tl.arange(0, BLOCK_D)
    rt = tl.arange(0, BLOCK_T)
    q_mask = rq < q_len
    d_mask = rd < dim
    q = tl.load(
        q_ptr + qi * stride_qb + rq[:, None] * stride_qt + rd[None, :],
        mask=q_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    byte_col = rd // (8 // NBITS)  # byte of dimension j, and its shift (MSB first)
    shift = 8 - NBITS * (rd % (8 // NBITS) + 1)
    best = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    for t0 in range(lo, hi, BLOCK_T):
        t = t0 + rt
        t_mask = t < hi
        m2 = t_mask[:, None] & d_mask[None, :]
        code = tl.load(codes_ptr + t, mask=t_mask, other=0).to(tl.int64)
        v = _decompress(
            code, t, m2, packed_ptr, nbytes, byte_col, shift, weights_ptr, centroids_ptr, rd, dim, NBITS, NORMALIZE
        )
        s = tl.dot(q, tl.trans(v), input_precision=PRECISION)  # [BLOCK_Q, BLOCK_T]
        s = tl.where(t_mask[None, :], s, float("-inf"))
        best = tl.maximum(best, tl.max(s, axis=1))
    total = tl.sum(tl.where(q_mask & (hi > lo), best, 0.0), axis=0)
    tl.store(out_ptr + i, total)


# --------------------------------------------------------------------- stage 2: centroid interaction
@triton.autotune(configs=_configs(), key=["BLOCK_Q"])
@triton.jit
def _centroid_interaction_kernel(
    # pointers
    s_ptr,
    keep_ptr,
    q_lens_ptr,
    codes_ptr,
    offsets_ptr,
    cand_ptr,
    cand_q_ptr,
    out_ptr,
    # sizes and strides
    n_centroids,
    stride_sb,
    stride_sk,
    # constexpr
    BLOCK_Q: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    i = tl.program_id(0)
    doc = tl.load(cand_ptr + i).to(tl.int64)
    qi = tl.load(cand_q_ptr + i).to(tl.int64)
    q_len = tl.load(q_lens_ptr + qi)
    lo = tl.load(offsets_ptr + doc)
    hi = tl.load(offsets_ptr + doc + 1)
    rq = tl.arange(0, BLOCK_Q)
    rt = tl.arange(0, BLOCK_T)
    q_mask = rq < q_len
    best = tl.full([BLOCK_Q], float("-inf"), tl.float32)
    kept = tl.zeros([BLOCK_T], tl.int32)
    for t0 in range(lo, hi, BLOCK_T):
        t = t0 + rt
        t_mask = t < hi
        code = tl.load(codes_ptr + t, mask=t_mask, other=0).to(tl.int64)
        keep = tl.load(keep_ptr + qi * n_centroids + code, mask=t_mask, other=0) != 0
        sc = tl.load(
            s_ptr + qi * stride_sb + code[:, None] * stride_sk + rq[None, :],
            mask=keep[:, None] & q_mask[None, :],
            other=float("-inf"),
        )  # [BLOCK_T, BLOCK_Q]
        best = tl.maximum(best, tl.max(sc, axis=0))
        kept += keep.to(tl.int32)
    total = tl.sum(tl.where(q_mask, best, 0.0), axis=0)
    tl.store(out_ptr + i, tl.where(tl.sum(kept, axis=0) > 0, total, 0.0))


# ------------------------------------------------------------------------------------------ launchers
def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(max(int(n), 1)))


def _precision(device: torch.device) -> str:
    """``DOT_PRECISION`` where TF32 tensor cores exist (NVIDIA sm_80+); plain fp32 elsewhere (ROCm, older)."""
    if device.type == "cuda" and (torch.version.hip is not None or torch.cuda.get_device_capability(device)[0] < 8):
        return "ieee"
    return DOT_PRECISION


def _check(name: str, x: torch.Tensor, ndim: int, dtypes: tuple, device: torch.device) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must be one of {[str(d) for d in dtypes]}, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device}, expected {device} (move every input to one device)")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if device.type == "cpu" and not INTERPRET:
        raise RuntimeError("Triton kernels need a GPU; on CPU tensors set TRITON_INTERPRET=1 before importing triton")


_INDEX = (torch.int32, torch.int64)
_CODES = (torch.uint16, torch.int32, torch.uint32, torch.int64)


def _check_batch(Q, q_lens, codes, offsets, candidates, cand_q) -> torch.device:
    device = Q.device
    _check("Q", Q, 3, (torch.float32,), device)
    _check_lists(Q.shape[0], q_lens, codes, offsets, candidates, cand_q, device)
    return device


def _check_lists(n_q: int, q_lens, codes, offsets, candidates, cand_q, device) -> None:
    _check("q_lens", q_lens, 1, (torch.int32,), device)
    _check("codes", codes, 1, _CODES, device)
    _check("offsets", offsets, 1, (torch.int64,), device)
    _check("candidates", candidates, 1, _INDEX, device)
    _check("cand_q", cand_q, 1, (torch.int32,), device)
    if len(q_lens) != n_q or len(cand_q) != len(candidates):
        raise ValueError("q_lens must have one entry per query and cand_q one per candidate")


def _check_codec(packed, centroids, table, dim: int, device) -> tuple[int, torch.Tensor]:
    _check("packed", packed, 2, (torch.uint8,), device)
    _check("centroids", centroids, 2, (torch.float32,), device)
    _check("table", table, 3, (torch.float32,), device)
    per_byte = table.shape[2]
    if per_byte not in (2, 4) or table.shape[:2] != (packed.shape[1], 256) or packed.shape[1] * per_byte != dim:
        raise ValueError(f"table {tuple(table.shape)} does not decode packed {tuple(packed.shape)} to dim {dim}")
    if centroids.shape[1] != dim:
        raise ValueError(f"centroids have dim {centroids.shape[1]}, Q has dim {dim}")
    return 8 // per_byte, bucket_weights(table)


def bucket_weights(table: torch.Tensor) -> torch.Tensor:
    """``[dim, 2**nbits]`` bucket weights recovered from a decode table (``reference.decode_table``).

    The byte whose every field holds bucket ``b`` decodes each of its dimensions to that bucket's weight.
    """
    nbytes, _, per_byte = table.shape
    nbits = 8 // per_byte
    fill = sum(1 << (8 - nbits * (k + 1)) for k in range(per_byte))  # 0b01010101 (2 bits), 0b00010001 (4)
    values = torch.arange(1 << nbits, device=table.device) * fill
    return table[:, values, :].permute(0, 2, 1).reshape(nbytes * per_byte, 1 << nbits).contiguous()


def exact_maxsim_batched(
    Q: torch.Tensor,
    q_lens: torch.Tensor,
    codes: torch.Tensor,
    packed: torch.Tensor,
    offsets: torch.Tensor,
    candidates: torch.Tensor,
    cand_q: torch.Tensor,
    centroids: torch.Tensor,
    table: torch.Tensor,
    normalize: bool,
) -> torch.Tensor:
    """Stage 4 for a batch: exact MaxSim of query ``cand_q[i]`` against candidate ``candidates[i]`` (stage 3
    with ``normalize=False``)."""
    device = _check_batch(Q, q_lens, codes, offsets, candidates, cand_q)
    nbits, weights = _check_codec(packed, centroids, table, Q.shape[2], device)
    out = torch.empty(len(candidates), dtype=torch.float32, device=device)
    if len(candidates):
        _exact_maxsim_kernel[(len(candidates),)](
            Q, q_lens, codes, packed, offsets, candidates, cand_q, centroids, weights, out,
            Q.shape[2], packed.shape[1], Q.stride(0), Q.stride(1),
            NBITS=nbits, NORMALIZE=bool(normalize), PRECISION=_precision(device),
            BLOCK_Q=_block(Q.shape[1]), BLOCK_D=_block(Q.shape[2]),
        )  # fmt: skip
    return out


def centroid_interaction_batched(
    S: torch.Tensor,
    q_lens: torch.Tensor,
    codes: torch.Tensor,
    offsets: torch.Tensor,
    candidates: torch.Tensor,
    cand_q: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """Stage 2 for a batch: centroid-only MaxSim with pruning (``reference.centroid_interaction``)."""
    device = S.device
    _check("S", S, 3, (torch.float32,), device)
    _check_lists(S.shape[0], q_lens, codes, offsets, candidates, cand_q, device)
    thr = torch.tensor(threshold, dtype=torch.float32).item()  # compared in float32, as the reference does
    keep = (_mask_padding(S, q_lens).amax(dim=2) >= thr).to(torch.uint8)
    out = torch.empty(len(candidates), dtype=torch.float32, device=device)
    if len(candidates) and S.shape[1]:
        _centroid_interaction_kernel[(len(candidates),)](
            S, keep, q_lens, codes, offsets, candidates, cand_q, out,
            S.shape[1], S.stride(0), S.stride(1),
            BLOCK_Q=_block(S.shape[2]),
        )  # fmt: skip
    else:
        out.zero_()
    return out


def _mask_padding(S: torch.Tensor, q_lens: torch.Tensor) -> torch.Tensor:
    """``S`` with the padded query columns at -inf (they must never keep a token or win a max)."""
    pad = torch.arange(S.shape[2], device=S.device)[None, :] >= q_lens[:, None]
    return S.masked_fill(pad[:, None, :], float("-inf"))


# ----------------------------------------------------------------------- single-query (reference) API
def _one(Q: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q_lens = torch.tensor([Q.shape[0]], dtype=torch.int32, device=Q.device)
    cand_q = torch.zeros(len(candidates), dtype=torch.int32, device=Q.device)
    return Q.unsqueeze(0).contiguous(), q_lens, cand_q


def exact_maxsim(
    Q: torch.Tensor,
    codes: torch.Tensor,
    packed: torch.Tensor,
    offsets: torch.Tensor,
    candidates: torch.Tensor,
    centroids: torch.Tensor,
    table: torch.Tensor,
    normalize: bool,
) -> torch.Tensor:
    """:func:`colbert_index.kernels.reference.exact_maxsim` on tensors of one device."""
    Qb, q_lens, cand_q = _one(Q, candidates)
    return exact_maxsim_batched(Qb, q_lens, codes, packed, offsets, candidates, cand_q, centroids, table, normalize)


def centroid_interaction(
    centroid_scores: torch.Tensor,
    codes: torch.Tensor,
    offsets: torch.Tensor,
    candidates: torch.Tensor,
    threshold: float,
) -> torch.Tensor:
    """:func:`colbert_index.kernels.reference.centroid_interaction` on tensors of one device."""
    S = centroid_scores.unsqueeze(0).contiguous()
    _, q_lens, cand_q = _one(centroid_scores.T, candidates)
    return centroid_interaction_batched(S, q_lens, codes, offsets, candidates, cand_q, threshold)
