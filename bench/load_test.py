"""Bounded load test of ``colbert-index serve`` on 127.0.0.1: concurrent search clients plus a writer.

Builds the synthetic corpus of ``bench/run.py`` (10,000 documents, dim 64, 2 bits, seed 0; ``{"bucket": 0..999}``
metadata as in ``bench/filters.py``) into a temporary index, starts the server as a separate process (uvicorn,
with an API key), and runs for ``--duration`` seconds or ``--max-requests`` searches, whichever comes first:

* ``--clients`` concurrent clients (asyncio + httpx, one connection each), each sending one search at a time:
  one of the corpus's 100 queries (32 tokens, k=10), a quarter of them with a metadata filter (10% selectivity);
* one writer that every ``--write-every`` seconds adds 4 new documents (``POST /documents``) and deletes the 4
  it added before (``POST /documents/delete``), so readers keep seeing new versions; every 10th time it also
  compacts (``POST /compact``), as a live deployment would, so segments do not pile up.

Reported: search throughput, latency p50 / p99 / max (client side, request to response), errors (any non-200 or
transport error; must be 0), writes and their latency, the generation reached, and the machine. Request bodies
are encoded before the run so the client spends its CPU on sending, not on JSON.

Usage::

    python bench/load_test.py --out bench/results                    # 8 clients, 60 s
    python bench/load_test.py --quick --out /tmp/x                   # smoke run (600 docs, 3 s)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from common import BENCH_DIR, environment, log, others_load, source_hash

from colbert_index import Index
from colbert_index.datasets.synthetic import make_corpus

API_KEY = "load-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (``/proc``; None off Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(index: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "colbert_index.cli", "serve", str(index), "--port", str(port)]
    cmd += ["--api-key", API_KEY, "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /health within 120 s")


async def run_load(base: str, bodies: list[bytes], docs: list[list], args) -> dict:
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    latencies: list[float] = []
    errors: list[str] = []
    writes: list[float] = []
    stop_at = time.monotonic() + args.duration
    sent = 0

    def running() -> bool:
        """Until ``--duration`` and ``--max-requests``; past the duration (for at most ``--min-wait`` s more) until
        ``--min-searches`` searches and ``--min-writes`` writes are done: a loaded machine may get few in."""
        if sent >= args.max_requests:
            return False
        now = time.monotonic()
        short = len(latencies) < args.min_searches or len(writes) < args.min_writes
        return now < stop_at or (short and now < stop_at + args.min_wait)

    async def client(i: int) -> None:
        nonlocal sent
        rng = np.random.default_rng(i)
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            while running():
                sent += 1
                body = bodies[int(rng.integers(len(bodies)))]
                t0 = time.perf_counter()
                try:
                    r = await http.post("/search", content=body)
                    if r.status_code != 200:
                        errors.append(f"search {r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(f"search {type(e).__name__}: {e}")
                latencies.append(time.perf_counter() - t0)

    async def writer() -> None:
        next_id, previous, cycle = 1_000_000, [], 0
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            while running():
                await asyncio.sleep(args.write_every)
                cycle += 1
                new = list(range(next_id, next_id + 4))
                next_id += 4
                payload = {
                    "documents": [
                        {"id": d, "embeddings": docs[d % len(docs)], "metadata": {"bucket": d % 1000}} for d in new
                    ]
                }
                ops = [("/documents", payload), ("/documents/delete", {"ids": previous})]
                for path, body in ops + ([("/compact", {})] if cycle % 10 == 0 else []):
                    if path.endswith("delete") and not previous:
                        continue
                    t0 = time.perf_counter()
                    try:
                        r = await http.post(path, json=body)
                        if r.status_code != 200:
                            errors.append(f"{path} {r.status_code}: {r.text[:200]}")
                    except httpx.HTTPError as e:
                        errors.append(f"{path} {type(e).__name__}: {e}")
                    writes.append(time.perf_counter() - t0)
                previous = new

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(args.clients)), writer())
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1e3
    return {
        "searches": len(latencies),
        "wall_s": round(wall, 2),
        "throughput_qps": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "mean_ms": round(float(lat.mean()), 2),
        "errors": len(errors),
        "error_samples": errors[:10],
        "writes": len(writes),
        "write_p50_ms": round(float(np.median(writes) * 1e3), 1) if writes else None,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-docs", type=int, default=10000)
    p.add_argument("--index", type=Path, help="serve a copy of this index (built from the same corpus) instead")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=60.0, help="seconds (the run stops at this or --max-requests)")
    p.add_argument("--max-requests", type=int, default=200_000, help="searches (the run stops at this or --duration)")
    p.add_argument("--min-searches", type=int, default=0, help="go on past --duration until this many searches")
    p.add_argument("--min-writes", type=int, default=0, help="go on past --duration until this many writes")
    p.add_argument("--min-wait", type=float, default=600.0, help="at most this long past --duration for them")
    p.add_argument("--write-every", type=float, default=1.0, help="seconds between the writer's add + delete")
    p.add_argument("--quick", action="store_true", help="600 docs, 3 s, >= 8 searches, >= 2 writes (smoke)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = p.parse_args(argv)
    if args.quick:
        args.n_docs, args.duration, args.min_searches, args.min_writes = 600, 3.0, 8, 2
    sources = source_hash()
    corpus = make_corpus(args.n_docs, dim=64, n_queries=100, seed=0)
    bucket = np.random.default_rng(0).permutation(args.n_docs) % 1000
    filt = {"bucket": {"$lt": 100}}
    bodies = [
        json.dumps({"query": q.tolist(), "k": 10, **({"filter": filt} if i % 4 == 3 else {})}).encode()
        for i, q in enumerate(corpus.queries)
    ]
    docs = [d.tolist() for d in corpus.documents()[:50]]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index"
        if args.index is not None:
            shutil.copytree(args.index, path)
        else:
            log(f"build: {args.n_docs} docs")
            Index.build(path, corpus.documents(), metadata=[{"bucket": int(b)} for b in bucket], progress=False)
        port = free_port()
        server = start_server(path, port)
        try:
            base = f"http://127.0.0.1:{port}"
            headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
            for body in bodies[:8]:  # warm-up: kernels compiled / loaded, filter bitmap cached
                httpx.post(f"{base}/search", content=body, headers=headers, timeout=120).raise_for_status()
            log(f"load: {args.clients} clients + 1 writer, {args.duration} s or {args.max_requests} searches")
            load: dict = {}
            cpu0, own0, t0 = cpu_seconds(server.pid), sum(os.times()[:2]), time.perf_counter()
            with others_load(load):
                result = asyncio.run(run_load(base, bodies, docs, args))
            cpu1, own1, wall = cpu_seconds(server.pid), sum(os.times()[:2]), time.perf_counter() - t0
            server_cores = round((cpu1 - cpu0) / wall, 2) if cpu0 is not None and cpu1 is not None else None
            client_cores = round((own1 - own0) / wall, 2)
            stats = httpx.get(f"{base}/stats", headers=headers, timeout=30).json()
        finally:
            server.terminate()
            server.wait(timeout=60)
    results = {
        "name": f"load_n{args.n_docs}" + ("_quick" if args.quick else ""),
        "config": {
            "n_docs": args.n_docs,
            "clients": args.clients,
            "duration_s": args.duration,
            "max_requests": args.max_requests,
            "write_every_s": args.write_every,
            "k": 10,
            "filtered_fraction": 0.25,
            "server_workers": os.cpu_count(),
        },
        **result,
        "final_stats": stats,
        # cores kept busy during the run by the server, by this client, and by every other process
        "server_cpu_cores": server_cores,
        "client_cpu_cores": client_cores,
        "other_processes_cpu_cores": (
            None
            if load.get("others_cpu_cores") is None or server_cores is None
            else round(max(0.0, load["others_cpu_cores"] - server_cores), 2)
        ),
        "env": environment(sources),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{results['name']}.json"
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k not in ("env", "error_samples")}, indent=1))
    log(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
