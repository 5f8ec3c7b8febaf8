"""Sharded build on Ray: partition documents by id hash, train one codebook on a sample gathered from
every shard, then build the shards in parallel tasks, each writing a normal index directory.

The documents travel as Ray objects (the object store spills to disk when full), so no shared filesystem
is needed for them; each shard's directory must be writable where its build task runs (``nodes=``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from colbert_index.codec import ResidualCodec, check_nbits_dim, default_n_centroids
from colbert_index.distributed import _ray
from colbert_index.distributed.manifest import (
    CLUSTER_MANIFEST,
    load_cluster_manifest,
    shard_path,
    write_cluster_manifest,
)
from colbert_index.distributed.routing import HASH_NAME, shard_of, shards_of
from colbert_index.inputs import iter_documents

_KMEANS_POINTS_PER_CENTROID = 64  # as Index.build
_HELDOUT_TOKENS = 1 << 16
_PIECE_TOKENS = 1 << 18  # tokens per Ray object when the driver partitions (float16: 64 MiB at dim 128)


@dataclass(frozen=True)
class CorpusPart:
    """A part of the corpus read by a Ray task where it runs (paths must be readable there).

    embeddings: a flat float ``[n_tokens, dim]`` ``.npy`` file (memory-mapped); doclens: an int ``.npy`` of
    the documents' token counts; ids: a ``.npy`` of int ids, or a text file of one string id per line; None
    numbers the part's documents after the previous parts' (``0..n_docs-1`` over all parts).
    """

    embeddings: str
    doclens: str
    ids: str | None = None


def _check_piece_ids(ids) -> np.ndarray | list[str]:
    if isinstance(ids, list):
        return ids
    return np.asarray(ids, dtype=np.int64)


def _split(flat: np.ndarray, doclens: np.ndarray, ids, n_shards: int) -> list[tuple]:
    """One part's documents as one piece ``(float16 [n, dim], int32 doclens, ids)`` per shard."""
    owner = shards_of(ids, n_shards)
    offsets = np.concatenate([[0], np.cumsum(doclens, dtype=np.int64)])
    pieces = []
    for s in range(n_shards):
        docs = np.flatnonzero(owner == s)
        rows = np.concatenate([np.arange(offsets[d], offsets[d + 1]) for d in docs]) if len(docs) else np.zeros(0, int)
        sel_ids = [ids[d] for d in docs] if isinstance(ids, list) else np.asarray(ids)[docs]
        pieces.append((np.asarray(flat[rows], dtype=np.float16), doclens[docs].astype(np.int32), sel_ids))
    return pieces


def _partition_part(part: CorpusPart, id_start: int, n_shards: int):
    """Ray task: read one :class:`CorpusPart` and split it into per-shard pieces (+ per-shard counts last)."""
    flat = np.load(part.embeddings, mmap_mode="r")
    doclens = np.asarray(np.load(part.doclens), dtype=np.int64)
    if flat.ndim != 2 or int(doclens.sum()) != flat.shape[0] or (doclens < 1).any():
        raise ValueError(f"{part.embeddings}: {flat.shape} rows do not match {part.doclens} (sum {doclens.sum()})")
    if part.ids is None:
        ids = np.arange(id_start, id_start + len(doclens), dtype=np.int64)
    elif part.ids.endswith(".npy"):
        ids = np.load(part.ids)
    else:
        ids = Path(part.ids).read_text(encoding="utf-8").splitlines()
    if len(ids) != len(doclens):
        raise ValueError(f"{part.ids}: {len(ids)} ids for {len(doclens)} documents")
    pieces = _split(flat, doclens, ids, n_shards)
    counts = [(len(p[1]), int(p[1].sum())) for p in pieces]
    return (*pieces, counts)


def _partition_in_driver(doc_embeddings, doc_ids, doc_lengths, n_shards: int, metadata=None, texts=None):
    """Stream in-memory documents into per-shard Ray objects of about ``_PIECE_TOKENS`` tokens each; with
    ``metadata`` / ``texts`` (one per document), also each shard's list of them, in its documents' order."""
    ray = _ray.require_ray()
    refs: list[list] = [[] for _ in range(n_shards)]
    counts = np.zeros((n_shards, 2), np.int64)
    buf: list[list] = [[] for _ in range(n_shards)]
    buf_tokens = np.zeros(n_shards, np.int64)
    given = None if doc_ids is None else list(doc_ids)
    kinds = set()
    extras = {name: [[] for _ in range(n_shards)] for name, v in (("metadata", metadata), ("texts", texts)) if v}

    def flush(s: int) -> None:
        docs, ids = zip(*buf[s])
        doc_ids_s = list(ids) if isinstance(ids[0], str) else np.asarray(ids, dtype=np.int64)
        piece = (np.concatenate(docs), np.array([len(d) for d in docs], np.int32), doc_ids_s)
        refs[s].append(ray.put(piece))
        buf[s], buf_tokens[s] = [], 0

    n = 0
    for n, doc in enumerate(iter_documents(doc_embeddings, doc_lengths), start=1):
        if given is not None and n > len(given):
            raise ValueError(f"doc_ids has {len(given)} entries for more documents")
        doc_id = n - 1 if given is None else given[n - 1]
        doc_id = doc_id if isinstance(doc_id, str) else int(doc_id)
        kinds.add(type(doc_id))
        s = shard_of(doc_id, n_shards)
        doc = np.asarray(doc)
        if doc.ndim != 2 or len(doc) == 0:
            raise ValueError(f"document {n - 1}: expected a non-empty [n_tokens, dim] array, got shape {doc.shape}")
        buf[s].append((doc.astype(np.float16), doc_id))  # what Index.build spills anyway: no loss
        for name, per_shard in extras.items():
            given_extra = metadata if name == "metadata" else texts
            if n > len(given_extra):
                raise ValueError(f"{name} has {len(given_extra)} entries for more documents")
            per_shard[s].append(given_extra[n - 1])
        buf_tokens[s] += len(doc)
        counts[s] += (1, len(doc))
        if buf_tokens[s] >= _PIECE_TOKENS:
            flush(s)
    if given is not None and n != len(given):
        raise ValueError(f"doc_ids has {len(given)} entries for {n} documents")
    if len(kinds) > 1:
        raise ValueError("doc_ids must be all integers or all strings")
    for name in extras:
        if len(metadata if name == "metadata" else texts) != n:
            raise ValueError(f"{name} has {len(metadata if name == 'metadata' else texts)} entries for {n} documents")
    for s in range(n_shards):
        if buf[s]:
            flush(s)
    return refs, counts, [{name: per_shard[s] for name, per_shard in extras.items()} for s in range(n_shards)]


def _pieces_of(refs: list) -> tuple[list[np.ndarray], list[np.ndarray], list]:
    flats, lens, ids = [], [], []
    for flat, doclens, piece_ids in refs:
        if len(doclens):
            flats.append(flat)
            lens.append(doclens)
            ids.append(piece_ids)
    return flats, lens, ids


def _sample_rows(n_rows: int, seed: int, *pieces) -> np.ndarray:
    """Ray task: ``n_rows`` tokens drawn uniformly without replacement from one shard's pieces (float32)."""
    flats, _, _ = _pieces_of(pieces)
    sizes = np.array([len(f) for f in flats], np.int64)
    picks = np.sort(np.random.default_rng(seed).choice(int(sizes.sum()), min(n_rows, int(sizes.sum())), replace=False))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    out = [flats[i][picks[(picks >= bounds[i]) & (picks < bounds[i + 1])] - bounds[i]] for i in range(len(flats))]
    return np.concatenate(out).astype(np.float32)


def _train_codec(n_train: int, K: int, nbits: int, kmeans_iters: int, seed: int, *samples) -> tuple:
    """Ray task: the codebook (k-means + bucket tables) from the samples of every shard, as Index.build
    trains it; unit-norm input switches decompression normalisation on, as Index.build detects it."""
    tokens = np.concatenate(samples)
    order = np.random.default_rng(seed).permutation(len(tokens))
    train = tokens[order[:n_train]]
    heldout = tokens[order[n_train:]] if len(tokens) > n_train else tokens[order[: min(len(tokens), _HELDOUT_TOKENS)]]
    normalize = bool(np.allclose(np.linalg.norm(heldout, axis=1), 1.0, atol=2e-3))
    t0 = time.perf_counter()
    codec = ResidualCodec.train(train, heldout, K, nbits, kmeans_iters=kmeans_iters, seed=seed, normalize=normalize)
    return codec, time.perf_counter() - t0


def _build_shard(
    path: str, codec: ResidualCodec, nbits: int, seed: int, overwrite: bool, keep_originals: bool, extras, *pieces
) -> dict:
    """Ray task: build one shard's index directory with the shared codebook; its summary for the manifest."""
    from colbert_index import Index
    from colbert_index.storage.manifest import load_manifest

    flats, lens, ids = _pieces_of(pieces)
    all_ids = sum(ids, []) if isinstance(ids[0], list) else np.concatenate(ids)
    t0 = time.perf_counter()
    with Index.build(
        path,
        flats,
        doc_ids=all_ids,
        doc_lengths=lens,
        nbits=nbits,
        codec=codec,
        seed=seed,
        overwrite=overwrite,
        progress=False,
        keep_originals=keep_originals,
        metadata=extras.get("metadata"),
        texts=extras.get("texts"),
    ) as index:
        return {
            "n_docs": index.n_docs,
            "n_tokens": index.n_tokens,
            "disk_bytes": index.disk_bytes(),
            "uuid": index.manifest["uuid"],
            "id_type": index.manifest["id_type"],
            "seconds": round(time.perf_counter() - t0, 3),
            "host": os.uname().nodename,
            "manifest": load_manifest(path),  # the version cluster generation 0 names
        }


def _codebook_sha256(codec: ResidualCodec) -> str:
    h = hashlib.sha256()
    for a in (codec.centroids, codec.cutoffs, codec.weights):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def build_sharded(
    path: str | os.PathLike,
    doc_embeddings=None,
    doc_ids: Sequence | None = None,
    *,
    n_shards: int,
    nbits: int = 2,
    doc_lengths=None,
    parts: Iterable[CorpusPart] | None = None,
    n_centroids: int | None = None,
    kmeans_iters: int = 4,
    seed: int = 0,
    shard_paths: Sequence[str | os.PathLike] | None = None,
    nodes: Sequence[str | None] | None = None,
    cpus_per_task: int = 1,
    train_cpus: int | None = None,
    overwrite: bool = False,
    keep_originals: bool = False,
    metadata: Sequence[dict | None] | None = None,
    texts: Sequence[str | None] | None = None,
) -> dict:
    """Build a sharded index at ``path`` on the connected Ray cluster (:func:`connect` first); returns the
    cluster manifest it committed (``path/cluster.json``, :mod:`.manifest`).

    Documents: either ``doc_embeddings`` (+ ``doc_ids``, ``doc_lengths``) in any form :meth:`Index.build`
    takes, partitioned in this process and shipped as Ray objects, or ``parts``: :class:`CorpusPart` files
    partitioned by Ray tasks where they run. Each document goes to shard :func:`shard_of` ``(id)``, so
    later adds and deletes find it. The codebook (``n_centroids`` default: the build rule for the whole
    corpus's token count) is trained once on a sample drawn from every shard in proportion to its tokens;
    then one task per shard builds a normal index directory with it (:meth:`Index.build` ``codec=``).

    ``shard_paths``: where each shard goes (default ``path/<build id>-shard-NNNN``); ``nodes``: the IP of
    the node that must build (and later serve) each shard, for per-node disks. ``cpus_per_task``: the CPUs
    Ray reserves for each task and the thread cap inside it; ``train_cpus`` the same for the k-means task,
    which runs alone (default ``cpus_per_task``; more helps only on an idle node: docs/distributed.md).
    ``overwrite``: replace an existing sharded
    index at ``path`` (its shard directories inside ``path`` are removed after the new manifest commits).
    ``keep_originals``: every shard also stores its documents' float16 vectors for the full-precision rerank
    (:meth:`Index.build`); later adds to a shard follow it. ``metadata``, ``texts``: one JSON-able dict, one
    string (or ``None``) per document of ``doc_embeddings`` (not with ``parts``), stored with it in its shard for
    filtered and hybrid search, as :meth:`Index.build` stores them.
    """
    ray = _ray.require_ray()
    if not ray.is_initialized():
        raise RuntimeError("Ray is not connected: call colbert_index.distributed.connect() (or ray.init) first")
    if nbits not in (2, 4):
        raise ValueError(f"nbits must be 2 or 4, got {nbits!r}")
    if int(n_shards) < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    n_shards = int(n_shards)
    root = Path(path).absolute()  # Ray workers do not share the driver's working directory
    old = None
    if (root / CLUSTER_MANIFEST).is_file():
        if not overwrite:
            raise FileExistsError(f"{root / CLUSTER_MANIFEST} exists; pass overwrite=True to replace it")
        old = load_cluster_manifest(root)
    build_id = uuid.uuid4().hex
    if shard_paths is None:
        shard_paths = [f"{build_id[:8]}-shard-{s:04d}" for s in range(n_shards)]
    shard_paths = [str(p) for p in shard_paths]
    nodes = [None] * n_shards if nodes is None else list(nodes)
    if len(shard_paths) != n_shards or len(nodes) != n_shards:
        raise ValueError(f"shard_paths and nodes need one entry per shard ({n_shards})")
    dirs = [shard_path(root, {"path": p}) for p in shard_paths]
    for d in dirs:
        if d.exists() and not overwrite:
            raise FileExistsError(f"{d} exists; pass overwrite=True to replace it")

    t0 = time.perf_counter()
    opts = {"num_cpus": cpus_per_task, "runtime_env": _ray.thread_env(cpus_per_task)}
    if parts is not None:
        if doc_embeddings is not None or doc_ids is not None:
            raise ValueError("pass either doc_embeddings (+ doc_ids) or parts, not both")
        if metadata is not None or texts is not None:
            raise ValueError("metadata and texts go with doc_embeddings, not with parts")
        extras = [{}] * n_shards
        parts = list(parts)
        if not parts:
            raise ValueError("parts is empty")
        n_part_docs = [len(np.load(p.doclens, mmap_mode="r")) for p in parts]
        starts = np.concatenate([[0], np.cumsum(n_part_docs)])
        task = _ray.remote(_partition_part).options(num_returns=n_shards + 1, **opts)
        outs = [task.remote(p, int(starts[i]), n_shards) for i, p in enumerate(parts)]
        refs = [[o[s] for o in outs] for s in range(n_shards)]
        counts = np.sum([np.asarray(c) for c in ray.get([o[-1] for o in outs])], axis=0)
    elif doc_embeddings is not None:
        refs, counts, extras = _partition_in_driver(
            doc_embeddings, doc_ids, doc_lengths, n_shards, None if metadata is None else list(metadata),
            None if texts is None else list(texts),
        )  # fmt: skip
    else:
        raise ValueError("no documents: pass doc_embeddings or parts")
    empty = [s for s in range(n_shards) if counts[s][0] == 0]
    if empty:
        raise ValueError(
            f"shard(s) {empty} receive no documents ({int(counts[:, 0].sum())} documents over {n_shards} shards); "
            "use fewer shards"
        )
    t_partition = time.perf_counter() - t0

    n_tokens = int(counts[:, 1].sum())
    dim = int(ray.get(_ray.remote(_sample_rows).options(**opts).remote(1, seed, *refs[0][:1])).shape[1])
    check_nbits_dim(nbits, dim)
    K = default_n_centroids(n_tokens, dim, nbits) if n_centroids is None else int(n_centroids)
    if not 1 <= K <= n_tokens:
        raise ValueError(f"n_centroids must be in [1, n_tokens={n_tokens}], got {K}")
    n_train = min(n_tokens, K * _KMEANS_POINTS_PER_CENTROID)
    n_sample = min(n_tokens, n_train + _HELDOUT_TOKENS)
    quota = np.floor(n_sample * counts[:, 1] / n_tokens).astype(np.int64)
    quota[: n_sample - int(quota.sum())] += 1  # the remainder, so the quotas add up
    quota = np.minimum(quota, counts[:, 1])
    sampler = _ray.remote(_sample_rows).options(**opts)
    samples = [sampler.remote(int(quota[s]), seed + s, *refs[s]) for s in range(n_shards)]
    train_cpus = cpus_per_task if train_cpus is None else int(train_cpus)
    train_opts = {"num_cpus": train_cpus, "runtime_env": _ray.thread_env(train_cpus)}
    codec, t_kmeans = ray.get(
        _ray.remote(_train_codec)
        .options(**train_opts)
        .remote(min(n_train, int(quota.sum())), K, nbits, kmeans_iters, seed, *samples)
    )
    t_train = time.perf_counter() - t0 - t_partition

    codec_ref = ray.put(codec)
    builds = [
        _ray.remote(_build_shard)
        .options(resources=_ray.node_resource(nodes[s]), **opts)
        .remote(str(dirs[s]), codec_ref, nbits, seed, overwrite, bool(keep_originals), extras[s], *refs[s])
        for s in range(n_shards)
    ]
    summaries = ray.get(builds)
    id_types = {s["id_type"] for s in summaries}
    if len(id_types) != 1:
        raise ValueError(
            f"shards ended up with different id types {sorted(id_types)}: ids must be all ints or all strings"
        )
    manifest = {
        "uuid": build_id,
        "generation": 0,
        "n_shards": n_shards,
        "hash": HASH_NAME,
        "dim": dim,
        "nbits": nbits,
        "n_centroids": K,
        "id_type": id_types.pop(),
        "normalize": codec.normalize,
        "keep_originals": bool(keep_originals),
        "codebook_sha256": _codebook_sha256(codec),
        "n_docs": int(counts[:, 0].sum()),
        "n_tokens": n_tokens,
        "shards": [
            {
                "shard": s,
                "path": shard_paths[s],
                "node": nodes[s],
                **{k: v for k, v in summaries[s].items() if k != "id_type"},
            }
            for s in range(n_shards)
        ],
        "build": {
            "seed": seed,
            "kmeans_iters": kmeans_iters,
            "sample_tokens": int(quota.sum()),
            "partition_seconds": round(t_partition, 3),
            "train_seconds": round(t_train, 3),
            "kmeans_seconds": round(t_kmeans, 3),
            "train_cpus": train_cpus,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    }
    write_cluster_manifest(root, manifest)
    if old is not None:  # the replaced build's shard directories inside root (others are the owner's business)
        keep = {str(d.resolve()) for d in dirs}
        for e in old["shards"]:
            d = shard_path(root, e)
            if not Path(e["path"]).is_absolute() and str(d.resolve()) not in keep:
                shutil.rmtree(d, ignore_errors=True)
    return manifest
