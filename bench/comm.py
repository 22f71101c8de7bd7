"""Ulysses pack/unpack (comm_pack) bandwidth against a plain device copy, and the single-GPU cost of the
distributed code path (degrees all 1) on a full FLUX transformer step.

    python bench/comm.py --json comm.json                    # H100: Wan-14B 720p shapes, FLUX.1-dev step
    python bench/comm.py --tokens 4096 --model flux-tiny --steps 3   # smoke run (CPU works, torch only)

Shapes: B=1, S=75600 image tokens (Wan2.1-14B 720p: 21 x 45 x 80 latent tokens), 40 heads x 128, bf16;
per Ulysses degree U the rank holds S/U tokens. GB/s counts bytes read + written; the peer is
`torch.Tensor.copy_` of the same number of bytes between two contiguous buffers (the copy roofline).
Targets (issue 7): comm_pack >= 85% of copy bandwidth; SP plan with degrees 1 <= 1% per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fastdit.distributed import single_process_groups
from fastdit.distributed.plans import SequenceParallelFlux
from fastdit.ops.comm_pack import comm_pack


def timed_ms(fn, device: torch.device, reps: int, flush: torch.Tensor | None) -> float:
    """Median time of fn() in ms: CUDA events on a GPU (L2 flushed before each rep), wall clock on CPU."""
    fn()  # warm-up / compile
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            if flush is not None:
                flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_pack(args, device, flush) -> list[dict]:
    rows = []
    H, D = args.heads, args.head_dim
    for U in args.ulysses:
        S = args.tokens // U
        x = torch.randn(1, S, H, D, device=device, dtype=torch.bfloat16)
        send = torch.empty(U, 1, S, H // U * D, device=device, dtype=torch.bfloat16)
        recv = torch.randn_like(send)
        gathered = torch.empty(1, U * S, H // U, D, device=device, dtype=torch.bfloat16)
        nbytes = 2 * x.numel() * x.element_size()
        src, dst = torch.randn_like(x), torch.empty_like(x)
        copy_ms = timed_ms(lambda: dst.copy_(src), device, args.reps, flush)
        cases = {
            "scatter_pack": (x.view(1, S, U, H // U * D), send.permute(1, 0, 2, 3)),
            "scatter_unpack": (recv.reshape(1, U, 1, S * H // U * D), gathered.view(1, 1, U, S * H // U * D)),
        }
        for case, (inp, out) in cases.items():
            for backend in args.backends:
                try:
                    ms = timed_ms(lambda: comm_pack(inp, out, backend=backend), device, args.reps, flush)
                except ValueError as err:  # backend not available here: say so in the table
                    print(f"skip {case} U={U} {backend}: {err}")
                    continue
                rows.append(dict(case=case, U=U, backend=backend, ms=ms, gbps=nbytes / ms / 1e6,
                                 copy_gbps=nbytes / copy_ms / 1e6, of_copy=copy_ms / ms))
    return rows


@torch.no_grad()
def bench_plan(args, device, flush) -> dict:
    from fastdit.configs.flux import flux_transformer_preset
    from fastdit.layers.attention import attention
    from fastdit.loader.weights import build_module, init_dummy_weights
    from fastdit.models.dits.flux import FluxTransformer2DModel

    config = flux_transformer_preset(args.model)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_module(lambda: FluxTransformer2DModel(config), dtype, device)
    init_dummy_weights(model)
    S, T, B = args.flux_tokens, 512 if device.type == "cuda" else 16, 1
    ids = torch.zeros(S, 3, device=device)
    ids[:, 1], ids[:, 2] = torch.arange(S, device=device) // 64, torch.arange(S, device=device) % 64
    kw = dict(hidden_states=torch.randn(B, S, config.in_channels, device=device, dtype=dtype),
              encoder_hidden_states=torch.randn(B, T, config.joint_attention_dim, device=device, dtype=dtype),
              pooled_projections=torch.randn(B, config.pooled_projection_dim, device=device, dtype=dtype),
              timestep=torch.tensor([0.5], device=device), img_ids=ids, txt_ids=torch.zeros(T, 3, device=device),
              guidance=torch.tensor([3.5], device=device) if config.guidance_embeds else None)
    kw["rope"] = model.rope(kw["img_ids"], kw["txt_ids"])

    def op(q, k, v, joint_txt_len=0):
        return attention(q, k, v)

    model.set_attn_op(op)
    planned_model = SequenceParallelFlux(model, single_process_groups(device), op)  # sets USPAttention
    usp_op = model.transformer_blocks[0].attn_op
    # Alternate the two in rounds, so that clock drift over the run (the GPU warming up) weighs on both
    # alike; the median of the rounds' medians is reported. The plain rounds put the plain op back.
    plain_rounds, plan_rounds = [], []
    for _ in range(args.rounds):
        model.set_attn_op(op)
        plain_rounds.append(timed_ms(lambda: model(**kw), device, args.steps, flush))
        model.set_attn_op(usp_op)
        plan_rounds.append(timed_ms(lambda: planned_model(**kw), device, args.steps, flush))
    plain_ms, plan_ms = statistics.median(plain_rounds), statistics.median(plan_rounds)
    return dict(model=args.model, tokens=S, plain_ms=plain_ms, plan_ms=plan_ms, overhead=plan_ms / plain_ms - 1,
                plain_rounds_ms=plain_rounds, plan_rounds_ms=plan_rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=75600)
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--ulysses", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--backends", nargs="+", default=["cuda", "triton", "torch"])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--model", default="FLUX.1-dev")
    p.add_argument("--flux-tokens", type=int, default=4096)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="alternating plain/plan rounds of --steps each")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    rows = bench_pack(args, device, flush)
    print(f"{'case':16} {'U':>2} {'backend':8} {'ms':>8} {'GB/s':>8} {'copy GB/s':>10} {'of copy':>8}")
    for r in rows:
        print(f"{r['case']:16} {r['U']:>2} {r['backend']:8} {r['ms']:8.3f} {r['gbps']:8.0f} {r['copy_gbps']:10.0f} {r['of_copy']:8.1%}")
    plan = bench_plan(args, device, flush)
    print(f"{plan['model']} step, {plan['tokens']} tokens: plain {plan['plain_ms']:.2f} ms, "
          f"SP plan with degrees 1 {plan['plan_ms']:.2f} ms ({plan['overhead']:+.2%})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                           pack=rows, plan=plan), f, indent=1)


if __name__ == "__main__":
    main()
