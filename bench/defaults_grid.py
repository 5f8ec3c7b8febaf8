"""Recall@10 against the index's own ``search_exact`` at default parameters, over a family of corpora.

Every variant of ``colbert_index.datasets.family`` (synthetic corpora that differ in topic count and spread,
document coherence, document lengths, query length and noise, dim 48/64/128; those marked held out are kept apart
from the tuning) at the sizes asked, plus the real-text prose corpus of bench/realtext.py (30,000 passages, MiniLM
dim 128, 300 queries; read from its cached embeddings in bench/data/).

For each index, in one process and one thread, the search runs at default parameters (``SearchParams()``: PLAID's
``nprobe`` and ``ndocs`` by ``k`` and index size, the agreement probe beyond 62,500 documents, stages 2-4 sized per
query) and, query by query beside it, as PLAID's stages at the sizes the default starts from (``ndocs`` set, which
turns the sizing off, and ``agree_cells`` 0). Reported: recall@10 vs
``search_exact`` (every query) and p50 of both, and the candidates the default kept (``explain=True``).

Built indexes, queries and exact top-10s are cached under bench/indexes/defaults_grid/ (one directory per
variant and size).

Usage::

    python bench/defaults_grid.py --sizes 10000                      # every variant at 10k, and prose (~20 min)
    python bench/defaults_grid.py --sizes 100000 --variants base mixed --no-prose
    python bench/defaults_grid.py --quick                            # 2,000 documents, 3 variants, seconds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import BENCH_DIR, environment, log, recall, source_hash, split_flat, stage_figures, thread_count

from colbert_index import Index, SearchParams
from colbert_index.datasets.family import VARIANTS

CACHE = BENCH_DIR / "indexes" / "defaults_grid"
PROSE = BENCH_DIR / "data" / "realtext_prose_minilm_n30000_q300_s0.npz"


def prepare_synthetic(name: str, n_docs: int, n_queries: int, seed: int) -> tuple[Index, list, np.ndarray, dict]:
    """The index of a family variant (built once, cached), its queries and ``search_exact``'s top 10."""
    variant = VARIANTS[name]
    path = CACHE / f"{name}_n{n_docs}_q{n_queries}_s{seed}"
    info: dict = {"corpus": name, "held_out": variant.held_out, "what": variant.what, "dim": variant.dim}
    if not (path / "queries.npy").exists():
        stream = variant.stream(n_docs, n_queries, seed)
        t0 = time.perf_counter()
        Index.build(path / "index", stream.batches(2048), nbits=2, seed=seed, overwrite=True, progress=False)
        (path / "build_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
        np.save(path / "queries.npy", stream.queries())
    index = Index.open(path / "index")
    queries = list(np.load(path / "queries.npy"))
    info["build_s"] = float((path / "build_s.txt").read_text())
    return index, queries, exact_top10(index, queries, path), info


def prepare_prose() -> tuple[Index, list, np.ndarray, dict]:
    """The real-text prose corpus (bench/realtext.py --corpus prose --n-docs 30000 --n-queries 300)."""
    if not PROSE.exists():
        raise SystemExit(f"{PROSE} is missing: python bench/realtext.py --corpus prose --n-docs 30000 --n-queries 300")
    path = CACHE / "prose_n30000_q300_s0"
    z = np.load(PROSE)
    queries = split_flat(z["q_tokens"], z["q_lengths"])
    if not (path / "build_s.txt").exists():
        docs = split_flat(z["tokens"], z["lengths"])
        t0 = time.perf_counter()
        Index.build(path / "index", docs, nbits=2, overwrite=True, progress=False)
        path.mkdir(parents=True, exist_ok=True)
        (path / "build_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    index = Index.open(path / "index")
    info = {"corpus": "prose", "held_out": False, "what": "real text: prose passages, MiniLM", "dim": index.dim}
    info["build_s"] = float((path / "build_s.txt").read_text())
    return index, queries, exact_top10(index, queries, path), info


def exact_top10(index: Index, queries: list, path: Path) -> np.ndarray:
    """``search_exact``'s top 10 of every query (cached next to the index)."""
    cached = path / "exact10.npy"
    if cached.exists():
        return np.load(cached)
    t0 = time.perf_counter()
    ids = index.search_exact(queries, k=10).ids
    log(f"{path.name}: search_exact of {len(queries)} queries in {time.perf_counter() - t0:.1f} s")
    np.save(cached, ids)
    return ids


def measure(index: Index, queries: list, exact: np.ndarray, rounds: int) -> dict:
    """The default search (sized per query), one thread, and beside it, query by query in the same passes, PLAID's
    stages at the sizes it starts from (``ndocs`` set to its default, which turns the sizing off, and no agreement
    probe): recall vs ``search_exact``, p50 over ``rounds`` passes of each and their ratio, the candidates the
    default kept."""
    fixed = SearchParams(ndocs=SearchParams.default_ndocs(10, index.n_docs), agree_cells=0)
    for q in queries[:3]:  # compile, warm the caches
        index.search(q, k=10)
        index.search(q, k=10, params=fixed)
    times: dict = {"sized": [], "fixed": []}
    found: dict = {"sized": [], "fixed": []}
    for r in range(rounds):
        for q in queries:
            for name, params in (("sized", None), ("fixed", fixed)):
                t0 = time.perf_counter()
                res = index.search(q, k=10, params=params)
                times[name].append(time.perf_counter() - t0)
                if r == 0:
                    found[name].append(res.ids[0])
    explained = index.search(queries, k=10, explain=True).explain
    stages = stage_figures(explained)
    p50 = {name: float(np.median(t) * 1e3) for name, t in times.items()}
    return {
        "n_docs": index.n_docs,
        "n_tokens": index.n_tokens,
        "K": index.n_centroids,
        "n_queries": len(queries),
        "q_len": int(np.median([len(q) for q in queries])),
        "recall10_vs_exact": recall(np.stack(found["sized"]), exact, 10),
        "recall10_vs_exact_fixed": recall(np.stack(found["fixed"]), exact, 10),
        "p50_ms": round(p50["sized"], 3),
        "p50_ms_fixed": round(p50["fixed"], 3),
        "p50_ratio": round(p50["sized"] / p50["fixed"], 3),
        "params": {name: explained[0]["params"][name] for name in ("nprobe", "agree_cells", "ndocs", "n_exact")},
        "default_ndocs": fixed.ndocs,
        "mean_ndocs": round(float(np.mean([e["params"]["ndocs"] for e in explained])), 1),
        "mean_n_exact": round(float(np.mean([e["params"]["n_exact"] for e in explained])), 1),
        "mean_candidates": {s: f["mean_candidates"] for s, f in stages.items() if "mean_candidates" in f},
    }


def render(rows: list[dict]) -> str:
    """The markdown table of docs/benchmarks.md."""
    out = [
        "| corpus | held out | dim | docs | q_len | recall@10 vs exact: sized (fixed) | p50 ms: sized (fixed) | ratio "
        "| mean ndocs / n_exact (fixed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fixed = f"{r['default_ndocs']} / {SearchParams.n_exact(10, r['default_ndocs'])}"
        out.append(
            f"| {r['corpus']} | {'yes' if r['held_out'] else ''} | {r['dim']} | {r['n_docs']:,} | {r['q_len']} "
            f"| {r['recall10_vs_exact']:.3f} ({r['recall10_vs_exact_fixed']:.3f}) "
            f"| {r['p50_ms']:.2f} ({r['p50_ms_fixed']:.2f}) | {r['p50_ratio']:.2f} "
            f"| {r['mean_ndocs']:.0f} / {r['mean_n_exact']:.1f} ({fixed}) |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000], help="documents per synthetic corpus")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--n-queries", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3, help="timed passes over the queries")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-prose", dest="prose", action="store_false", help="leave out the real-text corpus")
    p.add_argument("--quick", action="store_true", help="2,000 documents, 3 variants, 20 queries, no prose")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "defaults_grid.json")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.variants, args.n_queries, args.rounds = [2000], ["base", "short48", "mixed"], 20, 1
        args.prose = False
    sources = source_hash()
    rows = []
    jobs = [(name, n) for n in args.sizes for name in args.variants] + ([("prose", 30_000)] if args.prose else [])
    for name, n in jobs:
        log(f"{name} n={n}: prepare")  # builds and search_exact on every thread, the search measured on one
        index, queries, exact, info = (
            prepare_prose() if name == "prose" else prepare_synthetic(name, n, args.n_queries, args.seed)
        )
        with index, thread_count(1):
            row = {**info, **measure(index, queries, exact, args.rounds)}
        rows.append(row)
        log(json.dumps(row))
    result = {"env": environment(sources), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(render(rows))
    log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
