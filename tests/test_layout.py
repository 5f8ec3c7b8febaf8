"""The package's shape: a light import, small modules, and an engine that does not depend on its faces."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "colbert_index"
MAX_LINES = 500
FACES = ("colbert_index.cli", "colbert_index.server")


def test_import_pulls_in_no_optional_dependency():
    """``import colbert_index`` stays fast and works without the extras: no GPU, server, Ray or model stack."""
    heavy = ("triton", "ray", "fastapi", "uvicorn", "transformers", "torch")
    code = f"import sys, colbert_index; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_module_is_over_500_lines():
    sizes = {p.relative_to(PACKAGE.parent): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert len(sizes) > 20  # the walk found the package
    assert {str(p): n for p, n in sizes.items() if n > MAX_LINES} == {}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_engine_never_imports_its_faces():
    """Only the CLI and the server import the CLI or the server (DESIGN.md: one direction)."""
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/") or rel == "server.py":
            continue
        bad = sorted(n for n in _imports(path) if n.startswith(FACES))
        if bad:
            offenders[rel] = bad
    assert offenders == {}
