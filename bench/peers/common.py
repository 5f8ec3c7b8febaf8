"""Shared plumbing of the peer runners: corpus files, timing, load figures, the runner command line.

Imported by ``run_ours.py`` (main env), ``run_plaid.py`` and ``run_fastplaid.py`` (their own venvs), so it
needs numpy and the standard library only (never ``colbert_index``).

A runner has two subcommands, each one process:

* ``build --data D --index I --out R.json``: build the engine's index of corpus ``D`` into ``I`` with every
  thread; ``R.json`` gets the wall time and the bytes on disk.
* ``search --data D --index I --out R.json [--threads 1]``: open the index, warm up, then time every query
  of ``D`` alone at k=10; ``R.json`` gets the latencies, the returned document positions and the load.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")
WARMUP_QUERIES = 3


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- corpus files
@dataclass
class Corpus:
    """The files written by ``export_corpus.py`` (embeddings memory-mapped)."""

    path: Path
    embeddings: np.ndarray  # float32 [n_tokens, dim], L2-normalised rows
    doclens: np.ndarray  # int64 [n_docs]
    queries: np.ndarray  # float32 [n_q, q_len, dim]
    meta: dict

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.doclens)])

    def documents(self) -> list[np.ndarray]:
        """One ``[n_i, dim]`` view per document, in position order (a document's id is its position)."""
        o = self.offsets
        return [self.embeddings[o[i] : o[i + 1]] for i in range(len(self.doclens))]


def load_corpus(path: Path) -> Corpus:
    """Open a corpus directory written by ``export_corpus.py``."""
    path = Path(path)
    return Corpus(
        path=path,
        embeddings=np.load(path / "embeddings.npy", mmap_mode="r"),
        doclens=np.load(path / "doclens.npy"),
        queries=np.load(path / "queries.npy"),
        meta=json.loads((path / "meta.json").read_text()),
    )


def dir_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (recursively)."""
    return sum(file_sizes(path).values())


def file_sizes(path: Path) -> dict[str, int]:
    """``{relative path: bytes}`` of every file under ``path``."""
    return {f.relative_to(path).as_posix(): f.stat().st_size for f in sorted(Path(path).rglob("*")) if f.is_file()}


# ---------------------------------------------------------------------------------------- measurement
def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (``/proc/stat``, steal counted as busy); None off Linux."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


@contextmanager
def load_figures(into: dict) -> Iterator[None]:
    """Record load averages before/after the block and the mean cores OTHER processes kept busy in it."""
    into["loadavg_before"] = [round(x, 2) for x in os.getloadavg()]
    busy0, own0, t0 = machine_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    try:
        yield
    finally:
        busy1, own1, wall = machine_busy_seconds(), sum(os.times()[:2]), time.perf_counter() - t0
        into["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        into["others_cpu_cores"] = (
            None
            if busy0 is None or busy1 is None or wall <= 0
            else round(max(0.0, (busy1 - busy0) - (own1 - own0)) / wall, 2)
        )


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage-collection pauses inside timed loops."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def latency_stats(times_ms: list[float]) -> dict:
    """p50 / p95 / mean / n of latencies in milliseconds."""
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p95 = np.percentile(t, [50, 95])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "mean_ms": round(float(t.mean()), 3)}


def time_queries(search_one: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, k: int) -> dict:
    """Warm up on a few queries, then time each query alone; ids padded with -1 to ``k`` columns.

    Each query gets its wall time (``perf_counter``) and the CPU time of the whole process over the call
    (``process_time``: every thread, so a helper thread is counted). On one thread and a quiet machine the two
    agree; when other processes take the cores, wall time grows with the waiting and CPU time does not.
    """
    for q in queries[:WARMUP_QUERIES]:
        search_one(q)
    times, cpu, ids = [], [], np.full((len(queries), k), -1, dtype=np.int64)
    with gc_paused():
        for i, q in enumerate(queries):
            c0, t0 = time.process_time(), time.perf_counter()
            got = search_one(q)
            t1, c1 = time.perf_counter(), time.process_time()
            times.append((t1 - t0) * 1e3)
            cpu.append((c1 - c0) * 1e3)
            got = np.asarray(got, dtype=np.int64)[:k]
            ids[i, : len(got)] = got
    return {
        "latency": latency_stats(times),
        "cpu_latency": latency_stats(cpu),
        "times_ms": [round(t, 4) for t in times],
        "cpu_ms": [round(t, 4) for t in cpu],
        "ids": ids.tolist(),
    }


# ---------------------------------------------------------------------------------------- runner CLI
BuildFn = Callable[[Corpus, Path, int], dict]
# (corpus, index_dir, k, threads, params=None) -> (one-query function, facts)
OpenFn = Callable[..., tuple[Callable[[np.ndarray], np.ndarray], dict]]
# (corpus, index_dir, k, threads, params=None) -> one-query function returning ({stage: ms}, document positions)
ProfileFn = Callable[..., Callable[[np.ndarray], tuple[dict, list]]]


def profile_queries(profile_one: Callable[[np.ndarray], tuple[dict, list]], queries: np.ndarray, k: int) -> dict:
    """Per-stage median / mean milliseconds over the queries (after a warm-up), and the ids returned.

    The runners time stages in process CPU time, which waiting for a core on a shared machine does not inflate.
    """
    for q in queries[:WARMUP_QUERIES]:
        profile_one(q)
    stages: dict[str, list[float]] = {}
    ids = []
    with gc_paused():
        for q in queries:
            times, got = profile_one(q)
            for name, ms in times.items():
                stages.setdefault(name, []).append(ms)
            ids.append(list(got)[:k])
    return {
        "stages_p50_ms": {n: round(float(np.median(t)), 3) for n, t in stages.items()},
        "stages_mean_ms": {n: round(float(np.mean(t)), 3) for n, t in stages.items()},
        "profile_ids": ids,
    }


def _number(text: str) -> int | float:
    """``"256"`` -> 256, ``"0.45"`` -> 0.45."""
    return float(text) if any(c in text for c in ".eE") else int(text)


def runner_main(
    engine: str,
    build: BuildFn,
    open_search: OpenFn,
    versions: Callable[[], dict],
    profile: ProfileFn | None = None,
) -> None:
    """Command line shared by the runners (see the module docstring).

    ``build(corpus, index_dir, nbits)`` builds the index and returns extra facts (K, ...);
    ``open_search(corpus, index_dir, k, threads, params=None)`` opens it (``params``: the engine's own search
    parameters from ``--param``, its defaults otherwise), limits the engine to ``threads`` threads and
    returns a one-query search function (``[q_len, dim]`` float32 -> document positions, best first) and facts;
    ``profile`` (command ``profile``) returns a one-query function that times each stage of the same search.
    """
    p = argparse.ArgumentParser(description=f"{engine}: build or search on a bench/peers corpus")
    p.add_argument("command", choices=["build", "search", "profile"])
    p.add_argument("--data", type=Path, required=True, help="corpus directory (export_corpus.py)")
    p.add_argument("--index", type=Path, required=True, help="index directory")
    p.add_argument("--out", type=Path, required=True, help="JSON result file")
    p.add_argument("--nbits", type=int, default=2)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="search threads (build uses all)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a search parameter of the engine (search only; e.g. ndocs=1024, n_full_scores=256); default: its own",
    )
    args = p.parse_args()
    params = {name: _number(value) for name, value in (item.split("=", 1) for item in args.param)}
    extra = {"params": params} if params else {}
    corpus = load_corpus(args.data)
    result: dict = {"engine": engine, "command": args.command, "versions": versions()}
    result["python"] = platform.python_version()
    result["env_threads"] = {k: os.environ[k] for k in THREAD_ENV_VARS if k in os.environ}
    if args.command == "build":
        args.index.parent.mkdir(parents=True, exist_ok=True)
        load: dict = {}
        with load_figures(load):
            t0 = time.perf_counter()
            facts = build(corpus, args.index, args.nbits)
            build_s = time.perf_counter() - t0
        n_tokens = int(corpus.doclens.sum())
        files = file_sizes(args.index)
        size = sum(files.values())
        result.update(
            build_s=round(build_s, 2),
            disk_bytes=size,
            bytes_per_token=round(size / n_tokens, 2),
            n_tokens=n_tokens,
            nbits=args.nbits,
            cpu_count=os.cpu_count(),
            **facts,
            **load,
            files=files,
        )
        log(f"{engine}: built in {build_s:.1f} s, {size / n_tokens:.2f} B/token")
    elif args.command == "profile":
        if profile is None:
            raise SystemExit(f"{engine}: no per-stage profile")
        search_one, facts = open_search(corpus, args.index, args.k, args.threads, **extra)
        load = {}
        with load_figures(load):
            prof = profile_queries(profile(corpus, args.index, args.k, args.threads, **extra), corpus.queries, args.k)
        searched = [list(np.asarray(search_one(q))[: args.k]) for q in corpus.queries]
        same = [list(map(int, a)) == list(map(int, b)) for a, b in zip(prof.pop("profile_ids"), searched)]
        result.update(threads=args.threads, k=args.k, **facts, **prof, same_ids_as_search=float(np.mean(same)), **load)
        log(f"{engine}: stages p50 {prof['stages_p50_ms']}")
    else:
        search_one, facts = open_search(corpus, args.index, args.k, args.threads, **extra)
        load = {}
        with load_figures(load):
            timing = time_queries(search_one, corpus.queries, args.k)
        result.update(threads=args.threads, k=args.k, n_queries=len(corpus.queries), **facts, **timing, **load)
        log(f"{engine}: p50 {timing['latency']['p50_ms']} ms, p95 {timing['latency']['p95_ms']} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n")
