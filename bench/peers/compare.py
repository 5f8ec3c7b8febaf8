"""Side-by-side benchmark: colbert_index, Stanford PLAID (colbert-ai) and fast-plaid on one corpus, one machine.

1. ``export_corpus.py`` writes (or reuses) the corpus and its exact raw MaxSim ground truth: the synthetic corpus
   (default), or real text encoded with MiniLM as ColBERT (``--corpus prose``: Python documentation, man pages and
   docstrings, 30,000 passages and 300 queries with known answers; ``--corpus docstrings``).
2. Each engine builds its index from the same embedding file, in its own process and environment
   (``run_ours.py`` here, ``run_plaid.py`` / ``run_fastplaid.py`` in ``bench/peers/.venvs/*``), with every thread.
3. The engines' single-query latencies are measured back to back, ``--rounds`` times in rotating order, each
   measurement a fresh process limited to ``--threads`` threads (torch / Numba / BLAS / OpenMP / rayon), after
   waiting (at most ``--wait-quiet`` s) for the other processes on the machine to go quiet.
4. Recall@10 of every engine is taken against the same ground truth; results go to
   ``bench/results/peers_<name>.json`` and a block of the "Peers side by side" section of bench/RESULTS.md.

Engines: ``ours``, ``ours-avx2`` (our engine compiled for an AVX2-only target, ``NUMBA_CPU_NAME=haswell
NUMBA_CPU_FEATURES=""`` with its own Numba cache; it searches the index ``ours`` built), ``plaid`` and ``fastplaid``.
``--ours-point nprobe=2,ndocs=1024`` adds rows of ours (and of ``ours-avx2``) at other search parameters, measured
in the same rounds.

Usage (main environment; run ``bash bench/peers/setup_venvs.sh`` once first)::

    python bench/peers/compare.py --n-docs 10000 --dim 64            # everything
    python bench/peers/compare.py --n-docs 10000 --dim 64 --reuse    # reuse the peers' cached indexes
    python bench/peers/compare.py --corpus prose --n-docs 30000 --engines ours ours-avx2 plaid fastplaid \
        --ours-point nprobe=2,ndocs=1024                              # real text
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import THREAD_ENV_VARS, load_figures, log
from export_corpus import export, export_realtext

PEERS_DIR = Path(__file__).resolve().parent
BENCH_DIR = PEERS_DIR.parent
REPO_DIR = BENCH_DIR.parent
VENVS = PEERS_DIR / ".venvs"
ENGINES = {  # name -> (interpreter, runner script)
    "ours": (Path(sys.executable), PEERS_DIR / "run_ours.py"),
    "ours-avx2": (Path(sys.executable), PEERS_DIR / "run_ours.py"),
    "plaid": (VENVS / "plaid" / "bin" / "python", PEERS_DIR / "run_plaid.py"),
    "fastplaid": (VENVS / "fastplaid" / "bin" / "python", PEERS_DIR / "run_fastplaid.py"),
}
# Numba compiles for the host unless told; the name alone keeps the host's features (docs/search.md)
ENGINE_ENV = {
    "ours-avx2": {
        "NUMBA_CPU_NAME": "haswell",
        "NUMBA_CPU_FEATURES": "",
        "NUMBA_CACHE_DIR": str(BENCH_DIR / "indexes" / "numba_cache_haswell"),
    }
}
INDEX_OF = {"ours-avx2": "ours"}  # engines that search another engine's index (and build none)
PROFILED = ("ours", "ours-avx2", "plaid")  # engines whose runner has a per-stage ``profile`` command
LABELS = {
    "ours": "colbert_index (ours)",
    "ours-avx2": "colbert_index (ours), AVX2-only target",
    "plaid": "Stanford PLAID (colbert-ai)",
    "fastplaid": "fast-plaid",
}


def base_engine(row: str) -> str:
    """``"ours@nprobe=2,ndocs=1024"`` -> ``"ours"``: a row is an engine, at other parameters after ``@``."""
    return row.split("@", 1)[0]


def label(row: str) -> str:
    """The table's name of a row."""
    engine, _, point = row.partition("@")
    return LABELS[engine] + (f", {point.replace(',', ', ')}" if point else "")


SECTION_TITLE = "## Peers side by side (`bench/peers/`)"
SECTION_INTRO = """\
`python bench/peers/compare.py --n-docs N --dim 64` (after `bash bench/peers/setup_venvs.sh`; see
`bench/peers/README.md`). Every engine reads the same corpus files (the synthetic corpus of `bench/run.py`, same
seed, written as flat float32 embeddings) and is scored against the same ground truth: exact MaxSim top-10 over
the raw float32 embeddings, 100 queries of 32 tokens. Each engine builds in its own process with both threads;
then the three engines' single-query latencies are measured back to back, in rotating order, for several rounds,
each measurement a fresh process limited to one thread (`torch.set_num_threads`, Numba, threadpoolctl,
`OMP/MKL/OPENBLAS/RAYON_NUM_THREADS`), after 3 warm-up queries, timing each `search` call of one query at k=10
with `perf_counter` (wall) and `process_time` (CPU time of the process, all its threads: on one thread it
equals the wall time on a quiet machine, and unlike it does not grow while the process waits for a core).
Default search parameters of each engine (PLAID: ncells 1, centroid_score_threshold 0.5, ndocs 256 for
k <= 10; fast-plaid: n_ivf_probe 8, n_full_scores 4096; ours: nprobe 1, threshold 0.5, ndocs 256).
PLAID is colbert-ai's own `CollectionIndexer`, `IndexScorer` and `Searcher.dense_search` on the CPU, with the
text encoder replaced by the precomputed embeddings (`run_plaid.py`). `B/token` is every file in the index
directory over the number of tokens. `p50 / ours` is the engine's p50 over ours in the same round, median over
rounds. The stage profiles re-run the engine's search step by step with a CPU-time timer around each step.
`other load` is the mean number of cores that other processes kept busy during an engine's timed queries
(the machine is shared; near 1 means the figures are contended)."""


# ---------------------------------------------------------------------------------------- environment
def _git(*cmd: str) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=REPO_DIR, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def cpu_model() -> str:
    """CPU model name from ``lscpu``."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def source_hash(root: Path) -> str:
    """Short sha256 of our engine's sources under ``root`` (a snapshot or the working tree)."""
    h = hashlib.sha256()
    for path in sorted([*root.glob("colbert_index/**/*.py"), *root.glob("kernels/*.py")]):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def snapshot_ours(ref: str) -> tuple[Path | None, str]:
    """Our engine's sources at git ``ref``, laid out as installed (``colbert_index/kernels``), for PYTHONPATH.

    The working tree is shared with engineers who edit the engine while this runs; a commit is a fixed,
    consistent version. ``ref="worktree"`` uses the working tree as it is (returns ``None``).
    """
    if ref == "worktree":
        return None, "worktree"
    sha = _git("rev-parse", "--short", ref)
    if not sha:
        raise SystemExit(f"--ours-ref {ref!r}: not a commit")
    dest = BENCH_DIR / "indexes" / "ours_src" / sha
    if not (dest / "colbert_index" / "kernels" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", sha, "colbert_index", "kernels"], cwd=REPO_DIR, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        (dest / "kernels").rename(dest / "colbert_index" / "kernels")
    return dest, sha


def wait_for_quiet(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold`` cores over one second."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait_s:
        load: dict = {}
        with load_figures(load):
            time.sleep(1.0)
        if load["others_cpu_cores"] is None or load["others_cpu_cores"] < threshold:
            break
    return round(time.perf_counter() - t0, 1)


# ---------------------------------------------------------------------------------------- running engines
OURS_SRC: list[Path] = []  # set by main(): the snapshot of our sources that run_ours.py imports


def run_engine(
    engine: str, command: str, data: Path, index: Path, nbits: int, k: int, threads: int | None, params: list = ()
) -> dict:
    """Run one runner subcommand in the engine's environment; returns its JSON result.

    ``threads=None`` (builds) leaves every thread pool at its default (all cores).
    """
    python, script = ENGINES[engine]
    if not python.exists():
        raise SystemExit(f"{engine}: {python} missing; run `bash bench/peers/setup_venvs.sh` first")
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV_VARS}
    if threads is not None:
        env.update({k: str(threads) for k in THREAD_ENV_VARS})
    env.update(ENGINE_ENV.get(engine, {}))
    ours = engine.startswith("ours")
    env["PYTHONPATH"] = os.pathsep.join([*(str(p) for p in OURS_SRC if ours), str(PEERS_DIR)])
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [str(python), str(script), command, "--data", str(data), "--index", str(index), "--out", str(out)]
    cmd += ["--nbits", str(nbits), "--k", str(k), "--threads", str(threads or 1)]
    cmd += [arg for param in params for arg in ("--param", param)]
    logfile = index.parent / f"{engine}.{command}{'.' + '_'.join(params) if params else ''}.log"
    index.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w") as log_f:
        rc = subprocess.run(cmd, cwd=PEERS_DIR, env=env, stdout=log_f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"{engine} {command} failed (exit {rc}); log {logfile}:\n{tail}")
    try:
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def recall_at(pred: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |top-k of pred ∩ top-k of truth| / k."""
    return float(np.mean([len(set(p[:k].tolist()) & set(t[:k].tolist())) / k for p, t in zip(pred, truth)]))


def mrr_at(pred: np.ndarray, targets: np.ndarray, k: int = 10) -> float:
    """Mean reciprocal rank of each query's target document within the top ``k`` (0 when absent)."""
    rr = []
    for p, t in zip(pred, targets):
        hits = np.flatnonzero(p[:k] == t)
        rr.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
    return float(np.mean(rr))


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--corpus",
        choices=["synthetic", "prose", "docstrings"],
        default="synthetic",
        help="synthetic (default) or a real-text corpus encoded with MiniLM (dim 128; export_corpus.py)",
    )
    p.add_argument("--n-docs", type=int, default=10000)
    p.add_argument("--n-queries", type=int, help="queries: 100 (synthetic), 300 (real text) by default")
    p.add_argument("--dim", type=int, default=64, help="synthetic corpus only")
    p.add_argument("--nbits", type=int, default=2, choices=[2, 4])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="search threads (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="latency rounds over the engines (default 3)")
    p.add_argument("--engines", nargs="+", default=["ours", "plaid", "fastplaid"], choices=list(ENGINES))
    p.add_argument("--reuse", action="store_true", help="reuse the peers' cached indexes (ours is always rebuilt)")
    p.add_argument("--wait-quiet", type=float, default=30.0, help="max seconds to wait for a quiet machine")
    p.add_argument(
        "--ours-ref",
        default="HEAD",
        help="git commit of our engine to measure (default HEAD; 'worktree': the working tree as it is)",
    )
    p.add_argument(
        "--ours-param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a SearchParams field of ours (e.g. ndocs=160: another operating point); results get their own name",
    )
    p.add_argument(
        "--ours-point",
        action="append",
        default=[],
        metavar="NAME=VALUE,...",
        help="more rows of ours (and ours-avx2) at these SearchParams, e.g. nprobe=2,ndocs=1024 (repeatable)",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the per-stage profiles")
    p.add_argument("--no-markdown", action="store_true", help="do not touch bench/RESULTS.md")
    p.add_argument("--render", type=Path, metavar="JSON", help="only re-render the markdown of a results file")
    return p.parse_args(argv)


def build_all(args: argparse.Namespace, data: Path, index_root: Path) -> dict:
    """Build (or, with ``--reuse``, load the cached build results of) every engine's index."""
    builds = {}
    for engine in args.engines:
        if engine in INDEX_OF:
            continue
        index, record = index_root / engine, index_root / f"{engine}.build.json"
        if args.reuse and engine != "ours" and record.exists() and index.exists():
            builds[engine] = {**json.loads(record.read_text()), "reused": True}
            log(f"{engine}: reusing the index built {builds[engine].get('built_at', '?')}")
            continue
        log(f"{engine}: building")
        res = run_engine(engine, "build", data, index, args.nbits, args.k, None)
        res["built_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        res["git_commit"] = _git("rev-parse", "--short", "HEAD")
        record.write_text(json.dumps(res, indent=1) + "\n")
        builds[engine] = {**res, "reused": False}
        log(f"{engine}: built in {res['build_s']} s, {res['bytes_per_token']} B/token")
    for engine, owner in INDEX_OF.items():
        if engine in args.engines:
            if owner not in builds:
                raise SystemExit(f"{engine} searches the index of {owner}: add {owner} to --engines")
            builds[engine] = {**builds[owner], "reused": True, "index_of": owner}
    return builds


def rows_of(args: argparse.Namespace) -> list[str]:
    """The rows measured: each engine at its defaults (ours at ``--ours-param``), then ours at each ``--ours-point``."""
    points = [f"{e}@{p}" for p in args.ours_point for e in args.engines if e.startswith("ours")]
    return list(args.engines) + points


def _params(args: argparse.Namespace, row: str) -> list:
    """The ``--param`` values of a row's runner."""
    engine, _, point = row.partition("@")
    if point:
        return point.split(",")
    return args.ours_param if engine.startswith("ours") else []


def index_dir(index_root: Path, row: str) -> Path:
    """The index a row searches."""
    engine = base_engine(row)
    return index_root / INDEX_OF.get(engine, engine)


def measure(args: argparse.Namespace, data: Path, index_root: Path, gt: np.ndarray, targets: np.ndarray) -> list:
    """``--rounds`` rounds of single-query latency over the engines, in rotating order."""
    rounds, rows = [], rows_of(args)
    for r in range(args.rounds):
        order = rows[r % len(rows) :] + rows[: r % len(rows)]
        row = {}
        for engine in order:
            waited = wait_for_quiet(args.wait_quiet)
            res = run_engine(
                base_engine(engine),
                "search",
                data,
                index_dir(index_root, engine),
                args.nbits,
                args.k,
                args.threads,
                _params(args, engine),
            )
            ids = np.asarray(res.pop("ids"))
            res.pop("times_ms")
            res.pop("cpu_ms", None)
            res.update(
                waited_s=waited,
                recall10=round(recall_at(ids, gt, args.k), 4),
                mrr10=round(mrr_at(ids, targets, 10), 4),
                ids_digest=hashlib.sha1(ids.tobytes()).hexdigest()[:12],
            )
            row[engine] = res
            log(
                f"round {r + 1}: {engine} p50 {res['latency']['p50_ms']} ms (CPU {res['cpu_latency']['p50_ms']} ms), "
                f"R@10 {res['recall10']}, "
                f"others {res['others_cpu_cores']}"
            )
        rounds.append({"order": order, "engines": row})
    return rounds


def profile_all(args: argparse.Namespace, data: Path, index_root: Path) -> dict:
    """Per-stage latency of the engines that expose their stages (one pass over the queries each)."""
    out = {}
    for engine in [e for e in rows_of(args) if base_engine(e) in PROFILED]:
        wait_for_quiet(args.wait_quiet)
        try:
            res = run_engine(
                base_engine(engine),
                "profile",
                data,
                index_dir(index_root, engine),
                args.nbits,
                args.k,
                args.threads,
                _params(args, engine),
            )
        except RuntimeError as exc:  # a profile mirrors the engine's code and may lag behind it
            log(f"profile {engine} failed: {exc}")
            out[engine] = {"error": str(exc).splitlines()[-1]}
            continue
        keep = ("stages_p50_ms", "stages_mean_ms", "same_ids_as_search", "others_cpu_cores", "loadavg_before")
        out[engine] = {key: res.get(key) for key in keep}
        log(f"profile {engine}: {res['stages_p50_ms']}")
    return out


def summarize(engines: list[str], builds: dict, rounds: list) -> dict:
    """Per engine: medians over rounds, recall, size, build; p50 ratios to ours."""
    out = {}
    for e in engines:
        per = [rd["engines"][e] for rd in rounds]
        b = builds[base_engine(e)]
        out[e] = {
            "version": {k: v for k, v in b["versions"].items() if k in ("colbert-ai", "fast-plaid", "colbert_index")},
            "torch": b["versions"].get("torch"),
            "build_s": b["build_s"],
            "build_others_cpu_cores": b.get("others_cpu_cores"),
            "K": b.get("K"),
            "bytes_per_token": b["bytes_per_token"],
            "p50_ms": round(float(np.median([x["latency"]["p50_ms"] for x in per])), 3),
            "p95_ms": round(float(np.median([x["latency"]["p95_ms"] for x in per])), 3),
            "p50_ms_rounds": [x["latency"]["p50_ms"] for x in per],
            "cpu_p50_ms": round(float(np.median([x["cpu_latency"]["p50_ms"] for x in per])), 3),
            "cpu_p95_ms": round(float(np.median([x["cpu_latency"]["p95_ms"] for x in per])), 3),
            "cpu_p50_ms_rounds": [x["cpu_latency"]["p50_ms"] for x in per],
            "recall10": per[0]["recall10"],
            "mrr10": per[0]["mrr10"],
            "same_ids_every_round": len({x["ids_digest"] for x in per}) == 1,
            "others_cpu_cores_max": max((x["others_cpu_cores"] or 0.0) for x in per),
            "params": per[0].get("params"),
        }
    if "ours" in out:
        for e in engines:
            for kind, prefix in (("latency", ""), ("cpu_latency", "cpu_")):
                ratios = [rd["engines"][e][kind]["p50_ms"] / rd["engines"]["ours"][kind]["p50_ms"] for rd in rounds]
                out[e][f"{prefix}p50_over_ours_rounds"] = [round(x, 2) for x in ratios]
                out[e][f"{prefix}p50_over_ours"] = round(float(np.median(ratios)), 2)
    return out


def render_markdown(res: dict) -> str:
    """The block of one results document."""
    c, env, s, corpus = res["config"], res["env"], res["summary"], res["corpus"]
    dirty = " + uncommitted changes" if env["git_dirty"] else ""
    lines = [
        f"### {res['name']}: {corpus['n_docs']:,} docs ({corpus['n_tokens']:,} tokens), "
        f"dim {corpus.get('dim', c['dim'])}, nbits {c['nbits']}, k={c['k']}, {corpus['n_queries']} queries",
        "",
        f"Machine: {env['cpu']}, {env['nproc']} vCPUs (VM), shared with other benchmark runs; our engine at commit "
        f"`{env.get('ours_ref', env['git_commit'])}`{dirty} (sources `{env['source_hash']}`); {env['timestamp_utc']}; "
        f"Python {env['python']}. Builds: all threads; "
        f"latency: {c['threads']} thread(s), {c['rounds']} round(s), medians shown. Load average "
        f"{env['loadavg_start']} at start, {res['loadavg_end']} at end; wall time {res['wall_s']} s.",
        "",
    ]
    if "mrr10_exact_raw" in corpus:
        sources = ", ".join(f"{k} {v:,}" for k, v in corpus["passages_per_source"].items())
        lines += [
            f"Corpus: real text, {corpus['corpus']} ({sources} passages), {corpus['model']}; queries: the first "
            f"sentence of a passage (its known answer). Exact MaxSim over the raw vectors: MRR@10 "
            f"{corpus['mrr10_exact_raw']}.",
            "",
        ]
    lines += [
        "| engine | version (torch) | build s | K | B/token | R@10 vs exact raw | MRR@10 | p50 ms | p95 ms "
        "| CPU p50 ms | CPU p95 ms | p50 / ours | CPU p50 / ours | p50 per round | other load (max) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for e, x in s.items():
        version = ", ".join(f"{k} {v}" for k, v in x["version"].items()) or "-"
        torch_v = f" (torch {x['torch']})" if x["torch"] else ""
        build = res["builds"][base_engine(e)]
        reused = " (cached)" if build.get("reused") and "index_of" not in build else ""
        if "index_of" in build or "@" in e:  # the build of another row
            x = {**x, "build_s": "–"}
        ratio = f"{x['p50_over_ours']}x" if "p50_over_ours" in x else "n/a"
        cpu_ratio = f"{x['cpu_p50_over_ours']}x" if "cpu_p50_over_ours" in x else "n/a"
        lines.append(
            f"| {label(e)} | {version}{torch_v} | {x['build_s']}{reused} | {x['K'] or 'n/a'} | "
            f"{x['bytes_per_token']} | {x['recall10']} | {x['mrr10']} | {x['p50_ms']} | {x['p95_ms']} | "
            f"{x['cpu_p50_ms']} | {x['cpu_p95_ms']} | {ratio} | {cpu_ratio} | "
            f"{' / '.join(str(v) for v in x['p50_ms_rounds'])} | {x['others_cpu_cores_max']} |"
        )
    ok = all(x["same_ids_every_round"] for x in s.values())
    lines += ["", f"Every engine returned the same ids in every round: {'yes' if ok else '**no**'}."]
    for e, prof in res.get("profiles", {}).items():
        if "error" in prof:
            lines += ["", f"Stage profile of {label(e)} failed: {prof['error']}"]
            continue
        stages = " · ".join(f"{name} {ms}" for name, ms in prof["stages_p50_ms"].items())
        lines += [
            "",
            f"Stages of {label(e)}, p50 ms per query (CPU time per step; ours: wall time per stage from "
            f"`search(explain=True)`; {c['threads']} thread; same ids as "
            f"`search` for {prof['same_ids_as_search']:.0%} of queries; other load {prof['others_cpu_cores']}): "
            f"{stages}.",
        ]
    return "\n".join(lines) + "\n"


def update_results_md(path: Path, name: str, block: str) -> None:
    """Replace (or add) block ``name`` of the "Peers side by side" section, creating the section if missing."""
    begin = f"<!-- BEGIN peers:{name} (generated by bench/peers/compare.py; do not edit) -->"
    end = f"<!-- END peers:{name} -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if SECTION_TITLE not in text:
        text = text.rstrip("\n") + f"\n\n{SECTION_TITLE}\n\n{SECTION_INTRO}\n"
    wrapped = f"{begin}\n{block}{end}\n"
    pattern = re.compile(re.escape(f"<!-- BEGIN peers:{name} ") + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: wrapped, text, count=1)
    else:  # at the end of the section: before the next "## " heading, or at the end of the file
        start = text.index(SECTION_TITLE) + len(SECTION_TITLE)
        nxt = re.search(r"^## ", text[start:], re.M)
        cut = start + nxt.start() if nxt else len(text)
        head, tail = text[:cut].rstrip("\n"), text[cut:]
        text = f"{head}\n\n{wrapped}" + (f"\n{tail}" if tail else "")
    path.write_text(text)


def main(argv: list[str] | None = None) -> dict | None:
    """Run the comparison described by the command line."""
    args = parse_args(argv)
    results_md = BENCH_DIR / "RESULTS.md"
    if args.render:
        res = json.loads(args.render.read_text())
        print(render_markdown(res))
        if not args.no_markdown:
            update_results_md(results_md, res["name"], render_markdown(res))
        return None
    t0 = time.perf_counter()
    if args.corpus == "synthetic":
        name = f"n{args.n_docs}_d{args.dim}" + ("" if args.nbits == 2 else f"_b{args.nbits}")
        index_root = BENCH_DIR / "indexes" / f"peers_{name}_b{args.nbits}"
        data = export(args.n_docs, args.dim, args.n_queries or 100)
    else:
        data = export_realtext(args.corpus, args.n_docs, args.n_queries or 300)
        name = f"realtext_{args.corpus}_n{args.n_docs}" + ("" if args.nbits == 2 else f"_b{args.nbits}")
        index_root = BENCH_DIR / "indexes" / f"peers_{data.name[len('peers_') :]}_b{args.nbits}"
    name += "".join(f"_ours-{p.replace('=', '')}" for p in args.ours_param)
    meta = json.loads((data / "meta.json").read_text())
    gt, targets = np.load(data / "gt_ids.npy"), np.load(data / "targets.npy")
    src, ours_sha = snapshot_ours(args.ours_ref)
    OURS_SRC[:] = [src] if src is not None else []
    env = {
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "ours_ref": ours_sha,
        "git_dirty": ours_sha == "worktree" and bool(_git("status", "--porcelain", "--", "colbert_index", "kernels")),
        "source_hash": source_hash(src or REPO_DIR),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "timestamp_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    builds = build_all(args, data, index_root)
    rounds = measure(args, data, index_root, gt, targets)
    profiles = {} if args.no_profile else profile_all(args, data, index_root)
    res = {
        "name": name,
        "config": {k: v for k, v in vars(args).items() if k not in ("render",)},
        "corpus": {
            **meta["params"],
            **{k: v for k, v in meta.items() if k not in ("params", "generate_s")},
            "path": str(data.relative_to(REPO_DIR)),
        },
        "env": env,
        "builds": builds,
        "rounds": rounds,
        "summary": summarize(rows_of(args), builds, rounds),
        "profiles": profiles,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    out = BENCH_DIR / "results" / f"peers_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    block = render_markdown(res)
    print(block)
    if not args.no_markdown:
        update_results_md(results_md, name, block)
        log(f"wrote {out} and the block {name!r} of {results_md}")
    return res


if __name__ == "__main__":
    main()
