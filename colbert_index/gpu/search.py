"""The staged search on torch tensors of any device, for a batch of queries at once.

The same four stages as :func:`colbert_index.search.staged_search`, with the same parameters and the same
rules (probe widened until a query has ``k`` candidates, stage 2 only past ``ndocs`` candidates, stage 3
only past ``SearchParams.n_exact``, ties broken towards the lower slot); torch does the glue (stage 0's
matrix product, the probe, per-query top-n), the hot loops are the ``*_batched`` kernels of the given
namespace (:mod:`colbert_index.kernels.triton_scoring` or :mod:`colbert_index.kernels.torch_scoring`).

Differences from the CPU path: probe ties between exactly equal centroid scores may pick another centroid
(``torch.topk`` does not promise the lower id), scores are summed in another order (float tolerance), and stages
2-4 keep the sizes ``ndocs`` and ``n_exact`` give, as the CPU path does only when ``ndocs`` is set (it sizes them
per query otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from colbert_index.search import SearchParams, n_final


@dataclass
class DeviceData:
    """An index's arrays on one torch device: every segment concatenated (global positions as slots)."""

    centroids: torch.Tensor  # float32 [K, dim]
    table: torch.Tensor  # float32 [nbytes, 256, 8 // nbits]
    normalize: bool
    codes: torch.Tensor  # uint16 / uint32 [n_tokens]
    residuals: torch.Tensor  # uint8 [n_tokens, nbytes]
    offsets: torch.Tensor  # int64 [n_docs + 1]
    ivf_offsets: torch.Tensor  # int64 [K + 1]
    ivf_docs: torch.Tensor  # int32 [n_postings]
    deleted: torch.Tensor | None  # bool [n_docs], None when nothing is deleted

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_live(self) -> int:
        return self.n_docs - (0 if self.deleted is None else int(self.deleted.sum()))


def centroid_scores(data: DeviceData, Q: torch.Tensor) -> torch.Tensor:
    """Stage 0: ``[n_q, K, q_max]`` float32, one row of query-token scores per centroid (padding scores 0)."""
    return torch.matmul(data.centroids, Q.transpose(1, 2)).contiguous()


def probe(
    data: DeviceData, S: torch.Tensor, q_lens: torch.Tensor, nprobe: torch.Tensor, bound_cells: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stage 1 for every query with its own ``nprobe``: ``(candidates, cand_q, bound)``.

    A query token probes its best ``nprobe`` centroids (``reference.probe_cells`` per query). Candidates
    are sorted by (query, slot), deleted documents dropped. With ``bound_cells``, ``bound`` is
    ``reference.probe_bound``'s upper bound of their centroid interaction over each token's best
    ``max(nprobe, bound_cells)`` centroids; without, None."""
    n_q, K, q_max = S.shape
    device = S.device
    q_valid = torch.arange(q_max, device=device)[None, :] < q_lens[:, None]  # [n_q, q_max]
    n_cells = torch.clamp(torch.clamp(nprobe, min=bound_cells or 0), max=K)  # per query
    T = int(min(int(n_cells.max()) + (bound_cells is not None), K))
    scores = S.transpose(1, 2).masked_fill(~q_valid[:, :, None], float("-inf"))  # [n_q, q_max, K]
    top_val, top = torch.topk(scores, T, dim=2)  # [n_q, q_max, T]
    rank = torch.arange(T, device=device)[None, None, :]
    probed = (rank < nprobe[:, None, None]) & q_valid[:, :, None]
    if bound_cells is None:  # the union of the probed lists, each (query, centroid) list read once
        qi, qt, r = torch.nonzero(probed, as_tuple=True)
        seen = torch.zeros((n_q, K), dtype=torch.bool, device=device)
        seen[qi, top[qi, qt, r]] = True
        pq, pc = torch.nonzero(seen, as_tuple=True)
        owner, docs = _list_entries(data, pc)
        keys = torch.unique(pq[owner].long() * data.n_docs + docs)  # sorted: by query, then slot
        if data.deleted is not None:
            keys = keys[~data.deleted[keys % data.n_docs]]
        return keys % data.n_docs, (keys // data.n_docs).to(torch.int32), None
    col = n_cells.clamp(max=T - 1)[:, None, None].expand(n_q, q_max, 1)
    floor = torch.where(
        (n_cells < K)[:, None], torch.gather(top_val, 2, col).squeeze(2), S.min(dim=1).values
    ).masked_fill(~q_valid, 0.0)  # [n_q, q_max]: the next centroid's score (all probed: the lowest)
    in_cells = (rank < n_cells[:, None, None]) & q_valid[:, :, None]
    qi, qt, r = torch.nonzero(in_cells, as_tuple=True)  # (query, token, rank) of every cell read
    owner, docs = _list_entries(data, top[qi, qt, r])
    gain = top_val[qi, qt, r] - floor[qi, qt]
    # a document's best cell per (query, token) is the one of highest gain; then sum over tokens
    key3 = (qi[owner] * data.n_docs + docs) * q_max + qt[owner]
    u3, inv3 = torch.unique(key3, return_inverse=True)
    best = torch.full((len(u3),), float("-inf"), device=device).scatter_reduce(0, inv3, gain[owner], "amax")
    is_cand = torch.zeros(len(u3), dtype=torch.bool, device=device)
    is_cand[inv3[probed[qi, qt, r][owner]]] = True
    keys, inv2 = torch.unique_consecutive(u3 // q_max, return_inverse=True)  # sorted: by query, then slot
    total = torch.zeros(len(keys), device=device).scatter_add_(0, inv2, best)
    cand = torch.zeros(len(keys), dtype=torch.int8, device=device)
    cand = cand.scatter_reduce_(0, inv2, is_cand.to(torch.int8), "amax").bool()
    keys, total = keys[cand], total[cand]
    if data.deleted is not None:
        live = ~data.deleted[keys % data.n_docs]
        keys, total = keys[live], total[live]
    cand_q = keys // data.n_docs
    bound = floor.sum(dim=1)[cand_q] + total
    return keys % data.n_docs, cand_q.to(torch.int32), bound


def _list_entries(data: DeviceData, lists: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every entry of the IVF lists ``lists`` (centroid ids), in order: ``(index into lists, doc slot)``."""
    starts = data.ivf_offsets[lists]
    lens = data.ivf_offsets[lists + 1] - starts
    owner = torch.repeat_interleave(torch.arange(len(lists), device=lists.device), lens)
    first = torch.cumsum(lens, 0) - lens
    docs = data.ivf_docs[starts[owner] + torch.arange(len(owner), device=lists.device) - first[owner]].long()
    return owner, docs


def keep_top(
    scores: torch.Tensor, cands: torch.Tensor, cand_q: torch.Tensor, n_q: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``n`` best candidates of each query (score desc, slot asc); input sorted by (query, slot).

    Returns ``(scores, cands, cand_q)`` grouped by query, best first within each query.
    """
    order = torch.argsort(scores, descending=True, stable=True)  # ties keep (query, slot) order
    order = order[torch.argsort(cand_q[order], stable=True)]
    counts = torch.bincount(cand_q.long(), minlength=n_q)
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=order.device) - first[cand_q[order].long()]
    order = order[rank < n]
    return scores[order], cands[order], cand_q[order]


def _by_slot(cands: torch.Tensor, cand_q: torch.Tensor, n_docs: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(cand_q.long() * n_docs + cands)
    return cands[order], cand_q[order]


def staged_search_batched(
    Q: torch.Tensor,
    q_lens: torch.Tensor,
    k: int,
    params: SearchParams,
    data: DeviceData,
    kernels: SimpleNamespace,
    rerank: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each query of ``Q [n_q, q_max, dim]`` (padded; real lengths ``q_lens`` int32).

    ``params`` as :meth:`SearchParams.resolved` returns it. Returns ``(scores [n_q, k'], positions [n_q, k'])``
    on the device, best first, ``k' = min(k, live documents)``. ``rerank``: stop before stage 4 and return the
    candidates of the full-precision rerank instead (``colbert_index.search.n_final``; the stored vectors stay on
    the host, :mod:`colbert_index.gpu.device` reranks them there): ``(positions, query of each)``, by query.
    """
    n_q, device, n_docs = Q.shape[0], Q.device, data.n_docs
    k = min(k, data.n_live)
    if k <= 0 or n_q == 0:
        return torch.zeros((n_q, 0), device=device), torch.zeros((n_q, 0), dtype=torch.int64, device=device)
    S = centroid_scores(data, Q)
    K = S.shape[1]
    # the device has no probe by agreement: where the CPU runs one (agree_cells above nprobe), it probes twice the
    # cells, which finds about as much of the exact top 10 on the 1M index (docs/gpu.md)
    widen = 2 if params.nbound is None and int(params.agree_cells or 0) > int(params.nprobe) else 1
    nprobe = torch.full((n_q,), widen * int(params.nprobe), dtype=torch.int64, device=device)
    bound_cells = None if params.nbound is None else int(params.bound_cells)
    while True:  # stage 1; widen the probe of a query in the rare case it finds fewer than k documents
        cands, cand_q, bound = probe(data, S, q_lens, nprobe, bound_cells)
        counts = torch.bincount(cand_q.long(), minlength=n_q)
        short = (counts < k) & (nprobe < K)
        if not bool(short.any()):
            break
        nprobe = torch.where(short, nprobe * 2, nprobe)
    ndocs = params.ndocs if params.ndocs is not None else SearchParams.default_ndocs(k, n_docs)
    n_exact = n_final(k, ndocs, params, rerank)
    ndocs = max(ndocs, k)
    nbound = max(params.nbound, ndocs) if params.nbound is not None else None
    tables = (data.centroids, data.table, data.normalize)
    for n, stage in ((nbound, 1), (ndocs, 2), (n_exact, 3)):
        if n is None:  # no bound cut (nbound unset)
            continue
        big = counts > n  # only those queries run the stage: the others keep all their candidates
        if not bool(big.any()):
            continue
        sel = torch.nonzero(big[cand_q.long()]).squeeze(1)
        scores = torch.zeros(len(cands), dtype=torch.float32, device=device)
        if stage == 1:
            part = bound[sel]
        elif stage == 2:
            thr = params.centroid_score_threshold
            cs = (S, q_lens, data.codes, data.offsets, cands[sel], cand_q[sel])
            part = kernels.centroid_interaction_batched(*cs, thr)
        else:  # stage 3: the CPU kernel's contract (reference.refined_interaction), as a product
            cs = (Q, q_lens, data.codes, data.residuals, data.offsets, cands[sel], cand_q[sel])
            part = kernels.exact_maxsim_batched(*cs, data.centroids, data.table, False)
        scores[sel] = part
        _, cands, cand_q = keep_top(scores, cands, cand_q, n_q, n)
        cands, cand_q = _by_slot(cands, cand_q, n_docs)
        counts = torch.bincount(cand_q.long(), minlength=n_q)
    if rerank:
        return cands, cand_q
    exact = kernels.exact_maxsim_batched(Q, q_lens, data.codes, data.residuals, data.offsets, cands, cand_q, *tables)
    scores, cands, cand_q = keep_top(exact, cands, cand_q, n_q, k)  # stage 4
    if len(cands) != n_q * k:
        raise RuntimeError(f"internal: {len(cands)} results for {n_q} queries x k={k}")
    return scores.reshape(n_q, k), cands.reshape(n_q, k)
