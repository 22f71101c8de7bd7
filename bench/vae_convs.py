"""cuDNN on the Wan VAE decoder's convolution shapes (channels-last bf16, one decode chunk of 4 frames at
480x832): TFLOP/s of each shape as the decoder runs it, and of the same conv with its channels padded to
the next multiple of 64 (zero weights; what padding the activations would buy), with cuDNN's heuristic and
with benchmark mode. Answers whether a layout change pays before the decoder is changed for it.

    python bench/vae_convs.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from timer import time_cuda

# (name, C_in, C_out, frames in (with the causal padding), H, W, kernel): the decoder's convs per chunk of one
# latent frame (4 output frames), widest first; 3D kernels see 2 cached frames in front.
SHAPES = [
    ("up3 resblock conv 96", 96, 96, 6, 480, 832, (3, 3, 3)),
    ("conv_out 96->3", 96, 3, 6, 480, 832, (3, 3, 3)),
    ("up2 resample 2d 192->96", 192, 96, 4, 480, 832, (1, 3, 3)),
    ("up2 resblock conv 192", 192, 192, 6, 240, 416, (3, 3, 3)),
    ("up1 resample 2d 384->192", 384, 192, 4, 240, 416, (1, 3, 3)),
    ("up1 resblock conv 384", 384, 384, 4, 120, 208, (3, 3, 3)),
]


def _pad64(c: int) -> int:
    return (c + 63) // 64 * 64


def bench_conv(c_in: int, c_out: int, t: int, h: int, w: int, kernel: tuple[int, int, int], benchmark: bool) -> dict:
    torch.backends.cudnn.benchmark = benchmark
    x = torch.randn(1, c_in, t, h, w, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    weight = torch.randn(c_out, c_in, *kernel, device="cuda", dtype=torch.bfloat16) * 0.02
    weight = weight.contiguous(memory_format=torch.channels_last_3d)
    padding = (0, kernel[1] // 2, kernel[2] // 2)
    fn = lambda: F.conv3d(x, weight, None, padding=padding)  # noqa: E731
    timing = time_cuda(fn, warmup=3, iters=10)
    t_out = t - (kernel[0] - 1)
    flops = 2.0 * c_in * c_out * kernel[0] * kernel[1] * kernel[2] * t_out * h * w
    return {"ms": timing.median_ms, "tflops": flops / timing.median_ms / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    print(f"{torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}: ms (TFLOP/s of the unpadded FLOPs)")
    for name, c_in, c_out, t, h, w, kernel in SHAPES:
        row = {"name": name, "shape": [c_in, c_out, t, h, w, list(kernel)]}
        real = 2.0 * c_in * c_out * kernel[0] * kernel[1] * kernel[2] * (t - kernel[0] + 1) * h * w
        for label, ci, co in (("as is", c_in, c_out), ("padded", _pad64(c_in), _pad64(c_out))):
            for benchmark in (False, True):
                r = bench_conv(ci, co, t, h, w, kernel, benchmark)
                row[f"{label}{' bench' if benchmark else ''}"] = {"ms": r["ms"], "tflops_real": real / r["ms"] / 1e9}
        torch.backends.cudnn.benchmark = False
        cells = "  ".join(f"{k} {v['ms']:.2f} ({v['tflops_real']:.0f})" for k, v in row.items() if isinstance(v, dict))
        print(f"{name:<28} {cells}", flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
