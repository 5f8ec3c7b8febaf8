"""Index-file fuzzing: random corruptions of a small index, each opened and searched in a forked process.

The index has several segments, string ids, metadata, tombstones, an extended codebook and the documents' float16
vectors (``keep_originals``, searched by the full-precision rerank): a build, an add of documents from new topics, an
upsert, deletes. Each case copies it, applies one corruption (byte flips anywhere,
a truncation, appended bytes, a zeroed range, a deleted file, two files swapped, an edit of one manifest field),
then a forked child opens the copy and runs a fixed probe: searches (with and without a metadata filter),
``search_exact``, metadata reads, the live ids.

Allowed outcomes: ``IndexFormatError`` (or ``IndexLockedError``), or a probe identical to the intact index's.
Failures: a crash (the child dies of a signal), a hang (no answer within ``--timeout``), another exception type,
or a different probe without an error. ``--unverified`` sets the checksum threshold to 0 bytes, as if every file
were too large to be checksummed at open (indexes over 64 MiB per file): flips inside the arrays then change
results without an error by design (``Index.open(verify=True)`` and ``colbert-index info`` catch them), and the
run checks that they never crash or hang.

Usage::

    python bench/fuzz_index.py --cases 1000 --out bench/results/fuzz_index.json     # ~15 min on 2 vCPUs
    python bench/fuzz_index.py --cases 1000 --unverified --out bench/results/fuzz_index_unverified.json
    python bench/fuzz_index.py --quick --out /tmp/fuzz                               # 100 cases (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from common import environment, log, source_hash

DIM = 32
ALLOWED_ERRORS = ("IndexFormatError", "IndexLockedError")
KINDS = ("flip", "flip_many", "truncate", "append", "zero_range", "delete", "swap", "manifest_edit")


def build(path: Path) -> None:
    """The fuzzed index: three segments (one from new topics, so the codebook is extended), tombstones, the vectors
    kept."""
    from colbert_index import Index

    rng = np.random.default_rng(0)

    def docs(n, shift=0.0):
        out = []
        for m in rng.integers(1, 30, size=n):
            d = rng.standard_normal((int(m), DIM)).astype(np.float32) + shift
            out.append(d / np.linalg.norm(d, axis=1, keepdims=True))
        return out

    meta = [{"lang": "en" if i % 3 else "de", "year": 2000 + i % 20} for i in range(160)]
    ids = [f"d{i}" for i in range(160)]
    index = Index.build(path, docs(160), doc_ids=ids, metadata=meta, progress=False, keep_originals=True)
    index.add(docs(40, shift=2.0), doc_ids=[f"n{i}" for i in range(40)], metadata=meta[:40], progress=False)
    index.upsert(docs(10), doc_ids=[f"d{i}" for i in range(10)], progress=False)
    index.delete([f"d{i}" for i in range(20, 35)] + ["n3", "n4"])


def probe(path: Path) -> dict:
    """What the fuzzer compares: results of a fixed set of reads of the index at ``path``."""
    from colbert_index import Index, SearchParams

    rng = np.random.default_rng(1)
    queries = [rng.standard_normal((n, DIM)).astype(np.float32) for n in (4, 9, 16)]
    with Index.open(path) as index:
        res = index.search(queries, k=10)
        filtered = index.search(queries[0], k=5, filter={"lang": "de", "year": {"$gte": 2005}})
        exact = index.search_exact(queries[1], k=5)
        decompressed = index.search(queries[2], k=5, params=SearchParams(rerank=0))
        ids = sorted(index.doc_ids().tolist())
        return {
            "search": [res.ids.tolist(), np.round(res.scores, 4).tolist()],
            "filtered": [filtered.ids.tolist(), np.round(filtered.scores, 4).tolist()],
            "exact": [exact.ids.tolist(), np.round(exact.scores, 4).tolist()],
            "decompressed": [decompressed.ids.tolist(), np.round(decompressed.scores, 4).tolist()],
            "ids": ids,
            "metadata": index.metadata(ids[:: max(1, len(ids) // 12)], missing_ok=True),
            "n_docs": len(index),
        }


# ---------------------------------------------------------------------------------------------- corruptions
def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _manifest_leaves(node, path=()) -> list[tuple]:
    if isinstance(node, dict):
        out = [path + (k,) for k in node]  # a key may be deleted or its value replaced whole
        for k, v in node.items():
            out += _manifest_leaves(v, path + (k,))
        return out
    if isinstance(node, list):
        out = []
        for i, v in enumerate(node):
            out += [path + (i,)] + _manifest_leaves(v, path + (i,))
        return out
    return []


def _mutated(value, rng: np.random.Generator):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return int(rng.choice([value + 1, value - 1, 0, -1, 2 * value + 1, 1 << 40]))
    if isinstance(value, float):
        return float(rng.choice([value * 1.5, -value, 0.0, 1e30]))
    if isinstance(value, str):
        return [value + "x", "", value[:-1], "../manifest.json", value.upper()][int(rng.integers(5))]
    if value is None:
        return [0, "x", {}][int(rng.integers(3))]
    return [None, 0, "x", [] if isinstance(value, dict) else {}][int(rng.integers(4))]


def corrupt(root: Path, rng: np.random.Generator) -> str:
    """Apply one random corruption to the index at ``root``; returns its description."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    files = _files(root)
    if kind == "manifest_edit":
        mpath = root / "manifest.json"
        m = json.loads(mpath.read_text())
        where = _manifest_leaves(m)
        path = where[int(rng.integers(len(where)))]
        parent = m
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.3:
            del parent[path[-1]]
            what = "deleted"
        else:
            parent[path[-1]] = _mutated(parent[path[-1]], rng)
            what = f"set to {parent[path[-1]]!r}"[:60]
        mpath.write_text(json.dumps(m, indent=1, sort_keys=True))
        return f"manifest_edit {'/'.join(map(str, path))} {what}"
    target = files[int(rng.integers(len(files)))]
    rel = target.relative_to(root)
    data = bytearray(target.read_bytes())
    if kind in ("flip", "flip_many") and data:
        for _ in range(1 if kind == "flip" else int(rng.integers(2, 64))):
            data[int(rng.integers(len(data)))] ^= int(rng.integers(1, 256))
        target.write_bytes(bytes(data))
    elif kind == "truncate":
        target.write_bytes(bytes(data[: int(rng.integers(len(data) + 1))]))
    elif kind == "append":
        target.write_bytes(bytes(data) + rng.bytes(int(rng.integers(1, 4096))))
    elif kind == "zero_range" and data:
        lo = int(rng.integers(len(data)))
        hi = min(len(data), lo + int(rng.integers(1, 4096)))
        data[lo:hi] = bytes(hi - lo)
        target.write_bytes(bytes(data))
    elif kind == "delete":
        target.unlink()
    elif kind == "swap":
        other = files[int(rng.integers(len(files)))]
        a, b = target.read_bytes(), other.read_bytes()
        target.write_bytes(b)
        other.write_bytes(a)
        return f"swap {rel} {other.relative_to(root)}"
    return f"{kind} {rel}"


# -------------------------------------------------------------------------------------------------- running
def _run_case(path: Path, timeout: float) -> tuple[str, str]:
    """Fork a child that probes ``path``; ``(outcome, detail)``: ("ok", digest JSON), ("error", "Type: msg"),
    ("crash", signal name) or ("hang", "")."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer on the pipe, then leave without running any cleanup of the parent's
        os.close(r)
        try:
            out = json.dumps({"ok": probe(path)}, sort_keys=True)
        except BaseException as e:  # noqa: BLE001 - every exception is an outcome to classify
            out = json.dumps({"error": type(e).__name__, "message": str(e)[:300]})
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    chunks, deadline = [], time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hang", ""
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "crash", signal.Signals(os.WTERMSIG(status)).name
    answer = json.loads(b"".join(chunks) or b"{}")
    if "ok" in answer:
        return "ok", json.dumps(answer["ok"], sort_keys=True)
    return "error", f"{answer.get('error')}: {answer.get('message')}"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a probe may take before it is a hang")
    p.add_argument("--unverified", action="store_true", help="no checksum at open, as for files over 64 MiB")
    p.add_argument("--quick", action="store_true", help="100 cases (CI)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # internal: build + baseline in a subprocess
    args = p.parse_args(argv)
    if args.prepare is not None:  # runs the kernels, so not in the process that forks the probes
        build(args.prepare / "index")
        (args.prepare / "baseline.json").write_text(json.dumps(probe(args.prepare / "index"), sort_keys=True))
        return {}
    if args.quick:
        args.cases = 100
    if args.unverified:
        from colbert_index.storage import manifest

        manifest.CHECKSUM_MAX_BYTES = 0  # inherited by the forked probes
    work = Path(tempfile.mkdtemp(prefix="fuzz-index-"))
    try:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--prepare", str(work)], check=True)
        intact, baseline = work / "index", (work / "baseline.json").read_text()
        import colbert_index  # noqa: F401  (imported once here, before any fork; no kernel has run in this process)

        rng = np.random.default_rng(args.seed)
        outcomes, by_kind, failures = Counter(), {k: Counter() for k in KINDS}, []
        for case in range(args.cases):
            path = work / "case"
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(intact, path)
            what = corrupt(path, rng)
            outcome, detail = _run_case(path, args.timeout)
            if outcome == "ok":
                outcome = "identical" if detail == baseline else "silent difference"
            elif outcome == "error":
                outcome = "IndexFormatError" if detail.split(":")[0] in ALLOWED_ERRORS else "other exception"
            outcomes[outcome] += 1
            by_kind[what.split()[0]][outcome] += 1
            if outcome not in ("identical", "IndexFormatError"):
                failures.append({"case": case, "corruption": what, "outcome": outcome, "detail": detail[:300]})
                log(f"case {case}: {what} -> {outcome} {detail[:200]}")
            if (case + 1) % 100 == 0:
                log(f"{case + 1} cases: {dict(outcomes)}")
        result = {
            "env": environment(source_hash()),
            "cases": args.cases,
            "seed": args.seed,
            "unverified": args.unverified,
            "seconds": round(time.perf_counter() - t0, 1),
            "outcomes": dict(outcomes),
            "by_kind": {k: dict(v) for k, v in by_kind.items()},
            "failures": failures[:50],
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = args.out / f"fuzz_index{'_unverified' if args.unverified else ''}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    log(f"wrote {out}: {dict(outcomes)}")
    return result


if __name__ == "__main__":
    main()
