"""The benchmark script must keep working: a tiny run end to end (figures are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _quick_run(script: str, tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    """``bench/<script> --quick OPTIONS`` in a subprocess, results to ``tmp_path``; fails the test if it fails."""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(repo / "bench" / script), "--quick", "--out", str(tmp_path), *options],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_bench_quick_run(tmp_path):
    out = _quick_run("run.py", tmp_path)
    rows = json.loads((tmp_path / "quick.json").read_text())
    text = json.dumps(rows)
    assert "recall10_vs_exact" in text and "bytes_per_token" in text
    assert "| nbits |" in out.stdout


def test_live_bench_quick_run(tmp_path):
    out = _quick_run("live.py", tmp_path)
    results = json.loads((tmp_path / "live_n600_d64.json").read_text())
    assert results["drift"]["extended"]["add"]["centroids_added"] > 0
    assert "| half + 10 add(s) | 11 |" in out.stdout


def test_filters_bench_quick_run(tmp_path):
    out = _quick_run("filters.py", tmp_path)
    results = json.loads((tmp_path / "filters_quick.json").read_text())
    assert {r["selectivity"] for r in results["rows"]} == {"50%", "10%", "1%", "0.1%"}
    assert "| selectivity |" in out.stdout


def test_load_test_quick_run(tmp_path):
    _quick_run("load_test.py", tmp_path)
    results = json.loads((tmp_path / "load_n600_quick.json").read_text())
    assert results["searches"] > 0 and results["writes"] > 0 and results["errors"] == 0, results["error_samples"]


def test_index_fuzzing_finds_no_crash_hang_or_silent_difference(tmp_path):
    """bench/fuzz_index.py --quick: 100 random corruptions of a small index (byte flips, truncations, swapped,
    deleted and appended files, manifest edits), each opened and searched in a forked process."""
    _quick_run("fuzz_index.py", tmp_path)
    results = json.loads((tmp_path / "fuzz_index_quick.json").read_text())
    assert sum(results["outcomes"].values()) == 100
    assert results["outcomes"].get("IndexFormatError", 0) > 50  # the corruptions do reach the checks
    assert set(results["outcomes"]) <= {"IndexFormatError", "identical"}, results["failures"]


def test_rerank_bench_quick_run(tmp_path):
    """bench/rerank.py --quick: a small synthetic corpus indexed with and without its vectors, timed and measured."""
    _quick_run("rerank.py", tmp_path)
    [corpus] = json.loads((tmp_path / "rerank_quick.json").read_text())["corpora"]
    [row] = corpus["rows"]
    assert corpus["indexes"]["with"]["originals_bytes"] > 0 and corpus["indexes"]["without"]["originals_bytes"] == 0
    assert row["with"]["recall10_raw"] >= row["without"]["recall10_raw"]
    assert row["with"]["rss_mib_while"]["VmHWM"] > 0 and len(row["with"]) == len(row["without"])


def test_soak_quick_run_loses_nothing_across_a_kill(tmp_path):
    """bench/soak.py --quick, kills only (the full-disk part mounts a tmpfs, as root): the server under 8 clients and
    a writer, SIGKILLed inside a write and restarted; every acknowledged write found, none half applied."""
    _quick_run("soak.py", tmp_path, "--skip-full-disk")
    results = json.loads((tmp_path / "soak_quick.json").read_text())
    kills = results["kills"]
    assert kills["kills"] >= 1 and kills["writes"]["acknowledged"] > 0 and kills["searches"]["answers"] > 0
    assert kills["checks"]["writes_acknowledged_found"] == kills["checks"]["writes_acknowledged_checked"] > 0
    assert results["failures"] == [], results["failures"]


def test_fixed_costs_quick_run(tmp_path):
    """bench/fixed_costs.py --quick: a query's time split into kernel and Python, and per stage."""
    _quick_run("fixed_costs.py", tmp_path)
    shapes = json.loads((tmp_path / "fixed_costs_quick.json").read_text())["shapes"]
    assert set(shapes) == {"as encoded", "first 12 tokens"}
    for shape in shapes.values():
        assert 0 < shape["mean_kernel_ms"] < shape["mean_ms"] and 0 < shape["python_share"] < 1
        assert {"tables", "probe", "stage4"} <= set(shape["stages"])
