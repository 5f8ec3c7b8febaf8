"""The Ray actor of one shard replica: it serves the shard at the versions the cluster manifest names, and
applies the shard's part of a cluster write.

Readers never follow a shard's own ``manifest.json``: every call names a *pin*, ``(cluster generation,
shard manifest)``, and the actor opens the shard at that manifest (keeping the two newest generations
open), so a search sees every shard at the same cluster generation even while a write is half done. A write
names the pin it builds on; a shard whose ``manifest.json`` moved past it (a write whose cluster commit never
came) is first rolled back to it (:func:`roll_back`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from colbert_index import filters, hybrid
from colbert_index.backend import get_backend
from colbert_index.distributed.manifest import check_shard_manifest, same_data
from colbert_index.errors import IndexFormatError, IndexLockedError
from colbert_index.index import Index
from colbert_index.search import SearchParams
from colbert_index.snapshot import _load_snapshot
from colbert_index.storage.files import WriterLock
from colbert_index.storage.manifest import (
    CHECKSUM_FIELD,
    load_manifest,
    referenced,
    remove_unreferenced,
    write_manifest,
)
from colbert_index.writer import CommitInfo

KEEP_VIEWS = 2  # cluster generations an actor keeps open: the newest and the one searches may still name
LOCK_WAIT_S = 30.0  # how long a write part waits for a shard's writer lock (held by a replica that is dying)


def open_pinned(path: str | os.PathLike, manifest: dict, backend: str = "auto", previous: Index | None = None) -> Index:
    """The index at ``path`` opened at ``manifest`` (a checksummed shard manifest), not at its newest version.
    ``previous``: an index of the same shard whose unchanged segments are reused."""
    path = Path(path)
    check_shard_manifest(manifest, str(path))
    kernels = previous.backend if previous is not None else get_backend(backend)
    index = Index(path, None, kernels)
    index._snap = _load_snapshot(path, manifest, None if previous is None else previous._s, kernels, True, False)
    return index


def roll_back(path: str | os.PathLike, base: dict) -> bool:
    """Make ``base`` (an earlier manifest of the shard at ``path``) its newest version again, as a new commit,
    unless the newest already holds the same data; True if it committed. The files of the version it replaces
    stay until the next write (as any commit keeps its predecessor's), and segment numbers stay fresh."""
    path = Path(path)
    with WriterLock(path):
        current = load_manifest(path)
        if same_data(current, base):
            return False
        gone = sorted(n for n in referenced(base) if not (path / n).exists())
        if gone:
            raise IndexFormatError(f"{path}: cannot roll back to generation {base.get('generation')}: {gone} are gone")
        m = {k: v for k, v in base.items() if k != CHECKSUM_FIELD}
        m["generation"] = int(current["generation"]) + 1
        m["next_segment"] = max(int(current.get("next_segment", 0)), int(base.get("next_segment", 0)))
        m["last_op"] = "rollback"
        write_manifest(path, m)
        remove_unreferenced(path, referenced(m) | referenced(current))
    return True


def hybrid_lists(index: Index, queries: list[np.ndarray], k: int, params: SearchParams | None, options: dict):
    """The two lists a hybrid search fuses, unfused: per query the dense top ``depth`` (exact MaxSim) and the
    lexical top ``depth`` (BM25 with this shard's statistics), each as ``(ids, scores)``; as
    :func:`colbert_index.hybrid.search` builds them for one index. ``None`` for the lexical lists when the
    shard stores no texts."""
    snap = index._s
    exprs = [hybrid.parse_text_query(t, options["text_mode"]) for t in options["text_query"]]
    flt, depth = options.get("filter"), options["depth"]
    allowed = [s.live() for s in snap.segments] if flt is None else filters.allowed(snap, flt)
    p = (params or SearchParams()).resolved(k, int(snap.bases[-1]))
    how = None if flt is None else filters.plan(allowed, [s.doclens for s in snap.segments], snap.n_live, p)
    dense = [(snap.ids_of(pos), s) for s, pos in index._dense(snap, queries, depth, p, how)]
    if not any(s.meta is not None and s.meta.has_texts for s in snap.segments):
        return dense, None
    lexical = []
    for e in exprs:
        s, pos = hybrid.lexical(snap, e, depth, allowed)
        lexical.append((snap.ids_of(pos), s.astype(np.float64)))
    return dense, lexical


class ShardServer:
    """The Ray actor of one replica of one shard (:mod:`colbert_index.distributed.server`). Nothing is opened
    in ``__init__``, so an actor Ray restarts (after a crash, or when its node comes back) starts at once and
    opens the shard at the first pin it is sent."""

    def __init__(self, shard: int, path: str, backend: str = "auto", replica: int = 0) -> None:
        self.shard, self.path, self.replica, self.backend_name = shard, path, replica, backend
        self.started = time.time()
        self._views: dict[int, Index] = {}
        self._writer: Index | None = None

    def _view(self, pin: tuple) -> Index:
        generation, manifest = pin
        index = self._views.get(generation)
        if index is None:
            if not isinstance(manifest, dict):  # an ObjectRef (it travels inside the tuple unresolved)
                import ray

                manifest = ray.get(manifest)
            newest = self._views[max(self._views)] if self._views else None
            index = open_pinned(self.path, manifest, self.backend_name, newest)
            self._views[generation] = index
            for g in sorted(self._views)[:-KEEP_VIEWS]:
                self._views.pop(g).close()
        return index

    def info(self, pin: tuple) -> dict:
        """Shard, replica, process, node, start time and the figures of the pinned version."""
        import ray

        ix = self._view(pin)
        return {
            "shard": self.shard,
            "replica": self.replica,
            "path": self.path,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "started": self.started,
            "cluster_generation": pin[0],
            "n_docs": ix.n_docs,
            "n_tokens": ix.n_tokens,
            "dim": ix.dim,
            "nbits": ix.nbits,
            "n_centroids": ix.n_centroids,
            "id_type": ix.manifest["id_type"],
            "generation": ix.generation,
            "disk_bytes": ix.disk_bytes(),
        }

    def memory(self) -> dict:
        """This actor's resident memory (``VmRSS`` of ``/proc/self/status``; None where there is none) and pid."""
        rss = None
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        except OSError:
            pass
        return {"pid": os.getpid(), "rss_bytes": rss, "views": sorted(self._views)}

    def current_manifest(self) -> dict:
        """The shard's newest committed manifest (to pin a cluster manifest of version 1)."""
        return load_manifest(self.path)

    def search(self, pin: tuple, queries: list[np.ndarray], k: int, params: SearchParams | None, mode: str, options):
        """This shard's answer at ``pin``: ``(ids, scores)`` of its top-k (``mode`` ``"dense"``, ``"exact"`` or
        ``"lexical"``), or for ``"hybrid"`` the unfused lists of :func:`hybrid_lists`."""
        ix = self._view(pin)
        flt = options.get("filter")
        if mode == "hybrid":
            return hybrid_lists(ix, queries, k, params, options)
        if mode == "lexical":
            if not any(s.meta is not None and s.meta.has_texts for s in ix._s.segments):
                return None
            res = ix.search(None, k, filter=flt, text_query=options["text_query"], text_mode=options["text_mode"])
        elif mode == "exact":
            res = ix.search_exact(queries, k, filter=flt)
        else:
            res = ix.search(queries, k, params, filter=flt)
        return res.ids, res.scores

    def live(self, pin: tuple, ids: list) -> list[bool]:
        """Whether each id is live in the pinned version."""
        ix = self._view(pin)
        return [x in ix for x in ids]

    def stored(self, pin: tuple, column: str, ids: list) -> list:
        """The metadata (``column="metadata"``) or texts of live ids in the pinned version (``None`` where absent)."""
        ix = self._view(pin)
        return (ix.metadata if column == "metadata" else ix.texts)(ids, missing_ok=True)

    def write(self, pin: tuple, op: str, payload: dict) -> tuple[CommitInfo, dict]:
        """The shard's part of a cluster write, built on the pinned version (the shard is rolled back to it
        first if a later version was committed and never named by the cluster); returns the commit and the
        new shard manifest. The actor keeps serving the pinned versions until the cluster commits. The shard's
        writer lock is waited for up to :data:`LOCK_WAIT_S` (the cluster's writer lock is held, so its holder
        can only be a replica of this shard that failed mid-write and has not exited yet)."""
        _, base = pin
        if not isinstance(base, dict):
            import ray

            base = ray.get(base)
        waited = time.monotonic()
        while True:
            try:
                return self._apply(base, op, payload)
            except IndexLockedError:  # a replica on a lost node may still hold the lock until its process exits
                if time.monotonic() - waited > LOCK_WAIT_S:
                    raise
                time.sleep(0.5)

    def _apply(self, base: dict, op: str, payload: dict) -> tuple[CommitInfo, dict]:
        roll_back(self.path, base)
        if self._writer is None:
            self._writer = Index.open(self.path, backend=self.backend_name)
        ix = self._writer
        if op in ("add", "upsert"):
            write = ix.upsert if op == "upsert" else ix.add
            info = write(
                payload["flat"],
                payload["ids"],
                doc_lengths=payload["doclens"],
                expand=payload["expand"],
                metadata=payload.get("metadata"),
                texts=payload.get("texts"),
                progress=False,
            )
        elif op == "delete":
            info = ix.delete(payload.get("ids"), missing_ok=True, filter=payload.get("filter"))
        elif op == "compact":
            info = ix.compact(progress=False)
        else:
            raise ValueError(f"unknown write {op!r}")
        return info, load_manifest(self.path)

    def abort(self, pin: tuple) -> bool:
        """Undo this shard's part of a cluster write that did not commit (roll back to the pinned version)."""
        _, base = pin
        if not isinstance(base, dict):
            import ray

            base = ray.get(base)
        return roll_back(self.path, base)
