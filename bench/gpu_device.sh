#!/usr/bin/env bash
# The GPU checks and figures as one prepared run on a lent GPU machine (the `device` tool: an H100/H200 whose
# python3 3.12 has torch, triton, numba, numpy, tqdm and pytest, and no network).
#
# Once, here: the wheels that machine lacks travel in .whl (ignored by git):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl faiss-cpu==1.15.1 bitarray==3.12.3
# Then: run(command="GIT_COMMIT=<git rev-parse --short HEAD here> bash bench/gpu_device.sh", carry=[".whl"],
# timeout_s=600) (the tree travels without .git; the rows also carry a hash of the sources).
#
# Order: install, the GPU tests (CUDA search vs the CPU path, the Triton kernels and the GPU build on the card),
# then bench/gpu.py: dims 64 and 128, 1M passages each, built on the GPU. Logs and results land in $OUT as they
# are written, so a run cut short still brings back what it measured. BUDGET (s) bounds the whole script;
# GPU_ARGS go to bench/gpu.py (a rerun of one dim: GPU_ARGS="--dims 128"; a dry run here without a GPU:
# GPU_ARGS="--quick --device cpu", with wheels for this machine's python in .whl).
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
