"""Calls to every shard with failover between its replicas, and the merges of the shards' answers.

:class:`Replicas` sends one call per shard to one of its replica actors (in turn, skipping those that failed
lately). A replica that dies, is restarting, or does not answer within ``call_timeout_s`` makes the call go to
the next replica at once; when every replica of a shard has failed, the call is resent with growing waits
(0.25, 0.5, ... up to 4 s) for at least ``retries`` times and ``restart_timeout_s`` seconds (a crashed actor is
restarted by Ray; one whose node went away comes back with the node), and then the whole call fails with
:class:`ShardUnavailableError` naming every shard that did not answer. Other errors (a bad filter, a damaged
file) are raised as they are. A result is never made of fewer shards than the index has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from colbert_index.distributed import _ray
from colbert_index.search import SearchResult

DOWN_FOR_S = 10.0  # a replica that failed is tried after the others for this long


class ShardUnavailableError(RuntimeError):
    """Some shards had no live replica within the retry window. ``shards``: their numbers."""

    def __init__(self, message: str, shards: list[int]) -> None:
        super().__init__(message)
        self.shards = shards


def _actor_errors() -> tuple:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

    return ActorDiedError, ActorUnavailableError, RayActorError, GetTimeoutError


class Replicas:
    """The actors of every shard (``actors[shard][replica]``) and the failover rules of :mod:`.fanout`."""

    def __init__(
        self,
        actors: list[list],
        names: list[str],
        *,
        retries: int = 6,
        restart_timeout_s: float = 120.0,
        call_timeout_s: float | None = None,
    ) -> None:
        self.actors, self.names = actors, names
        self.retries, self.restart_timeout_s, self.call_timeout_s = retries, restart_timeout_s, call_timeout_s
        self._turn = [0] * len(actors)
        self._down = [dict() for _ in actors]  # replica -> monotonic time of its last failure

    def order(self, shard: int) -> list[int]:
        """The replicas of ``shard`` in the order to try them: in turn, those that failed lately last."""
        n = len(self.actors[shard])
        start = self._turn[shard] % n
        self._turn[shard] += 1
        now = time.monotonic()
        turn = [(start + i) % n for i in range(n)]
        return sorted(turn, key=lambda r: now - self._down[shard].get(r, -1e18) < DOWN_FOR_S)

    def mark(self, shard: int, replica: int, ok: bool) -> None:
        """Record that a replica answered (``ok``) or failed: a failed one is asked last for a while."""
        if ok:
            self._down[shard].pop(replica, None)
        else:
            self._down[shard][replica] = time.monotonic()

    def call(self, make: Callable[[int, object], object], shards: Sequence[int]) -> list:
        """``make(shard, actor)`` (a Ray call) on one replica of each shard, in parallel; the results in the
        order of ``shards``."""
        ray = _ray.require_ray()
        errors = _actor_errors()
        shards = list(shards)
        out: dict[int, object] = {}
        state = {s: {"left": self.order(s), "attempt": 0, "since": None, "at": None, "error": None} for s in shards}
        inflight: dict = {}
        failed: list[int] = []

        def send(s: int) -> None:
            r = state[s]["left"].pop(0)
            inflight[make(s, self.actors[s][r])] = (s, r, time.monotonic())

        def fail(s: int, r: int, error: BaseException) -> None:
            now = time.monotonic()
            st = state[s]
            st["error"] = error
            self.mark(s, r, ok=False)
            if st["left"]:
                send(s)
                return
            st["since"] = now if st["since"] is None else st["since"]
            if st["attempt"] >= self.retries and now - st["since"] >= self.restart_timeout_s:
                failed.append(s)
                return
            st["at"] = now + min(0.25 * 2 ** st["attempt"], 4.0)
            st["attempt"] += 1

        for s in shards:
            send(s)
        while inflight or any(st["at"] is not None for st in state.values()):
            now = time.monotonic()
            for s, st in state.items():
                if st["at"] is not None and now >= st["at"]:
                    st["at"], st["left"] = None, self.order(s)
                    send(s)
            wake = [st["at"] for st in state.values() if st["at"] is not None]
            if self.call_timeout_s is not None:
                wake += [t + self.call_timeout_s for _, _, t in inflight.values()]
            wait = max(0.0, min([now + 1.0, *wake]) - now)
            if not inflight:
                time.sleep(wait)
                continue
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=wait)
            for ref in ready:
                s, r, _ = inflight.pop(ref)
                try:
                    out[s] = ray.get(ref)
                    self.mark(s, r, ok=True)
                except errors as e:
                    fail(s, r, e)
            if self.call_timeout_s is not None:
                now = time.monotonic()
                for ref, (s, r, t) in list(inflight.items()):
                    if now - t > self.call_timeout_s:
                        del inflight[ref]
                        fail(s, r, TimeoutError(f"no answer in {self.call_timeout_s} s"))
        if failed:
            failed.sort()
            detail = "; ".join(
                f"shard {s} ({self.names[s]}, {len(self.actors[s])} replica(s)): {type(state[s]['error']).__name__}: "
                f"{str(state[s]['error']).splitlines()[0][:200]}"
                for s in failed
            )
            raise ShardUnavailableError(
                f"{len(failed)} of {len(self.actors)} shard(s) unavailable: {failed} (no live replica after "
                f"{self.restart_timeout_s} s and {self.retries} retries; no partial result is returned). {detail}",
                failed,
            )
        return [out[s] for s in shards]


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int, n_queries: int | None = None) -> SearchResult:
    """Merge per-shard ``(ids [n_q, k_s], scores [n_q, k_s])`` into the global top-``k`` by score.

    Scores from every shard are exact MaxSim scores (stage 4 / brute force), so they compare across shards.
    Ties keep the order of the concatenation (lower shard first, then the shard's own rank). A result has
    ``min(k, sum k_s)`` columns, as a single index returns fewer than ``k`` when it holds fewer documents;
    columns that are padding (score ``-inf``) in every row are dropped. With ``n_queries``, shards that return
    nothing give an empty ``[n_queries, 0]`` result; without it they raise ``ValueError``.
    """
    parts = [(np.asarray(i), np.asarray(s, dtype=np.float32)) for i, s in parts if np.asarray(s).shape[-1] > 0]
    if not parts:
        if n_queries is None:
            raise ValueError("no shard returned any document")
        return SearchResult(ids=np.zeros((n_queries, 0), np.int64), scores=np.zeros((n_queries, 0), np.float32))
    ids = np.concatenate([p[0].astype(object) if p[0].dtype == object else p[0] for p in parts], axis=1)
    scores = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    width = int(np.isfinite(scores).any(axis=0).sum()) if scores.size else 0
    if width < scores.shape[1]:
        ids, scores = ids[:, :width], scores[:, :width]
    return SearchResult(ids=ids, scores=scores)


def merge_lists(rows: Sequence[tuple], depth: int) -> tuple[list, np.ndarray]:
    """One query's per-shard ranked lists ``(ids, scores)`` merged into the top ``depth`` by score (ties: lower
    shard first), padding (``-inf``) dropped: ``(ids, scores float64)``."""
    ids = [x for i, _ in rows for x in np.asarray(i).tolist()]
    scores = np.concatenate([np.asarray(s, np.float64) for _, s in rows]) if rows else np.zeros(0)
    keep = np.isfinite(scores)
    order = np.flatnonzero(keep)[np.argsort(-scores[keep], kind="stable")][:depth]
    return [ids[j] for j in order], scores[order]


def fuse_merged(dense: tuple, lexical: tuple, k: int, fusion: str, alpha: float) -> tuple[list, np.ndarray]:
    """:func:`colbert_index.hybrid.fuse` of two merged lists of ids: ``(ids, fused scores)``, best first."""
    from colbert_index.hybrid import fuse

    (d_ids, d_s), (l_ids, l_s) = dense, lexical
    table = {x: n for n, x in enumerate(dict.fromkeys(list(d_ids) + list(l_ids)))}
    back = list(table)
    d_pos = np.array([table[x] for x in d_ids], np.int64)
    l_pos = np.array([table[x] for x in l_ids], np.int64)
    scores, pos = fuse((d_s, d_pos), (l_s, l_pos), k, fusion, alpha)
    return [back[p] for p in pos], scores


def padded(rows: list[tuple[list, np.ndarray]], id_type: str) -> SearchResult:
    """Per-query ``(ids, scores)`` as a :class:`SearchResult`, shorter rows padded as one index pads them
    (score ``-inf``; id ``-1`` for integer ids, ``None`` for string ids)."""
    width = max((len(s) for _, s in rows), default=0)
    scores = np.full((len(rows), width), -np.inf, np.float32)
    ids = np.full((len(rows), width), -1, np.int64) if id_type == "int" else np.full((len(rows), width), None)
    for q, (i, s) in enumerate(rows):
        scores[q, : len(s)] = s
        ids[q, : len(i)] = i
    return SearchResult(ids=ids, scores=scores)
