"""Capacity planner: index size, shard count and memory per node for a corpus, from the on-disk layout.

Every term comes from the files :meth:`Index.build` writes (docs/format.md), one shard being one
index with a copy of the shared codebook:

* codes: ``uint16`` per token while K <= 65536, else ``uint32`` (``ResidualCodec.code_dtype``);
* residuals: ``dim * nbits / 8`` bytes per token (packed buckets);
* doclens: ``int32`` per document; ids: ``int64`` per document (``doc_ids.npy``; a shard's ids are not a
  contiguous range, so they are always stored), or UTF-8 bytes plus an ``int64`` offset for string ids;
* codebook, per shard: ``int8 [K, dim]`` centroids, ``float32 [K]`` scales, ``float32 [dim, 2^nbits - 1]``
  cutoffs and ``float32 [dim, 2^nbits]`` weights;
* each ``.npy`` has a 128-byte header; the manifest is a few KB of JSON.

The IVF is not stored: :meth:`Index.open` derives it in RAM (``int64 [K + 1]`` offsets and one ``int32``
per distinct (centroid, document) pair, at most one per token), with ``int64 [n_docs + 1]`` token offsets
and the ``float32 [K, dim]`` dequantised centroids. Memory per node = the memory-mapped files (which must
stay in the page cache for latency) + those arrays + a fixed per-actor overhead (Python, Numba, Ray worker).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

from colbert_index.codec import check_nbits_dim, default_n_centroids

NPY_HEADER = 128
MANIFEST_BYTES = 4096  # the JSON manifest of a one-segment index: ~2-3 KB measured; rounded up
NPY_FILES = 8  # codebook: 4; segment: doclens, codes, residuals, doc_ids
GIB = 1 << 30


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` works out; byte figures are exact for the layout, the rest is stated assumption."""

    n_passages: int
    tokens_per_passage: float
    n_tokens: int
    dim: int
    nbits: int
    n_centroids: int
    code_bytes: int  # per token
    residual_bytes: int  # per token
    doc_bytes: float  # per document: doclens + ids
    codebook_bytes: int  # per shard, on disk
    bytes_per_token: float  # on disk, doc terms spread over tokens, codebook excluded
    index_bytes: int  # on disk, all shards, codebook copies included
    n_shards: int
    shard_disk_bytes: int
    ram_per_node: int  # expected resident memory of one node holding one shard
    node_memory: int
    ram_fraction: float
    ivf_pairs_per_token: float
    actor_overhead: int
    build_spill_bytes: int  # per shard, temporary float16 spill during its build
    kmeans_sample_bytes: int  # float32 sample the codebook is trained on (one task)

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        """A short human-readable report."""
        g = lambda b: f"{b / GIB:,.2f} GiB"  # noqa: E731
        return "\n".join(
            [
                f"corpus: {self.n_passages:,} passages x {self.tokens_per_passage:g} tokens = "
                f"{self.n_tokens:,} tokens, "
                f"dim {self.dim}, {self.nbits}-bit",
                f"codebook: K = {self.n_centroids:,} ({g(self.codebook_bytes)} per shard on disk), "
                f"codes uint{8 * self.code_bytes}",
                f"bytes/token on disk: {self.code_bytes} code + {self.residual_bytes} residual + "
                f"{self.doc_bytes / self.tokens_per_passage:.3f} doclens/ids = {self.bytes_per_token:.3f}",
                f"index on disk: {g(self.index_bytes)} in {self.n_shards} shard(s) of {g(self.shard_disk_bytes)}",
                f"memory per node (one shard each): {g(self.ram_per_node)} of {g(self.node_memory)} "
                f"(budget {self.ram_fraction:.0%}; IVF at {self.ivf_pairs_per_token:g} pair/token, "
                f"{g(self.actor_overhead)} actor overhead)",
                f"build: {g(self.build_spill_bytes)} temporary spill per shard; "
                f"k-means sample {g(self.kmeans_sample_bytes)}",
            ]
        )


def layout_bytes(n_docs: int, n_tokens: int, dim: int, nbits: int, n_centroids: int, id_bytes: float = 8) -> int:
    """Bytes on disk of one index with one segment (what :meth:`Index.disk_bytes` reports for a fresh
    build, to within the manifest's size): the terms listed in the module docstring."""
    code = 2 if n_centroids <= 65536 else 4
    codebook = n_centroids * dim + 4 * n_centroids + 4 * dim * (2**nbits - 1) + 4 * dim * 2**nbits
    per_token = code + dim * nbits // 8
    files = NPY_FILES + (1 if id_bytes != 8 else 0)  # string ids: bytes + offsets
    return int(codebook + n_tokens * per_token + n_docs * (4 + id_bytes) + files * NPY_HEADER + MANIFEST_BYTES)


def resident_bytes(
    n_docs: int,
    n_tokens: int,
    dim: int,
    nbits: int,
    n_centroids: int,
    id_bytes: float = 8,
    ivf_pairs_per_token: float = 1.0,
) -> int:
    """Expected memory of one opened shard: its files (page cache) plus the arrays :meth:`Index.open`
    derives (IVF, token offsets, float32 centroids)."""
    derived = 8 * (n_centroids + 1) + 4 * ivf_pairs_per_token * n_tokens + 8 * (n_docs + 1) + 4 * n_centroids * dim
    return int(layout_bytes(n_docs, n_tokens, dim, nbits, n_centroids, id_bytes) + derived)


def plan(
    n_passages: int,
    dim: int,
    nbits: int,
    node_memory: int,
    *,
    tokens_per_passage: float = 60.0,
    n_centroids: int | None = None,
    id_bytes: float = 8,
    ram_fraction: float = 0.7,
    ivf_pairs_per_token: float = 1.0,
    actor_overhead: int = GIB // 2,
) -> Plan:
    """Size a sharded index: how big, how many shards (one per node), how much memory each node needs.

    Args:
        n_passages, tokens_per_passage: corpus size (default 60 tokens a passage, what the synthetic
            1M-passage corpus of bench/scale.py averages; MS MARCO passages under ColBERTv2 are of that order).
        dim, nbits: embedding dimension and residual bits (2 or 4).
        node_memory: bytes of RAM per node; a shard may use ``ram_fraction`` of it (the rest: OS, Ray's
            object store, query buffers).
        n_centroids: K; default the build rule for the whole corpus (one codebook shared by all shards).
        id_bytes: bytes per document id (8: int64; for string ids, their mean UTF-8 length + 8).
        ivf_pairs_per_token: distinct (centroid, document) pairs per token in the IVF; 1.0 is the upper
            bound (tests/test_distributed.py measures ~0.5-0.6 on the synthetic corpus).
        actor_overhead: fixed memory of a shard actor (Python, Numba, Ray worker), ~0.5 GiB.
    """
    check_nbits_dim(nbits, dim)
    if n_passages < 1 or tokens_per_passage <= 0 or node_memory <= 0 or not 0 < ram_fraction <= 1:
        raise ValueError("n_passages, tokens_per_passage, node_memory must be positive and ram_fraction in (0, 1]")
    n_tokens = int(round(n_passages * tokens_per_passage))
    K = default_n_centroids(n_tokens, dim, nbits) if n_centroids is None else int(n_centroids)
    code = 2 if K <= 65536 else 4
    residual = dim * nbits // 8
    doc = 4 + id_bytes
    codebook = layout_bytes(0, 0, dim, nbits, K, id_bytes) - NPY_FILES * NPY_HEADER - MANIFEST_BYTES
    budget = node_memory * ram_fraction - actor_overhead
    fixed = resident_bytes(0, 0, dim, nbits, K, id_bytes, ivf_pairs_per_token)  # per shard, whatever its size
    per_token_ram = code + residual + 4 * ivf_pairs_per_token + (doc + 8) / tokens_per_passage
    if budget <= fixed:
        raise ValueError(
            f"a node of {node_memory / GIB:.1f} GiB cannot hold even the codebook and IVF offsets of K={K} "
            f"({fixed / GIB:.2f} GiB at ram_fraction={ram_fraction}); use bigger nodes or a smaller n_centroids"
        )
    n_shards = max(1, math.ceil(n_tokens * per_token_ram / (budget - fixed)))
    shard_docs, shard_tokens = math.ceil(n_passages / n_shards), math.ceil(n_tokens / n_shards)
    shard_disk = layout_bytes(shard_docs, shard_tokens, dim, nbits, K, id_bytes)
    ram = resident_bytes(shard_docs, shard_tokens, dim, nbits, K, id_bytes, ivf_pairs_per_token) + actor_overhead
    return Plan(
        n_passages=n_passages,
        tokens_per_passage=tokens_per_passage,
        n_tokens=n_tokens,
        dim=dim,
        nbits=nbits,
        n_centroids=K,
        code_bytes=code,
        residual_bytes=residual,
        doc_bytes=doc,
        codebook_bytes=codebook,
        bytes_per_token=code + residual + doc / tokens_per_passage,
        index_bytes=layout_bytes(n_passages, n_tokens, dim, nbits, K, id_bytes)
        + (n_shards - 1) * (codebook + NPY_FILES * NPY_HEADER + MANIFEST_BYTES),
        n_shards=n_shards,
        shard_disk_bytes=shard_disk,
        ram_per_node=ram,
        node_memory=int(node_memory),
        ram_fraction=ram_fraction,
        ivf_pairs_per_token=ivf_pairs_per_token,
        actor_overhead=actor_overhead,
        build_spill_bytes=2 * dim * shard_tokens,
        kmeans_sample_bytes=4 * dim * min(n_tokens, 64 * K + (1 << 16)),
    )


def parse_size(text: str) -> int:
    """``"64G"``, ``"512M"``, ``"1.5T"`` or a byte count -> bytes (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(float(t))


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passages", type=float, nargs="+", required=True, help="corpus sizes, e.g. 1e7 1e8 1e9")
    p.add_argument("--dim", type=int, nargs="+", default=[128], help="embedding dims, e.g. 48 64 128")
    p.add_argument("--nbits", type=int, nargs="+", default=[2], choices=(2, 4))
    p.add_argument("--node-memory", default="64G", help="RAM per node (e.g. 64G)")
    p.add_argument("--tokens-per-passage", type=float, default=60.0)
    p.add_argument("--ram-fraction", type=float, default=0.7)
    p.add_argument("--ivf-pairs-per-token", type=float, default=1.0)
    p.add_argument("--markdown", action="store_true", help="one markdown table instead of reports")


def run_plan(args: argparse.Namespace) -> str:
    """The text ``--plan`` / ``python -m colbert_index.distributed plan`` prints."""
    mem = parse_size(args.node_memory)
    plans = [
        plan(
            int(n),
            d,
            b,
            mem,
            tokens_per_passage=args.tokens_per_passage,
            ram_fraction=args.ram_fraction,
            ivf_pairs_per_token=args.ivf_pairs_per_token,
        )
        for n in args.passages
        for d in args.dim
        for b in args.nbits
    ]
    if not args.markdown:
        return "\n\n".join(p.format() for p in plans)
    rows = [
        "| passages | dim | nbits | tokens | K | B/token | index on disk | shards | disk/shard | RAM/node |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in plans:
        rows.append(
            f"| {p.n_passages:,} | {p.dim} | {p.nbits} | {p.n_tokens / 1e9:.2f}B | {p.n_centroids:,} | "
            f"{p.bytes_per_token:.2f} | {p.index_bytes / GIB:,.1f} GiB | {p.n_shards} | "
            f"{p.shard_disk_bytes / GIB:,.1f} GiB | {p.ram_per_node / GIB:,.1f} GiB |"
        )
    return "\n".join(rows)
