#!/usr/bin/env bash
# Installs flash-attn-4 (the `fa4` column of bench/attention.py) on the device machine from carried files,
# into /tmp/fa4site, and prints the PYTHONPATH entries it needs. No registry is reachable there, and the
# cu13 CUTLASS DSL libraries (92 MB as a wheel) exceed one call's 64 MiB carry, so they travel as an xz
# tarball of the unpacked wheel (60.6 MiB) split over two calls on one warm machine:
#
#   here (Python 3.12 wheels; git-ignored through .git/info/exclude: /.fa4/):
#     pip download --pre --no-deps -d /tmp/fa4 flash-attn-4 nvidia-cutlass-dsl nvidia-cutlass-dsl-libs-base \
#         apache-tvm-ffi torch-c-dlpack-ext quack-kernels einops   (+ --python-version 3.12 --only-binary=:all:
#         --platform manylinux_2_28_x86_64 for the binary ones); into .fa4/p2: nvidia-cutlass-dsl-libs-core
#         cuda-bindings cuda-pathfinder protobuf
#     pip download ... nvidia-cutlass-dsl-libs-cu13; unzip it into a folder; tar cf - . | xz -9e > cu13.tar.xz
#     split -b 30000000 -d cu13.tar.xz .fa4/p2/cu13.tar.xz.part   (move part00 and the other wheels to .fa4/p1)
#   device: call 1 carries .fa4/p1 and runs `bash bench/fa4_setup.sh stage` (a carried path not named in
#     the next call is gone by then, /tmp stays), call 2 within the 30 s warm window carries .fa4/p2 and runs:
#     export FASTDIT_EXTRA_PYTHONPATH=$(bash bench/fa4_setup.sh) && bash bench/gpu_ab.sh ...
set -euo pipefail
SITE=/tmp/fa4site
STAGE=/tmp/fa4stage
if [ "${1:-}" = stage ]; then
  mkdir -p "$STAGE" && cp .fa4/p1/* "$STAGE"/ && ls -la "$STAGE" >&2
  exit 0
fi
# Installed once per machine and set of carried files (a warm machine keeps /tmp between calls).
KEY=$(ls "$STAGE" .fa4/p2 2>/dev/null | sha256sum | cut -c1-16)
if [ "$(cat "$SITE/.complete" 2>/dev/null)" != "$KEY" ]; then
  for part in "$STAGE/cu13.tar.xz.part00" .fa4/p2/cu13.tar.xz.part01; do
    [ -f "$part" ] || { echo "fa4_setup: $part is missing (staged by an earlier call on this machine?)" >&2; exit 2; }
  done
  rm -rf "$SITE" && mkdir -p "$SITE"
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$STAGE"/*.whl .fa4/p2/*.whl >&2
  cat "$STAGE"/cu13.tar.xz.part* .fa4/p2/cu13.tar.xz.part* | xz -d | tar x -C "$SITE"
  echo "$KEY" >"$SITE/.complete"
fi
# What the nvidia_cutlass_dsl .pth does in a site directory (a --target folder does not run .pth files).
echo "$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages"
