"""A deterministic schedule of writes with metadata and texts, for tests/test_metadata.py's crash test.

The write from generation ``g`` depends only on ``g`` and the live ids, and every document written at
generation ``g`` gets the metadata ``{"id": its id, "gen": g}`` and the text :func:`text` of both, so replaying
the schedule tells what each committed version's metadata and texts must be. Run as a script (``python
meta_ops.py zygote INDEX``) it imports everything once, then for each ``run DELAY`` line on stdin forks a writer
that applies the schedule to INDEX, kills it with SIGKILL after DELAY seconds and answers ``killed`` (as
tests/live_ops.py does).
"""

from __future__ import annotations

import sys
from pathlib import Path

import live_ops
import numpy as np

DIM = 16
SEED = 3


def docs_from(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    return live_ops.docs_from(rng, n, DIM, max_len=7)


def text(doc_id: int, gen: int) -> str:
    """Every text has the word ``common``, and ``w0``, ``w1`` or ``w2`` by the id modulo 3."""
    return f"document {doc_id} written at generation {gen}, common to all, w{doc_id % 3}"


def build(path: Path):
    from colbert_index import Index

    rng = np.random.default_rng(SEED)
    meta = [{"id": i, "gen": 0} for i in range(12)]
    texts = [text(i, 0) for i in range(12)]
    return Index.build(
        path, docs_from(rng, 12), metadata=meta, texts=texts, n_centroids=8, progress=False, backend="numpy"
    )


def step(index) -> None:
    """Apply the schedule's write from the index's generation."""
    g = index.generation
    live = sorted(index.doc_ids().tolist())
    rng = np.random.default_rng([SEED, g])
    kind = g % 5
    if kind in (0, 3) or len(live) < 4:
        ids = [max(live + [0]) + 1 + j for j in range(3)]
        meta, texts = [{"id": i, "gen": g + 1} for i in ids], [text(i, g + 1) for i in ids]
        index.add(docs_from(rng, 3), ids, metadata=meta, texts=texts, progress=False)
    elif kind == 1:
        ids = [int(rng.choice(live))]
        meta, texts = [{"id": ids[0], "gen": g + 1}], [text(ids[0], g + 1)]
        index.upsert(docs_from(rng, 1), ids, metadata=meta, texts=texts, progress=False)
    elif kind == 2:
        index.delete([int(x) for x in rng.choice(live, 2, replace=False)])
    else:
        index.compact(retrain=g % 15 == 14, n_centroids=8 if g % 15 == 14 else None, progress=False)


def state(index) -> dict:
    """``{id: (metadata, text)}`` of the live documents."""
    ids = sorted(index.doc_ids().tolist())
    return dict(zip(ids, zip(index.metadata(ids), index.texts(ids))))


def _writer(path: Path) -> None:
    from colbert_index import Index

    index = Index.open(path, backend="numpy")
    while True:
        step(index)


def zygote(path: Path) -> None:
    import faiss

    import colbert_index  # noqa: F401  (imports everything the writers need, before any fork)

    faiss.omp_set_num_threads(1)
    live_ops.fork_and_kill(lambda: _writer(path))


if __name__ == "__main__":
    zygote(Path(sys.argv[2]))
