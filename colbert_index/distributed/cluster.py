"""Fan-out search over a sharded index: Ray actors hold the shards open (memory-mapped), one or more replicas
per shard; a batch of queries goes to one replica of every shard in one call each, and the shards' answers are
merged (top-k by exact score; hybrid lists merged, then fused). Every call names the cluster generation to
answer at (:mod:`.server`); writes are routed to the shards that own the ids and committed as one cluster
generation (:mod:`.commit`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from colbert_index import hybrid
from colbert_index.distributed import _ray
from colbert_index.distributed.commit import transact
from colbert_index.distributed.fanout import Replicas, fuse_merged, merge_lists, merge_topk, padded
from colbert_index.distributed.manifest import load_cluster_manifest, shard_path
from colbert_index.distributed.routing import group_by_shard, shard_of
from colbert_index.distributed.server import ShardServer
from colbert_index.errors import IndexFormatError
from colbert_index.index import CommitInfo
from colbert_index.inputs import iter_documents, normalize_queries
from colbert_index.search import SearchParams, SearchResult, check_k

__all__ = ["ShardServer", "ShardedIndex", "merge_topk"]


def _actor_options(entry: dict, label: str | None, spread: bool, max_restarts: int, cpus: float, threads: int) -> dict:
    resources = dict(_ray.node_resource(entry.get("node")))
    if label is not None:
        resources[label] = 0.001
    opts = {
        "max_restarts": max_restarts,
        "max_task_retries": 0,  # writes are not idempotent: reads are retried by Replicas instead
        "num_cpus": cpus,
        "resources": resources,
        "runtime_env": _ray.thread_env(threads),
    }
    if spread:
        opts["scheduling_strategy"] = "SPREAD"
    return opts


class ShardedIndex:
    """A sharded index served by Ray actors (open it with :meth:`open`; build it with
    :func:`~colbert_index.distributed.build_sharded`).

    :meth:`search` returns what one index holding every shard's documents would return from a search in
    which each shard's candidate budget is its own (``ndocs`` per shard, not for the whole corpus): the same
    top-k as :meth:`search_exact` whenever the parameters make each shard's search exact, and in general at
    least as many candidates as a single index with the same parameters would rerank. Filters apply on every
    shard; a hybrid search fuses the merged dense and lexical lists as one index fuses its own.
    """

    def __init__(self, root: Path, manifest: dict, replicas: Replicas) -> None:
        self.root, self.replicas = root, replicas
        self.manifest: dict = {}
        self._pins: list[tuple] = []
        self._adopt(manifest)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        replicas: int = 1,
        placement: Sequence[Sequence[str]] | None = None,
        threads_per_shard: int = 1,
        cpus_per_shard: float = 0,
        max_restarts: int = -1,
        retries: int = 6,
        restart_timeout_s: float = 120.0,
        call_timeout_s: float | None = None,
        backend: str = "auto",
    ) -> ShardedIndex:
        """Start the shard actors of the sharded index at ``path`` (on the connected Ray cluster).

        replicas: actors per shard, each able to answer for it (they read the same shard directory, so it
        must be on a filesystem their nodes share); without ``placement`` Ray spreads them over nodes (best
        effort). placement: per shard, one custom Ray resource per replica (e.g. ``[["rack_a", "rack_b"],
        ...]``): each replica runs only on nodes that offer that resource (``ray start --resources``), and after
        its node goes away it comes back when such a node does. threads_per_shard: Numba/BLAS threads in each
        actor. cpus_per_shard: CPUs Ray reserves for each actor (0: none, so any number fit a small machine; on a
        cluster set it to ``threads_per_shard``). max_restarts: how often Ray restarts a crashed actor (-1:
        always). retries, restart_timeout_s, call_timeout_s: the failover of reads
        (:mod:`colbert_index.distributed.fanout`): a shard that has no live replica for at least
        ``restart_timeout_s`` seconds and ``retries`` resends makes the read fail naming it; ``call_timeout_s``
        (None: no limit) bounds the wait for one replica's answer before the next is asked. A shard whose node is
        recorded in the manifest gets its actors on that node.
        """
        ray = _ray.require_ray()
        if not ray.is_initialized():
            raise RuntimeError("Ray is not connected: call colbert_index.distributed.connect() (or ray.init) first")
        root = Path(path).absolute()  # Ray workers do not share the driver's working directory
        manifest = load_cluster_manifest(root)
        n = len(manifest["shards"])
        if placement is not None:
            placement = [list(p) for p in placement]
            if len(placement) != n or any(len(p) < 1 for p in placement):
                raise ValueError(f"placement needs one non-empty list of resource names per shard ({n})")
        elif int(replicas) < 1:
            raise ValueError(f"replicas must be >= 1, got {replicas}")
        actor_cls = _ray.remote(ShardServer)
        actors, names = [], []
        for e in manifest["shards"]:
            d = shard_path(root, e)
            if e.get("node") is None and not d.is_dir():
                raise FileNotFoundError(f"shard {e['shard']}: {d} is missing (named by {root / 'cluster.json'})")
            labels = placement[e["shard"]] if placement is not None else [None] * int(replicas)
            spread = placement is None and len(labels) > 1
            opts = [_actor_options(e, lb, spread, max_restarts, cpus_per_shard, threads_per_shard) for lb in labels]
            actors.append(
                [actor_cls.options(**o).remote(int(e["shard"]), str(d), backend, r) for r, o in enumerate(opts)]
            )
            names.append(str(d))
        rep = Replicas(
            actors, names, retries=retries, restart_timeout_s=restart_timeout_s, call_timeout_s=call_timeout_s
        )
        if manifest["version"] < 2:  # pin each shard's newest version as generation 0
            current = rep.call(lambda s, a: a.current_manifest.remote(), range(n))
            manifest = {**manifest, "generation": 0}
            manifest["shards"] = [{**e, "manifest": m} for e, m in zip(manifest["shards"], current)]
        index = cls(root, manifest, rep)
        for info in index.info():
            want = (manifest["dim"], manifest["nbits"], manifest["id_type"])
            got = (info["dim"], info["nbits"], info["id_type"])
            if got != want:
                index.close()
                raise IndexFormatError(f"{info['path']}: shard has (dim, nbits, id_type) {got}, the cluster {want}")
        return index

    # ---------------------------------------------------------------- plumbing
    def _adopt(self, manifest: dict) -> None:
        """Serve ``manifest``'s generation from now on (each shard's version put once in the object store)."""
        ray = _ray.require_ray()
        self.manifest = manifest
        g = int(manifest.get("generation", 0))
        self._pins = [(g, ray.put(e["manifest"])) for e in manifest["shards"]]

    @property
    def generation(self) -> int:
        """The cluster generation searches answer at."""
        return int(self.manifest.get("generation", 0))

    @property
    def n_shards(self) -> int:
        return len(self.replicas.actors)

    @property
    def actors(self) -> list[list]:
        """The actors, ``actors[shard][replica]``."""
        return self.replicas.actors

    def _read(self, call: Callable[[object, tuple, int], object], shards: Sequence[int] | None = None) -> list:
        """``call(actor, pin, shard)`` on one replica of each shard at the current generation (failover:
        :class:`Replicas`). A shard that can no longer open the pinned version (its files went with later writes,
        and its actor was restarted) makes the read move to the newest generation and run once more."""
        shards = range(self.n_shards) if shards is None else shards
        for attempt in (0, 1):
            pins = self._pins
            try:
                return self.replicas.call(lambda s, a, pins=pins: call(a, pins[s], s), shards)
            except IndexFormatError:
                if attempt or not self.refresh():
                    raise
        raise AssertionError("unreachable")

    def refresh(self) -> bool:
        """Move to the newest committed cluster generation (writes made through another :class:`ShardedIndex`
        or process); whether there was a newer one."""
        m = load_cluster_manifest(self.root)
        if m["version"] < 2 or m["generation"] == self.generation and m.get("uuid") == self.manifest.get("uuid"):
            return False
        self._adopt(m)
        return True

    def info(self) -> list[dict]:
        """One replica of each shard: :meth:`ShardServer.info` (pid, node, documents, shard generation, bytes)."""
        return self._read(lambda a, pin, _: a.info.remote(pin))

    @property
    def n_docs(self) -> int:
        """Live documents over all shards (at the current generation)."""
        return int(sum(int(e["manifest"]["n_docs"]) for e in self.manifest["shards"]))

    def __len__(self) -> int:
        return self.n_docs

    # ---------------------------------------------------------------- search
    def _fan_out(self, queries, k: int, params, mode: str, options: dict) -> list:
        ray = _ray.require_ray()
        ref = ray.put(queries) if queries is not None else None
        return self._read(lambda a, pin, _: a.search.remote(pin, ref, k, params, mode, options))

    def search(
        self,
        Q,
        k: int = 10,
        params: SearchParams | None = None,
        query_lengths=None,
        filter: dict | list | None = None,
        *,
        text_query: str | list[str] | None = None,
        text_mode: str = "any",
        fusion: str | None = "rrf",
        alpha: float = 0.5,
        fusion_depth: int | None = None,
    ) -> SearchResult:
        """Top-``k`` over all shards, with the arguments of :meth:`colbert_index.Index.search`.

        Each shard runs the search on the whole batch (one call per shard) and the global top-``k`` is merged by
        exact score; ``params`` apply to each shard as to one index (``ndocs`` is a per-shard budget); a
        ``filter`` is applied by every shard to its own documents. With a ``text_query`` each shard returns its
        dense and lexical lists (``fusion_depth`` each) unfused; each is merged over the shards by score, then
        fused as one index fuses (BM25 statistics are each shard's own, as each segment's are in one index).
        """
        k = check_k(k)
        dim = int(self.manifest["dim"])
        queries = None if Q is None else normalize_queries(Q, dim, query_lengths)
        options = {"filter": filter}
        if text_query is None:
            if queries is None:
                raise ValueError("Q is None: give query embeddings, or a text_query for a lexical search")
            parts = self._fan_out(queries, k, params, "dense", options)
            return merge_topk(parts, k, len(queries))
        texts = hybrid._text_queries(text_query, None if queries is None else len(queries))
        for t in texts:
            hybrid.parse_text_query(t, text_mode)  # errors raise here, before the fan-out
        options.update(text_query=texts, text_mode=text_mode)
        if queries is None:
            parts = [p for p in self._fan_out(None, k, params, "lexical", options) if p is not None]
            if not parts:
                raise ValueError("text_query: this index stores no texts (build, add or upsert with texts=...)")
            rows = [merge_lists([(p[0][q], p[1][q]) for p in parts], k) for q in range(len(texts))]
            return padded(rows, self.manifest["id_type"])
        alpha = hybrid.check_fusion(fusion, alpha)
        depth = max(k, hybrid.FUSION_DEPTH) if fusion_depth is None else fusion_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < k:
            raise ValueError(f"fusion_depth must be an integer >= k={k}, got {fusion_depth!r}")
        options["depth"] = depth
        parts = self._fan_out(queries, k, params, "hybrid", options)
        if all(lex is None for _, lex in parts):
            raise ValueError("text_query: this index stores no texts (build, add or upsert with texts=...)")
        rows = []
        for q in range(len(queries)):
            dense = merge_lists([d[q] for d, _ in parts], depth)
            lexical = merge_lists([lex[q] for _, lex in parts if lex is not None], depth)
            rows.append(fuse_merged(dense, lexical, k, fusion, alpha))
        return padded(rows, self.manifest["id_type"])

    def search_exact(self, Q, k: int = 10, query_lengths=None, filter: dict | list | None = None) -> SearchResult:
        """Brute-force MaxSim on every shard (over the documents ``filter`` allows), merged: the ground truth of
        :meth:`search`."""
        queries = normalize_queries(Q, int(self.manifest["dim"]), query_lengths)
        k = check_k(k)
        return merge_topk(self._fan_out(queries, k, None, "exact", {"filter": filter}), k, len(queries))

    # ---------------------------------------------------------------- reads by id
    def shard_of(self, doc_id) -> int:
        """The shard that owns ``doc_id`` (whether or not it is in the index)."""
        return shard_of(doc_id, self.n_shards)

    def holders(self, doc_id) -> list[int]:
        """The shards where ``doc_id`` is live (one, or none; more would mean misrouted writes)."""
        return [s for s, live in enumerate(self._read(lambda a, pin, _: a.live.remote(pin, [doc_id]))) if live[0]]

    def _by_owner(self, ids: list, call: Callable[[object, tuple, list], object]) -> list:
        """``call(actor, pin, ids of the shard)`` on the shards that own ``ids``; the answers in the order of ids."""
        groups = group_by_shard(ids, self.n_shards)
        shards = list(groups)
        answers = self._read(lambda a, pin, s: call(a, pin, [ids[i] for i in groups[s]]), shards)
        out: list = [None] * len(ids)
        for s, ans in zip(shards, answers):
            for i, v in zip(groups[s], ans):
                out[i] = v
        return out

    def metadata(self, doc_ids: Sequence) -> list[dict | None]:
        """Each document's metadata (``None`` for ids without metadata or not live)."""
        ids = _ids(doc_ids)
        return self._by_owner(ids, lambda a, pin, sel: a.stored.remote(pin, "metadata", sel)) if ids else []

    def texts(self, doc_ids: Sequence) -> list[str | None]:
        """Each document's stored text (``None`` for ids without one or not live)."""
        ids = _ids(doc_ids)
        return self._by_owner(ids, lambda a, pin, sel: a.stored.remote(pin, "texts", sel)) if ids else []

    def _live(self, ids: list) -> list[bool]:
        return self._by_owner(ids, lambda a, pin, sel: a.live.remote(pin, sel))

    # ---------------------------------------------------------------- writes
    def add(
        self,
        doc_embeddings,
        doc_ids: Sequence,
        *,
        doc_lengths=None,
        upsert: bool = False,
        expand: bool = True,
        metadata: list[dict | None] | None = None,
        texts: list[str | None] | None = None,
    ) -> dict[int, CommitInfo]:
        """Add documents, each to the shard that owns its id, as one cluster write (:mod:`.commit`: searches see
        all of it or none); returns each written shard's :class:`CommitInfo`. ``doc_ids`` are required (they
        decide the shard). Ids already live raise ``ValueError`` before anything is written, unless ``upsert``
        (replace them). ``metadata``, ``texts``: one per document, as :meth:`Index.add` takes them. ``expand`` as
        in :meth:`Index.add` (a shard may extend its own codebook; scores stay exact)."""
        if doc_ids is None:
            raise ValueError("ShardedIndex.add needs doc_ids: the id decides the shard")
        ids = _ids(doc_ids)
        docs = list(iter_documents(doc_embeddings, doc_lengths))
        for name, given in (("doc_ids", ids), ("metadata", metadata), ("texts", texts)):
            if given is not None and len(given) != len(docs):
                raise ValueError(f"{name} has {len(given)} entries for {len(docs)} documents")
        if len(set(ids)) != len(ids):
            raise ValueError("doc_ids contains duplicates")
        if not upsert:
            live = [x for x, v in zip(ids, self._live(ids)) if v]
            if live:
                raise ValueError(f"{len(live)} id(s) already in the index (e.g. {live[:5]}); use upsert=True")
        op = "upsert" if upsert else "add"
        parts = {}
        for s, pos in group_by_shard(ids, self.n_shards).items():
            sel = [ids[i] for i in pos]
            payload = {
                "flat": np.concatenate([np.asarray(docs[i], np.float32) for i in pos]).astype(np.float16),
                "doclens": np.array([len(docs[i]) for i in pos], np.int64),
                "ids": sel if isinstance(sel[0], str) else np.asarray(sel, np.int64),
                "expand": expand,
                "metadata": None if metadata is None else [metadata[i] for i in pos],
                "texts": None if texts is None else [texts[i] for i in pos],
            }
            parts[s] = (op, payload)
        return transact(self, op, parts)

    def upsert(self, doc_embeddings, doc_ids: Sequence, **kwargs) -> dict[int, CommitInfo]:
        """:meth:`add` with ``upsert=True``: live documents with these ids are replaced (same keywords)."""
        return self.add(doc_embeddings, doc_ids, upsert=True, **kwargs)

    def delete(self, doc_ids=None, *, missing_ok: bool = False, filter: dict | list | None = None) -> dict:
        """Delete documents by id on the shards that own them, or the live documents a metadata ``filter``
        selects on every shard, as one cluster write. Ids that are not live raise ``KeyError`` naming them
        before anything is deleted, unless ``missing_ok``."""
        if (doc_ids is None) == (filter is None):
            raise ValueError("delete takes doc_ids or a filter (one of them)")
        if filter is not None:
            if filter == {}:
                raise ValueError("delete(filter={}) would delete every document; refused")
            return transact(self, "delete", {s: ("delete", {"filter": filter}) for s in range(self.n_shards)})
        ids = _ids([doc_ids] if isinstance(doc_ids, (str, int, np.integer)) else doc_ids)
        if not missing_ok:
            missing = [x for x, v in zip(ids, self._live(ids)) if not v]
            if missing:
                raise KeyError(f"{len(missing)} id(s) not in the index: {missing[:10]} (missing_ok=True ignores them)")
        groups = group_by_shard(ids, self.n_shards)
        return transact(self, "delete", {s: ("delete", {"ids": [ids[i] for i in pos]}) for s, pos in groups.items()})

    def compact(self) -> dict[int, CommitInfo]:
        """:meth:`Index.compact` on every shard, as one cluster write."""
        return transact(self, "compact", {s: ("compact", {}) for s in range(self.n_shards)})

    def close(self) -> None:
        """Stop the shard actors (the index directories stay)."""
        ray = _ray.require_ray()
        for group in self.replicas.actors:
            for a in group:
                ray.kill(a, no_restart=True)
        self.replicas.actors = []

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ids(doc_ids) -> list:
    return [x if isinstance(x, str) else int(x) for x in doc_ids]
