"""The FLUX step's floor at the board's power cap: its GEMMs and attention timed as a long run meets them.

A graphed FLUX.1-dev step holds the H100 at its 700 W cap, where the SM clock falls to ~1.4-1.6 GHz (RESULTS.md,
issue 5); burst timings (an idle GPU at 1.98 GHz) overstate what a step can reach. This times every GEMM of a
1024x1024 batch-1 step as the model calls it (shape, epilogue, weight stride; torch -> cuBLAS/cuBLASLt) and the
joint attention (ours and cuDNN's), each in a CUDA graph of calls cycling over 3 operand sets (weights stream
from DRAM as in a step), replayed back to back until the board sits at its cap (bench/timer.py time_sustained),
and sums them with their counts per step: the step's GEMM + attention time at the power cap.

--lt-algos LIB also times every candidate cuBLASLt's heuristic offers for each GEMM (bench/gemm_algos.cu,
built here with nvcc against the nvidia-cublas wheel's headers; the device's torch brings libcublasLt.so.13):
whether another algorithm than the one torch runs takes less time (energy) at the cap. --enumerate MOST goes past
the heuristic: every (algorithm, tile, stages, custom option) cuBLASLt accepts for the problem, ranked by a burst
timing, the fastest --candidates then timed at the cap.

    nvcc -O2 -std=c++17 -shared -Xcompiler -fPIC -I<nvidia/cu13/include> bench/gemm_algos.cu \\
         -L<nvidia/cu13/lib> -l:libcublasLt.so.13 -o build/gemm_algos.so
    python3 bench/flux_floor.py [--lt-algos build/gemm_algos.so [--enumerate 5000]] [--json floor.json]
    (~1 min; ~4 with --lt-algos)
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from timer import capture, time_cuda, time_sustained

# (name, M, K, N, ldw, epilogue, calls per step at 1024^2 batch 1); epilogue 1: bias, 2: bias + GELU(tanh),
# 3: accumulate into the output (beta = 1). ldw > K: the weight is a column slice of a wider one (proj_out).
FLUX_GEMMS = [
    ("single.qkv", 4608, 3072, 9216, 3072, 1, 38),
    ("single.mlp_up", 4608, 3072, 12288, 3072, 2, 38),
    ("single.proj_attn", 4608, 3072, 3072, 15360, 1, 38),
    ("single.proj_mlp", 4608, 12288, 3072, 15360, 3, 38),
    ("double.qkv", 4096, 3072, 9216, 3072, 1, 19),
    ("double.mlp_up", 4096, 3072, 12288, 3072, 2, 19),
    ("double.mlp_down", 4096, 12288, 3072, 12288, 1, 19),
    ("double.out", 4096, 3072, 3072, 3072, 1, 19),
    ("double.txt_qkv", 512, 3072, 9216, 3072, 1, 19),
    ("double.txt_mlp_up", 512, 3072, 12288, 3072, 2, 19),
    ("double.txt_mlp_down", 512, 12288, 3072, 12288, 1, 19),
    ("double.txt_out", 512, 3072, 3072, 3072, 1, 19),
]
EPILOGUES = {1: "bias", 2: "bias+gelu", 3: "accumulate"}
ATTENTION = (1, 4608, 24, 128, 57)  # B, S (512 text + 4096 image tokens), H, D; calls per step
SETS = 3
WORKSPACE = 32 << 20


def ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


class Gemm:
    """One FLUX GEMM's operands (SETS copies) and its calls: torch's, as the model makes it, and cuBLASLt
    candidate i's (through LIB)."""

    def __init__(self, m: int, k: int, n: int, ldw: int, epilogue: int, lib: ctypes.CDLL | None) -> None:
        self.m, self.k, self.n, self.ldw, self.epilogue, self.lib = m, k, n, ldw, epilogue, lib
        g = torch.Generator(device="cuda").manual_seed(0)
        opts = {"device": "cuda", "dtype": torch.bfloat16, "generator": g}
        self.x = [torch.randn(m, k, **opts) for _ in range(SETS)]
        self.w = [(torch.randn(n, ldw, **opts) * k**-0.5)[:, :k] for _ in range(SETS)]
        self.bias = [torch.randn(n, **opts) * 0.1 for _ in range(SETS)]
        self.out = [torch.randn(m, n, **opts) for _ in range(SETS)]
        self.residual = [o.clone() for o in self.out]
        self.workspace = torch.empty(WORKSPACE, device="cuda", dtype=torch.uint8)

    def torch_call(self, s: int) -> torch.Tensor:
        """The GELU GEMM returns a new tensor, as in the model (from the graph's pool when captured)."""
        x, w, b, out = self.x[s], self.w[s], self.bias[s], self.out[s]
        if self.epilogue == 1:
            return torch.addmm(b, x, w.t(), out=out)
        if self.epilogue == 2:
            return torch._addmm_activation(b, x, w.t(), use_gelu=True)
        return out.addmm_(x, w.t())

    def lt_call(self, i: int, s: int) -> torch.Tensor:
        stream = ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)
        rc = self.lib.gemm_algos_run(i, self.m, self.n, self.k, self.ldw, self.epilogue, ptr(self.x[s]),
                                     ptr(self.w[s]), ptr(self.bias[s]), ptr(self.out[s]), ptr(self.workspace),
                                     ctypes.c_size_t(WORKSPACE), stream)
        if rc:
            raise RuntimeError(f"gemm_algos_run(candidate {i}) returned {rc}")
        return self.out[s]

    def rel_error(self, call, reference: list[torch.Tensor]) -> float:
        worst = 0.0
        for s in range(SETS):
            self.out[s].copy_(self.residual[s])
            r = reference[s]
            worst = max(worst, float((call(s).float() - r).norm() / r.norm()))
        return worst


def load_lib(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)  # after torch: its libcublasLt.so.13 is already loaded
    lib.gemm_algos_find.argtypes = [ctypes.c_int] * 5 + [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.gemm_algos_enumerate.argtypes = lib.gemm_algos_find.argtypes
    lib.gemm_algos_describe.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    return lib


def row(label, config: str, tflop: float, per_step: int, t, err: float) -> dict:
    r = {"candidate": label, "config": config, "per_step": per_step, "burst_ms": t.burst_ms,
         "sustained_ms": t.sustained_ms, "power_w": t.power_w, "sm_mhz": t.sm_mhz, "mj_per_call": t.mj_per_call,
         "burst_tflops": tflop / t.burst_ms * 1e3, "sustained_tflops": tflop / t.sustained_ms * 1e3,
         "rel_l2_vs_torch": err}
    print(f"  {label!s:>12}  burst {t.burst_ms:7.3f} ms {r['burst_tflops']:4.0f} TF/s   sustained "
          f"{t.sustained_ms:7.3f} ms {r['sustained_tflops']:4.0f} TF/s  {t.power_w:4.0f} W {t.sm_mhz:5.0f} MHz "
          f"{t.mj_per_call:6.1f} mJ  err {err:.1e}  {config}")
    return r


def burst_ms(call, reps: int = 3) -> float:
    """Median ms of `reps` direct calls cycling over the operand sets (bench/timer.py time_cuda, one warm-up
    call): a quick ranking, not a graph."""
    sets = itertools.cycle(range(SETS))
    return time_cuda(lambda: call(next(sets)), warmup=1, iters=reps, cold_l2=False).median_ms


def lt_candidates(gemm: Gemm, candidates: int, enumerate_most: int) -> tuple[list[int], str]:
    """The cuBLASLt candidates to time: the heuristic's (up to `candidates`), or with enumerate_most > 0 every
    configuration cuBLASLt accepts (up to that many), ranked by a quick burst timing, the fastest `candidates`."""
    lib, args = gemm.lib, (gemm.m, gemm.n, gemm.k, gemm.ldw, gemm.epilogue, ptr(gemm.bias[0]), WORKSPACE)
    if enumerate_most <= 0:
        count = lib.gemm_algos_find(*args, candidates)
        return list(range(max(count, 0))), f"{count} cuBLASLt heuristic candidates"
    count = lib.gemm_algos_enumerate(*args, enumerate_most)
    quick = []
    for i in range(max(count, 0)):
        try:
            quick.append((burst_ms(lambda s, i=i: gemm.lt_call(i, s)), i))
        except RuntimeError:
            continue
    quick.sort()
    return [i for _, i in quick[:candidates]], (f"{count} cuBLASLt configurations, {len(quick)} ran; the "
                                                 f"{min(candidates, len(quick))} fastest at burst timed below")


def gemm_rows(spec, lib, candidates: int, enumerate_most: int, calls: int, hold: float) -> list[dict]:
    name, m, k, n, ldw, epilogue, per_step = spec
    gemm = Gemm(m, k, n, ldw, epilogue, lib)
    tflop = 2 * m * n * k / 1e12
    chosen, what = lt_candidates(gemm, candidates, enumerate_most) if lib else ([], "")
    print(f"\n{name}: M={m} K={k} N={n} ldw={ldw} {EPILOGUES[epilogue]}, {per_step} per step"
          + (f", {what}" if lib else ""))
    reference = []
    for s in range(SETS):
        gemm.out[s].copy_(gemm.residual[s])
        reference.append(gemm.torch_call(s).float())
    rows = [row("torch", "", tflop, per_step, time_sustained(capture(gemm.torch_call, calls, SETS), calls, hold), 0.0)]
    for i in chosen:
        text = ctypes.create_string_buffer(256)
        lib.gemm_algos_describe(i, text, 256)
        call = lambda s, i=i: gemm.lt_call(i, s)  # noqa: E731
        try:
            err = gemm.rel_error(call, reference)
            t = time_sustained(capture(call, calls, SETS), calls, hold)
        except RuntimeError as exc:
            print(f"  {i:>12}  failed: {exc}")
            continue
        rows.append(row(i, text.value.decode(), tflop, per_step, t, err))
    return rows


def attention_rows(calls: int, hold: float) -> list[dict]:
    from fastdit.ops.attention import attention_fwd, cuda_reason

    b, s, h, d, per_step = ATTENTION
    g = torch.Generator(device="cuda").manual_seed(1)
    qkv = [torch.randn(b, s, 3, h, d, device="cuda", dtype=torch.bfloat16, generator=g).unbind(2) for _ in range(SETS)]
    tflop = 4 * b * h * s * s * d / 1e12
    print(f"\nattention: B={b} S={s} H={h} D={d}, {per_step} per step")

    def cudnn(i: int) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2) for t in qkv[i])
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)

    impls = {"sdpa-cudnn": cudnn}
    if cuda_reason(*qkv[0]) is None:
        impls["fastdit"] = lambda i: attention_fwd(*qkv[i], backend="cuda")
    rows = []
    for label, call in impls.items():
        err = float((call(0).float() - cudnn(0).float()).norm() / cudnn(0).float().norm())
        rows.append(row(label, "", tflop, per_step, time_sustained(capture(call, calls, SETS), calls, hold), err))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lt-algos", default=None, metavar="LIB", help="time cuBLASLt's candidates too (gemm_algos.so)")
    parser.add_argument("--candidates", type=int, default=16, help="cuBLASLt candidates timed per GEMM")
    parser.add_argument("--enumerate", type=int, default=0, metavar="MOST",
                        help="with --lt-algos: rank up to MOST of every configuration cuBLASLt accepts (not only "
                             "its heuristic's) by a burst timing, then time the fastest --candidates")
    parser.add_argument("--gemms", nargs="*", default=None, help="only these (names from FLUX_GEMMS)")
    parser.add_argument("--no-attention", action="store_true")
    parser.add_argument("--hold", type=float, default=1.2, help="seconds of back-to-back replays per timing")
    parser.add_argument("--calls", type=int, default=12, help="calls per captured graph")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    lib = load_lib(args.lt_algos) if args.lt_algos else None
    print(torch.cuda.get_device_name(), torch.__version__)
    report = {"gemms": {}, "attention": []}
    for spec in FLUX_GEMMS:
        if args.gemms is None or spec[0] in args.gemms:
            report["gemms"][spec[0]] = gemm_rows(spec, lib, args.candidates, args.enumerate, args.calls, args.hold)
            torch.cuda.empty_cache()
    if not args.no_attention:
        report["attention"] = attention_rows(args.calls, args.hold)

    print("\nper step at the power cap (sustained ms x calls per step)")
    torch_sum = best_sum = burst_sum = 0.0
    for name, rows in report["gemms"].items():
        ours = rows[0]
        best = min((r for r in rows if r["rel_l2_vs_torch"] < 1e-2), key=lambda r: r["sustained_ms"])
        torch_sum += ours["sustained_ms"] * ours["per_step"]
        burst_sum += ours["burst_ms"] * ours["per_step"]
        best_sum += best["sustained_ms"] * ours["per_step"]
        print(f"  {name:<20} torch {ours['sustained_ms'] * ours['per_step']:6.2f} ms"
              + (f"   best candidate {best['candidate']} {best['sustained_ms'] * ours['per_step']:6.2f} ms" if lib else ""))
    print(f"  GEMMs: torch's calls {torch_sum:.1f} ms sustained ({burst_sum:.1f} ms at burst rates)"
          + (f"; the best cuBLASLt candidate of each {best_sum:.1f} ms" if lib else ""))
    for r in report["attention"]:
        print(f"  attention {r['candidate']:<10} {r['sustained_ms'] * r['per_step']:6.2f} ms sustained "
              f"({r['burst_ms'] * r['per_step']:.2f} ms at burst)")
    report["summary"] = {"gemm_torch_sustained_ms": torch_sum, "gemm_torch_burst_ms": burst_sum,
                         "gemm_best_candidate_sustained_ms": best_sum if lib else None}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
