"""Crash safety and concurrent readers of the live index, in real processes.

A writer applying the schedule of tests/live_ops.py is killed with SIGKILL at random points; after every
kill the index must open, pass validation and hold exactly the state of its last commit. A reader
process searching in a loop while a writer adds, deletes and compacts must see only committed versions.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter

import faiss
import live_ops
import numpy as np
import pytest

from colbert_index import Index

N_KILLS = 60
MAX_KILLS = 400  # kills go on past N_KILLS until the schedule is past generation 15 (a loaded machine)


@pytest.fixture
def faiss_one_thread():
    before = faiss.omp_get_max_threads()
    live_ops.one_thread()  # the reference run must train exactly as the killed writers do
    yield
    faiss.omp_set_num_threads(before)


def _uncommitted(path, manifest) -> bool:
    """Files only an interrupted write leaves: the manifest's temporary, or a segment, tombstone or
    codebook newer than the committed version."""
    gen, next_seg = manifest["generation"], manifest["next_segment"]
    for p in path.iterdir():
        m = re.fullmatch(r"(seg|codebook|del)-(\d+)(?:-(\d+))?(?:\.npy)?", p.name)
        if p.name == "manifest.json.tmp":
            return True
        if m and ((m[1] == "seg" and int(m[2]) >= next_seg) or int(m[3] or m[2]) > gen and m[1] != "seg"):
            return True
    return False


def test_sigkill_at_random_points_loses_nothing_committed_and_shows_nothing_half_written(tmp_path, faiss_one_thread):
    path, ack = tmp_path / "crash", tmp_path / "ack"
    live_ops.build(path)
    reference = live_ops.build(tmp_path / "reference")  # the same schedule, never interrupted
    fingerprints = [live_ops.fingerprint(reference)]
    times = []
    for _ in range(16):  # the first 16 versions (through a retraining compaction); and how long a write takes
        times.append(time.perf_counter())
        live_ops.step(reference)
        times[-1] = time.perf_counter() - times[-1]
        fingerprints.append(live_ops.fingerprint(reference))
    window = max(0.1, 6 * float(np.median(times)))  # kills spread over a few writes, however busy the machine
    zygote = subprocess.Popen(
        [sys.executable, live_ops.__file__, "zygote", str(path), str(ack)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    rng = np.random.default_rng(0)
    seen, last = Counter(), 0
    try:
        stalled = 0
        while seen["kills"] < N_KILLS or (last <= 15 and seen["kills"] < MAX_KILLS):
            zygote.stdin.write(f"run {rng.uniform(0.0, window):.4f}\n")
            zygote.stdin.flush()
            assert zygote.stdout.readline().strip() == "killed"
            # the last version known committed: the writer's last acknowledgement, or what the last check saw
            acked = max(last, int(ack.read_text().split()[-1]) if ack.exists() and ack.read_text().strip() else 0)
            manifest = json.loads((path / "manifest.json").read_text())
            seen["interrupted a write"] += _uncommitted(path, manifest)
            index = Index.open(path, verify=True, backend="numpy")
            g = index.generation
            assert acked <= g <= acked + 1, (acked, g)  # nothing committed is lost; at most one write was in flight
            seen["committed, not yet acknowledged"] += g == acked + 1
            stalled = 0 if g > last else stalled + 1
            last = g
            while len(fingerprints) <= g:
                live_ops.step(reference)
                fingerprints.append(live_ops.fingerprint(reference))
            assert live_ops.fingerprint(index) == fingerprints[g], f"generation {g} differs from the schedule's"
            seen["kills"] += 1
            if stalled >= 10:  # writers killed before they commit: the machine is slower than the window assumed
                window, stalled = window * 1.5, 0
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=60)
    print(f"{dict(seen)}, reached generation {last}, kills within {window * 1e3:.0f} ms of a start")
    assert seen["kills"] >= N_KILLS and last > 15  # through adds, deletes, upserts and both compactions
    assert seen["interrupted a write"] >= 5  # the kills do land inside writes


def test_a_reader_sees_only_committed_versions_while_a_writer_works(tmp_path, faiss_one_thread):
    path, stop = tmp_path / "index", tmp_path / "stop"
    writer = live_ops.build(path)
    reader = subprocess.Popen(
        [sys.executable, live_ops.__file__, "reader", str(path), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout.readline().strip() == "ready"
        start, steps = time.monotonic(), 0
        # adds, deletes, upserts, compactions (some retraining), until the reader has read enough of them: on a
        # loaded machine it may get few checks into the first 45 writes
        while steps < 45 or time.monotonic() - start < 4 or not _read_enough(stop, start):
            live_ops.step(writer)
            steps += 1
            time.sleep(0.01)
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=120)
    summary = json.loads(out)
    print({k: v if k != "generations" else len(v) for k, v in summary.items()})
    assert summary["errors"] == []
    assert len(summary["generations"]) >= 3 and summary["checks"] >= 10  # it did read while the writer wrote


def _read_enough(stop, start: float, checks: int = 10, generations: int = 3, deadline_s: float = 600) -> bool:
    """Whether the reader's progress file shows ``checks`` checks over ``generations`` generations (the test's
    assertions), or the writer has gone on for ``deadline_s``: then the assertions say what is missing."""
    try:
        done, seen = map(int, stop.with_suffix(".progress").read_text().split())
    except (FileNotFoundError, ValueError):  # not written yet, or caught mid-write
        done, seen = 0, 0
    return (done >= checks and seen >= generations) or time.monotonic() - start > deadline_s


_HANGING_BUILD = """
import sys, time
import numpy as np
from colbert_index import Index

def docs():
    rng = np.random.default_rng(0)
    for _ in range(50):
        yield rng.standard_normal((8, 16)).astype(np.float32)
    print("staged", flush=True)
    time.sleep(600)  # killed here, mid-build

Index.build(sys.argv[1], docs(), progress=False)
"""


def test_a_build_killed_midway_leaves_staging_that_the_next_build_removes(tmp_path):
    from colbert_index.storage.files import STAGING_LOCK, remove_abandoned_staging

    path = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-c", _HANGING_BUILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "staged"
        live = list(tmp_path.glob(".idx.tmp-*"))
        assert len(live) == 1 and (live[0] / STAGING_LOCK).exists()
        assert remove_abandoned_staging(path) == [] and live[0].exists()  # its builder is alive
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert live[0].exists() and not path.exists()  # SIGKILL: nothing cleaned up, nothing committed
    held = tmp_path / ".idx.tmp-held"  # a staging directory whose lock this process holds: a live build
    held.mkdir()
    fd = os.open(held / STAGING_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        unlocked = tmp_path / ".idx.tmp-nolock"  # no lock file: unknown owner (an older version), kept
        unlocked.mkdir()
        rng = np.random.default_rng(1)
        Index.build(path, [rng.standard_normal((8, 16)).astype(np.float32) for _ in range(50)], progress=False)
        assert not live[0].exists() and held.exists() and unlocked.exists()
        assert Index.open(path).n_docs == 50
        assert sorted(p.name for p in path.iterdir() if p.name.startswith(".")) == []  # no lock file inside
    finally:
        os.close(fd)
