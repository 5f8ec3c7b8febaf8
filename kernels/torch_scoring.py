"""Torch scoring kernels (no Triton): the fallback of the device pipeline, on any torch device.

Same contracts as :mod:`colbert_index.kernels.reference` and the same batched API as
:mod:`colbert_index.kernels.triton_scoring` (``*_batched``: many queries, each with its own candidates).
Unlike the Triton kernels these decompress candidate tokens into a temporary tensor, a chunk of at most
``CHUNK_TOKENS`` tokens at a time, and reduce per document with ``scatter_reduce``; a batch is scored one
query after another. They run on CPU tensors too, which is how the device pipeline is tested without a GPU.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator

import torch
from torch import Tensor

CHUNK_TOKENS = 1 << 18  # candidate tokens decompressed at once (dim 128: 128 MiB of float32)


def decompress(
    codes: torch.Tensor, packed: torch.Tensor, centroids: torch.Tensor, table: torch.Tensor, normalize: bool
) -> torch.Tensor:
    """``[n]`` codes + ``[n, nbytes]`` packed residuals -> ``[n, dim]`` float32 (``reference.decompress``)."""
    nbytes = packed.shape[1]
    res = table[torch.arange(nbytes, device=packed.device)[None, :], packed.long()]  # [n, nbytes, per_byte]
    out = centroids[codes.long()] + res.reshape(len(packed), nbytes * table.shape[2])
    if normalize and len(out):
        out = out / torch.linalg.vector_norm(out, dim=1, keepdim=True).clamp_min(1e-12)
    return out


def _chunks(offsets: torch.Tensor, candidates: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
    """Runs of candidates of at most ``CHUNK_TOKENS`` tokens (or one longer document): ``(candidate slice,
    token ids, candidate of each token relative to the slice start)``."""
    cand = candidates.long()
    starts = offsets[cand]
    lens = offsets[cand + 1] - starts
    ends = torch.cumsum(lens, 0).tolist()
    i, n = 0, len(cand)
    while i < n:
        base = ends[i - 1] if i else 0
        j = max(bisect_right(ends, base + CHUNK_TOKENS, lo=i), i + 1)
        run_lens = lens[i:j]
        seg = torch.repeat_interleave(torch.arange(j - i, device=cand.device), run_lens)
        first = torch.cumsum(run_lens, 0) - run_lens
        tok = starts[i:j][seg] + torch.arange(len(seg), device=cand.device) - first[seg]
        yield slice(i, j), tok, seg
        i = j


def _max_sum(token_scores: torch.Tensor, seg: torch.Tensor, best: torch.Tensor) -> None:
    """``best[seg[t]] = max(best[seg[t]], token_scores[t])`` row-wise, in place."""
    best.scatter_reduce_(0, seg[:, None].expand_as(token_scores), token_scores, reduce="amax", include_self=True)


def _lengths(offsets: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    cand = candidates.long()
    return offsets[cand + 1] - offsets[cand]


def exact_maxsim(
    Q: Tensor,
    codes: Tensor,
    packed: Tensor,
    offsets: Tensor,
    candidates: Tensor,
    centroids: Tensor,
    table: Tensor,
    normalize: bool,
) -> Tensor:
    """:func:`colbert_index.kernels.reference.exact_maxsim` on tensors of one device."""
    best = torch.full((len(candidates), Q.shape[0]), float("-inf"), dtype=torch.float32, device=Q.device)
    for sl, tok, seg in _chunks(offsets, candidates):
        D = decompress(codes[tok], packed[tok], centroids, table, normalize)
        _max_sum(D @ Q.T, seg, best[sl])
    return torch.where(_lengths(offsets, candidates) > 0, best.sum(dim=1), 0.0).to(torch.float32)


def centroid_interaction(
    centroid_scores: Tensor, codes: Tensor, offsets: Tensor, candidates: Tensor, threshold: float
) -> Tensor:
    """:func:`colbert_index.kernels.reference.centroid_interaction` on tensors of one device."""
    S = centroid_scores
    thr = torch.tensor(threshold, dtype=torch.float32).item()  # compared in float32, as the reference does
    keep = S.amax(dim=1) >= thr
    n = len(candidates)
    best = torch.full((n, S.shape[1]), float("-inf"), dtype=torch.float32, device=S.device)
    kept = torch.zeros(n, dtype=torch.int64, device=S.device)
    for sl, tok, seg in _chunks(offsets, candidates):
        c = codes[tok].long()
        k = keep[c]
        rows = S[c].masked_fill(~k[:, None], float("-inf"))
        _max_sum(rows, seg, best[sl])
        kept[sl].index_add_(0, seg, k.long())
    return torch.where(kept > 0, best.sum(dim=1), 0.0).to(torch.float32)


# ----------------------------------------------------------------------------------------- batched API
def _by_query(cand_q: torch.Tensor, n_q: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(query, positions of its candidates)`` for every query that has candidates."""
    order = torch.argsort(cand_q, stable=True)
    start = 0
    for qi, count in enumerate(torch.bincount(cand_q.long(), minlength=n_q).tolist()):
        if count:
            yield qi, order[start : start + count]
            start += count


def exact_maxsim_batched(
    Q: Tensor,
    q_lens: Tensor,
    codes: Tensor,
    packed: Tensor,
    offsets: Tensor,
    candidates: Tensor,
    cand_q: Tensor,
    centroids: Tensor,
    table: Tensor,
    normalize: bool,
) -> Tensor:
    """Stage 4 for a batch, and stage 3 with ``normalize=False`` (see :mod:`colbert_index.kernels.triton_scoring`)."""
    out = torch.zeros(len(candidates), dtype=torch.float32, device=Q.device)
    lens = q_lens.tolist()
    for qi, pos in _by_query(cand_q, Q.shape[0]):
        q = Q[qi, : lens[qi]]
        out[pos] = exact_maxsim(q, codes, packed, offsets, candidates[pos], centroids, table, normalize)
    return out


def centroid_interaction_batched(
    S: Tensor, q_lens: Tensor, codes: Tensor, offsets: Tensor, candidates: Tensor, cand_q: Tensor, threshold: float
) -> Tensor:
    """Stage 2 for a batch; ``S`` is ``[n_q, K, q_max]``."""
    out = torch.zeros(len(candidates), dtype=torch.float32, device=S.device)
    lens = q_lens.tolist()
    for qi, pos in _by_query(cand_q, S.shape[0]):
        out[pos] = centroid_interaction(S[qi, :, : lens[qi]], codes, offsets, candidates[pos], threshold)
    return out
