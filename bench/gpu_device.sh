#!/usr/bin/env bash
# The GPU checks and figures in one script, for a machine with an NVIDIA GPU (H100 / H200 class; the HBM peak of
# other cards is given with GPU_ARGS="--hbm-peak-gbs N"). Run it from the repository root:
#
#   GIT_COMMIT=$(git rev-parse --short HEAD) OUT=/tmp/gpu_out bash bench/gpu_device.sh
#
# The machine needs python3 (3.12 for the wheels below) with torch (CUDA), triton, numba, numpy, tqdm and pytest.
# faiss-cpu and bitarray are installed from wheels in .whl/ (ignored by git), so the run needs no network; fetch
# them once on a machine that has one:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl faiss-cpu==1.15.1 bitarray==3.12.3
# GIT_COMMIT is the commit the result rows record when the tree is a copy without .git (they also carry a hash of
# the sources); in a git checkout it can be left out.
#
# Order: install, the GPU tests (CUDA search vs the CPU path, the Triton kernels and the GPU build on the card),
# then bench/gpu.py: dims 64 and 128, 1M passages each, built on the GPU. OUT (default /tmp/gpu_device_out) gets
# env.txt, gpu_tests.log, gpu_bench.log and gpu.json as they are written, so a run cut short still keeps what it
# measured; indexes go to /tmp/indexes. BUDGET (s, default 570) bounds the whole script, TEST_BUDGET (s, default
# 150) the tests; GPU_ARGS go to bench/gpu.py (one dim: GPU_ARGS="--dims 128"; a dry run on a machine without a
# GPU: GPU_ARGS="--quick --device cpu", with wheels for that machine's python in .whl).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_device_out}
BUDGET=${BUDGET:-570}
TEST_BUDGET=${TEST_BUDGET:-150}
mkdir -p "$OUT"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "no wheels in .whl (see the top of this script)"; exit 1; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
{
  nvidia-smi
  python3 -c 'import sys, torch, triton, numba, numpy, faiss; print(sys.version); print("torch", torch.__version__,
    "cuda", torch.version.cuda, "triton", triton.__version__, "numba", numba.__version__, "numpy", numpy.__version__,
    "faiss", faiss.__version__, "gpu", torch.cuda.get_device_name(0))'
} 2>&1 | tee "$OUT/env.txt"

echo "== GPU tests (at most ${TEST_BUDGET} s; ${SECONDS} s spent)"
COLBERT_INDEX_TRITON_TUNE=0 timeout "$TEST_BUDGET" python3 -m pytest -q -m gpu -p no:cacheprovider \
  tests/test_device.py tests/test_device_build.py 2>&1 | tee "$OUT/gpu_tests.log"

left=$((BUDGET - SECONDS))
echo "== bench/gpu.py (at most ${left} s)"
timeout "$left" python3 bench/gpu.py --out "$OUT" --index-dir /tmp/indexes ${GPU_ARGS:-} 2>&1 | tee "$OUT/gpu_bench.log"
echo "== done in ${SECONDS} s"
