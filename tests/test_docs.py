"""The user docs (README.md and docs/*.md) say what the code does.

- README.md stays a short user guide (the PyPI long description): at most 15,000 bytes, set-up commands in their
  own blocks only, a link to every docs page.
- No commit-hash-like token in README.md or docs/*.md (docs/design-notes.md, the project's history, aside).
- Every ```python block runs: the blocks of one file in order, in one namespace, in a fresh temporary directory,
  in a subprocess. Checkpoint directories the blocks name (``Encoder.from_pretrained("models/...")``) are
  created first with the tiny checkpoint writers of the encoder tests. A block preceded by
  ``<!-- docs-test: skip (reason) -->`` is not run; it shows up as a skipped test with its reason.
- Every ``colbert-index ...`` line of a bash block parses with the real argument parser, and every
  ``python -m colbert_index.distributed plan ...`` line runs.
- README's command-line block runs for real on small input files, and its server block starts the server and
  sends the curl request (with httpx).

A failure names the file and line of the block or command.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = (
    "search",
    "format",
    "live-index",
    "filters",
    "hybrid",
    "server",
    "distributed",
    "gpu",
    "encoder",
    "ecosystem",
    "pooling",
    "benchmarks",
    "design-notes",
)
README_MAX_BYTES = 15_000
SETUP_COMMANDS = (
    "pip install torch==2.13.0 && pip install -e . && colbert-index demo",
    'pip install torch==2.13.0 && pip install -e ".[test]" && ruff check . && python -m pytest -q tests',
)
HISTORY_PAGE = "design-notes.md"  # may name commits: it is the history
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*(?:\((?P<reason>.*)\))?\s*-->")
SHELL = ("bash", "sh", "shell", "console")
HEXLIKE = re.compile(r"\b[0-9a-f]{7,}\b")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
RUN_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    lang: str
    code: str
    skip: str | None  # the reason of a docs-test skip marker

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, with the skip marker on the line before each (if any)."""
    out: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            lang = stripped[3:].strip().split(" ")[0].lower()
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = SKIP.fullmatch(before)
            if marker is not None and not (marker.group("reason") or "").strip():
                raise AssertionError(f"{path.relative_to(ROOT)}:{i}: a docs-test skip marker needs a (reason)")
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise AssertionError(f"{path.relative_to(ROOT)}:{i + 1}: code block never closed")
            reason = marker.group("reason").strip() if marker else None
            out.append(Block(path, i + 2, lang, "\n".join(lines[i + 1 : j]) + "\n", reason))
            i = j + 1
        else:
            i += 1
    return out


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def python_files() -> list[Path]:
    return [p for p in doc_files() if any(b.lang == "python" for b in blocks(p))]


def skipped_blocks() -> list[Block]:
    return [b for p in doc_files() for b in blocks(p) if b.skip is not None]


def shell_commands(block: Block) -> list[tuple[int, str]]:
    """``(line, command)`` of a shell block: continuation lines joined, ``&&`` chains split, prompts dropped."""
    out, pending, start = [], "", 0
    for offset, raw in enumerate(block.code.splitlines()):
        if not pending:
            start = block.line + offset
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        text = text[2:] if text.startswith("$ ") else text
        out += [(start, part.strip()) for part in text.split("&&") if part.strip()]
    return out


def argv_of(command: str) -> tuple[dict, list[str]]:
    """``(environment assignments, argv)`` of a shell command line (comments dropped)."""
    tokens = shlex.split(command, comments=True)
    env = {}
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env[name] = value
    if tokens and tokens[-1] == "&":
        tokens.pop()
    return env, tokens


# --------------------------------------------------------------------------------------------------------- layout
def test_readme_is_short():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, over {README_MAX_BYTES}: move details to docs/"


def test_no_commit_hashes_in_user_docs():
    found = []
    for path in doc_files():
        if path.name == HISTORY_PAGE:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for token in HEXLIKE.findall(line):
                if re.search(r"[0-9]", token) and re.search(r"[a-f]", token):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {token}")
    assert not found, "commit-hash-like tokens (keep history in docs/design-notes.md):\n" + "\n".join(found)


@pytest.mark.parametrize("page", PAGES)
def test_every_docs_page_exists_and_is_linked_from_readme(page):
    assert (DOCS / f"{page}.md").is_file(), f"docs/{page}.md is missing"
    assert f"](docs/{page}.md)" in README.read_text(encoding="utf-8"), f"README.md does not link docs/{page}.md"


def test_readme_pip_installs_only_in_the_setup_blocks():
    installs = [
        (b.line + i, line.strip())
        for b in blocks(README)
        for i, line in enumerate(b.code.splitlines())
        if "pip install" in line
    ]
    assert [cmd for _, cmd in installs] == list(SETUP_COMMANDS), (
        "README.md code blocks must hold exactly the two set-up commands as pip installs "
        f"(extras go in prose); found: {installs}"
    )


# --------------------------------------------------------------------------------------------------------- commands
def test_colbert_index_commands_parse():
    from colbert_index.cli import build_parser

    failures, n = [], 0
    for path in doc_files():
        for block in blocks(path):
            if block.lang not in SHELL:
                continue
            for line, command in shell_commands(block):
                _, argv = argv_of(command)
                if not argv or argv[0] != "colbert-index":
                    continue
                n += 1
                err = io.StringIO()
                try:
                    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                        args, extra = build_parser().parse_known_args(argv[1:])
                except SystemExit:
                    failures.append(f"{path.relative_to(ROOT)}:{line}: {command}\n    {err.getvalue().strip()}")
                    continue
                # colbert_index.cli.main takes the query texts argparse leaves over after `search` options
                if extra and not (args.command == "search" and not any(e.startswith("-") for e in extra)):
                    failures.append(f"{path.relative_to(ROOT)}:{line}: {command}\n    unrecognised: {extra}")
    assert n > 0, "no colbert-index command found in the docs"
    assert not failures, "commands the CLI does not accept:\n" + "\n".join(failures)


def test_distributed_plan_commands_run():
    from colbert_index.distributed.__main__ import main

    n = 0
    for path in doc_files():
        for block in blocks(path):
            if block.lang not in SHELL:
                continue
            for line, command in shell_commands(block):
                _, argv = argv_of(command)
                if argv[:3] != ["python", "-m", "colbert_index.distributed"]:
                    continue
                n += 1
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    rc = main(argv[3:])
                assert rc == 0 and "shard" in out.getvalue(), f"{path.relative_to(ROOT)}:{line}: {command}"
    assert n > 0


# --------------------------------------------------------------------------------------------------------- python
RUNNER = r"""
import json, os, sys, traceback
# Several files in one interpreter (imports paid once); each file has its own namespace and working directory,
# and a failing file does not stop the next.
for f in json.load(open(sys.argv[1], encoding="utf-8")):
    os.chdir(f["cwd"])
    namespace = {"__name__": "__main__"}
    print(f"@@ file {f['file']}", flush=True)
    for b in f["blocks"]:
        print(f"@@ block {b['where']}", flush=True)
        try:
            # the code at its own line numbers under the markdown file's name: tracebacks show the doc's lines
            exec(compile("\n" * (b["line"] - 1) + b["code"], b["path"], "exec"), namespace)
        except BaseException:
            print(traceback.format_exc(), flush=True)
            print(f"@@ failed {b['where']}", flush=True)
            break
    else:
        print(f"@@ ok {f['file']}", flush=True)
print("@@ done", flush=True)
"""


def _checkpoint_writers():
    """``write_pylate_checkpoint`` and ``write_stanford_checkpoint`` (the encoder tests' tiny random models)."""
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    if importlib.util.find_spec("colbert_index.encoder.fixtures") is not None:
        from colbert_index.encoder import fixtures
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import test_encoder as fixtures
    return fixtures.write_pylate_checkpoint, fixtures.write_stanford_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``make(name, where)``: a tiny checkpoint standing in for the model directory ``name``, copied to ``where``
    (Stanford format for names with "colbertv2", PyLate's otherwise; dim 48 unless the name says 32m: 64)."""
    cache = tmp_path_factory.mktemp("checkpoints")
    made: dict[str, Path] = {}

    def make(name: str, where: Path) -> None:
        target = where / name
        if target.exists():
            return
        if name not in made:
            pylate, stanford = _checkpoint_writers()
            path = cache / f"ckpt{len(made)}"
            if "colbertv2" in name:
                stanford(path, dim=128)
            else:
                pylate(path, dense_dims=(64 if "32m" in name else 48,))
            made[name] = path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(made[name], target)

    return make


def _model_dirs(path: Path) -> set[str]:
    """Relative checkpoint directories a markdown file's runnable blocks name."""
    names = set()
    for b in blocks(path):
        if b.skip is not None:
            continue
        if b.lang == "python":
            names |= set(re.findall(r"from_pretrained\(\s*[\"']([^\"']+)[\"']", b.code))
        elif b.lang in SHELL:
            names |= set(re.findall(r"--model\s+(\S+)", b.code))
    return {n for n in names if not os.path.isabs(n) and n.upper() != n}  # DIR and the like are placeholders


def _subprocess_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0")
    env.pop("TRITON_INTERPRET", None)
    return env


def _uses_ray(path: Path) -> bool:
    return any(b.lang == "python" and "colbert_index.distributed" in b.code for b in blocks(path))


def run_python_blocks(files: list[Path], root: Path, make_checkpoint) -> dict[Path, tuple[bool | None, str, Path]]:
    """Run each file's python blocks in order, in one namespace per file, in its own directory under ``root``;
    ``{file: (ok, message, directory)}`` (``ok`` None: skipped, a checkpoint it names cannot be made).

    The files that start Ray run in a subprocess each (Ray's workers keep the working directory of the process
    that started it, so two such files must not share one); all the others share one subprocess. The
    subprocesses run at the same time."""
    groups: list[list[dict]] = [[]]
    dirs, skipped = {}, {}
    for path in files:
        cwd = dirs[path] = root / re.sub(r"\W", "_", str(path.relative_to(ROOT)))
        cwd.mkdir()
        try:
            for name in _model_dirs(path):
                make_checkpoint(name, cwd)
        except pytest.skip.Exception as e:  # no transformers: the files that need a checkpoint cannot run
            skipped[path] = str(e)
            continue
        runnable = [b for b in blocks(path) if b.lang == "python" and b.skip is None]
        code = [{"where": b.where, "line": b.line, "path": str(b.path), "code": b.code} for b in runnable]
        job = {"file": str(path.relative_to(ROOT)), "cwd": str(cwd), "blocks": code}
        if _uses_ray(path):
            groups.append([job])
        else:
            groups[0].append(job)
    (root / "runner.py").write_text(RUNNER)
    procs = []
    for i, group in enumerate(g for g in groups if g):
        (root / f"blocks{i}.json").write_text(json.dumps(group))
        out, err = open(root / f"out{i}.txt", "w+"), open(root / f"err{i}.txt", "w+")
        cmd = [sys.executable, "runner.py", f"blocks{i}.json"]
        procs.append((subprocess.Popen(cmd, cwd=root, stdout=out, stderr=err, env=_subprocess_env()), out, err))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    out_text, err_text, notes = "", {}, {}
    for proc, out, err in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            note = f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            note = f"the run took over {RUN_TIMEOUT_S} s"
        out.seek(0)
        err.seek(0)
        text, stderr = out.read(), err.read()
        out.close()
        err.close()
        out_text += text
        for name in re.findall(r"^@@ file (\S+)", text, re.M):
            err_text[name], notes[name] = stderr, note
    sections = dict(re.findall(r"^@@ file (\S+)\n(.*?)(?=^@@ file |^@@ done|\Z)", out_text, re.M | re.S))
    results = {}
    for path in files:
        name = str(path.relative_to(ROOT))
        text = sections.get(name)
        if path in skipped:
            results[path] = (None, skipped[path], dirs[path])
            continue
        if text is not None and f"@@ ok {name}" in text:
            results[path] = (True, "", dirs[path])
            continue
        started = re.findall(r"^@@ block (\S+)", text or "", re.M)
        failed = re.search(r"^@@ failed (\S+)", text or "", re.M)
        if failed:
            trace = text[: failed.start()].rsplit("@@ block", 1)[-1].split("\n", 1)[-1]
            message = f"{failed.group(1)}: python block failed\n{trace[-4000:]}"
        else:
            where = started[-1] if started else name
            note = notes.get(name, "it never started")
            message = f"{where}: the run stopped here ({note})\n--- stderr (end) ---\n{err_text.get(name, '')[-4000:]}"
        results[path] = (False, message, dirs[path])
    return results


@pytest.fixture(scope="module")
def python_runs(tmp_path_factory, checkpoints):
    """Every doc file's python blocks, run once: ``{file: (ok, message, directory they ran in)}``."""
    return run_python_blocks(python_files(), tmp_path_factory.mktemp("blocks"), checkpoints)


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path, python_runs):
    ok, message, _ = python_runs[path]
    if ok is None:
        pytest.skip(message)
    assert ok, message


@pytest.mark.parametrize("block", skipped_blocks(), ids=lambda b: b.where)
def test_blocks_marked_skip(block):
    pytest.skip(f"{block.where}: not run ({block.skip})")


# --------------------------------------------------------------------------------------------------------- README
def _readme_block(*needles: str) -> Block:
    found = [b for b in blocks(README) if b.lang in SHELL and all(n in b.code for n in needles)]
    assert len(found) == 1, f"README.md: expected one shell block with {needles}, found {len(found)}"
    return found[0]


def _cli_inputs(cwd: Path) -> set[str]:
    """Small input files under the names README's command-line block uses; returns their names."""
    rng = np.random.default_rng(0)
    dim = 64

    def tokens(n_docs: int):
        lens = rng.integers(10, 60, size=n_docs).astype(np.int64)
        x = rng.standard_normal((int(lens.sum()), dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True), lens

    X, L = tokens(300)
    np.save(cwd / "X.npy", X)
    np.save(cwd / "L.npy", L)
    (cwd / "ids.txt").write_text("".join(f"doc-{i}\n" for i in range(300)))
    meta = [json.dumps({"lang": ["en", "de"][i % 2], "year": 2000 + i % 25}) for i in range(300)]
    (cwd / "meta.jsonl").write_text("\n".join(meta) + "\n")
    np.save(cwd / "Q.npy", X[: 4 * 16].reshape(4, 16, dim))
    new, new_lens = tokens(3)
    np.save(cwd / "new.npy", new)
    np.save(cwd / "new_lens.npy", new_lens)
    (cwd / "new_ids.txt").write_text("new-0\nnew-1\nnew-2\n")
    passages = [
        ("maxsim", "MaxSim sums, over the query tokens, each one's best match among the document tokens."),
        ("plaid", "PLAID prunes candidates with centroid scores before it scores them exactly."),
        ("bm25", "BM25 ranks documents by term frequency and inverse document frequency."),
        ("kmeans", "K-means clusters vectors around centroids, one of which is nearest to each vector."),
    ]
    (cwd / "passages.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in passages))
    return {"X.npy", "L.npy", "ids.txt", "meta.jsonl", "Q.npy", "new.npy", "new_lens.npy", "new_ids.txt",
            "passages.jsonl"}  # fmt: skip


CLI_RUNNER = r"""
import json, os, sys, traceback
from colbert_index.cli import main
for c in json.load(open(sys.argv[1], encoding="utf-8")):
    print(f"@@ command {c['where']}", flush=True)
    os.environ.update(c["env"])
    try:
        rc = main(c["argv"])
    except SystemExit as e:
        rc = e.code
    except BaseException:
        traceback.print_exc()
        rc = 1
    if rc not in (0, None):
        print(f"@@ failed {c['where']} {rc}", flush=True)
        sys.exit(1)
print("@@ done", flush=True)
"""


def test_readme_command_line_block_runs(tmp_path, checkpoints):
    """Each command through ``colbert_index.cli.main`` (what the ``colbert-index`` script calls), in order, in one
    subprocess (one interpreter start instead of ten); ``serve`` is left to the server test."""
    block = _readme_block("colbert-index build")
    prepared = _cli_inputs(tmp_path)
    for name in _model_dirs(README):
        checkpoints(name, tmp_path)
    commands = []
    for line, command in shell_commands(block):
        env, argv = argv_of(command)
        if not argv:  # a comment
            continue
        assert argv[0] == "colbert-index", f"README.md:{line}: the command-line block holds {command!r}"
        files = {a for a in argv if re.search(r"\.(npy|txt|jsonl|tsv|json)$", a)}
        assert files <= prepared, f"README.md:{line}: test_docs.py prepares no {sorted(files - prepared)}"
        if argv[1] != "serve":  # test_readme_server_block_runs
            commands.append({"where": f"README.md:{line}", "env": env, "argv": argv[1:], "text": command})
    assert len(commands) >= 5, "README.md's command-line block is expected to show the main commands"
    (tmp_path / ".cli_commands.json").write_text(json.dumps(commands))
    (tmp_path / ".cli_runner.py").write_text(CLI_RUNNER)
    proc = subprocess.run(
        [sys.executable, ".cli_runner.py", ".cli_commands.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=_subprocess_env(),
    )
    if proc.returncode != 0 or "@@ done" not in proc.stdout:
        failed = re.search(r"@@ failed (\S+)", proc.stdout)
        where = failed.group(1) if failed else f"README.md (exit status {proc.returncode})"
        text = next((c["text"] for c in commands if c["where"] == where), "")
        pytest.fail(f"{where}: `{text}` failed\n--- stderr (end) ---\n{proc.stderr[-3000:]}")


def _curl(argv: list[str], port: int) -> tuple[str, str, dict, str | None]:
    """``(method, url, headers, body)`` of a curl command line, pointed at ``port``."""
    url, headers, body, method, i = None, {}, None, None, 1
    while i < len(argv):
        a = argv[i]
        if a in ("-H", "--header"):
            name, _, value = argv[i + 1].partition(":")
            headers[name.strip()] = value.strip()
            i += 2
        elif a in ("-d", "--data", "--data-raw"):
            body, i = argv[i + 1], i + 2
        elif a in ("-X", "--request"):
            method, i = argv[i + 1], i + 2
        elif a.startswith("-"):
            i += 1
        else:
            url, i = a, i + 1
    assert url is not None, f"no URL in {argv}"
    url = re.sub(r":\d+(?=/|$)", f":{port}", url if "://" in url else "http://" + url)
    return method or ("POST" if body is not None else "GET"), url, headers, body


def test_readme_server_block_runs(python_runs):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    ok, message, cwd = python_runs[README]
    if ok is None:
        pytest.skip(message)
    assert ok, f"the server block serves what README.md's python blocks build, and they failed: {message}"
    block = _readme_block("colbert-index serve", "curl")
    commands = [(line, *argv_of(cmd)) for line, cmd in shell_commands(block)]
    serve = [(line, env, argv) for line, env, argv in commands if argv[:2] == ["colbert-index", "serve"]]
    curls = [(line, argv) for line, _, argv in commands if argv and argv[0] == "curl"]
    assert len(serve) == 1 and curls, "README.md: the server block needs one `colbert-index serve` and a curl"
    line, env, argv = serve[0]
    from serving import free_port

    port = free_port()
    argv = list(argv)
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "colbert_index.cli", *argv[1:], "--log-level", "warning"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_subprocess_env(), **env},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read()[-3000:]
                pytest.fail(f"README.md:{line}: the server exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"README.md:{line}: the server did not answer /health within 120 s")
            time.sleep(0.2)
        for curl_line, curl in curls:
            method, url, headers, body = _curl(curl, port)
            r = httpx.request(method, url, headers=headers, content=body, timeout=60)
            assert r.status_code == 200, f"README.md:{curl_line}: {method} {url} answered {r.status_code}: {r.text}"
            assert "results" in r.json() or "status" in r.json(), f"README.md:{curl_line}: {r.text}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
