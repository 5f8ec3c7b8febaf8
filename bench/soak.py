"""Soak test of ``colbert-index serve``: SIGKILLs at random moments under load, then a filesystem that runs out of
space.

**Kills.** A synthetic index (``--n-docs`` documents of 8-96 tokens, dim 32, 2 bits, string ids, the vectors kept
as float16 so that a document's stored content can be compared exactly) is served with an API key while

* ``--clients`` search clients (threads, one request in flight each) send either one of the corpus's queries or a
  *self-check*: the first 16 tokens of a document whose state the writer has acknowledged and is not changing,
  which must return it among the top 10 when it is live, and must not return it when it was deleted;
* one writer adds new documents, upserts and deletes existing ones (1-4 per request) and compacts (one compaction in
  five retrains the codebook). Every document it writes carries ``{"sha": ...}`` metadata, the hash of its float16
  vectors. It records each write as acknowledged (HTTP 200) or not (the request was in flight when the server died,
  or got another status): the ids of an unacknowledged write are never touched again, and their outcome must be all
  or nothing;
* the main thread kills the server with SIGKILL, at a random moment or (every other kill) while a write is in
  flight, and restarts it, until ``--duration`` seconds have passed and ``--kills`` kills were made. A retraining
  compaction outlasts most gaps between kills: one in two that a kill meets is let finish first.

Then the index is opened directly (``Index.open(verify=True)``) and checked: every acknowledged write whose ids no
later write touched is there with its exact content (the stored float16 vectors and the metadata both carry the hash
the writer recorded, and every decompressed token has a cosine of at least 0.5 with its stored vector), deleted ids
are gone, every unacknowledged write is wholly there or wholly absent (an upsert: every id new or every id old), no
id appears that nobody wrote, and ``colbert-index info`` (which checksums every file) exits 0. Connection errors
while the server is down are expected and counted apart; a 5xx, another error, or a wrong self-check answer is a
failure.

**Full disk.** (root only: a ``tmpfs`` of ``--tmpfs-mb`` MiB; skipped with a message when it cannot be mounted.) A
smaller index on it is served; a filler file leaves a little space, the writer adds until a write fails, then the
filesystem is filled to the last byte and an add, an upsert, a delete and a compaction are each tried. Recorded:
each failure's status and detail, which must be a clear error (an error status other than a bare 500, JSON whose
detail names the lack of space), and what the next request on the connection that answered it gets. Checked: the
server keeps running and answering searches, its generation and the index on disk stay at the last acknowledged
commit (every acknowledged write present, ``colbert-index info`` exits 0); once the filler is removed, every kind of
write succeeds again.

Usage::

    python bench/soak.py --out bench/results     # 10 min of load and >= 20 kills, then the full disk
    python bench/soak.py --quick --out /tmp/soak # 6 s of load and 1 kill, a small full disk: 1.5 min on 2 busy vCPUs
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from common import BENCH_DIR, environment, log, others_load, source_hash

from colbert_index import Index
from colbert_index.datasets.synthetic import make_corpus

API_KEY = "soak-key"
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
DIM = 32
SELF_TOKENS = 16  # tokens of a document sent as its self-check query
START_TIMEOUT_S = 240  # server start: Index.open and the kernels' warm-up, on a loaded machine
WRITE_TIMEOUT_S = 300
SEARCH_TIMEOUT_S = 120


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc``; 0 off Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sha(vectors: np.ndarray) -> str:
    """The content hash the writer records and the checks recompute: sha256 of the float16 vectors."""
    return hashlib.sha256(np.ascontiguousarray(vectors, dtype=np.float16).tobytes()).hexdigest()[:20]


def documents(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` synthetic documents of 8-96 tokens (float16 values: what the index stores) and 100 queries."""
    corpus = make_corpus(n, dim=DIM, n_queries=100, mean_doc_len=40, min_doc_len=8, max_doc_len=96, seed=seed)
    return [d.astype(np.float16) for d in corpus.documents()], corpus.queries


def document(doc_id: str, vectors: np.ndarray, h: str) -> dict:
    """A document of a ``POST /documents`` body: the vectors, and their hash as metadata."""
    return {"id": doc_id, "embeddings": vectors.astype(np.float32).tolist(), "metadata": {"sha": h}}


# ---------------------------------------------------------------------------------------------- the server
class Server:
    """One ``colbert-index serve`` process at a time, killed and restarted; its output appended to ``log_path``.

    ``epoch`` counts kills: a request that fails while the server is down, or whose epoch changed while it was in
    flight, met a kill; any other failure is the server's."""

    def __init__(self, index: Path, log_path: Path) -> None:
        self.index, self.log_path = index, log_path
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.up = False
        self.epoch = 0
        self.start_s: list[float] = []
        self.died_alone = 0  # exits nobody asked for
        self.start_failures: list[str] = []  # starts that exited before answering (the end of their output)
        self.cpu_s = 0.0  # CPU seconds of the processes killed so far

    @property
    def base(self) -> str:
        """The server's URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait for /health (another port if the old one cannot be bound again)."""
        for attempt in range(3):
            t0 = time.monotonic()
            cmd = [sys.executable, "-m", "colbert_index.cli", "serve", str(self.index), "--port", str(self.port)]
            cmd += ["--api-key", API_KEY, "--log-level", "warning"]
            with open(self.log_path, "a") as out:
                out.write(f"--- start {len(self.start_s) + 1} (port {self.port})\n")
                out.flush()
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            while time.monotonic() - t0 < START_TIMEOUT_S:
                if self.proc.poll() is not None:
                    break
                try:
                    if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                        self.start_s.append(time.monotonic() - t0)
                        self.up = True
                        return
                except httpx.TransportError:
                    time.sleep(0.05)
            else:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"server did not answer /health within {START_TIMEOUT_S} s: see {self.log_path}")
            log(f"server exited with {self.proc.returncode} at start (attempt {attempt + 1}); trying another port")
            self.start_failures.append(self.log_path.read_text(errors="replace")[-1000:])
            self.port = free_port()
        raise RuntimeError(f"server does not start: see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL (the epoch moves first, so that clients attribute the errors that follow to the kill)."""
        self.up = False
        self.epoch += 1
        if self.proc.poll() is None:
            self.cpu_s += cpu_seconds(self.proc.pid)
            os.kill(self.proc.pid, signal.SIGKILL)
        else:
            self.died_alone += 1
        self.proc.wait()

    def alive(self) -> bool:
        """Whether the current process is running."""
        return self.proc is not None and self.proc.poll() is None

    def tracebacks(self) -> int:
        """How many tracebacks the server processes logged."""
        return self.log_path.read_text(errors="replace").count("Traceback") if self.log_path.exists() else 0

    def exceptions(self) -> list[str]:
        """Each exception the server logged for a request, in one line: the innermost frame of this package (file,
        line, function) and the exception's last line."""
        if not self.log_path.exists():
            return []
        out = []
        for chunk in self.log_path.read_text(errors="replace").split("Exception in ASGI application")[1:]:
            frames = re.findall(r'File "[^"]*colbert_index/([^"]+)", line (\d+), in (\w+)', chunk)
            errors = re.findall(r"^[\w.]*(?:Error|Exception)\b.*$", chunk, flags=re.M)
            where = f"{frames[-1][0]}:{frames[-1][1]} {frames[-1][2]}" if frames else "?"
            out.append(f"{where}: {errors[-1] if errors else '?'}")
        return out


# ---------------------------------------------------------------------------------------------- the writer's record
class Ledger:
    """What the writer knows: the acknowledged state of each id (a content hash, or None once deleted), the
    content of each hash, the ids of unacknowledged writes (frozen: never written again, checked all or nothing),
    and a version per id, odd while a write is changing it, which the self-checks use to skip ids a write raced."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.state: dict[str, str | None] = {}
        self.content: dict[str, np.ndarray] = {}
        self.version: dict[str, int] = {}  # bumped when a write touching the id starts and when it ends
        self.frozen: set[str] = set()
        self.ops: list[dict] = []  # every write: op, ids, hashes, acknowledged, status
        self.last_writer: dict[str, int] = {}  # id -> index in ops of the last write that touched it
        self.before_delete: dict[str, str] = {}  # a deleted id -> the hash it had (its self-check query)

    def set_initial(self, ids: list[str], docs: list[np.ndarray]) -> None:
        """The built index's documents: live, acknowledged."""
        for i, d in zip(ids, docs):
            h = sha(d)
            self.state[i], self.content[h], self.version[i] = h, d, 0

    def live(self) -> list[str]:
        """The ids acknowledged live and not frozen: the ones an upsert or a delete may pick."""
        with self.lock:
            return [i for i, h in self.state.items() if h is not None and i not in self.frozen]

    def pick(self, rng: np.random.Generator) -> tuple[str, str | None, int] | None:
        """A random id whose state is acknowledged and not being changed: (id, hash or None, version)."""
        with self.lock:
            keys = list(self.state)
            for _ in range(20):
                i = keys[int(rng.integers(len(keys)))]
                if i not in self.frozen and self.version[i] % 2 == 0:
                    return i, self.state[i], self.version[i]
        return None

    def begin(self, ids: list[str]) -> None:
        """A write touching ``ids`` is about to be sent (their versions turn odd)."""
        with self.lock:
            for i in ids:
                self.version[i] = self.version.get(i, 0) + 1

    def end(self, op: dict, new: dict[str, str | None]) -> None:
        """Record a write's outcome: acknowledged (the ids take their new state) or not (they freeze)."""
        with self.lock:
            n = len(self.ops)
            self.ops.append(op)
            for i, h in new.items():
                self.version[i] += 1
                self.last_writer[i] = n
                if op["acknowledged"]:
                    if h is None and self.state.get(i) is not None:
                        self.before_delete[i] = self.state[i]
                    self.state[i] = h
                else:
                    self.frozen.add(i)


def writer(server: Server, ledger: Ledger, pool: list[np.ndarray], stop: threading.Event, stats: dict, seed: int):
    """Adds, upserts, deletes and compactions, one at a time, until ``stop``; each logged in ``ledger``."""
    rng = np.random.default_rng(seed)
    next_doc, next_id = 0, 0
    http = httpx.Client(headers=HEADERS, timeout=WRITE_TIMEOUT_S)

    def content() -> np.ndarray:
        nonlocal next_doc
        base = pool[next_doc % len(pool)].astype(np.float32)
        next_doc += 1
        x = base + 0.05 * rng.standard_normal(base.shape).astype(np.float32)  # every version is new content
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)

    while not stop.is_set():
        while not server.up and not stop.is_set():
            time.sleep(0.05)
        if stop.is_set():
            break
        kind = str(rng.choice(["add", "upsert", "delete", "compact", "retrain"], p=[0.35, 0.25, 0.3, 0.08, 0.02]))
        live = ledger.live()
        if kind in ("upsert", "delete") and len(live) < 10:
            kind = "add"
        n = int(rng.integers(1, 5))
        new: dict[str, str | None] = {}
        if kind == "add":
            docs = [content() for _ in range(n)]
            ids = [f"w{next_id + j}" for j in range(n)]
            next_id += n
        elif kind == "upsert":
            ids = [str(x) for x in rng.choice(live, size=n, replace=False)]
            docs = [content() for _ in range(n)]
        else:
            ids = [] if kind in ("compact", "retrain") else [str(x) for x in rng.choice(live, size=n, replace=False)]
            docs = []
        if docs:
            for i, d in zip(ids, docs):
                h = sha(d)
                ledger.content[h], new[i] = d, h
            body = {"documents": [document(i, d, new[i]) for i, d in zip(ids, docs)]}
            path = "/documents" if kind == "add" else "/documents/upsert"
        elif kind == "delete":
            new = dict.fromkeys(ids)
            body, path = {"ids": ids}, "/documents/delete"
        else:  # a compaction, retraining the codebook or not
            body, path = {"retrain": kind == "retrain"}, "/compact"
        with ledger.lock:
            old = {i: ledger.state.get(i) for i in ids}
        op = {"op": kind, "ids": ids, "old": old, "new": new}
        ledger.begin(ids)
        stats["in_flight"] = kind
        t0, epoch = time.monotonic(), server.epoch
        try:
            r = http.post(f"{server.base}{path}", json=body)
            op["status"] = r.status_code
            if r.status_code == 200:
                op["generation"] = r.json()["generation"]
            else:
                op["detail"] = r.text[:300]
        except httpx.TransportError as e:
            op["status"] = f"{type(e).__name__}"
        finally:
            stats["in_flight"] = None
        op["seconds"] = round(time.monotonic() - t0, 3)
        op["acknowledged"] = op["status"] == 200
        if op["acknowledged"]:
            stats["write_s"].append(op["seconds"])
        elif isinstance(op["status"], int) or epoch == server.epoch and server.up:  # not a kill's doing
            stats["write_errors"].append({k: op.get(k) for k in ("op", "ids", "status", "detail")})
        ledger.end(op, new)
        time.sleep(float(rng.uniform(0.0, 0.2)))
    http.close()


def search_client(
    server: Server, ledger: Ledger, queries: list[list], stop: threading.Event, counts: Counter, errors: list, seed: int
):
    """One search at a time until ``stop``: half the corpus's queries, half self-checks (module docstring)."""
    rng = np.random.default_rng(seed)
    http = httpx.Client(headers=HEADERS, timeout=SEARCH_TIMEOUT_S)
    while not stop.is_set():
        if not server.up:
            time.sleep(0.05)
            continue
        check = ledger.pick(rng) if rng.random() < 0.5 else None
        if check is not None:
            doc_id, h, version = check
            vectors = ledger.content.get(h if h is not None else ledger.before_delete.get(doc_id))
            if vectors is None:
                check = None
        query = vectors[:SELF_TOKENS].astype(np.float32).tolist() if check else queries[int(rng.integers(len(queries)))]
        epoch = server.epoch
        try:
            r = http.post(f"{server.base}/search", json={"query": query, "k": 10})
        except httpx.TransportError as e:
            if server.epoch != epoch or not server.up:
                counts["refused_during_restart"] += 1
            else:
                counts["transport_error"] += 1
                errors.append(f"search {type(e).__name__}: {e}")
            time.sleep(0.05)
            continue
        if r.status_code != 200:
            counts["5xx" if r.status_code >= 500 else "other_status"] += 1
            errors.append(f"search {r.status_code}: {r.text[:300]}")
            continue
        counts["answers"] += 1
        if not check:
            continue
        hit = doc_id in [x["id"] for x in r.json()["results"]]
        with ledger.lock:
            stable = ledger.version[doc_id] == version and doc_id not in ledger.frozen
        if not stable:
            counts["self_check_skipped"] += 1
        elif (h is not None) == hit:
            counts["self_check_live" if h is not None else "self_check_deleted"] += 1
        else:
            counts["wrong_answer"] += 1
            what = "missing from its own top 10" if h is not None else "deleted but returned"
            errors.append(f"self-check {doc_id}: {what}")
    http.close()


# ---------------------------------------------------------------------------------------------- the checks
MIN_TOKEN_COSINE = 0.5  # a decompressed token against its stored vector: above 0.78 on this corpus, ~0 if mixed up


def stored_states(index: Index, doc_ids: list[str]) -> dict[str, tuple[str | None, bool, float]]:
    """What the index holds for each id: the hash of its stored float16 vectors (None when not live), whether its
    metadata hash equals it and its decompressed tokens agree with them (every token's cosine at least
    :data:`MIN_TOKEN_COSINE`), and the lowest such cosine."""
    snap = index._s  # the snapshot's arrays: the stored vectors and codes are not public API
    pos = snap.lookup(doc_ids)
    out: dict[str, tuple[str | None, bool, float]] = {i: (None, True, 1.0) for i, q in zip(doc_ids, pos) if q < 0}
    live = [(i, q) for i, q in zip(doc_ids, pos) if q >= 0]
    by_segment: dict[int, list] = {}
    for i, q in live:
        [(seg, slots)] = snap.locate(np.array([q]))
        d = snap.segments[seg].data
        lo, hi = int(d.offsets[slots[0]]), int(d.offsets[slots[0] + 1])
        rows = d.originals.rows(lo, hi) if d.originals is not None else None
        by_segment.setdefault(seg, []).append((i, rows, lo, hi))
    metas = dict(zip([i for i, _ in live], index.metadata([i for i, _ in live]))) if live else {}
    for seg, docs in by_segment.items():  # one decompression per segment
        d = snap.segments[seg].data
        span = np.concatenate([np.arange(lo, hi) for _, _, lo, hi in docs])
        tokens = d.codec.decompress(np.asarray(d.codes)[span], np.asarray(d.residuals)[span], index.backend)
        at = 0
        for i, rows, lo, hi in docs:
            decompressed, at = tokens[at : at + hi - lo], at + hi - lo
            if rows is None:  # a segment without its vectors: cannot happen in this index; fails the check
                out[i] = (None, False, 0.0)
                continue
            v = rows.astype(np.float32)
            cos = np.einsum("nd,nd->n", v, decompressed) / (
                np.linalg.norm(v, axis=1) * np.linalg.norm(decompressed, axis=1) + 1e-12
            )
            low = float(cos.min()) if len(cos) else 1.0
            h = sha(rows)
            out[i] = (h, (metas[i] or {}).get("sha") == h and low >= MIN_TOKEN_COSINE, low)
    return out


def verify(path: Path, ledger: Ledger) -> dict:
    """The checks after the run (module docstring); every figure of the ``lost`` and ``partial`` kinds must be 0."""
    out: Counter = Counter()
    problems: list[str] = []
    with Index.open(path, verify=True) as index:
        live = {str(x) for x in index.doc_ids().tolist()}
        states = stored_states(index, sorted(set(ledger.state) | ledger.frozen | live))

        def matches(i: str, h: str | None) -> bool:
            got, agree, _ = states[i]
            return got == h and agree

        # acknowledged writes: each id no later write touched must be in the state this write left
        for n, op in enumerate(ledger.ops):
            if not op["ids"]:  # a compaction: nothing of its own to find
                out["compactions_acknowledged" if op["acknowledged"] else "compactions_unacknowledged"] += 1
                continue
            if not op["acknowledged"]:
                continue
            out["writes_acknowledged"] += 1
            final = [i for i in op["ids"] if ledger.last_writer[i] == n]
            if not final:
                out["writes_acknowledged_superseded"] += 1
                continue
            out["writes_acknowledged_checked"] += 1
            bad = [i for i in final if not matches(i, op["new"][i])]
            if bad:
                out["writes_acknowledged_lost"] += 1
                problems.append(f"lost: {op['op']} {bad[:5]} (status {op['status']})")
            else:
                out["writes_acknowledged_found"] += 1
        # unacknowledged writes: all ids new or all ids old (their ids were never written again)
        for op in ledger.ops:
            if op["acknowledged"] or not op["ids"]:
                continue
            out["writes_unacknowledged"] += 1
            if all(matches(i, op["new"][i]) for i in op["ids"]):
                out["writes_unacknowledged_applied"] += 1
            elif all(matches(i, op["old"][i]) for i in op["ids"]):
                out["writes_unacknowledged_absent"] += 1
            else:
                out["writes_unacknowledged_partial"] += 1
                problems.append(f"partial: {op['op']} {[(i, states[i]) for i in op['ids']][:4]}")
        # the build's documents no write touched, and ids nobody wrote
        untouched = [i for i in ledger.state if i not in ledger.last_writer]
        out["build_docs_untouched"] = len(untouched)
        intact = sum(matches(i, ledger.state[i]) for i in untouched)
        out["build_docs_lost"] = len(untouched) - intact
        out["unknown_ids_live"] = len(live - set(ledger.state) - ledger.frozen)  # ids no write ever sent
        expected_live = {i for i, h in ledger.state.items() if h is not None and i not in ledger.frozen}
        out["acknowledged_live_missing"] = len(expected_live - live)
        deleted = {i for i, h in ledger.state.items() if h is None and i not in ledger.frozen}
        out["deleted_ids_live"] = len(deleted & live)
        out["live_docs"] = len(live)
        out["min_token_cosine"] = round(min([c for h, _, c in states.values() if h is not None] or [1.0]), 3)
        out["generation"] = index.generation
        out["segments"] = len(index.segment_info())
        out["n_centroids"] = index.n_centroids
    info = subprocess.run(
        [sys.executable, "-m", "colbert_index.cli", "info", str(path)], capture_output=True, text=True, timeout=600
    )
    out["info_exit_code"] = info.returncode
    if info.returncode != 0:
        problems.append(f"colbert-index info: {info.stdout[-500:]} {info.stderr[-500:]}")
    out["lost"] = (
        out["writes_acknowledged_lost"] + out["build_docs_lost"] + out["acknowledged_live_missing"]
        + out["deleted_ids_live"]
    )  # fmt: skip
    out["partial"] = out["writes_unacknowledged_partial"] + out["unknown_ids_live"]
    return {**dict(out), "problems": problems[:20]}


# ---------------------------------------------------------------------------------------------- part 1: kills
def inside_a_write(server: Server, stats: dict, rng: np.random.Generator) -> None:
    """Wait (at most 30 s) for a write to be in flight, then a random part of a typical write's time."""
    until = time.monotonic() + 30
    while stats["in_flight"] is None and time.monotonic() < until and server.alive():
        time.sleep(0.005)
    typical = float(np.median(stats["write_s"][-50:])) if stats["write_s"] else 0.5
    time.sleep(float(rng.uniform(0, typical)))


def soak_kills(args, workdir: Path) -> dict:
    """Part 1 (module docstring): the load, the kills, then the checks; a dict of what happened."""
    docs, queries = documents(args.n_docs + args.pool, seed=0)
    build, pool = docs[: args.n_docs], docs[args.n_docs :]
    ids = [f"b{i}" for i in range(args.n_docs)]
    path = workdir / "index"
    log(f"build: {args.n_docs} docs, dim {DIM}")
    built = Index.build(path, build, doc_ids=ids, metadata=[{"sha": sha(d)} for d in build], keep_originals=True,
                        progress=False)  # fmt: skip
    n_centroids, tokens = built.n_centroids, built.n_tokens
    built.close()
    ledger = Ledger()
    ledger.set_initial(ids, build)
    server = Server(path, workdir / "server.log")
    server.start()
    log(f"server up in {server.start_s[0]:.1f} s; {args.clients} clients + 1 writer for {args.duration} s, "
        f">= {args.kills} kills")  # fmt: skip
    stop = threading.Event()
    stats: dict = {"in_flight": None, "write_s": [], "write_errors": []}
    counts: Counter = Counter()
    errors: list[str] = []
    qbodies = [q.tolist() for q in queries]
    threads = [threading.Thread(target=writer, args=(server, ledger, pool, stop, stats, 1), daemon=True)]
    threads += [
        threading.Thread(target=search_client, args=(server, ledger, qbodies, stop, counts, errors, 100 + c),
                         daemon=True)
        for c in range(args.clients)
    ]  # fmt: skip
    rng = np.random.default_rng(2)
    kills: list[dict] = []
    load: dict = {}
    t0, client_cpu0 = time.monotonic(), sum(os.times()[:2])
    with others_load(load):
        for t in threads:
            t.start()
        while time.monotonic() - t0 < args.duration or len(kills) < args.kills:
            mid_write = len(kills) % 2 == 0
            wait = float(rng.uniform(*args.kill_every))
            deadline = time.monotonic() + (wait / 2 if mid_write else wait)
            while time.monotonic() < deadline and server.alive():
                time.sleep(0.02)
            if mid_write:
                inside_a_write(server, stats, rng)
            if stats["in_flight"] == "retrain" and rng.random() < 0.5:  # spare one retraining in two: they outlast
                until = time.monotonic() + 300  # most gaps between kills, and their commit is worth checking too
                while stats["in_flight"] == "retrain" and time.monotonic() < until and server.alive():
                    time.sleep(0.02)
                if mid_write:
                    inside_a_write(server, stats, rng)
            kills.append({"at_s": round(time.monotonic() - t0, 1), "write_in_flight": stats["in_flight"],
                          "mid_write": mid_write})  # fmt: skip
            server.kill()
            time.sleep(float(rng.uniform(0, 1.0)))
            server.start()
            if len(kills) % 5 == 0:
                log(f"{len(kills)} kills, {time.monotonic() - t0:.0f} s, {counts['answers']} answers, "
                    f"{len(ledger.ops)} writes")  # fmt: skip
        acked, until = len(stats["write_s"]), time.monotonic() + 60  # the last restart takes writes too
        while len(stats["write_s"]) < acked + 3 and time.monotonic() < until:
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=WRITE_TIMEOUT_S + 10)
    wall = time.monotonic() - t0
    server.kill()  # the end is one more SIGKILL: nothing is flushed or closed on the way out
    client_cores = sum(os.times()[:2]) - client_cpu0
    log("checking the index")
    checks = verify(path, ledger)
    acknowledged = [op for op in ledger.ops if op["acknowledged"]]
    return {
        "index_at_build": {"docs": args.n_docs, "tokens": tokens, "n_centroids": n_centroids},
        "duration_s": round(wall, 1),
        "kills": len(kills),
        "kills_mid_write": sum(bool(k["write_in_flight"]) for k in kills),
        "kills_by_write_in_flight": dict(Counter(str(k["write_in_flight"]) for k in kills)),
        "server_died_alone": server.died_alone,
        "server_start_failures": server.start_failures,
        "server_start_s": {
            "median": round(float(np.median(server.start_s)), 2),
            "max": round(float(np.max(server.start_s)), 2),
        },
        "server_tracebacks": server.tracebacks(),
        "writes": {
            "sent": len(ledger.ops),
            "by_op": dict(Counter(op["op"] for op in ledger.ops)),
            "acknowledged": len(acknowledged),
            "acknowledged_by_op": dict(Counter(op["op"] for op in acknowledged)),
            "docs_written_acknowledged": sum(len(op["new"]) for op in acknowledged if op["op"] in ("add", "upsert")),
            "unacknowledged": len(ledger.ops) - len(acknowledged),
            "errors": len(stats["write_errors"]),
            "error_samples": stats["write_errors"][:10],
            "p50_s": round(float(np.median(stats["write_s"])), 3) if stats["write_s"] else None,
            "max_s": round(float(np.max(stats["write_s"])), 3) if stats["write_s"] else None,
            "unacknowledged_s": [op["seconds"] for op in ledger.ops if not op["acknowledged"]],
        },
        "searches": {
            "answers": counts["answers"],
            "refused_during_restart": counts["refused_during_restart"],
            "self_checks_live": counts["self_check_live"],
            "self_checks_deleted": counts["self_check_deleted"],
            "self_checks_skipped_raced_a_write": counts["self_check_skipped"],
            "wrong_answers": counts["wrong_answer"],
            "5xx": counts["5xx"],
            "other_errors": counts["other_status"] + counts["transport_error"],
            "error_samples": errors[:10],
        },
        "checks": checks,
        # cores kept busy on average by the servers, by this process (clients, writer), and by every other process
        "server_cpu_cores": round(server.cpu_s / wall, 2),
        "client_cpu_cores": round(client_cores / wall, 2),
        "other_processes_cpu_cores": (
            None
            if load.get("others_cpu_cores") is None
            else round(max(0.0, load["others_cpu_cores"] - server.cpu_s / wall), 2)
        ),
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "kill_log": kills,
    }


# ---------------------------------------------------------------------------------------------- part 2: full disk
def fill(directory: Path, name: str, leave_bytes: int) -> int:
    """Write ``directory/name`` until ``leave_bytes`` are free (0: until ENOSPC); returns the bytes written."""
    written = 0
    with open(directory / name, "ab", buffering=0) as f:  # unbuffered: nothing left to flush once it is full
        while True:
            st = os.statvfs(directory)
            free = st.f_bavail * st.f_frsize
            if free <= leave_bytes:
                break
            try:  # a write larger than the space left writes what fits; the next one fails
                written += f.write(b"\0" * min(1 << 20, free - leave_bytes))
            except OSError:
                break
    return written


class DiskWriter:
    """The full-disk part's writer: one write at a time through the server, each recorded in a :class:`Ledger`.

    ``http`` opens a connection per request: after a 500 the server closes the connection it answered on, which
    would fail the next request sent on it (``soak_full_disk`` measures that once, on a kept-alive connection)."""

    def __init__(self, server: Server, ledger: Ledger, pool: list[np.ndarray]) -> None:
        self.server, self.ledger, self.pool, self.next_doc = server, ledger, pool, 0
        no_keepalive = httpx.Limits(max_keepalive_connections=0)
        self.http = httpx.Client(headers=HEADERS, timeout=WRITE_TIMEOUT_S, base_url=server.base, limits=no_keepalive)

    def write(self, kind: str, n: int = 2, http: httpx.Client | None = None) -> dict:
        """An add of ``n`` new documents, an upsert or a delete of ``n`` live ones, or a compaction; its record."""
        ledger, new = self.ledger, {}
        if kind in ("add", "upsert"):
            j = self.next_doc % (len(self.pool) - n)
            docs, self.next_doc = self.pool[j : j + n], self.next_doc + n
            ids = [f"w{self.next_doc + i}" for i in range(n)] if kind == "add" else ledger.live()[:n]
            for i, d in zip(ids, docs):
                ledger.content[sha(d)], new[i] = d, sha(d)
            body = {"documents": [document(i, d, new[i]) for i, d in zip(ids, docs)]}
            url = "/documents" if kind == "add" else "/documents/upsert"
        elif kind == "delete":
            ids = ledger.live()[-n:]
            new, body, url = dict.fromkeys(ids), {"ids": ids}, "/documents/delete"
        else:
            ids, body, url = [], {}, "/compact"
        with ledger.lock:
            op = {"op": kind, "ids": ids, "old": {i: ledger.state.get(i) for i in ids}, "new": new}
        ledger.begin(ids)
        try:
            r = (http or self.http).post(url, json=body)
            op["status"] = r.status_code
            if r.status_code == 200:
                op["generation"] = r.json()["generation"]
            else:
                op["content_type"], op["detail"] = r.headers.get("content-type"), r.text[:300]
        except httpx.TransportError as e:
            op["status"] = type(e).__name__
        op["acknowledged"] = op["status"] == 200
        ledger.end(op, new)
        return op

    def searches(self, n: int = 20) -> dict:
        """``n`` self-checks of live documents: status -> count, and how many missed their document."""
        out: Counter = Counter()
        live = self.ledger.live()
        for j in range(n):
            doc_id = live[j * 7 % len(live)]
            q = self.ledger.content[self.ledger.state[doc_id]][:SELF_TOKENS].astype(np.float32).tolist()
            try:
                r = self.http.post("/search", json={"query": q, "k": 10})
            except httpx.TransportError as e:
                out[type(e).__name__] += 1
                continue
            out[str(r.status_code)] += 1
            if r.status_code == 200 and doc_id not in [x["id"] for x in r.json()["results"]]:
                out["missed_own_document"] += 1
        return dict(out)

    def generation(self) -> int:
        """The generation the server reports."""
        return self.http.get("/health").json()["generation"]


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def soak_full_disk(args, workdir: Path) -> dict:
    """Part 2 (module docstring); a dict of what happened, or ``{"skipped": why}`` when no tmpfs can be mounted."""
    mount = workdir / "tmpfs"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_mb}m", "tmpfs", str(mount)],
                       check=True, capture_output=True, text=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        msg = (getattr(e, "stderr", None) or str(e)).strip()
        log(f"full disk: skipped, cannot mount a tmpfs (needs root): {msg}")
        return {"skipped": f"cannot mount a tmpfs (needs root): {msg}"}
    server = None
    try:
        docs, _ = documents(args.enospc_docs + 400, seed=3)
        build, pool = docs[: args.enospc_docs], docs[args.enospc_docs :]
        ids = [f"b{i}" for i in range(len(build))]
        path = mount / "index"
        Index.build(path, build, doc_ids=ids, metadata=[{"sha": sha(d)} for d in build], keep_originals=True,
                    progress=False)  # fmt: skip
        ledger = Ledger()
        ledger.set_initial(ids, build)
        server = Server(path, workdir / "server-full-disk.log")
        server.start()
        w = DiskWriter(server, ledger, pool)
        out: dict = {"tmpfs_mb": args.tmpfs_mb, "index_docs": args.enospc_docs, "index_bytes_at_start": dir_bytes(path)}
        filler = fill(mount, "filler-1", args.enospc_slack_kb << 10)
        log(f"full disk: index {out['index_bytes_at_start'] >> 10} KiB, filler {filler >> 20} MiB; adding until a "
            "write fails")  # fmt: skip
        kept_alive = httpx.Client(headers=HEADERS, timeout=WRITE_TIMEOUT_S, base_url=server.base)
        out["adds_acknowledged_before_full"] = 0
        while (first := w.write("add", 4, http=kept_alive))["acknowledged"]:
            out["adds_acknowledged_before_full"] += 1
        try:  # the next request on the connection the failure was answered on
            out["next_request_on_that_connection"] = str(kept_alive.get("/stats").status_code)
        except httpx.TransportError as e:
            out["next_request_on_that_connection"] = f"{type(e).__name__}: {e}"
        kept_alive.close()
        fill(mount, "filler-2", 0)  # the last bytes too
        failures = [first] + [w.write(kind) for kind in ("add", "upsert", "delete", "compact")]
        out["failures"] = [{k: op.get(k) for k in ("op", "status", "content_type", "detail")} for op in failures]
        out["failures_acknowledged"] = sum(op["acknowledged"] for op in failures)
        out["last_acknowledged_generation"] = max(op["generation"] for op in ledger.ops if op["acknowledged"])
        out["searches_while_full"] = w.searches()
        out["server_generation_while_full"] = w.generation()
        out["server_alive_while_full"] = server.alive()
        with Index.open(path) as idx:
            out["disk_generation_while_full"] = idx.generation
        out["index_bytes_while_full"] = dir_bytes(path)
        out["checks_while_full"] = verify(path, ledger)
        log(f"full disk: {[(op['op'], op['status']) for op in failures]}; searches {out['searches_while_full']}")
        (mount / "filler-1").unlink()
        (mount / "filler-2").unlink()
        out["writes_after_freeing"] = {kind: w.write(kind)["status"] for kind in ("add", "upsert", "delete", "compact")}
        out["searches_after_freeing"] = w.searches()
        out["server_alive_after"] = server.alive()
        out["index_bytes_after"] = dir_bytes(path)
        server.kill()
        out["server_tracebacks"] = server.tracebacks()
        out["server_exceptions"] = dict(Counter(e.replace(str(mount), "<tmpfs>") for e in server.exceptions()))
        out["checks_after"] = verify(path, ledger)
        return out
    finally:
        if server is not None and server.alive():
            server.kill()
        gc.collect()  # memory maps of the index's files left in reference cycles keep the filesystem busy
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    """Both parts (or one of them), the results written to ``--out``/soak.json (soak_quick.json with ``--quick``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-docs", type=int, default=3000, help="documents of the served index")
    p.add_argument("--pool", type=int, default=3000, help="documents the writer draws its content from")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (at least; see --kills)")
    p.add_argument("--kills", type=int, default=20, help="kills at least (the run goes on until both are reached)")
    p.add_argument("--kill-every", type=float, nargs=2, default=(8.0, 30.0), metavar=("MIN", "MAX"),
                   help="seconds between a restart and the next kill: uniform in [MIN, MAX]")  # fmt: skip
    p.add_argument("--tmpfs-mb", type=int, default=64, help="size of the filesystem that runs out of space")
    p.add_argument("--enospc-docs", type=int, default=1000, help="documents of the index on it")
    p.add_argument("--enospc-slack-kb", type=int, default=1024, help="space the filler leaves for the writer")
    p.add_argument("--skip-kills", action="store_true", help="only the full-disk part")
    p.add_argument("--skip-full-disk", action="store_true", help="only the kills")
    p.add_argument("--quick", action="store_true", help="300 docs, 6 s and 1 kill, a 16 MiB filesystem")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.n_docs, args.pool, args.duration, args.kills, args.kill_every = 300, 200, 6.0, 1, (2.0, 4.0)
        args.tmpfs_mb, args.enospc_docs, args.enospc_slack_kb = 16, 200, 256
    sources = source_hash()
    results: dict = {
        "name": "soak" + ("_quick" if args.quick else ""),
        "config": {
            "n_docs": args.n_docs,
            "dim": DIM,
            "nbits": 2,
            "keep_originals": True,
            "clients": args.clients,
            "duration_s": args.duration,
            "min_kills": args.kills,
            "kill_every_s": list(args.kill_every),
            "tmpfs_mb": args.tmpfs_mb,
            "enospc_docs": args.enospc_docs,
            "cpu_count": os.cpu_count(),
        },
    }
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(tmp)
        try:
            if not args.skip_kills:
                results["kills"] = soak_kills(args, workdir)
            if not args.skip_full_disk:
                results["full_disk"] = soak_full_disk(args, workdir)
        finally:
            for name in ("server.log", "server-full-disk.log"):  # kept next to the results when something failed
                if (workdir / name).exists() and (workdir / name).read_text(errors="replace").count("Traceback"):
                    args.out.mkdir(parents=True, exist_ok=True)
                    shutil.copy(workdir / name, args.out / f"{results['name']}_{name}")
    results["env"] = environment(sources)
    results["failures"] = failures(results)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{results['name']}.json"
    out.write_text(json.dumps(results, indent=1))
    summary = {k: v for k, v in results.items() if k != "env"}
    if "kills" in summary:
        summary["kills"] = {k: v for k, v in summary["kills"].items() if k != "kill_log"}
    print(json.dumps(summary, indent=1))
    log(f"wrote {out}")
    if results["failures"]:
        log(f"FAILED: {results['failures']}")
    return results


def clear_error(op: dict) -> bool:
    """A failed write's answer is a clear error: an HTTP error status other than a bare 500, as JSON, whose detail
    names the lack of space."""
    status, detail = op["status"], (op.get("detail") or "").lower()
    json_body = "json" in (op.get("content_type") or "")
    return isinstance(status, int) and status >= 400 and status != 500 and json_body and "space" in detail


def failures(results: dict) -> list[str]:
    """What went wrong, in words (empty when the run passed)."""
    out = []
    k = results.get("kills")
    if k is not None:
        c = k["checks"]
        for name in ("lost", "partial"):
            if c[name]:
                out.append(f"kills: {c[name]} {name}: {c['problems'][:3]}")
        if c["info_exit_code"]:
            out.append(f"kills: colbert-index info exited with {c['info_exit_code']}")
        s = k["searches"]
        if s["wrong_answers"] or s["5xx"] or s["other_errors"]:
            out.append(f"kills: searches: {s['wrong_answers']} wrong, {s['5xx']} 5xx, {s['other_errors']} other errors")
        if k["writes"]["errors"]:
            out.append(f"kills: {k['writes']['errors']} write errors: {k['writes']['error_samples'][:3]}")
        if k["server_died_alone"]:
            out.append(f"kills: the server exited {k['server_died_alone']} time(s) without being killed")
        if k["server_start_failures"]:
            out.append(f"kills: {len(k['server_start_failures'])} restart(s) failed: {k['server_start_failures'][:1]}")
    f = results.get("full_disk")
    if f is not None and "skipped" not in f:
        unclear = [(op["op"], op["status"]) for op in f["failures"] if not clear_error(op)]
        if unclear:
            out.append(f"full disk: writes failed without a clear error: {unclear}")
        if not f["server_alive_while_full"] or set(f["searches_while_full"]) != {"200"}:
            out.append(f"full disk: the server did not keep answering: {f['searches_while_full']}")
        generations = ("last_acknowledged_generation", "server_generation_while_full", "disk_generation_while_full")
        if len({f[g] for g in generations}) != 1:
            out.append(f"full disk: the index moved off its last acknowledged commit: {[f[g] for g in generations]}")
        for name in ("checks_while_full", "checks_after"):
            c = f[name]
            if c["lost"] or c["partial"] or c["info_exit_code"]:
                out.append(f"full disk: {name}: lost {c['lost']}, partial {c['partial']}, info {c['info_exit_code']}")
        if set(f["writes_after_freeing"].values()) != {200} or set(f["searches_after_freeing"]) != {"200"}:
            out.append(f"full disk: after freeing space: {f['writes_after_freeing']}, {f['searches_after_freeing']}")
    return out


if __name__ == "__main__":
    sys.exit(1 if main()["failures"] else 0)
