"""Cluster writes that commit on every shard they touch or, as readers see it, on none.

A write takes the cluster's writer lock (``write.lock`` in the root: one writer per sharded index at a time),
moves to the newest cluster generation, sends each shard its part (built on the shard version that generation
names; a shard holding a later version that no generation names, left by a write that died before its cluster
commit, is rolled back first: :func:`colbert_index.distributed.server.roll_back`), and when every shard has
committed, commits the next generation of ``cluster.json`` naming the new shard versions. Readers use only
the versions ``cluster.json`` names, so a write killed at any point before that last rename is seen by none of
them, and one killed after it by all. A shard part that fails makes the write raise
:class:`ClusterWriteError` after undoing the parts that committed (or leaving them to the next write's roll
back when that fails too); re-running the write is then safe.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from colbert_index.distributed import _ray
from colbert_index.distributed.manifest import write_cluster_manifest
from colbert_index.storage.files import WriterLock
from colbert_index.writer import CommitInfo

if TYPE_CHECKING:
    from colbert_index.distributed.cluster import ShardedIndex


class ClusterWriteError(RuntimeError):
    """A cluster write failed on some shards; nothing of it is visible (the cluster generation is unchanged)."""


def next_generation(manifest: dict, shard_manifests: dict[int, dict], op: str) -> dict:
    """The cluster manifest after a write: generation + 1, the written shards' new versions and counts."""
    new = copy.deepcopy(manifest)
    new["generation"] = int(manifest.get("generation", 0)) + 1
    new["last_op"] = op
    for s, m in shard_manifests.items():
        entry = new["shards"][s]
        entry["manifest"], entry["n_docs"], entry["n_tokens"] = m, int(m["n_docs"]), int(m["n_tokens"])
    new["n_docs"] = sum(int(e["n_docs"]) for e in new["shards"])
    new["n_tokens"] = sum(int(e["n_tokens"]) for e in new["shards"])
    return new


def _write_parts(index: ShardedIndex, parts: dict[int, tuple[str, dict]]) -> tuple[dict, dict]:
    """Each shard's part on one of its replicas, in parallel; a replica that dies is replaced by the next one
    (safe: the part first rolls the shard back to the pinned version). ``(results, errors)`` by shard."""
    ray = _ray.require_ray()
    from colbert_index.distributed.fanout import _actor_errors

    actor_errors = _actor_errors()
    order = {s: index.replicas.order(s) for s in parts}
    results, errors = {}, {}
    pending = dict(parts)
    while pending:
        refs = {}
        for s, (op, payload) in pending.items():
            r = order[s].pop(0)
            refs[s] = (r, index.replicas.actors[s][r].write.remote(index._pins[s], op, payload))
        pending = {}
        for s, (r, ref) in refs.items():
            try:
                results[s] = ray.get(ref)
                index.replicas.mark(s, r, ok=True)
            except actor_errors as e:
                index.replicas.mark(s, r, ok=False)
                if order[s]:
                    pending[s] = parts[s]
                else:
                    errors[s] = e
            except Exception as e:  # noqa: BLE001 - any failure of a part fails the write; reported below
                errors[s] = e
    return results, errors


def transact(index: ShardedIndex, op: str, parts: dict[int, tuple[str, dict]]) -> dict[int, CommitInfo]:
    """Apply ``parts`` (``{shard: (op, payload)}``, :meth:`ShardServer.write`) as one cluster write."""
    ray = _ray.require_ray()
    with WriterLock(index.root):
        index.refresh()
        base = index.manifest
        results, errors = _write_parts(index, parts)
        if errors:
            for s in results:  # best effort, on the first replica that answers: the next write rolls back the rest
                for r in index.replicas.order(s):
                    try:
                        ray.get(index.replicas.actors[s][r].abort.remote(index._pins[s]))
                        break
                    except Exception:  # noqa: BLE001 - see above
                        index.replicas.mark(s, r, ok=False)
            detail = "; ".join(
                f"shard {s}: {type(e).__name__}: {str(e).splitlines()[0][:200]}" for s, e in errors.items()
            )
            raise ClusterWriteError(
                f"{op} failed on shard(s) {sorted(errors)}; nothing of it is visible (cluster generation "
                f"{base.get('generation', 0)} unchanged), run it again. {detail}"
            )
        new = next_generation(base, {s: m for s, (_, m) in results.items()}, op)
        write_cluster_manifest(index.root, new)  # the commit point
        index._adopt(new)
    return {s: info for s, (info, _) in results.items()}
