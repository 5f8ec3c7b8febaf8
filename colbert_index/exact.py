"""What :meth:`colbert_index.Index.search_exact` runs: brute-force MaxSim over every live document of a snapshot,
on the documents' stored float16 vectors where the segments keep them, else on their decompressed tokens."""

from __future__ import annotations

import numpy as np

from colbert_index import filters
from colbert_index.errors import IndexFormatError
from colbert_index.search import brute_force
from colbert_index.snapshot import Snapshot


def search_exact(snap: Snapshot, queries: list[np.ndarray], k: int, backend, filter, originals: bool | None):
    """``(scores, global positions)`` of each query's exact top-``k`` live documents (those ``filter`` allows, when
    given). ``originals``: score the stored vectors of the segments that keep them (``None``: as the search's last
    stage does, so that this is the search's ground truth), or (``False``) every segment's decompressed tokens."""
    use = originals is not False
    if originals and not any(s.data.originals is not None for s in snap.segments):
        raise ValueError("originals=True, but this index keeps no vectors (build it with keep_originals=True)")
    if filter is not None:
        slots = [np.flatnonzero(a).astype(np.int32) for a in filters.allowed(snap, filter)]
        datas = [s.data for s in snap.segments]
        return [filters.exact_subset(q, k, datas, slots, backend, use) for q in queries]
    best = [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
    for seg, base in zip(snap.segments, snap.bases):
        data = seg.data
        kept = data.originals if use else None

        def chunk(lo: int, hi: int, data=data, kept=kept) -> np.ndarray:
            if kept is not None:
                rows = kept.rows(lo, hi).astype(np.float32)
                if not np.isfinite(rows).all():  # a damaged file too large to be checksummed at open
                    raise IndexFormatError(f"{kept.path}: non-finite values in rows {lo}:{hi}")
                return rows
            return data.codec.decompress(data.codes[lo:hi], data.residuals[lo:hi], backend)

        # the top k + (deleted) of the segment holds its top k live documents
        found = brute_force(queries, data.offsets, chunk, k + seg.n_deleted, backend)
        for i, (scores, slots) in enumerate(found):
            if seg.deleted is not None:
                keep = ~seg.deleted[slots]
                scores, slots = scores[keep][:k], slots[keep][:k]
            best[i] = backend.top_k(np.concatenate([best[i][0], scores]), np.concatenate([best[i][1], slots + base]), k)
    return best
