"""A deterministic schedule of live-index writes, shared by tests/test_crash.py and the processes it starts.

The write that takes an index from generation ``g`` to ``g + 1`` depends only on ``g`` and the live ids
at ``g`` (:func:`op_for`), so any process can replay the schedule and know what every committed version
holds. Run as a script it is one of the test's processes:

``python live_ops.py zygote INDEX ACK``: imports everything once, then for each ``run DELAY`` line on stdin
forks a writer that applies the schedule to INDEX (appending to ACK the generation it opened, then each one
it commits), kills it with SIGKILL after DELAY seconds and answers ``killed``. Forking from a process that has
run no OpenMP or Numba thread pool yet keeps the children safe and starts each in about a millisecond.

``python live_ops.py reader INDEX STOP``: searches INDEX in a loop until the file STOP exists, refreshing
between searches, and checks every version it sees against the schedule; prints a JSON summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DIM = 32
N_INITIAL = 20
SEED = 7


def docs_from(rng: np.random.Generator, n: int, dim: int = DIM, max_len: int = 11) -> list[np.ndarray]:
    """``n`` documents of 1..max_len unit vectors."""
    out = []
    for m in rng.integers(1, max_len + 1, size=n):
        d = rng.standard_normal((int(m), dim)).astype(np.float32)
        out.append(d / np.linalg.norm(d, axis=1, keepdims=True))
    return out


def initial_docs() -> list[np.ndarray]:
    return docs_from(np.random.default_rng(SEED), N_INITIAL)


def build(path: Path):
    from colbert_index import Index

    return Index.build(path, initial_docs(), n_centroids=8, progress=False, backend="numpy", keep_originals=True)


def op_for(generation: int, live: list[int]) -> tuple:
    """The write from ``generation`` to ``generation + 1``: ``(kind, *args)``."""
    rng = np.random.default_rng([SEED, generation])
    if generation % 5 == 4:
        return ("compact", generation % 15 == 14)  # every third compaction retrains the codebook
    r = rng.random()
    if not live or r < 0.45:
        n = int(rng.integers(1, 6))
        return ("add", docs_from(rng, n), [1000 * (generation + 1) + j for j in range(n)])
    if r < 0.75:
        return ("delete", sorted(rng.choice(live, size=min(len(live), int(rng.integers(1, 4))), replace=False)))
    return ("upsert", docs_from(rng, 2), [int(rng.choice(live)), 1000 * (generation + 1)])


def live_after(generation: int, live: list[int], op: tuple) -> list[int]:
    kind = op[0]
    if kind in ("add", "upsert"):
        return sorted(set(live) | set(op[2]))
    if kind == "delete":
        return sorted(set(live) - set(op[1]))
    return live


def apply(index, op: tuple) -> None:
    kind = op[0]
    if kind == "add":
        index.add(op[1], op[2])
    elif kind == "upsert":
        index.upsert(op[1], op[2])
    elif kind == "delete":
        index.delete(op[1])
    else:
        index.compact(retrain=op[1], n_centroids=min(8, index.n_tokens) if op[1] else None)


def step(index) -> int:
    """Apply the schedule's next write; returns the generation it committed."""
    live = sorted(index.doc_ids().tolist())
    apply(index, op_for(index.generation, live))
    return index.generation


def expected_live(up_to: int) -> list[list[int]]:
    """The live ids of generations ``0..up_to``, by replaying the schedule."""
    live = list(range(N_INITIAL))
    out = [live]
    for g in range(up_to):
        live = live_after(g, live, op_for(g, live))
        out.append(live)
    return out


def fingerprint(index) -> str:
    """sha256 of the live ids, what each decompresses to and its kept float16 vectors (the index keeps them, so
    every segment must have them): equal fingerprints, equal indexes."""
    h = hashlib.sha256()
    snap = index._s
    for i in sorted(index.doc_ids().tolist()):
        h.update(str(i).encode())
        h.update(np.ascontiguousarray(index.reconstruct(i)).tobytes())
        [(seg, slots)] = snap.locate(snap.lookup([i]))
        data = snap.segments[seg].data
        rows, _ = data.originals.gather(data.offsets, slots, index.backend)  # AttributeError if none: a failure
        h.update(rows.tobytes())
    return h.hexdigest()


def one_thread() -> None:
    import faiss

    faiss.omp_set_num_threads(1)  # k-means and assignment identical in every process


def _writer(path: Path, ack: Path) -> None:
    from colbert_index import Index

    one_thread()
    index = Index.open(path, backend="numpy")
    with open(ack, "a") as log:
        log.write(f"{index.generation}\n")  # the version it starts from
        log.flush()
        while True:
            g = step(index)
            log.write(f"{g}\n")
            log.flush()


def fork_and_kill(child: Callable[[], None]) -> None:
    """For each ``run DELAY`` line on stdin: fork, run ``child`` in the fork, SIGKILL it after DELAY seconds and
    answer ``killed`` (or how it exited)."""
    for line in sys.stdin:
        delay = float(line.split()[1])
        pid = os.fork()
        if pid == 0:
            try:
                child()
            finally:
                os._exit(1)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        print("killed" if os.WIFSIGNALED(status) else f"exited {status}", flush=True)


def zygote(path: Path, ack: Path) -> None:
    import colbert_index  # noqa: F401  (imports everything the writers need, before any fork)

    fork_and_kill(lambda: _writer(path, ack))


def reader(path: Path, stop: Path) -> None:
    from colbert_index import Index, SearchParams

    exhaustive = SearchParams(nprobe=1 << 20, centroid_score_threshold=-1e9, ndocs=1 << 20)
    rng = np.random.default_rng(1)
    queries = [rng.standard_normal((4, DIM)).astype(np.float32) for _ in range(3)]
    expected = expected_live(0)
    index = Index.open(path)
    seen, checks, errors = set(), 0, []
    progress = stop.with_suffix(".progress")
    while not stop.exists():
        try:
            index.refresh()
            g = index.generation
            if g >= len(expected):
                expected = expected_live(g + 20)
            live = set(expected[g])
            ids = index.doc_ids().tolist()
            if sorted(ids) != sorted(live) or len(index) != len(live):
                errors.append(f"generation {g}: ids {sorted(ids)[:8]}... != schedule's {sorted(live)[:8]}...")
            for q in queries:
                res = index.search(q, k=5, params=exhaustive)
                exact = index.search_exact(q, k=5)
                got = res.ids[0].tolist()
                if not set(got) <= live or len(got) != min(5, len(live)):
                    errors.append(f"generation {g}: search returned {got}, not live ids")
                same = got == exact.ids[0].tolist() or np.allclose(res.scores, exact.scores, atol=1e-4)  # ties
                if not same or (np.diff(res.scores[0]) > 0).any():
                    errors.append(f"generation {g}: search {got} != search_exact {exact.ids[0].tolist()}")
            seen.add(g)
            checks += 1
            if checks == 1:
                print("ready", flush=True)
            progress.write_text(f"{checks} {len(seen)}")  # the writer works until enough has been read
        except Exception as e:  # any error is a failure of the test; report it rather than die
            errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.01)
    print(json.dumps({"checks": checks, "generations": sorted(seen), "errors": errors[:20]}))


if __name__ == "__main__":
    role, path, other = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    {"zygote": zygote, "reader": reader}[role](path, other)
