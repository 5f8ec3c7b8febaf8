"""Where a single query's time goes on the real-text corpus: each stage, and the Python around the kernels.

The prose corpus of bench/realtext.py (30,000 passages, MiniLM dim 128, 2 bits, 300 queries; its index cached by
bench/defaults_grid.py), one thread, k=10, default parameters. Each query runs alone through ``Index.search``,
garbage collection paused, in two shapes: as encoded (32 tokens, [MASK]-padded) and short (the first 12 tokens).

Every kernel of the index's backend (the namespace ``Index.search`` calls: stages 0-4, top-k, probe) is wrapped in
a timer, so a query's time splits into *kernel* (inside those calls) and *Python* (everything else: argument
checks, parameter resolution, stage bookkeeping, result assembly, the wrappers' own cost included, so the Python
share is, if anything, overstated). Per-stage milliseconds come from ``explain=True`` on a separate pass.

Usage::

    python bench/fixed_costs.py                 # ~1 minute once the prose index is cached
    python bench/fixed_costs.py --index PATH --queries Q.npy    # another index, queries [n, q_len, dim]
    python bench/fixed_costs.py --quick --out /tmp/bench-quick  # a 1,000-document synthetic index, seconds
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import numpy as np
from common import (
    BENCH_DIR,
    environment,
    gc_paused,
    log,
    others_load,
    source_hash,
    stage_figures,
    thread_count,
    wait_for_quiet,
)

from colbert_index import Index
from colbert_index.datasets.family import VARIANTS

SHORT = 12  # tokens of a short query


def timed_backend(index: Index) -> dict:
    """Wrap every callable of ``index.backend`` in a timer; returns the accumulator ``{"s": seconds, "calls": n}``."""
    acc = {"s": 0.0, "calls": 0}

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                acc["s"] += time.perf_counter() - t0
                acc["calls"] += 1

        return inner

    be = index.backend
    for name, fn in vars(be).items():
        if callable(fn):
            setattr(be, name, wrap(fn))
    return acc


def split(index: Index, queries: list, acc: dict, rounds: int) -> dict:
    """p50 of ``Index.search`` per query and its mean split into kernel and Python time."""
    for q in queries[:5]:
        index.search(q, k=10)
    total, kernel, calls = [], [], []
    with gc_paused():
        for _ in range(rounds):
            for q in queries:
                s0, c0 = acc["s"], acc["calls"]
                t0 = time.perf_counter()
                index.search(q, k=10)
                total.append(time.perf_counter() - t0)
                kernel.append(acc["s"] - s0)
                calls.append(acc["calls"] - c0)
    t, k = np.array(total) * 1e3, np.array(kernel) * 1e3
    return {
        "p50_ms": round(float(np.median(t)), 3),
        "mean_ms": round(float(t.mean()), 3),
        "mean_kernel_ms": round(float(k.mean()), 3),
        "mean_python_ms": round(float((t - k).mean()), 3),
        "python_share": round(float((t - k).sum() / t.sum()), 4),
        "kernel_calls_per_query": round(float(np.mean(calls)), 1),
    }


def stages(index: Index, queries: list) -> dict:
    """Median milliseconds and mean candidates of each stage (``explain=True``), each query alone."""
    return stage_figures([index.search(q, k=10, explain=True).explain[0] for q in queries])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, help="an index (default: the cached prose index of bench/defaults_grid.py)")
    p.add_argument("--queries", type=Path, help="queries .npy [n, q_len, dim] for --index")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a 1,000-document synthetic index built here, 20 queries")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="folder of the JSON result")
    args = p.parse_args(argv)
    sources = source_hash()
    name = "fixed_costs_quick" if args.quick else "fixed_costs_prose" if args.index is None else "fixed_costs"
    if args.quick:
        stream = VARIANTS["base"].stream(1000, 20, 0)
        path = args.out / "fixed_costs_quick_index"
        Index.build(path, stream.batches(1000), nbits=2, overwrite=True, progress=False)
        index, queries = Index.open(path), list(stream.queries())
    elif args.index is None:
        from defaults_grid import prepare_prose

        index, queries, _, _ = prepare_prose()
    else:
        index, queries = Index.open(args.index), list(np.load(args.queries))
    queries = [np.ascontiguousarray(q, dtype=np.float32) for q in queries]
    acc = timed_backend(index)
    row: dict = {"n_docs": index.n_docs, "dim": index.dim, "shapes": {}}
    with thread_count(1):
        row["waited_for_quiet_s"] = 0.0 if args.quick else wait_for_quiet(120)
        for shape_name, qs in (("as encoded", queries), (f"first {SHORT} tokens", [q[:SHORT] for q in queries])):
            load: dict = {}
            with others_load(load):
                shape = {"q_len": int(np.median([len(q) for q in qs])), **split(index, qs, acc, args.rounds)}
                shape["stages"] = stages(index, qs)
            shape["others_cpu_cores"] = load["others_cpu_cores"]
            row["shapes"][shape_name] = shape
            log(f"{shape_name}: {json.dumps({k: v for k, v in shape.items() if k != 'stages'})}")
    row["env"] = environment(sources)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n")
    log(f"wrote {args.out / f'{name}.json'}")
    return row


if __name__ == "__main__":
    main()
