"""Forward attention TFLOP/s (4*B*H*Sq*Sk*D / time), ours vs torch SDPA's flash and cuDNN kernels (and
flash-attn-4 when importable), measured in the same run. Prints a table and writes JSON.

    python bench/attention.py [--shapes 1,24,4608,128 ...] [--dtype bf16] [--json out.json]

Shapes are B,H,S,D (self attention, Sq = Sk = S) or B,H,Sq,Sk,D (cross attention).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from fastdit.layers.attention.backends import importable
from fastdit.ops.attention import attention_fwd, supports_cuda

SHAPES = ["1,24,4608,128", "1,24,16896,128", "1,12,32760,128", "1,40,75600,128"]
NAMES = {"1,24,4608,128": "FLUX-1024", "1,24,16896,128": "FLUX-2048", "1,12,32760,128": "Wan-1.3B-480p",
         "1,40,75600,128": "Wan-14B-720p", "1,40,32760,512,128": "Wan cross"}


def time_ms(fn, iters: int = 20, warmup: int = 3) -> float:
    """Median CUDA-event time of fn() in ms, L2 flushed (256 MB write) before each run. A ~1 ms spin kernel
    sits before the start event so that the host has queued fn's launch by then: the time is the GPU's,
    not the Python dispatch's (which differs between backends and disappears under CUDA graphs)."""
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        flush.zero_()
        torch.cuda._sleep(2_000_000)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sdpa(backend):
    def run(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return run


def candidates(q, k, v):
    cands = {"sdpa-flash": sdpa(SDPBackend.FLASH_ATTENTION), "sdpa-cudnn": sdpa(SDPBackend.CUDNN_ATTENTION)}
    if supports_cuda(q, k, v):
        cands["fastdit"] = lambda q, k, v: attention_fwd(q, k, v, backend="cuda")
    if importable("flash_attn.cute"):
        from flash_attn.cute import flash_attn_func

        cands["fa4"] = lambda q, k, v: flash_attn_func(q, k, v)[0]
    return cands


def bench_shape(spec: str, dtype: torch.dtype) -> dict:
    dims = [int(x) for x in spec.split(",")]
    b, h, sq, sk, d = (dims[0], dims[1], dims[2], dims[2], dims[3]) if len(dims) == 4 else dims
    q = torch.randn(b, sq, h, d, device="cuda", dtype=dtype)
    k = torch.randn(b, sk, h, d, device="cuda", dtype=dtype)
    v = torch.randn(b, sk, h, d, device="cuda", dtype=dtype)
    flops = 4.0 * b * h * sq * sk * d
    row = {"shape": spec, "name": NAMES.get(spec, ""), "tflops": {}, "ms": {}, "rel_err_vs_cudnn": {}}
    reference = None
    for name, fn in candidates(q, k, v).items():
        try:
            out = fn(q, k, v)
            ms = time_ms(lambda: fn(q, k, v))
        except RuntimeError as err:  # a backend that refuses this shape: recorded, not fatal
            row["tflops"][name] = None
            row.setdefault("errors", {})[name] = str(err).splitlines()[0]
            continue
        if name == "sdpa-cudnn":
            reference = out
        elif reference is not None:
            row["rel_err_vs_cudnn"][name] = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
        row["ms"][name] = ms
        row["tflops"][name] = flops / ms / 1e9
    return row


def dispatch_overhead_us() -> dict:
    """Host time per call at a tiny shape (GPU time negligible): the custom op + ctypes path vs the bare
    ctypes launch vs torch SDPA (cuDNN). Decides whether graph-less callers should skip the custom op."""
    import time

    from fastdit.ops import attention as op

    q = torch.randn(1, 128, 1, 128, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    calls = {"custom op": lambda: attention_fwd(q, q, q, backend="cuda"),
             "ctypes launch": lambda: op._launch_cuda(q, q, q, out, None, None, 0.088),
             "sdpa-cudnn": lambda: sdpa(SDPBackend.CUDNN_ATTENTION)(q, q, q)}
    result = {}
    for name, fn in calls.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(500):
            fn()
        result[name] = (time.perf_counter() - t0) / 500 * 1e6
        torch.cuda.synchronize()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES)
    parser.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    rows = [bench_shape(spec, dtype) for spec in args.shapes]
    names = sorted({n for r in rows for n in r["tflops"]})
    print(f"{torch.cuda.get_device_name()}  {args.dtype}  TFLOP/s (4*B*H*Sq*Sk*D / median time)")
    print(f"{'shape':<22}{'':<15}" + "".join(f"{n:>12}" for n in names) + f"{'ours/cuDNN':>12}")
    for r in rows:
        t = r["tflops"]
        ratio = t.get("fastdit") / t["sdpa-cudnn"] if t.get("fastdit") and t.get("sdpa-cudnn") else None
        cells = "".join(f"{t[n]:>12.1f}" if t.get(n) else f"{'-':>12}" for n in names)
        ratio_text = "-" if ratio is None else f"{ratio:.3f}"
        print(f"{r['shape']:<22}{r['name']:<15}{cells}{ratio_text:>12}")
        for name, message in r.get("errors", {}).items():
            print(f"    {name}: {message}")
    overhead = dispatch_overhead_us() if "fastdit" in names else {}
    if overhead:
        print("host time per call (us): " + ", ".join(f"{k} {v:.1f}" for k, v in overhead.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "dtype": args.dtype, "torch": torch.__version__,
                       "rows": rows, "host_us_per_call": overhead}, f, indent=1)


if __name__ == "__main__":
    main()
