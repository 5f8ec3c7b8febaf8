"""HTTP API fuzzing: schemathesis drives a real ``colbert-index serve`` process from the server's own OpenAPI schema.

The served index has several segments, string ids, metadata, stored texts (BM25), tombstones and its vectors kept
(the full-precision rerank). For every operation and both generation modes, valid bodies (``positive``: right dims,
numbers up to the float32 limit, unicode texts, any filter object, FTS5 syntax in text queries) and invalid ones
(``negative``: wrong types, wrong dims, empty lists, numbers out of range, a missing key) are generated with
Hypothesis and sent with the API key; one valid body in five is also sent without the key, with a wrong key and
with another scheme. Writes really happen: documents are added, upserted, deleted and compacted while searches
run.

Checks on every answer: no 5xx (``not_a_server_error``); status code, content type, headers and body as the schema
declares (``status_code_conformance``, ``content_type_conformance``, ``response_headers_conformance``,
``response_schema_conformance``); an invalid request is refused with 400, 401, 413 or 422
(``negative_data_rejection``); a request without the right key gets 401 (``auth_401``). Expected: 0 failures.

Usage::

    python bench/fuzz_api.py --out bench/results                # >= 10,000 requests
    python bench/fuzz_api.py --quick --out /tmp/fuzz            # about 1,000 requests
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
import requests
import schemathesis
from common import environment, log, others_load, package_version, source_hash
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS as REGISTERED_CHECKS
from schemathesis.checks import load_all_checks
from schemathesis.core.failures import FailureGroup

DIM = 16
KEY = "fuzz-api-key"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)
REFUSED = [400, 401, 413, 422]  # how an invalid request may be answered
BAD_AUTH = ({}, {"Authorization": "Bearer not-the-key"}, {"Authorization": f"Basic {KEY}"})
START_TIMEOUT_S = 240


def build(path: Path) -> None:
    """The served index: three segments (one from new topics), string ids, metadata, texts, tombstones, vectors."""
    from colbert_index import Index

    rng = np.random.default_rng(0)

    def docs(n, shift=0.0):
        out = []
        for m in rng.integers(1, 30, size=n):
            d = rng.standard_normal((int(m), DIM)).astype(np.float32) + shift
            out.append(d / np.linalg.norm(d, axis=1, keepdims=True))
        return out

    words = ["cats", "ranking", "pruning", "centroid", "résumé", "日本語", "naïve", "straße"]
    texts = [f"passage {i} about {words[i % len(words)]} and {words[(i * 3) % len(words)]}" for i in range(200)]
    meta = [{"lang": "en" if i % 3 else "de", "year": 2000 + i % 20, "tags": [words[i % 4]]} for i in range(200)]
    ids = [f"d{i}" for i in range(160)]
    index = Index.build(
        path, docs(160), doc_ids=ids, metadata=meta[:160], texts=texts[:160], progress=False, keep_originals=True
    )
    index.add(docs(40, shift=2.0), doc_ids=[f"n{i}" for i in range(40)], metadata=meta[160:], texts=texts[160:])
    index.upsert(docs(10), doc_ids=[f"d{i}" for i in range(10)], progress=False)
    index.delete([f"d{i}" for i in range(20, 35)] + ["n3", "n4"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """``colbert-index serve`` with the API key and a 1 MiB body limit; returns the process and its base url."""
    port = _free_port()
    cmd = [sys.executable, "-m", "colbert_index.cli", "serve", str(index), "--port", str(port), "--api-key", KEY]
    cmd += ["--max-body-mb", "1", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not answer /health within {START_TIMEOUT_S} s")


MODES = ("positive", "well-formed", "negative", "bad key")
REPAIRED = ("POST /search", "POST /search/batch", "POST /documents", "POST /documents/upsert", "POST /documents/delete")


def well_formed(label: str, body, serial: int):
    """A valid body made to satisfy what the schema cannot say (the server has no model and string ids; a search
    needs some query; a document needs embeddings; an add needs new ids, ``serial`` makes them so; an upsert here
    replaces documents of the index): the generated values themselves are kept. ``None`` when nothing usable is
    left."""
    if not isinstance(body, dict):
        return None
    body = dict(body)
    if isinstance(body.get("filter"), list):
        body["filter"] = [str(x) for x in body["filter"]]
    if label in ("POST /search", "POST /search/batch"):
        dense, text, lexical = (
            ("query", "text", "text_query") if label == "POST /search" else ("queries", "texts", "text_queries")
        )
        body.pop(text, None)
        body["hybrid"] = False
        if body.get(dense) is None and body.get(lexical) is None:
            return None
        if label == "POST /search/batch" and body.get(dense) is not None and body.get(lexical) is not None:
            n = min(len(body[dense]), len(body[lexical]))
            body[dense], body[lexical] = body[dense][:n], body[lexical][:n]
    elif label in ("POST /documents", "POST /documents/upsert"):
        docs = [dict(d) for d in body.get("documents", []) if d.get("embeddings") is not None]
        if not docs:
            return None
        for i, d in enumerate(docs):
            d["id"] = f"d{(serial + i) % 200}" if label.endswith("upsert") else f"new-{serial}-{i}"
        body["documents"] = docs
    elif label == "POST /documents/delete":
        if body.get("ids") is not None:
            body.pop("filter", None)
            body["ids"] = [str(x) for x in body["ids"]]
        elif body.get("filter") is None:
            return None
    return body


class Tally:
    """Requests, statuses and failures by operation and mode, and the first failures in full."""

    def __init__(self) -> None:
        self.requests: Counter = Counter()
        self.statuses: dict[tuple, Counter] = defaultdict(Counter)
        self.failures: dict[tuple, Counter] = defaultdict(Counter)
        self.details: dict[tuple, Counter] = defaultdict(Counter)  # what 4xx answers said, digits as N
        self.examples: list[dict] = []

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def record(self, key: tuple[str, str], response, failed: list[tuple[str, str]], curl: str) -> None:
        status = response.status_code
        self.requests[key] += 1
        self.statuses[key][str(status)] += 1
        if 400 <= status < 500:
            try:
                detail = str(response.json().get("detail", ""))
            except (ValueError, AttributeError):
                detail = response.text
            self.details[key][f"{status} {re.sub(r'[0-9]+', 'N', detail)[:100]}"] += 1
        for check, message in failed:
            self.failures[key][check] += 1
            if len(self.examples) < 50:
                self.examples.append(
                    {"operation": key[0], "mode": key[1], "check": check, "message": message[:600], "curl": curl[:600]}
                )
            log(f"{key}: {check} failed ({status}): {message.splitlines()[0][:200]}")

    def table(self) -> dict:
        """Per operation: requests, statuses and failures in all, and by mode."""
        out = {}
        for label in sorted({k[0] for k in self.requests}):
            keys = [(label, m) for m in MODES if (label, m) in self.requests]
            out[label] = {
                "requests": sum(self.requests[k] for k in keys),
                "statuses": dict(sorted(sum((self.statuses[k] for k in keys), Counter()).items())),
                "failures": dict(sum((self.failures[k] for k in keys), Counter())),
                "by_mode": {
                    k[1]: {
                        "requests": self.requests[k],
                        "statuses": dict(sorted(self.statuses[k].items())),
                        "failures": dict(self.failures[k]),
                        "top_4xx": dict(self.details[k].most_common(5)),
                    }
                    for k in keys
                },
            }
        return out


def _validate(case, response, checks) -> list[tuple[str, str]]:
    """The checks that fail, by name: all run at once, then each on its own to tell which found a failure."""
    try:
        case.validate_response(response, checks=[check for _, check in checks])
        return []
    except FailureGroup:
        pass
    failed = []
    for name, check in checks:
        try:
            case.validate_response(response, checks=[check])
        except FailureGroup as group:
            failed.append((name, str(group.exceptions[0])))
    return failed


def fuzz_operation(operation, mode: str, examples: int, seed: int, session, tally: Tally) -> None:
    """Send up to ``examples`` generated cases of one mode (fewer when Hypothesis runs out of distinct inputs, or,
    for ``well-formed``, of usable ones) and check every answer; one ``positive`` case in five is sent again
    without the right key."""
    label = operation.label
    load_all_checks()
    checks = list(zip(CHECKS, REGISTERED_CHECKS.get_by_names(CHECKS)))
    generation = GenerationMode.NEGATIVE if mode == "negative" else GenerationMode.POSITIVE
    strategy = operation.as_strategy(generation_mode=generation)
    if mode == "well-formed":
        serials = itertools.count()

        def repaired(case):
            case.body = well_formed(label, case.body, next(serials))
            return case

        strategy = strategy.map(repaired).filter(lambda case: case.body is not None)
    sent = [0]

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case) -> None:
        n, sent[0] = sent[0], sent[0] + 1
        response = case.call(headers={"Authorization": f"Bearer {KEY}"}, session=session, timeout=120)
        tally.record((label, mode), response, _validate(case, response, checks), case.as_curl_command())
        if mode == "positive" and label != "GET /health" and n % 5 == 0:
            bad = dict(BAD_AUTH[(n // 5) % len(BAD_AUTH)])
            case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
            response = case.call(headers=bad, session=session, timeout=120)
            failed = _validate(case, response, checks[:5])
            if response.status_code != 401 or response.headers.get("www-authenticate") != ["Bearer"]:
                failed.append(("auth_401", f"{bad or 'no key'}: {response.status_code} {response.text[:200]}"))
            tally.record((label, "bad key"), response, failed, case.as_curl_command())

    try:
        run()
    except Unsatisfiable:  # nothing to generate: GET /health has no input to make invalid
        pass


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (``/proc``; None off Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=600, help="generated cases per operation and mode, per round")
    p.add_argument("--requests", type=int, default=10_000, help="rounds (new seeds) until this many were sent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="about 1,000 requests (CI)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.examples, args.requests = 80, 1000
    sources, t0 = source_hash(), time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fuzz-api-"))
    tally, rounds, load = Tally(), 0, {}
    try:
        build(work / "index")
        server, base = start_server(work / "index", work / "server.log")
        try:
            config = schemathesis.Config.from_dict(
                {"seed": args.seed, "checks": {"negative_data_rejection": {"expected-statuses": REFUSED}}}
            )
            schema = schemathesis.openapi.from_url(f"{base}/openapi.json", config=config)
            operations = [result.ok() for result in schema.get_all_operations()]
            log(f"{len(operations)} operations: {', '.join(op.label for op in operations)}")
            t_fuzz, server_cpu0 = time.perf_counter(), _cpu_seconds(server.pid)
            with others_load(load), requests.Session() as session:
                while tally.total < args.requests:
                    for i, operation in enumerate(operations):
                        for j, mode in enumerate(MODES[:3]):
                            if mode == "well-formed" and operation.label not in REPAIRED:
                                continue
                            seed = args.seed + 1000 * rounds + 10 * i + j
                            fuzz_operation(operation, mode, args.examples, seed, session, tally)
                            log(f"round {rounds} {operation.label} {mode}: {tally.total} sent")
                    rounds += 1
            fuzz_s, server_cpu1 = time.perf_counter() - t_fuzz, _cpu_seconds(server.pid)
            alive = server.poll() is None
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        server_log = (work / "server.log").read_text()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    server_cores = None if None in (server_cpu0, server_cpu1) else round((server_cpu1 - server_cpu0) / fuzz_s, 2)
    others = load.get("others_cpu_cores")
    result = {
        "env": environment(sources),
        "schemathesis": package_version("schemathesis"),
        "hypothesis": package_version("hypothesis"),
        "seed": args.seed,
        "examples_per_operation_and_mode": args.examples,
        "modes": list(MODES),
        "rounds": rounds,
        "seconds": round(time.perf_counter() - t0, 1),
        "fuzz_seconds": round(fuzz_s, 1),
        "requests": tally.total,
        "requests_per_s": round(tally.total / fuzz_s, 1),
        "failures": sum(sum(c.values()) for c in tally.failures.values()),
        "server_alive_at_end": alive,
        # cores kept busy during the fuzzing by the server, and by processes other than this one and the server
        "server_cpu_cores": server_cores,
        "others_cpu_cores": None if others is None or server_cores is None else round(max(0, others - server_cores), 2),
        "checks": [*CHECKS, "auth_401"],
        "operations": tally.table(),
        "failure_examples": tally.examples,
        "server_log_tail": server_log[-3000:] if tally.examples else "",
    }
    out = args.out / f"fuzz_api{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    log(f"wrote {out}: {result['requests']} requests, {result['failures']} failures in {result['seconds']} s")
    return result


def markdown(result: dict) -> str:
    """The outcome table of docs/benchmarks.md: requests, statuses and failures per operation."""
    rows = ["| operation | requests | statuses seen | failures |", "|---|---:|---|---:|"]
    for label, r in result["operations"].items():
        statuses = ", ".join(f"{s}: {n}" for s, n in r["statuses"].items())
        failed = ", ".join(f"{c}: {n}" for c, n in r["failures"].items()) or "0"
        rows.append(f"| {label} | {r['requests']:,} | {statuses} | {failed} |")
    rows.append(f"| **all** | {result['requests']:,} | | {result['failures']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
