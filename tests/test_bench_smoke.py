"""The benchmark script must keep working: a tiny run end to end (figures are not checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_quick_run(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(repo / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "quick.json").read_text())
    text = json.dumps(rows)
    assert "recall10_vs_exact" in text and "bytes_per_token" in text
    assert "| nbits |" in out.stdout


def test_live_bench_quick_run(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(repo / "bench" / "live.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "live_n600_d64.json").read_text())
    assert results["drift"]["extended"]["add"]["centroids_added"] > 0
    assert "| half + 10 add(s) | 11 |" in out.stdout
