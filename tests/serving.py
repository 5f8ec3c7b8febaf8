"""A real ``colbert-index serve`` process for the tests that drive the HTTP server (test_server, test_client,
test_api_fuzz): a free port, start and wait for /health, stop."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_S = 240  # a fresh install compiles the kernels at the first warm-up; a loaded machine is slower


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(index: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """Start ``colbert-index serve INDEX OPTIONS`` on a free port and wait until /health answers; returns the
    process and the base url (the test fails, with the server's output, if it exits or does not answer)."""
    port = free_port()
    cmd = [sys.executable, "-m", "colbert_index.cli", "serve", str(index), "--port", str(port)]
    cmd += ["--log-level", "warning"]
    proc = subprocess.Popen([*cmd, *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"server did not start within {START_TIMEOUT_S} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
