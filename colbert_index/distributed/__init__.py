"""Sharded build and fan-out search on Ray (``pip install 'colbert_index[distributed]'``).

Usage::

    from colbert_index.distributed import connect, build_sharded, ShardedIndex
    connect(num_cpus=2)                  # a local instance; connect("ray://head:10001") joins a cluster
    build_sharded("idx", docs, ids, n_shards=4)
    with ShardedIndex.open("idx") as index:
        res = index.search(Q, k=10)

Ray is imported on first use; :func:`plan` and :func:`shard_of` work without it.
"""

from colbert_index.distributed._ray import connect
from colbert_index.distributed.build import CorpusPart, build_sharded
from colbert_index.distributed.cluster import ShardedIndex
from colbert_index.distributed.commit import ClusterWriteError
from colbert_index.distributed.fanout import ShardUnavailableError, merge_topk
from colbert_index.distributed.planner import Plan, plan
from colbert_index.distributed.routing import shard_of
from colbert_index.distributed.server import ShardServer

__all__ = [
    "ClusterWriteError",
    "CorpusPart",
    "Plan",
    "ShardServer",
    "ShardUnavailableError",
    "ShardedIndex",
    "build_sharded",
    "connect",
    "merge_topk",
    "plan",
    "shard_of",
]
