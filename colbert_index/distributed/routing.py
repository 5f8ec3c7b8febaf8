"""Which shard owns a document: a stable hash of its external id.

``blake2b(str(id))`` (8-byte digest, little-endian) modulo the shard count. Python's ``hash()`` is
salted per process, so it would route the same id to different shards in different workers; blake2b
gives the same answer in every process, on every machine, across restarts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

HASH_NAME = "blake2b-8(str(id)) mod n_shards"


def _key(doc_id) -> bytes:
    if isinstance(doc_id, str):
        return doc_id.encode("utf-8")
    if isinstance(doc_id, (bool, np.bool_)) or not isinstance(doc_id, (int, np.integer)):
        raise TypeError(f"document ids are ints or strings, got {type(doc_id).__name__} {doc_id!r}")
    return str(int(doc_id)).encode("ascii")


def shard_of(doc_id, n_shards: int) -> int:
    """The shard (0-based) that owns ``doc_id`` among ``n_shards``.

    >>> shard_of("doc-1", 4) == shard_of("doc-1", 4)
    True
    >>> shard_of(7, 1)
    0
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    h = hashlib.blake2b(_key(doc_id), digest_size=8).digest()
    return int.from_bytes(h, "little") % n_shards


def shards_of(doc_ids: Iterable, n_shards: int) -> np.ndarray:
    """:func:`shard_of` of each id, as an int64 array."""
    return np.fromiter((shard_of(x, n_shards) for x in doc_ids), dtype=np.int64)


def group_by_shard(doc_ids: Iterable, n_shards: int) -> dict[int, np.ndarray]:
    """``{shard: positions in doc_ids}`` for the shards that own at least one of the ids."""
    owner = shards_of(doc_ids, n_shards)
    return {int(s): np.flatnonzero(owner == s) for s in np.unique(owner)}
