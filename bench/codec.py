"""The 2-bit codec's ceiling: recall@10 of brute-force MaxSim over decompressed tokens against the raw exact top 10.

Prototypes of residual quantisers side by side on a corpus written by ``bench/peers/export_corpus.py`` (embeddings,
doclens, queries, raw exact ``gt_ids``), in numpy and faiss, before any of them reaches the engine:

* ``quantile``: the engine's scalar codec of the time it was written (per dimension, bucket cutoffs at the quantiles
  of held-out residuals, weights at the bucket medians);
* ``lloyd``: per dimension, cutoffs and weights of the 1-D Lloyd-Max quantiser (k-means in one dimension: weights at
  the bucket means, cutoffs halfway between), started from the quantiles;
* ``pq_nibble``: the same with one 16-word codebook per nibble (2 dimensions at 2 bits);
* ``pq``: each byte of the packed residual is one code of a 256-word codebook over the dimensions that byte covers
  (4 at 2 bits): a product quantiser with ``dim/4`` sub-spaces trained on the held-out residuals (faiss k-means);
  the bytes per token are those of the scalar codec;

Each variant's recall is measured one of two ways. ``--eval pool`` (fast): every query ranks only the tokens of
its raw top-``--pool`` documents by MaxSim over their decompressed tokens (a document outside the raw top
``--pool`` cannot enter; an upper bound, close when ``--pool`` is 10x k). ``--eval full``: brute force over every
document of the corpus, as :meth:`colbert_index.Index.search_exact` runs it.

Usage::

    python bench/codec.py --data bench/data/peers_n10000_d64 --variants quantile lloyd pq --eval full
    python bench/codec.py --data bench/data/peers_realtext_prose_n30000_q300_s0 --K 8192 16384 --eval pool

Centroids and assignments are cached under ``--cache`` (default ``/tmp/codec_bench``), keyed by corpus, K,
sample size and iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from colbert_index.backend import get_backend
from colbert_index.codec import default_n_centroids, dequantize_centroids, quantize_centroids
from colbert_index.search import brute_force

HELDOUT = 1 << 16


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ corpus
def load(data: Path) -> dict:
    emb = np.load(data / "embeddings.npy", mmap_mode="r")
    doclens = np.load(data / "doclens.npy").astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(doclens)])
    return {
        "name": data.name,
        "emb": emb,
        "offsets": offsets,
        "queries": np.load(data / "queries.npy").astype(np.float32),
        "gt": np.load(data / "gt_ids.npy"),
    }


def rows(emb: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(emb[np.sort(idx)], dtype=np.float32)


# ------------------------------------------------------------------------------------------------ centroids
def centroids(c: dict, K: int, per_centroid: int, iters: int, seed: int, cache: Path) -> np.ndarray:
    """Spherical faiss k-means on ``K * per_centroid`` sampled tokens, rounded to the stored int8 form."""
    f = cache / f"{c['name']}_K{K}_p{per_centroid}_i{iters}_s{seed}_centroids.npy"
    if f.exists():
        return np.load(f)
    n = len(c["emb"])
    rng = np.random.default_rng(seed)
    sample = rows(c["emb"], rng.choice(n, min(n, K * per_centroid), replace=False))
    t0 = time.perf_counter()
    km = faiss.Clustering(sample.shape[1], K)
    km.niter, km.seed, km.spherical = iters, seed, True
    km.max_points_per_centroid = len(sample) // K + 1
    km.train(sample, faiss.IndexFlatIP(sample.shape[1]))
    cents = dequantize_centroids(*quantize_centroids(faiss.vector_to_array(km.centroids).reshape(K, -1)))
    log(f"k-means K={K} on {len(sample)} tokens, {iters} iterations: {time.perf_counter() - t0:.1f} s")
    cache.mkdir(parents=True, exist_ok=True)
    np.save(f, cents)
    return cents


def assign(x: np.ndarray, cents: np.ndarray, m: int = 1) -> np.ndarray:
    """The ``m`` nearest centroids of each row, nearest first (``[n, m]``; ``[n]`` when ``m == 1``)."""
    index = faiss.IndexFlatIP(cents.shape[1])
    index.add(cents)
    out = np.empty((len(x), m), dtype=np.int64)
    for lo in range(0, len(x), 1 << 17):
        out[lo : lo + (1 << 17)] = index.search(x[lo : lo + (1 << 17)], m)[1]
    return out[:, 0] if m == 1 else out


# ------------------------------------------------------------------------------------------------ quantisers
class Scalar:
    """Per-dimension cutoffs ``[dim, L-1]`` and weights ``[dim, L]``."""

    def __init__(self, cutoffs: np.ndarray, weights: np.ndarray):
        self.cutoffs, self.weights = cutoffs.astype(np.float32), weights.astype(np.float32)

    def roundtrip(self, r: np.ndarray) -> np.ndarray:
        b = np.zeros(r.shape, dtype=np.int64)
        for j in range(self.cutoffs.shape[1]):
            b += r >= self.cutoffs[:, j]
        return np.take_along_axis(self.weights, b.T, axis=1).T


def quantile_scalar(res: np.ndarray, nbits: int) -> Scalar:
    levels = 2**nbits
    cut = np.quantile(res, np.arange(1, levels) / levels, axis=0).T
    w = np.quantile(res, (np.arange(levels) + 0.5) / levels, axis=0).T
    return Scalar(cut, w)


def lloyd_scalar(res: np.ndarray, nbits: int, iters: int = 30, pinned: bool = False) -> Scalar:
    """1-D Lloyd-Max per dimension (minimum squared error), from the quantile codec; ``pinned``: the outermost
    weights stay at the quantiles ``1 / 2**(nbits+1)`` and ``1 - 1 / 2**(nbits+1)`` (only the others move)."""
    q = quantile_scalar(res, nbits)
    w = q.weights.astype(np.float64)
    outer = w[:, [0, -1]].copy()
    for _ in range(iters):
        cut = (w[:, 1:] + w[:, :-1]) / 2
        b = np.zeros(res.shape, dtype=np.int64)
        for j in range(cut.shape[1]):
            b += res >= cut[:, j]
        for lvl in range(w.shape[1]):
            m = b == lvl
            cnt = m.sum(axis=0)
            s = np.where(m, res, 0).sum(axis=0)
            w[:, lvl] = np.where(cnt > 0, s / np.maximum(cnt, 1), w[:, lvl])
        if pinned:
            w[:, [0, -1]] = outer
    return Scalar((w[:, 1:] + w[:, :-1]) / 2, w)


class PQ:
    """One ``2**sub_bits``-word codebook per group of ``sub_bits // nbits`` dimensions: 8 bits (one word per
    byte, 256 words of 4 dimensions at 2 bits) or 4 (one per nibble: 16 words of 2 dimensions)."""

    def __init__(self, res: np.ndarray, nbits: int, sub_bits: int = 8, iters: int = 25, seed: int = 0):
        dim = res.shape[1]
        self.pq = faiss.ProductQuantizer(dim, dim * nbits // sub_bits, sub_bits)
        self.pq.cp.niter, self.pq.cp.seed = iters, seed
        self.pq.train(np.ascontiguousarray(res, dtype=np.float32))

    def roundtrip(self, r: np.ndarray) -> np.ndarray:
        r = np.ascontiguousarray(r, dtype=np.float32)
        return self.pq.decode(self.pq.compute_codes(r))


# ------------------------------------------------------------------------------------------------ evaluation
def decompress(x: np.ndarray, cents: np.ndarray, codes: np.ndarray, quant) -> np.ndarray:
    """Round trip of ``x``; with ``codes [n, m]``, each token takes the one of its ``m`` candidate centroids whose
    decompressed token is nearest in angle (the codes stay those of the scalar codec's bytes)."""
    codes = codes.reshape(len(codes), -1)
    best, best_cos = None, None
    for j in range(codes.shape[1]):
        out = cents[codes[:, j]] + quant.roundtrip(x - cents[codes[:, j]])
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        cos = np.einsum("nd,nd->n", out, x)
        if best is None:
            best, best_cos = out, cos
        else:
            better = cos > best_cos
            best[better], best_cos[better] = out[better], cos[better]
    return best.astype(np.float32)


def recall(found: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(g[:k])) / k for f, g in zip(found, gt)]))


class Pool:
    """The tokens of every query's raw top-``pool`` documents (assigned once per centroid set)."""

    def __init__(self, c: dict, pool: int):
        self.c, self.docs = c, np.unique(c["gt"][:, :pool])
        off = c["offsets"]
        self.tok = np.concatenate([np.arange(off[d], off[d + 1]) for d in self.docs])
        self.x = np.ascontiguousarray(c["emb"][self.tok], dtype=np.float32)  # tok is sorted: docs ascending
        lens = off[self.docs + 1] - off[self.docs]
        self.local = np.concatenate([[0], np.cumsum(lens)])
        self.pos = {int(d): i for i, d in enumerate(self.docs)}
        self.pool = pool

    def evaluate(self, cents, codes, quant) -> float:
        xh = decompress(self.x, cents, codes, quant)
        found = []
        for q, g in zip(self.c["queries"], self.c["gt"]):
            ds = g[: self.pool]
            s = np.empty(len(ds), dtype=np.float32)
            for i, d in enumerate(ds):
                p = self.pos[int(d)]
                s[i] = (q @ xh[self.local[p] : self.local[p + 1]].T).max(axis=1).sum()
            found.append(ds[np.argsort(-s, kind="stable")[:10]])
        return recall(np.array(found), self.c["gt"])


def evaluate_full(c: dict, cents, quant, codes_cache: Path, m: int) -> float:
    emb, backend = c["emb"], get_backend("numba")
    codes = np.load(codes_cache) if codes_cache.exists() else None
    if codes is None or codes.shape[1] < m:
        codes = np.empty((len(emb), m), dtype=np.int64)
        for lo in range(0, len(emb), 1 << 18):
            x = np.ascontiguousarray(emb[lo : lo + (1 << 18)], dtype=np.float32)
            codes[lo : lo + (1 << 18)] = assign(x, cents, m).reshape(len(x), m)
        np.save(codes_cache, codes)
    codes = codes[:, :m]

    def chunk(lo: int, hi: int) -> np.ndarray:
        return decompress(np.ascontiguousarray(emb[lo:hi], dtype=np.float32), cents, codes[lo:hi], quant)

    best = brute_force(list(c["queries"]), c["offsets"], chunk, 10, backend)
    return recall(np.stack([s for _, s in best]), c["gt"])


def engine(c: dict, data: Path, out: Path, nbits: int, seed: int) -> dict:
    """Build the engine's index of the corpus (this checkout's codec) and measure ``search_exact``'s recall@10
    (the ceiling) and the default search's, both against the raw exact top 10."""
    from colbert_index import Index

    emb, off = c["emb"], c["offsets"]
    docs = (np.asarray(emb[off[i] : off[i + 1]], dtype=np.float32) for i in range(len(off) - 1))
    t0 = time.perf_counter()
    index = Index.build(out, docs, nbits=nbits, seed=seed, overwrite=True, progress=False)
    build_s = time.perf_counter() - t0
    queries = list(c["queries"])
    t0 = time.perf_counter()
    exact = index.search_exact(queries, k=10)
    exact_s = time.perf_counter() - t0
    found = index.search(queries, k=10)
    return {
        "corpus": c["name"], "variant": "engine", "nbits": nbits, "K": index.codec.n_centroids,
        "recall10": round(recall(np.asarray(exact.ids), c["gt"]), 4),
        "search_recall10": round(recall(np.asarray(found.ids), c["gt"]), 4),
        "bytes_per_token": round(index.disk_bytes() / len(emb), 4), "disk_bytes": index.disk_bytes(),
        "build_s": round(build_s, 1), "search_exact_s": round(exact_s, 1), "eval": "full (Index.search_exact)",
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--nbits", type=int, default=2)
    ap.add_argument("--K", type=int, nargs="*", default=None, help="centroid counts (default: the engine's rule)")
    ap.add_argument("--per-centroid", type=int, nargs="*", default=[64], help="k-means sample per centroid")
    ap.add_argument("--iters", type=int, nargs="*", default=[4], help="k-means iterations")
    ap.add_argument(
        "--variants",
        nargs="*",
        default=["quantile", "lloyd", "pq"],
        help="quantile | lloyd | pq | pq_nibble, each optionally +rM: the best of the M nearest centroids",
    )
    ap.add_argument("--eval", choices=("pool", "full"), default="pool")
    ap.add_argument("--pool", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/codec_bench"))
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per variant")
    ap.add_argument("--engine", type=Path, default=None, help="build the engine's index here and measure it instead")
    a = ap.parse_args(argv)
    c = load(a.data)
    git = ["git", "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, cwd=Path(__file__).parent, capture_output=True, text=True).stdout
    stamp = {"commit": commit.strip(), "host": platform.node(), "cpu_count": os.cpu_count()}
    if a.engine is not None:
        row = {**engine(c, a.data, a.engine, a.nbits, a.seed), **stamp}
        row["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log(json.dumps(row))
        if a.out:
            with a.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
        return
    n, dim = c["emb"].shape
    Ks = a.K or [default_n_centroids(n, dim, a.nbits)]
    pool = Pool(c, a.pool) if a.eval == "pool" else None
    rng = np.random.default_rng(a.seed + 1)
    held = rows(c["emb"], rng.choice(n, min(n, HELDOUT), replace=False))
    for K in Ks:
        for pc in a.per_centroid:
            for it in a.iters:
                cents = centroids(c, K, pc, it, a.seed, a.cache)
                res = held - cents[assign(held, cents)]
                mmax = max(int(v.split("+r")[1]) if "+r" in v else 1 for v in a.variants)
                pcodes = None
                if pool is not None:
                    f = a.cache / f"{c['name']}_K{K}_p{pc}_i{it}_pool{a.pool}_m{mmax}.npy"
                    pcodes = np.load(f) if f.exists() else assign(pool.x, cents, mmax).reshape(len(pool.x), mmax)
                    np.save(f, pcodes)
                for variant in a.variants:
                    v, m = variant.split("+r")[0], int(variant.split("+r")[1]) if "+r" in variant else 1
                    t0 = time.perf_counter()
                    if v == "quantile":
                        quant = quantile_scalar(res, a.nbits)
                    elif v == "lloyd":
                        quant = lloyd_scalar(res, a.nbits)
                    elif v == "lloyd_pinned":
                        quant = lloyd_scalar(res, a.nbits, pinned=True)
                    elif v == "pq":
                        quant = PQ(res, a.nbits, seed=a.seed)
                    elif v == "pq_nibble":
                        quant = PQ(res, a.nbits, sub_bits=4, seed=a.seed)
                    else:
                        raise SystemExit(f"unknown variant {v}")
                    fit_s = time.perf_counter() - t0
                    mse = float(np.mean(np.sum((res - quant.roundtrip(res)) ** 2, axis=1)))
                    if pool is not None:
                        r10 = pool.evaluate(cents, pcodes[:, :m], quant)
                    else:
                        cache = a.cache / f"{c['name']}_K{K}_p{pc}_i{it}_codes.npy"
                        r10 = evaluate_full(c, cents, quant, cache, m)
                    row = {
                        "corpus": c["name"], "K": K, "per_centroid": pc, "kmeans_iters": it, "variant": variant,
                        "nbits": a.nbits, "eval": a.eval if pool is None else f"pool{a.pool}",
                        "recall10": round(r10, 4), "residual_mse": round(mse, 6),
                        "residual_energy": round(float(np.mean(np.sum(res**2, axis=1))), 6),
                        "fit_s": round(fit_s, 2), **stamp,
                        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    }  # fmt: skip
                    log(json.dumps(row))
                    if a.out:
                        with a.out.open("a") as f:
                            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
