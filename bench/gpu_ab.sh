#!/usr/bin/env bash
# A/B (/C...) of builds of the kernel library in one device call: the GPU tests against each build but A,
# then each bench run alternately with every build (A B C A B C), logs under $OUT. Ratios from one call on
# one machine are the numbers to trust; two rounds show the run-to-run spread.
#
#   here:    git worktree/clone of the base commit -> cmake -S . -B /tmp/kb_a -DFASTDIT_CUDA_ARCHS=90a && cmake --build /tmp/kb_a -j2
#            each change                           -> the same into /tmp/kb_b, /tmp/kb_c, ...
#            mkdir -p build/ab && cp /tmp/kb_a/csrc/libfastdit_kernels.so build/ab/a.so \
#                             && cp /tmp/kb_b/csrc/libfastdit_kernels.so build/ab/b.so   (c.so, ... likewise)
#   device:  FASTDIT_TESTS="tests/ops/test_attention.py" bash bench/gpu_ab.sh "attention.py" "ops.py --ops rms_norm"
#            carry: ["build/ab"]
#
# The Python package is this working tree's (copied to /tmp/site with triton_kernels/ as the wheel lays it
# out); only FASTDIT_KERNEL_LIBRARY changes between the builds.
set -uo pipefail
OUT=${OUT:-/tmp/fastdit_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ROUNDS=${FASTDIT_AB_ROUNDS:-2}
LIBS=()
for path in build/ab/*.so; do LIBS+=("$(basename "$path" .so)"); done
if [ "${#LIBS[@]}" -lt 2 ] || [ "${LIBS[0]}" != a ]; then
  echo "build/ab needs a.so and at least one more build (see the header of $0); found: ${LIBS[*]:-none}"
  exit 2
fi

rm -rf /tmp/site && mkdir -p /tmp/site
cp -r python/fastdit /tmp/site/fastdit && cp -r triton_kernels /tmp/site/fastdit/triton_kernels || exit 1
# FASTDIT_EXTRA_PYTHONPATH: more packages for the benches, e.g. flash-attn-4 (bench/fa4_setup.sh).
export PYTHONPATH=/tmp/site${FASTDIT_EXTRA_PYTHONPATH:+:$FASTDIT_EXTRA_PYTHONPATH}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
  sha256sum build/ab/*.so
} 2>&1 | tee "$OUT/env.log"

if [ -n "${FASTDIT_TESTS:-}" ]; then
  for lib in "${LIBS[@]:1}"; do
    t0=$SECONDS
    FASTDIT_KERNEL_LIBRARY=$PWD/build/ab/$lib.so timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider \
      -o addopts="" --tb=short --maxfail=20 $FASTDIT_TESTS >"$OUT/tests_$lib.log" 2>&1
    echo "tests ($lib): rc=$? $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
    tail -n 15 "$OUT/tests_$lib.log"
  done
fi

i=0
for bench in "$@"; do
  i=$((i + 1))
  for round in $(seq 1 "$ROUNDS"); do
    for lib in "${LIBS[@]}"; do
      log="$OUT/bench${i}_r${round}_${lib}.log"
      t0=$SECONDS
      # shellcheck disable=SC2086  # the bench string is a command line
      FASTDIT_KERNEL_LIBRARY=$PWD/build/ab/$lib.so timeout 240 python3 bench/$bench >"$log" 2>&1
      echo "bench $i ($bench) round $round lib $lib: rc=$? $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
      tail -n 12 "$log"
    done
  done
done
cat "$OUT/summary.txt"
