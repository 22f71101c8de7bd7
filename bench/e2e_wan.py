"""Wan2.1 end to end on one GPU: fastdit against diffusers with the SAME random weights, in one process.

    python bench/e2e_wan.py --json e2e_wan.json                       # all cases below
    python bench/e2e_wan.py --cases 1.3B@480x832 --e2e-steps 0        # one case, no end-to-end run

Per case (model @ size, 81 frames, bf16): one denoising step with CFG on (fastdit: both branches in ONE
batch-2 DiT pass; diffusers: two batch-1 passes, as WanPipeline does), median of --iters after a warm-up,
with the peak memory; the rel. L2 difference of the two velocities shows the weights really are shared.
Then the VAE decode of 81 frames at 480x832 (fastdit at each --vae-chunk-frames, diffusers), and fastdit's
whole pipeline (dummy UMT5-XXL included) for --e2e-steps steps. diffusers gets our tensors by assignment
(no second copy), so even the 14B model fits twice. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fastdit.configs import wan as presets
from fastdit.models.dits.wan import load_wan_transformer
from fastdit.models.vaes.autoencoder_kl_wan import load_autoencoder_kl_wan

MODELS = {"1.3B": presets.T2V_1_3B, "14B": presets.T2V_14B}
DEFAULT_CASES = ["1.3B@480x832", "14B@480x832", "14B@720x1280"]


def time_ms(fn, iters: int, warmup: int = 1) -> tuple[float, float]:
    """(median ms over `iters` CUDA-event-timed calls after `warmup` calls, peak GiB allocated meanwhile)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def diffusers_twin(cls, config: dict, module: torch.nn.Module, device, rebuild=None) -> torch.nn.Module:
    """A diffusers model whose parameters ARE `module`'s tensors (keys are equal), built on meta first;
    `rebuild(twin)` replaces submodules whose non-persistent buffers were left on meta."""
    with torch.device("meta"):
        twin = cls.from_config(config)
    twin.load_state_dict(module.state_dict(), strict=True, assign=True)
    if rebuild is not None:
        rebuild(twin)
    return twin.to(device).eval()


def bench_dit(name: str, height: int, width: int, frames: int, iters: int, device) -> dict:
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    config = presets.transformer_preset(MODELS[name])
    ours = load_wan_transformer(config, None, torch.bfloat16, device)
    rope_table = lambda twin: setattr(  # noqa: E731
        twin, "rope", WanRotaryPosEmbed(config.attention_head_dim, config.patch_size, config.rope_max_seq_len)
    )
    ref = diffusers_twin(WanTransformer3DModel, config.to_dict(), ours, device, rope_table)
    g = torch.Generator(device).manual_seed(0)
    shape = (1, config.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
    x = torch.randn(shape, generator=g, device=device, dtype=torch.bfloat16)
    txt = torch.randn(2, 512, config.text_dim, generator=g, device=device, dtype=torch.bfloat16)
    t = torch.tensor([999], device=device)
    rope = ours.rope(x.shape, device=device)

    def ours_step():
        context = ours.encode_context(txt)
        v = ours(torch.cat([x, x]), t.expand(2), rope=rope, context=context)
        uncond, cond = v.chunk(2)
        return uncond + 5.0 * (cond - uncond)

    def ref_step():
        cond = ref(x, t, txt[1:], return_dict=False)[0]
        uncond = ref(x, t, txt[:1], return_dict=False)[0]
        return uncond + 5.0 * (cond - uncond)

    with torch.inference_mode():
        a, b = ours_step().float(), ref_step().float()
        rel = ((a - b).norm() / b.norm()).item()
        ours_ms, ours_gib = time_ms(ours_step, iters)
        ref_ms, ref_gib = time_ms(ref_step, iters)
    del ours, ref
    torch.cuda.empty_cache()
    return {"case": f"{name}@{height}x{width}", "frames": frames, "tokens": shape[2] * shape[3] * shape[4] // 4,
            "step_cfg_ms": {"fastdit": ours_ms, "diffusers": ref_ms}, "peak_gib": {"fastdit": ours_gib, "diffusers": ref_gib},
            "rel_l2_vs_diffusers": rel}


def bench_vae(height: int, width: int, frames: int, chunks: list[int], iters: int, device) -> dict:
    from diffusers import AutoencoderKLWan

    ours = load_autoencoder_kl_wan(presets.vae_preset(presets.T2V_1_3B), None, torch.bfloat16, device)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(ours.config).items()}
    ref = diffusers_twin(AutoencoderKLWan, config, ours, device)
    z = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, device=device, dtype=torch.bfloat16)
    out = {"case": f"vae_decode@{height}x{width}x{frames}", "decode_ms": {}, "peak_gib": {}}
    with torch.inference_mode():
        for chunk in chunks:
            key = f"fastdit_chunk{chunk}"
            out["decode_ms"][key], out["peak_gib"][key] = time_ms(lambda: ours.decode(z, chunk_frames=chunk), iters)
        out["decode_ms"]["diffusers"], out["peak_gib"]["diffusers"] = time_ms(lambda: ref.decode(z), iters)
    del ours, ref
    torch.cuda.empty_cache()
    return out


def bench_e2e(steps: int, device) -> dict:
    from fastdit.pipelines.api import Pipeline
    from fastdit.pipelines.request import GenerationRequest

    pipe = Pipeline.from_pretrained(presets.T2V_1_3B, device=device, load_format="dummy")
    request = GenerationRequest(prompt="a red fox running through snow", seed=0, num_inference_steps=steps)
    pipe.run(GenerationRequest(prompt="warm-up", seed=0, num_inference_steps=1, num_frames=5), show_progress=False)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = pipe.run(request, show_progress=False)
    total_ms = (time.perf_counter() - start) * 1e3
    return {"case": f"e2e 1.3B@480x832x81 {steps} steps", "total_ms": total_ms, "stages_ms": result.timings["stages_ms"],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=DEFAULT_CASES, help="MODEL@HxW with MODEL in 1.3B, 14B")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--vae-chunk-frames", type=int, nargs="*", default=[1, 3])
    parser.add_argument("--e2e-steps", type=int, default=50, help="0 skips the end-to-end run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    rows = []
    for case in args.cases:
        name, size = case.split("@")
        height, width = (int(v) for v in size.split("x"))
        rows.append(bench_dit(name, height, width, args.frames, args.iters, device))
        r = rows[-1]
        print(f"{r['case']:>14} DiT step (CFG) ms: fastdit {r['step_cfg_ms']['fastdit']:9.1f}  diffusers "
              f"{r['step_cfg_ms']['diffusers']:9.1f}  peak GiB {r['peak_gib']['fastdit']:.1f} / "
              f"{r['peak_gib']['diffusers']:.1f}  rel L2 {r['rel_l2_vs_diffusers']:.2e}", flush=True)
    rows.append(bench_vae(480, 832, args.frames, args.vae_chunk_frames, args.iters, device))
    print(f"{rows[-1]['case']}: ms {rows[-1]['decode_ms']}  peak GiB {rows[-1]['peak_gib']}", flush=True)
    if args.e2e_steps:
        rows.append(bench_e2e(args.e2e_steps, device))
        print(f"{rows[-1]['case']}: {rows[-1]['total_ms']:.0f} ms, stages {rows[-1]['stages_ms']}", flush=True)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": "bfloat16"}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
