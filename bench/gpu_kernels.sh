#!/usr/bin/env bash
# KERNELS' GPU call: the fused-op GPU tests and bench/ops.py, logs under $OUT (one device call).
#
#   here:    cmake -S . -B build/kernels && cmake --build build/kernels -j2
#   device:  bash bench/gpu_kernels.sh [TEST_TIMEOUT_S] [BENCH_TIMEOUT_S]
#            carry: ["build/kernels/csrc/libfastdit_kernels.so"]   (or "dist" holding a fastdit wheel)
#
# Installs nothing from a registry: a carried wheel is pip-installed --no-deps into /tmp/site; without
# one, the package is copied there with triton_kernels/ as fastdit.triton_kernels (the wheel's layout)
# and FASTDIT_KERNEL_LIBRARY points at the carried library.
set -uo pipefail
OUT=${OUT:-/tmp/fastdit_out}
mkdir -p "$OUT"
TEST_TIMEOUT=${1:-240}
BENCH_TIMEOUT=${2:-150}
export PYTHONUNBUFFERED=1
KERNEL_TESTS="tests/ops/test_rms_norm.py tests/ops/test_layer_norm_modulate.py tests/ops/test_gated_residual_norm_modulate.py
  tests/ops/test_qk_norm_rope.py tests/ops/test_gelu_tanh.py tests/ops/test_timestep_embedding.py tests/ops/test_library.py
  tests/ops/test_fused_flux.py"

rm -rf /tmp/site && mkdir -p /tmp/site
if compgen -G "dist/fastdit-*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site dist/fastdit-*.whl || exit 1
else
  cp -r python/fastdit /tmp/site/fastdit && cp -r triton_kernels /tmp/site/fastdit/triton_kernels || exit 1
  export FASTDIT_KERNEL_LIBRARY=$PWD/build/kernels/csrc/libfastdit_kernels.so
fi
export PYTHONPATH=/tmp/site

{
  date -u
  git log -1 --format='commit %H' 2>/dev/null
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; from fastdit.ops import _library as L; \
print('torch', torch.__version__, 'triton', triton.__version__); print('kernel library:', L.library_status())"
} 2>&1 | tee "$OUT/env.log"

timeout "$TEST_TIMEOUT" python3 -m pytest -q -p no:cacheprovider -o addopts="" -m gpu $KERNEL_TESTS \
  --tb=short --maxfail=25 --durations=15 2>&1 | tee "$OUT/tests_ops.log"
echo "tests rc=${PIPESTATUS[0]}" | tee -a "$OUT/summary.txt"

timeout "$BENCH_TIMEOUT" python3 bench/ops.py --json "$OUT/ops.json" 2>&1 | tee "$OUT/bench_ops.log"
echo "bench rc=${PIPESTATUS[0]}" | tee -a "$OUT/summary.txt"
