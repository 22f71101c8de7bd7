#!/usr/bin/env bash
# One GPU call = build check + GPU tests + benchmarks, logs under $OUT. Run on the device machine:
#
#   here:   python -m build --wheel --no-isolation -o dist .   (nvcc; nvidia-cutlass installed here, so the
#           sm90 attention kernel is in; an isolated build has no CUTLASS headers and leaves it out)
#   device: bash bench/gpu_session.sh [STEP ...]       carry: ["dist", ".whl"]
#
# STEPs (default: all, in this order): env tests ops attention comm e2e_flux e2e_wan (also: floor, parallel, serving)
# FASTDIT_TESTS="tests/ops/test_attention.py ..." narrows the tests step to those files; FASTDIT_WAN_ARGS="--cases
# 1.3B@480x832 ..." passes arguments to bench/e2e_wan.py; FASTDIT_FLOOR_ARGS="--lt-algos $PWD/build/gemm_algos.so" to
# bench/flux_floor.py (carry build/gemm_algos.so too).
# One device command runs at most 600 s: split the steps over calls, e.g. "env tests attention", then
# "ops e2e_flux", then "e2e_wan serving" (the machine stays warm 30 s between calls).
# The device machine has torch, triton and transformers but not diffusers nor the server's stack: .whl/
# carries them (pip download --no-deps diffusers==0.42.1 importlib_metadata fastapi starlette pydantic
# pydantic_core annotated_types typing_inspection opentelemetry-api uvicorn python_multipart
# typing_extensions, for cp312; see the device README).
set -uo pipefail
OUT=${OUT:-/tmp/fastdit_out}
mkdir -p "$OUT"
STEPS=${*:-env tests ops attention comm e2e_flux e2e_wan}
export PYTHONUNBUFFERED=1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl dist/fastdit-*.whl >"$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
export PYTHONPATH=/tmp/site
# Tests and benches must see the installed wheel (with its kernel library), never ./python.
cd "$(mktemp -d)" && cp -r "$OLDPWD/tests" "$OLDPWD/bench" "$OLDPWD/pyproject.toml" . || exit 1

# SM clock, power and throttle reasons every 200 ms while the steps run (gpu_samples.csv): a graphed
# FLUX step that runs slower than its eager kernel sum is checked against the clocks here.
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv -lms 200 >"$OUT/gpu_samples.csv" 2>/dev/null &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null' EXIT

run() {  # run NAME TIMEOUT_S CMD...: one step, its log in $OUT/NAME.log, a status line at the end
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "$(date -u +%H:%M:%S) step $name begins" >>"$OUT/steps.log"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "step $name: rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log"
}

for step in $STEPS; do
  case $step in
    env) run env 60 python3 -c "import torch, triton, fastdit, fastdit.ops._library as L; \
print(torch.__version__, triton.__version__, torch.cuda.get_device_name()); print(L.library_status())" ;;
    tests) run tests 330 python3 -m pytest -q -m gpu -p no:cacheprovider --timeout 300 --continue-on-collection-errors \
             ${FASTDIT_TESTS:-tests} ;;
    ops) run ops 420 python3 bench/ops.py --json "$OUT/ops.json" ;;
    attention) run attention 240 python3 bench/attention.py --json "$OUT/attention.json" ;;
    comm) run comm 120 python3 bench/comm.py --json "$OUT/comm.json" ;;
    floor) run floor 420 python3 bench/flux_floor.py ${FASTDIT_FLOOR_ARGS:-} --json "$OUT/floor.json" ;;
    e2e_flux) run e2e_flux 560 python3 bench/e2e_flux.py --json "$OUT/e2e_flux.json" ;;
    e2e_wan) run e2e_wan 560 python3 bench/e2e_wan.py ${FASTDIT_WAN_ARGS:-} --json "$OUT/e2e_wan.json" ;;
    parallel) run parallel 560 python3 bench/parallel.py ${FASTDIT_PARALLEL_ARGS:---cases flux-1024 wan1.3b-480p --layouts 1} \
                --ref-cache /tmp/fastdit_parallel_refs --json "$OUT/parallel.json" ;;
    serving) run serving 240 python3 bench/serving.py --launch --model-path black-forest-labs/FLUX.1-dev --load-format dummy \
               --size 1024x1024 --steps 28 --num-prompts 4 --concurrency 1 4 --json "$OUT/serving.json" ;;
    *) echo "unknown step $step (allowed: env tests ops attention comm e2e_flux e2e_wan parallel serving)"; exit 2 ;;
  esac
done
cat "$OUT/summary.txt"
