"""Fan-out search over a sharded index: one Ray actor per shard holds its index open (memory-mapped);
a batch of queries goes to every shard in one call each, and the shards' top-k are merged by exact score.
Writes are routed to the shard that owns each id (:mod:`.routing`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from colbert_index.distributed import _ray
from colbert_index.distributed.manifest import load_cluster_manifest, shard_path
from colbert_index.distributed.routing import group_by_shard, shard_of
from colbert_index.errors import IndexFormatError
from colbert_index.index import CommitInfo
from colbert_index.inputs import iter_documents, normalize_queries
from colbert_index.search import SearchParams, SearchResult, check_k


class ShardServer:
    """The Ray actor of one shard: its :class:`~colbert_index.Index`, opened in ``__init__``, so that an
    actor Ray restarts after a crash (``max_restarts``) reopens the latest committed version."""

    def __init__(self, shard: int, path: str, backend: str = "auto") -> None:
        from colbert_index import Index

        self.shard, self.path = shard, path
        self.index = Index.open(path, backend=backend)
        self.started = time.time()

    def info(self) -> dict:
        """Shard number, process id, start time and the index's figures."""
        ix = self.index
        return {
            "shard": self.shard,
            "path": self.path,
            "pid": os.getpid(),
            "started": self.started,
            "n_docs": ix.n_docs,
            "n_tokens": ix.n_tokens,
            "dim": ix.dim,
            "nbits": ix.nbits,
            "n_centroids": ix.n_centroids,
            "id_type": ix.manifest["id_type"],
            "generation": ix.generation,
            "disk_bytes": ix.disk_bytes(),
        }

    def search(self, queries: list[np.ndarray], k: int, params: SearchParams | None, exact: bool):
        """``(ids, scores)`` of this shard's top-k for each query (:meth:`Index.search` / ``search_exact``)."""
        res = self.index.search_exact(queries, k) if exact else self.index.search(queries, k, params)
        return res.ids, res.scores

    def missing(self, ids: list) -> list:
        """The ids among ``ids`` that are not live in this shard."""
        return [x for x in ids if x not in self.index]

    def live(self, ids: list) -> list[bool]:
        return [x in self.index for x in ids]

    def add(self, flat: np.ndarray, doclens: np.ndarray, ids, upsert: bool, expand: bool) -> CommitInfo:
        write = self.index.upsert if upsert else self.index.add
        return write(flat, ids, doc_lengths=doclens, expand=expand, progress=False)

    def delete(self, ids, missing_ok: bool) -> CommitInfo:
        return self.index.delete(ids, missing_ok=missing_ok)

    def compact(self) -> CommitInfo:
        return self.index.compact(progress=False)

    def refresh(self) -> bool:
        return self.index.refresh()


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> SearchResult:
    """Merge per-shard ``(ids [n_q, k_s], scores [n_q, k_s])`` into the global top-``k`` by score.

    Scores from every shard are exact MaxSim scores (stage 4 / brute force), so they compare across shards.
    Ties keep the order of the concatenation (lower shard first, then the shard's own rank). A result has
    ``min(k, sum k_s)`` columns, as a single index returns fewer than ``k`` when it holds fewer documents.
    """
    parts = [(np.asarray(i), np.asarray(s, dtype=np.float32)) for i, s in parts if np.asarray(s).shape[-1] > 0]
    if not parts:
        raise ValueError("no shard returned any document")
    ids = np.concatenate([p[0].astype(object) if p[0].dtype == object else p[0] for p in parts], axis=1)
    scores = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return SearchResult(ids=np.take_along_axis(ids, order, axis=1), scores=np.take_along_axis(scores, order, axis=1))


class ShardedIndex:
    """A sharded index served by Ray actors (open it with :meth:`open`; build it with
    :func:`~colbert_index.distributed.build_sharded`).

    :meth:`search` returns what one index holding every shard's documents would return from a search in
    which each shard's candidate budget is its own (``ndocs`` per shard, not for the whole corpus): the same
    top-k as :meth:`search_exact` whenever the parameters make each shard's search exact, and in general at
    least as many candidates as a single index with the same parameters would rerank.
    """

    def __init__(self, root: Path, manifest: dict, actors: list, retries: int, restart_timeout_s: float) -> None:
        self.root, self.manifest, self.actors = root, manifest, actors
        self._retries, self._restart_timeout_s = retries, restart_timeout_s

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        threads_per_shard: int = 1,
        cpus_per_shard: float = 0,
        max_restarts: int = -1,
        retries: int = 6,
        restart_timeout_s: float = 120.0,
        backend: str = "auto",
    ) -> ShardedIndex:
        """Start one actor per shard of the sharded index at ``path`` (on the connected Ray cluster).

        threads_per_shard: Numba/BLAS threads in each actor. cpus_per_shard: CPUs Ray reserves for each actor
        (0: none, so any number of shards fit a small machine; on a cluster set it to ``threads_per_shard``).
        max_restarts: how often Ray restarts a crashed actor (-1: always); a restarted actor reopens its
        shard. A read (search, info) sent to an actor that died meanwhile is resent after 0.25, 0.5, 1, 2, 4, 4... s,
        at least ``retries`` times and for at least ``restart_timeout_s`` seconds (a restart starts a process and
        reopens the shard: seconds, or a minute on a loaded machine), then fails naming the shard.
        A shard whose node is recorded in the manifest gets its actor on that node.
        """
        ray = _ray.require_ray()
        if not ray.is_initialized():
            raise RuntimeError("Ray is not connected: call colbert_index.distributed.connect() (or ray.init) first")
        root = Path(path).absolute()  # Ray workers do not share the driver's working directory
        manifest = load_cluster_manifest(root)
        actor_cls = _ray.remote(ShardServer)
        actors = []
        for e in manifest["shards"]:
            d = shard_path(root, e)
            if e.get("node") is None and not d.is_dir():
                raise FileNotFoundError(f"shard {e['shard']}: {d} is missing (named by {root / 'cluster.json'})")
            actors.append(
                actor_cls.options(
                    max_restarts=max_restarts,
                    max_task_retries=0,  # writes are not idempotent: reads are retried here instead
                    num_cpus=cpus_per_shard,
                    resources=_ray.node_resource(e.get("node")),
                    runtime_env=_ray.thread_env(threads_per_shard),
                ).remote(int(e["shard"]), str(d), backend)
            )
        index = cls(root, manifest, actors, retries, restart_timeout_s)
        for info in index.info():
            want = (manifest["dim"], manifest["nbits"], manifest["id_type"])
            got = (info["dim"], info["nbits"], info["id_type"])
            if got != want:
                index.close()
                raise IndexFormatError(f"{info['path']}: shard has (dim, nbits, id_type) {got}, the cluster {want}")
        return index

    # ---------------------------------------------------------------- plumbing
    @property
    def n_shards(self) -> int:
        return len(self.actors)

    def _read(self, call: Callable[[object], object], shards: Sequence[int] | None = None) -> list:
        """``call(actor)`` on each shard, in parallel; resent to an actor that died and is being restarted (see
        :meth:`open`)."""
        ray = _ray.require_ray()
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        shards = range(self.n_shards) if shards is None else shards
        refs = {s: call(self.actors[s]) for s in shards}
        out = {}
        for s in shards:
            attempt, failed_at = 0, None
            while True:
                try:
                    out[s] = ray.get(refs[s])
                    break
                except (ActorDiedError, ActorUnavailableError, RayActorError) as e:
                    failed_at = time.monotonic() if failed_at is None else failed_at
                    if attempt >= self._retries and time.monotonic() - failed_at >= self._restart_timeout_s:
                        raise RuntimeError(
                            f"shard {s} ({self.manifest['shards'][s]['path']}) is unavailable: {e}"
                        ) from e
                    time.sleep(min(0.25 * 2**attempt, 4.0))
                    attempt += 1
                    refs[s] = call(self.actors[s])
        return [out[s] for s in shards]

    def info(self) -> list[dict]:
        """Each shard actor's :meth:`ShardServer.info` (pid, documents, generation, bytes on disk)."""
        return self._read(lambda a: a.info.remote())

    @property
    def n_docs(self) -> int:
        """Live documents over all shards."""
        return sum(i["n_docs"] for i in self.info())

    def __len__(self) -> int:
        return self.n_docs

    # ---------------------------------------------------------------- search
    def _fan_out(self, Q, k: int, params: SearchParams | None, query_lengths, exact: bool) -> SearchResult:
        ray = _ray.require_ray()
        k = check_k(k)
        queries = ray.put(normalize_queries(Q, int(self.manifest["dim"]), query_lengths))
        return merge_topk(self._read(lambda a: a.search.remote(queries, k, params, exact)), k)

    def search(self, Q, k: int = 10, params: SearchParams | None = None, query_lengths=None) -> SearchResult:
        """Top-``k`` over all shards: each shard runs :meth:`Index.search` on the whole batch (one call per
        shard), and the global top-``k`` is merged by exact score. ``params`` apply to each shard as to one
        index (``ndocs`` is a per-shard budget). Queries take the forms :meth:`Index.search` takes."""
        return self._fan_out(Q, k, params, query_lengths, exact=False)

    def search_exact(self, Q, k: int = 10, query_lengths=None) -> SearchResult:
        """Brute-force MaxSim on every shard, merged: the ground truth of :meth:`search`."""
        return self._fan_out(Q, k, None, query_lengths, exact=True)

    # ---------------------------------------------------------------- writes
    def shard_of(self, doc_id) -> int:
        """The shard that owns ``doc_id`` (whether or not it is in the index)."""
        return shard_of(doc_id, self.n_shards)

    def holders(self, doc_id) -> list[int]:
        """The shards where ``doc_id`` is live (one, or none; more would mean misrouted writes)."""
        return [s for s, live in enumerate(self._read(lambda a: a.live.remote([doc_id]))) if live[0]]

    def _write(self, groups: dict[int, Callable[[object], object]]) -> dict[int, CommitInfo]:
        ray = _ray.require_ray()
        refs = {s: make(self.actors[s]) for s, make in groups.items()}
        return dict(zip(refs, ray.get(list(refs.values()))))

    def _present(self, ids: list, groups: dict[int, np.ndarray], want_live: bool) -> list:
        """Among ``ids``, those live (``want_live``) or not live in the shard that owns them."""
        found = []
        for s, pos in groups.items():
            sel = [ids[i] for i in pos]
            missing = set(_ray.require_ray().get(self.actors[s].missing.remote(sel)))
            found += [x for x in sel if (x not in missing) == want_live]
        return found

    def add(
        self, doc_embeddings, doc_ids: Sequence, *, doc_lengths=None, upsert: bool = False, expand: bool = True
    ) -> dict[int, CommitInfo]:
        """Add documents, each to the shard that owns its id, one call per shard (in parallel); returns each
        written shard's :class:`CommitInfo`. ``doc_ids`` are required (they decide the shard). Ids already live
        raise ``ValueError`` before anything is written, unless ``upsert`` (replace them). The shards commit
        independently: a crash midway can leave some shards written and others not (re-run with ``upsert``).
        ``expand`` as in :meth:`Index.add` (a shard may extend its own codebook; scores stay exact)."""
        if doc_ids is None:
            raise ValueError("ShardedIndex.add needs doc_ids: the id decides the shard")
        ids = [x if isinstance(x, str) else int(x) for x in doc_ids]
        docs = list(iter_documents(doc_embeddings, doc_lengths))
        if len(docs) != len(ids):
            raise ValueError(f"doc_ids has {len(ids)} entries for {len(docs)} documents")
        if len(set(ids)) != len(ids):
            raise ValueError("doc_ids contains duplicates")
        groups = group_by_shard(ids, self.n_shards)
        if not upsert:
            live = self._present(ids, groups, want_live=True)
            if live:
                raise ValueError(f"{len(live)} id(s) already in the index (e.g. {live[:5]}); use upsert=True")
        ray = _ray.require_ray()
        calls = {}
        for s, pos in groups.items():
            flat = ray.put(np.concatenate([np.asarray(docs[i], np.float32) for i in pos]).astype(np.float16))
            lens = np.array([len(docs[i]) for i in pos], np.int64)
            sel = [ids[i] for i in pos]
            sel = sel if isinstance(sel[0], str) else np.asarray(sel, np.int64)
            calls[s] = lambda a, flat=flat, lens=lens, sel=sel: a.add.remote(flat, lens, sel, upsert, expand)
        return self._write(calls)

    def upsert(
        self, doc_embeddings, doc_ids: Sequence, *, doc_lengths=None, expand: bool = True
    ) -> dict[int, CommitInfo]:
        """:meth:`add` with ``upsert=True``: live documents with these ids are replaced."""
        return self.add(doc_embeddings, doc_ids, doc_lengths=doc_lengths, upsert=True, expand=expand)

    def delete(self, doc_ids, *, missing_ok: bool = False) -> dict[int, CommitInfo]:
        """Delete documents by id on the shards that own them. Ids that are not live raise ``KeyError``
        naming them before anything is deleted, unless ``missing_ok``."""
        if isinstance(doc_ids, (str, int, np.integer)):
            doc_ids = [doc_ids]
        ids = [x if isinstance(x, str) else int(x) for x in doc_ids]
        groups = group_by_shard(ids, self.n_shards)
        if not missing_ok:
            missing = self._present(ids, groups, want_live=False)
            if missing:
                raise KeyError(f"{len(missing)} id(s) not in the index: {missing[:10]} (missing_ok=True ignores them)")
        calls = {s: (lambda a, sel=[ids[i] for i in pos]: a.delete.remote(sel, True)) for s, pos in groups.items()}
        return self._write(calls)

    def compact(self) -> dict[int, CommitInfo]:
        """:meth:`Index.compact` on every shard, in parallel."""
        return self._write({s: (lambda a: a.compact.remote()) for s in range(self.n_shards)})

    def refresh(self) -> list[bool]:
        """Move every shard actor to its index's newest committed version (writes made through another
        :class:`ShardedIndex` or process); per shard, whether there was a newer one."""
        return self._read(lambda a: a.refresh.remote())

    def close(self) -> None:
        """Stop the shard actors (the index directories stay)."""
        ray = _ray.require_ray()
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
