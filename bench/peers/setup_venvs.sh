#!/usr/bin/env bash
# Create the peer engines' virtual environments under bench/peers/.venvs/ (gitignored).
#
#   plaid      Stanford PLAID (colbert-ai) on torch 2.13.0 (CPU build, a wheel on this machine's disk)
#   fastplaid  fast-plaid on torch 2.11.0: fast-plaid's Rust extension is built against one exact torch
#              (the version suffix: 1.7.0.2110 -> torch 2.11.0) and crashes (SIGSEGV in create) on any
#              other; no release targets 2.13/2.14, the only torches on local disk. PyPI's torch 2.11.0 is a
#              CUDA build: about 3 GB of wheels (partly from local disk), installed once; it runs on the CPU.
#
# Usage: bash bench/peers/setup_venvs.sh [plaid|fastplaid ...]   (default: both; an existing venv is reused)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENVS="$HERE/.venvs"
PY="${PYTHON:-python3}"
COLBERT_AI_VERSION="0.2.22"
FAST_PLAID_VERSION="1.7.0.2110"
FAST_PLAID_TORCH="2.11.0"

mkvenv() {  # name -> path of its python
    local dir="$VENVS/$1"
    [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    echo "$dir/bin/python"
}

setup_plaid() {
    local py; py="$(mkvenv plaid)"
    "$py" -m pip install -q torch==2.13.0          # first: the CPU wheel on disk, before anything pulls another
    "$py" -m pip install -q "colbert-ai==$COLBERT_AI_VERSION" faiss-cpu ninja numpy threadpoolctl
    "$py" -c "import colbert, torch, faiss; print('plaid venv: torch', torch.__version__, 'faiss', faiss.__version__)"
}

setup_fastplaid() {
    local py; py="$(mkvenv fastplaid)"
    "$py" -m pip install -q "torch==$FAST_PLAID_TORCH"
    "$py" -m pip install -q "fast-plaid==$FAST_PLAID_VERSION" numpy threadpoolctl
    "$py" -c "import fast_plaid, torch; print('fastplaid venv: torch', torch.__version__)"
}

mkdir -p "$VENVS"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(plaid fastplaid)
for t in "${targets[@]}"; do
    case "$t" in
        plaid) setup_plaid ;;
        fastplaid) setup_fastplaid ;;
        *) echo "unknown venv: $t (plaid|fastplaid)" >&2; exit 2 ;;
    esac
done
