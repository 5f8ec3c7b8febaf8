"""The cluster manifest: one small JSON file naming the shards of a sharded index, and the version of each
shard that readers use.

``cluster.json`` in the sharded index's root directory::

    {"format": "colbert_index.cluster", "version": 2, "uuid": ..., "generation": 7, "n_shards": 4,
     "hash": "blake2b-8(str(id)) mod n_shards", "dim": 64, "nbits": 2, "n_centroids": 4096,
     "id_type": "int" | "str", "codebook_sha256": ..., "build": {...},
     "shards": [{"shard": 0, "path": "b1c2d3e4-shard-0000", "node": null, "n_docs": ..., "n_tokens": ...,
                 "disk_bytes": ..., "uuid": ..., "manifest": {the shard's manifest.json}}, ...]}

A shard ``path`` is relative to the root when the shard lives inside it (shared filesystem), absolute
otherwise (per-node disks); ``node`` is the IP address of the node whose disk holds it (its build task
and its search actor are pinned there), or null when every node sees the path. The file is written to a
temporary name, fsynced and renamed over ``cluster.json``: it names a complete set of shards or none.

``generation`` counts the cluster's commits, and each shard entry embeds the shard manifest (checksummed, as
the shard wrote it) of that generation: readers open every shard at that version, whatever the shard's own
``manifest.json`` says meanwhile. A write that spans shards commits on each shard first, then commits the
next generation of ``cluster.json`` naming the new versions; until then readers see none of it, and a shard
version that no generation names is rolled back before the next write (:mod:`.commit`). Counts (``n_docs``,
``n_tokens``) are those of the embedded versions. Version 1 (no generation, no embedded manifests: readers
took each shard's newest version) is read, and the first write commits it as version 2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from colbert_index.errors import IndexFormatError
from colbert_index.storage.files import replace_json
from colbert_index.storage.manifest import CHECKSUM_FIELD, MANIFEST, seal

CLUSTER_MANIFEST = "cluster.json"
FORMAT_NAME = "colbert_index.cluster"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)


def write_cluster_manifest(root: Path, manifest: dict) -> None:
    """Commit ``manifest`` as ``root/cluster.json`` atomically (temp file, fsync, rename, fsync dir)."""
    root.mkdir(parents=True, exist_ok=True)
    replace_json(root, CLUSTER_MANIFEST, {**manifest, "format": FORMAT_NAME, "version": FORMAT_VERSION})


def load_cluster_manifest(root: str | os.PathLike) -> dict:
    """Read and check ``root/cluster.json``; :class:`IndexFormatError` names what is wrong."""
    path = Path(root) / CLUSTER_MANIFEST
    if not path.is_file():
        hint = " (it is a single index: use colbert_index.Index.open)" if (Path(root) / MANIFEST).is_file() else ""
        raise FileNotFoundError(f"{path}: no cluster manifest; build a sharded index with build_sharded(){hint}")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IndexFormatError(f"{path}: unreadable cluster manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{path}: not a colbert_index cluster manifest")
    if m.get("version") not in READ_VERSIONS:
        raise IndexFormatError(f"{path}: cluster format version {m.get('version')}, this build reads {READ_VERSIONS}")
    shards = m.get("shards")
    if not isinstance(shards, list) or not shards or len(shards) != m.get("n_shards"):
        raise IndexFormatError(f"{path}: 'shards' must list n_shards={m.get('n_shards')} entries")
    for i, s in enumerate(shards):
        if not isinstance(s, dict) or s.get("shard") != i or not isinstance(s.get("path"), str):
            raise IndexFormatError(f"{path}: shard entry {i} is malformed ({s!r})")
        if m["version"] >= 2:
            check_shard_manifest(s.get("manifest"), f"{path}: shard {i}")
    if m["version"] >= 2 and (not isinstance(m.get("generation"), int) or m["generation"] < 0):
        raise IndexFormatError(f"{path}: 'generation' must be a non-negative integer, got {m.get('generation')!r}")
    return m


def check_shard_manifest(manifest, where: str) -> dict:
    """A shard manifest embedded in ``cluster.json``: a dict whose checksum matches its content."""
    if not isinstance(manifest, dict) or CHECKSUM_FIELD not in manifest:
        raise IndexFormatError(f"{where}: no checksummed shard manifest")
    if seal(manifest)[CHECKSUM_FIELD] != manifest[CHECKSUM_FIELD]:
        raise IndexFormatError(f"{where}: shard manifest checksum mismatch (edited or damaged)")
    return manifest


def same_data(a: dict, b: dict) -> bool:
    """Whether two manifests of one shard name the same documents: same segments (files and tombstones),
    codebook and id counter; their generations may differ."""
    keys = ("uuid", "segments", "codebook", "next_id")
    return all(a.get(k) == b.get(k) for k in keys)


def shard_path(root: Path, entry: dict) -> Path:
    """The directory of a shard entry (relative paths are under ``root``)."""
    p = Path(entry["path"])
    return p if p.is_absolute() else root / p
