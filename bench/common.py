"""Helpers shared by the benchmark scripts of bench/: paths, what a result row records about the machine and the
code, thread limits, the load of other processes on a shared machine, timing, recall, the exact ground truth.

bench/ is a folder of scripts, not a package. A script run as ``python bench/NAME.py`` has bench/ first on
``sys.path`` whatever the working directory, so ``from common import ...`` finds this module. The peers'
runners have their own helpers (``bench/peers/common.py``, numpy only: they run in other environments).
"""

from __future__ import annotations

import ast
import gc
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from colbert_index import Index, SearchParams
from colbert_index.backend import get_backend
from colbert_index.metrics import mrr_at, recall_at
from colbert_index.search import brute_force

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
GT_K = 100  # depth of the ground truth (and of the k=100 searches)
THREAD_ENV_VARS = (
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
)


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the markdown table only)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- environment
def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, cwd=REPO_DIR, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def cpu_model() -> str:
    """CPU model name from ``lscpu`` (``platform.processor()`` is often empty on Linux)."""
    for line in _run(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def source_hash() -> str:
    """Short sha256 of the package sources (every module, subpackages included): the commit alone does not
    identify uncommitted edits."""
    h = hashlib.sha256()
    for path in sorted([*REPO_DIR.glob("colbert_index/**/*.py"), *REPO_DIR.glob("kernels/*.py")]):
        h.update(path.relative_to(REPO_DIR).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def environment(sources: str) -> dict:
    """Machine, library versions and code version; call after a parallel Numba kernel has run.

    ``sources`` is :func:`source_hash` taken when the run started (others may edit the package meanwhile).
    """
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = "unknown"
    blas = sorted({f"{i['internal_api']} {i.get('version') or ''}".strip() for i in threadpool_info()})
    return {
        "cpu": cpu_model(),
        "processor": platform.processor(),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "numba_threads_max": numba.config.NUMBA_NUM_THREADS,
        "numba_threading_layer": layer,
        "threadpools": blas,
        # settings that change threading behaviour (e.g. OMP_WAIT_POLICY=passive; see RESULTS.md)
        "env_vars": {k: os.environ[k] for k in THREAD_ENV_VARS if k in os.environ},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "faiss": faiss.__version__,
        # GIT_COMMIT: where the tree travelled without its .git (bench/gpu_device.sh)
        "git_commit": _run(["git", "rev-parse", "--short", "HEAD"]) or os.environ.get("GIT_COMMIT", "unknown"),
        "git_dirty": bool(_run(["git", "status", "--porcelain", "--", "colbert_index", "kernels"])),
        "source_hash": sources,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "timestamp_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ---------------------------------------------------------------------------------------- threads and load
@contextmanager
def thread_count(n: int) -> Iterator[None]:
    """Limit Numba and every BLAS/OpenMP pool (threadpoolctl) to ``n`` threads together."""
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        numba.set_num_threads(previous)


def _machine_busy_seconds() -> float | None:
    """CPU seconds every core of the machine has spent busy since boot (``/proc/stat``), None off Linux.

    Steal time counts as busy: on a VM it is time the cores were not ours either.
    """
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


@contextmanager
def others_load(into: dict, key: str = "others_cpu_cores") -> Iterator[None]:
    """Store in ``into[key]`` the mean number of cores that OTHER processes kept busy during the block.

    The machine is shared: a figure well above 0 means the timings of the block were contended.
    """
    busy0, own0, t0 = _machine_busy_seconds(), sum(os.times()[:2]), time.perf_counter()
    try:
        yield
    finally:
        busy1, own1, wall = _machine_busy_seconds(), sum(os.times()[:2]), time.perf_counter() - t0
        if busy0 is None or busy1 is None or wall <= 0:
            into[key] = None
        else:
            into[key] = round(max(0.0, (busy1 - busy0) - (own1 - own0)) / wall, 2)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold`` cores over one second.

    Returns the seconds waited. The machine is shared; timings taken next to a busy neighbour are
    not comparable (see ``others_cpu_cores``), so each measured block starts on a quiet machine if it can.
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait_s:
        load: dict = {}
        with others_load(load):
            time.sleep(1.0)
        if load["others_cpu_cores"] is None or load["others_cpu_cores"] < threshold:
            break
    return round(time.perf_counter() - t0, 1)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No garbage collection pauses inside timed loops."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------------------------------- measurement
def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """``(milliseconds, result)`` of one call."""
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def latency_stats(times_ms: list[float]) -> dict:
    """p50 / p95 / mean / n of a list of latencies in milliseconds."""
    t = np.asarray(times_ms)
    p50, p95 = np.percentile(t, [50, 95])
    return {
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "mean_ms": round(float(t.mean()), 3),
        "n": len(t),
    }


def per_query(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> tuple[dict, np.ndarray]:
    """Run ``fn`` on each query alone, garbage collection paused; latency stats (ms) and the stacked result ids."""
    times, ids = [], []
    with gc_paused():
        for q in queries:
            ms, res = timed(lambda q=q: fn(q))
            times.append(ms)
            ids.append(res.ids[0])
    return latency_stats(times), np.stack(ids)


def single_query_latency(
    index: Index, queries: list[np.ndarray], k: int, params: SearchParams | None = None
) -> tuple[dict, np.ndarray]:
    """``index.search`` of each query alone after 3 warm-up queries: latency stats with p99, and the ids."""
    for q in queries[:3]:
        index.search(q, k=k, params=params)
    times, ids = [], []
    for q in queries:
        ms, res = timed(lambda q=q: index.search(q, k=k, params=params))
        times.append(ms)
        ids.append(res.ids[0])
    stats = latency_stats(times)
    stats["p99_ms"] = round(float(np.percentile(times, 99)), 3)
    return stats, np.stack(ids)


def parse_sweep(text: str) -> list[tuple[int, int]]:
    """``"1:256,2:1024"`` -> ``[(1, 256), (2, 1024)]`` (nprobe, ndocs pairs)."""
    return [tuple(int(x) for x in pair.split(":")) for pair in text.split(",") if pair]


def param_sweep(
    index: Index, queries: list[np.ndarray], raw: np.ndarray, exact: np.ndarray, grid: list[tuple]
) -> list[dict]:
    """k=10, one thread, for each ``(nprobe, ndocs)`` of ``grid``: p50 latency over every query, recall vs
    ``raw`` (all queries) and vs ``exact`` (the first ``len(exact)`` queries)."""
    rows = []
    with thread_count(1):
        for nprobe, ndocs in grid:
            params = SearchParams(nprobe=nprobe, ndocs=ndocs)
            stats, ids = single_query_latency(index, queries, 10, params)
            rows.append(
                {
                    "nprobe": nprobe,
                    "ndocs": ndocs,
                    "is_default": (nprobe, ndocs)
                    == (SearchParams.default_nprobe(10, index.n_docs), SearchParams.default_ndocs(10, index.n_docs)),
                    "p50_ms": stats["p50_ms"],
                    "p95_ms": stats["p95_ms"],
                    "recall10_raw": recall(ids, raw, 10),
                    "recall10_vs_exact": recall(ids[: len(exact)], exact, 10),
                }
            )
            log(f"sweep {rows[-1]}")
    return rows


# ---------------------------------------------------------------------------------------- quality
def recall(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    """:func:`colbert_index.metrics.recall_at`, with k capped at the truth's depth, rounded for the tables."""
    return round(recall_at(pred, truth, min(k, truth.shape[1])), 4)


def mrr(pred: np.ndarray, targets: np.ndarray, k: int = 10) -> float:
    """:func:`colbert_index.metrics.mrr_at` of each query's target document, rounded for the tables."""
    return round(mrr_at(pred, targets, k), 4)


def raw_top_k(
    queries: list[np.ndarray], offsets: np.ndarray, token_chunk: Callable[[int, int], np.ndarray], k: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact MaxSim ``(scores, slots)`` top-``k`` of each query over float embeddings (``token_chunk(lo, hi)``:
    tokens ``lo:hi``): :func:`colbert_index.search.brute_force` with the Numba kernels, all threads."""
    return brute_force(list(queries), offsets, token_chunk, k, get_backend("numba"))


def ground_truth(corpus, k: int = GT_K) -> tuple[np.ndarray, float]:
    """Exact MaxSim top-``k`` ids over a corpus's raw float embeddings (``queries``, ``offsets``,
    ``embeddings``), and the seconds it took."""
    t0 = time.perf_counter()
    best = raw_top_k(corpus.queries, corpus.offsets, lambda lo, hi: corpus.embeddings[lo:hi], k)
    return np.stack([slots for _, slots in best]), time.perf_counter() - t0


# ---------------------------------------------------------------------------------------- real text
def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_files(packages: tuple[str, ...]) -> list[Path]:
    """The standard library's sources and those of installed ``packages``, tests left out, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [f for f in sorted(stdlib.rglob("*.py")) if "site-packages" not in f.parts]
    for name in packages:
        spec = importlib.util.find_spec(name)
        if spec and spec.submodule_search_locations:
            files += sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.py"))
    return [f for f in files if not {"test", "tests", "testing"} & set(f.parts)]


def docstrings(packages: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(kind, docstring)`` of every module, class and function of :func:`source_files` (read with ``ast``, nothing
    imported; kind ``module`` / ``class`` / ``function``), then the pydoc help topics (kind ``topic``)."""
    kinds = {ast.Module: "module", ast.ClassDef: "class", ast.FunctionDef: "function", ast.AsyncFunctionDef: "function"}
    out = []
    for path in source_files(packages):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            kind = kinds.get(type(node))
            if kind is not None:
                doc = ast.get_docstring(node)
                if doc:
                    out.append((kind, doc))
    try:
        from pydoc_data.topics import topics

        out.extend(("topic", topics[k]) for k in sorted(topics))
    except ImportError:
        pass
    return out


def prose_passages(doc: str, min_words: int = 40, max_words: int = 120) -> list[str]:
    """One docstring's paragraphs of prose (code-like ones dropped), merged or cut into passages of
    ``min_words``-``max_words`` words; a passage never spans two docstrings."""
    out, words = [], []

    def flush() -> None:
        if len(words) >= min_words:
            out.append(" ".join(words))
        words.clear()

    for para in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in para.splitlines()]
        if not lines or any(ln.startswith((">>>", "...", "$")) for ln in lines):
            continue
        tokens = " ".join(lines).split()
        if len(tokens) < 8 or sum(w.isalpha() for w in tokens) < 0.6 * len(tokens):
            continue
        for w in tokens:
            words.append(w)
            if len(words) >= max_words:
                flush()
        if len(words) >= min_words:
            flush()
    return out


def split_flat(flat: np.ndarray, lengths) -> list[np.ndarray]:
    return np.split(flat, np.cumsum(lengths)[:-1])


def encode_cached(model: str, texts: list[str], queries: list[str], cache: Path) -> tuple[list, list, float]:
    """Token embeddings of the passages and of the queries, and the passages' encoding seconds; computed once
    with :class:`colbert_index.Encoder` and cached in ``cache`` (an .npz)."""
    if cache.exists():
        z = np.load(cache)
        return split_flat(z["tokens"], z["lengths"]), split_flat(z["q_tokens"], z["q_lengths"]), float(z["seconds"])
    from colbert_index import Encoder

    enc = Encoder.from_pretrained(model)
    ms, docs = timed(lambda: enc.encode_documents(texts, batch_size=32, progress=True))
    Q, q_lengths = enc.encode_queries(queries)
    q = [Q[i, :n] for i, n in enumerate(q_lengths)]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        cache,
        tokens=np.concatenate(docs),
        lengths=[len(d) for d in docs],
        q_tokens=np.concatenate(q),
        q_lengths=[len(x) for x in q],
        seconds=ms / 1e3,
    )
    return docs, q, ms / 1e3
