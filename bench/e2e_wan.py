"""Wan2.1 end to end on one GPU: fastdit against diffusers with the SAME random weights, in one process.

    python bench/e2e_wan.py --json e2e_wan.json                   # the default plan, about 5 minutes on an H100
    python bench/e2e_wan.py --cases 1.3B@480x832 --vae-sizes 480x832 --e2e-steps 0     # about a minute
    python bench/e2e_wan.py --cases 1.3B@480x832 --vae-sizes --e2e-steps 0 --profile-top 25   # + per-kernel time

Sections, in this order (bf16, 81 frames, full-size architectures with random weights, --load-format dummy):
  dit   per MODEL@HxW case: ONE DiT pass at batch 1 (the issue's unit; fastdit vs diffusers), fastdit's CFG
        step (both branches in one batch-2 pass + the guidance combine; diffusers' CFG step is two batch-1
        passes, reported as 2 x its pass), peak memory, and the rel. L2 difference of the two passes' outputs
        (shows the weights really are shared).
  vae   per size: decode of 81 frames, fastdit in each --vae-variants (layout cl = channels-last / nc = NCDHW,
        then latent frames per pass) vs diffusers' AutoencoderKLWan.decode, peak memory of each.
  e2e   Wan2.1-T2V-1.3B at 480x832: fastdit's Pipeline.run (dummy UMT5-XXL encode, --e2e-steps UniPC steps with
        batched CFG, VAE decode to frames) vs diffusers' WanPipeline given the same prompt embeddings and initial
        latents; per-stage times and the final latents' rel. L2 difference.
Targets of issue 9 (H100) are printed beside the numbers. diffusers gets our tensors by assignment (no second
copy of the weights), so the 14B model fits twice. The whole plan stays under --max-seconds: a DiT case whose
estimate does not fit is skipped, and the e2e run gets as many steps as still fit (the JSON records them).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import time

import torch
from timer import time_cuda

from fastdit.configs import wan as presets
from fastdit.layers.attention import make_attention_op
from fastdit.models.dits.wan import load_wan_transformer, wan_checkpoint_state_dict
from fastdit.models.vaes.autoencoder_kl_wan import load_autoencoder_kl_wan

MODELS = {"1.3B": presets.T2V_1_3B, "14B": presets.T2V_14B}
DEFAULT_CASES = ["1.3B@480x832", "14B@480x832", "14B@720x1280"]
# issue 9's targets on an H100: one DiT pass (ms), and the VAE decode of 81 frames at 480p
PASS_TARGET_MS = {"1.3B@480x832": 450.0, "14B@480x832": 2750.0, "14B@720x1280": 10600.0}
VAE_TARGET_MS = {"480x832": 1000.0}
# one 14B pass at 720p costs about this many 480p passes (issue 9's diffusers numbers: 12726 / 3400)
RATIO_720P = 3.8


def measure(fn, budget_s: float, iters: int, warmup: int = 1) -> dict:
    """Median GPU ms of fn() (bench/timer.py) over as many calls as fit `budget_s` (1..iters) after `warmup`
    calls, and the peak GiB allocated meanwhile. The first untimed call sizes the count."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn() if warmup else None
    torch.cuda.synchronize()
    first_s = time.perf_counter() - start
    n = max(1, min(iters, int(budget_s / max(first_s, 1e-3)))) if warmup else 1
    timing = time_cuda(fn, warmup=max(0, warmup - 1), iters=n, cold_l2=False)
    return {"ms": timing.median_ms, "iters": n, "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "out": out}


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def diffusers_twin(cls, config: dict, state: dict[str, torch.Tensor], device, rebuild=None) -> torch.nn.Module:
    """A diffusers model whose parameters ARE the tensors of `state` (keys are equal), built on meta first;
    `rebuild(twin)` replaces submodules whose non-persistent buffers were left on meta."""
    with torch.device("meta"):
        twin = cls.from_config(config)
    twin.load_state_dict(state, strict=True, assign=True)
    if rebuild is not None:
        rebuild(twin)
    return twin.to(device).eval()


def transformer_twin(ours, device):
    """diffusers' transformer on our tensors: the checkpoint keys as views of our fused projections (no copy)."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    c = ours.config
    def rope(twin):
        twin.rope = WanRotaryPosEmbed(c.attention_head_dim, c.patch_size, c.rope_max_seq_len)

    return diffusers_twin(WanTransformer3DModel, c.to_dict(), wan_checkpoint_state_dict(ours), device, rope)


def vae_twin(ours, device):
    """diffusers' VAE on NCDHW copies of channels-last weights (its own layout), the same tensors otherwise."""
    from diffusers import AutoencoderKLWan

    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(ours.config).items()}
    state = {k: v.contiguous() for k, v in ours.state_dict().items()}
    return diffusers_twin(AutoencoderKLWan, config, state, device)


@contextlib.contextmanager
def diffusers_sdpa(choice: str):
    """torch's own SDPA choice ("default"), or one backend forced for diffusers' attention."""
    if choice == "default":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[choice]
    with sdpa_kernel([backend]):
        yield


def bench_dit(case: str, args, device) -> dict:
    name, size = case.split("@")
    height, width = (int(v) for v in size.split("x"))
    config = presets.transformer_preset(MODELS[name])
    attn_op = make_attention_op(args.attention_backend, device, torch.bfloat16, config.attention_head_dim)
    ours = load_wan_transformer(config, None, torch.bfloat16, device, attn_op, args.kernel_backend)
    ref = transformer_twin(ours, device)
    g = torch.Generator(device).manual_seed(0)
    shape = (1, config.in_channels, (args.frames - 1) // 4 + 1, height // 8, width // 8)
    x = torch.randn(shape, generator=g, device=device, dtype=torch.bfloat16)
    txt = torch.randn(2, 512, config.text_dim, generator=g, device=device, dtype=torch.bfloat16)
    t = torch.tensor([999], device=device)
    rope = ours.rope(x.shape, device=device)

    def ours_pass():
        return ours(x, t, rope=rope, context=ours.encode_context(txt[1:]))

    def ours_cfg_step():
        uncond, cond = ours(torch.cat([x, x]), t.expand(2), rope=rope, context=ours.encode_context(txt)).chunk(2)
        return uncond + 5.0 * (cond - uncond)

    def ref_pass():
        with diffusers_sdpa(args.diffusers_sdpa):
            return ref(x, t, txt[1:], return_dict=False)[0]

    budget = args.measure_seconds
    with torch.inference_mode():
        o = measure(ours_pass, budget, args.iters)
        r = measure(ref_pass, budget, args.iters)
        rel = rel_l2(o.pop("out"), r.pop("out"))
        # a batch-2 pass of a model already warmed at batch 1: no untimed call once a step takes seconds
        cfg = measure(ours_cfg_step, budget, args.iters, warmup=int(2 * o["ms"] < 2000))
        cfg.pop("out")
    row = {"section": "dit", "case": case, "frames": args.frames, "tokens": shape[2] * shape[3] * shape[4] // 4,
            "attention_backend": attn_op.backend, "diffusers_sdpa": args.diffusers_sdpa,
            "pass_ms": {"fastdit": o["ms"], "diffusers": r["ms"]}, "target_pass_ms": PASS_TARGET_MS.get(case),
            "cfg_step_ms": {"fastdit": cfg["ms"], "diffusers_2x_pass": 2 * r["ms"]},
            "peak_gib": {"fastdit_pass": o["peak_gib"], "diffusers_pass": r["peak_gib"],
                         "fastdit_cfg_step": cfg["peak_gib"]},
            "iters": {"fastdit": o["iters"], "diffusers": r["iters"], "cfg": cfg["iters"]}, "rel_l2_vs_diffusers": rel}
    if args.profile_top > 0:  # where one of our passes spends its GPU time, per kernel
        from e2e_flux import kernel_breakdown, print_breakdown

        row["kernel_breakdown"] = kernel_breakdown(ours_pass, device, args.profile_top)
        print_breakdown(row["kernel_breakdown"])
    return row


def bench_vae(size: str, args, device) -> dict:
    height, width = (int(v) for v in size.split("x"))
    config = presets.vae_preset(presets.T2V_1_3B)
    ours = load_autoencoder_kl_wan(config, None, torch.bfloat16, device, args.kernel_backend)
    ref = vae_twin(ours, device)
    z = torch.randn(1, 16, (args.frames - 1) // 4 + 1, height // 8, width // 8, device=device, dtype=torch.bfloat16)
    row = {"section": "vae", "case": f"vae_decode@{size}x{args.frames}", "target_ms": VAE_TARGET_MS.get(size),
           "decode_ms": {}, "peak_gib": {}, "rel_l2_vs_diffusers": {}}
    with torch.inference_mode():
        r = measure(lambda: ref.decode(z, return_dict=False)[0], args.measure_seconds, args.iters)
        expected = r.pop("out")
        for variant in args.vae_variants:
            layout, chunk, search = variant[:2], int(variant[2:].rstrip("b")), variant.endswith("b")
            ours.set_channels_last(layout == "cl")
            ours.cudnn_benchmark = search  # the measurement's warm-up call pays cuDNN's algorithm search
            o = measure(lambda: ours.decode(z, chunk_frames=chunk), args.measure_seconds, args.iters)
            row["decode_ms"][variant], row["peak_gib"][variant] = o["ms"], o["peak_gib"]
            row["rel_l2_vs_diffusers"][variant] = rel_l2(o.pop("out"), expected)
        row["decode_ms"]["diffusers"], row["peak_gib"]["diffusers"] = r["ms"], r["peak_gib"]
    if args.profile_top > 0:  # where our decode spends its GPU time (the first variant's settings), per kernel
        from e2e_flux import kernel_breakdown, print_breakdown

        variant = args.vae_variants[0]
        ours.set_channels_last(variant[:2] == "cl")
        ours.cudnn_benchmark = variant.endswith("b")
        chunk = int(variant[2:].rstrip("b"))
        row["kernel_breakdown"] = kernel_breakdown(lambda: ours.decode(z, chunk_frames=chunk), device, args.profile_top)
        print_breakdown(row["kernel_breakdown"])
    return row


def _wall(fn) -> tuple[object, float, float]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, (time.perf_counter() - start) * 1e3, torch.cuda.max_memory_allocated() / 2**30


def bench_e2e(steps: int, args, device) -> dict:
    """fastdit's whole request vs diffusers' WanPipeline (denoise + decode; it is handed our prompt embeddings)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    from fastdit.pipelines.api import Pipeline
    from fastdit.pipelines.request import GenerationRequest
    from fastdit.pipelines.wan import WAN_NEGATIVE_PROMPT

    (height, width), prompt = (int(v) for v in args.e2e_size.split("x")), "a red fox running through fresh snow"
    pipe = Pipeline.from_pretrained(args.e2e_model, device=device, load_format="dummy",
                                    attention_backend=args.attention_backend, kernel_backend=args.kernel_backend)
    recipe = pipe.recipe
    noise = torch.randn(1, 16, (args.frames - 1) // 4 + 1, height // 8, width // 8,
                        generator=torch.Generator().manual_seed(0))
    request = GenerationRequest(prompt=prompt, height=height, width=width, num_frames=args.frames,
                                num_inference_steps=steps, guidance_scale=5.0, seed=0, latents=noise)
    warm_up = GenerationRequest(prompt="warm-up", height=height, width=width, num_frames=args.frames,
                                num_inference_steps=1, seed=0)
    pipe.run(warm_up, show_progress=False)  # every kernel at the timed shapes, the VAE decode included
    with torch.inference_mode():
        ours, ours_ms, ours_gib = _wall(lambda: pipe.run(request, show_progress=False))

        embeds = recipe.components.text_encoder.encode([WAN_NEGATIVE_PROMPT, prompt], 512).to(device, torch.bfloat16)
        scheduler = UniPCMultistepScheduler.from_config(dataclasses.asdict(recipe.components.scheduler_config))
        peer = WanPipeline(tokenizer=None, text_encoder=None, vae=vae_twin(recipe.vae, device),
                           transformer=transformer_twin(recipe.transformer, device), scheduler=scheduler)
        peer.set_progress_bar_config(disable=True)
        final = {}

        def keep(_pipe, _step, _t, tensors):
            final["latents"] = tensors["latents"]
            return tensors

        def peer_run():
            with diffusers_sdpa(args.diffusers_sdpa):
                return peer(prompt_embeds=embeds[1:], negative_prompt_embeds=embeds[:1], height=height, width=width,
                            num_frames=args.frames, num_inference_steps=steps, guidance_scale=5.0,
                            latents=noise.to(device), output_type="np", callback_on_step_end=keep)

        _, ref_ms, ref_gib = _wall(peer_run)
    rel, stages = rel_l2(ours.latents, final["latents"]), ours.timings["stages_ms"]
    return {"section": "e2e", "case": f"{args.e2e_model}@{height}x{width}x{args.frames}", "steps": steps,
            "total_ms": {"fastdit": ours_ms, "diffusers": ref_ms},
            "fastdit_stages_ms": {k: round(v, 1) for k, v in stages.items()},
            "peak_gib": {"fastdit": ours_gib, "diffusers": ref_gib}, "final_latents_rel_l2": rel}


def _fmt_target(ms: float, target: float | None) -> str:
    return "" if target is None else f"  target {target:.0f} ({'met' if ms <= target else 'MISSED'})"


def print_row(row: dict) -> None:
    if row["section"] == "dit":
        p, c, m = row["pass_ms"], row["cfg_step_ms"], row["peak_gib"]
        print(f"dit {row['case']:>13} ({row['tokens']} tokens, attention {row['attention_backend']}): one pass ms "
              f"fastdit {p['fastdit']:8.1f} diffusers {p['diffusers']:8.1f}"
              f"{_fmt_target(p['fastdit'], row['target_pass_ms'])}"
              f" | CFG step fastdit {c['fastdit']:8.1f} diffusers(2x) {c['diffusers_2x_pass']:8.1f} | peak GiB "
              f"{m['fastdit_pass']:.1f}/{m['diffusers_pass']:.1f} (CFG {m['fastdit_cfg_step']:.1f}) | rel L2 "
              f"{row['rel_l2_vs_diffusers']:.1e}", flush=True)
    elif row["section"] == "vae":
        cells = "  ".join(f"{k} {v:7.1f} ms {row['peak_gib'][k]:5.1f} GiB" for k, v in row["decode_ms"].items())
        best = min(v for k, v in row["decode_ms"].items() if k != "diffusers")
        print(f"vae {row['case']}: {cells}{_fmt_target(best, row['target_ms'])}  rel L2 {row['rel_l2_vs_diffusers']}",
              flush=True)
    elif row["section"] == "e2e":
        t, m = row["total_ms"], row["peak_gib"]
        print(f"e2e {row['case']} {row['steps']} steps: fastdit {t['fastdit']:.0f} ms ({m['fastdit']:.1f} GiB) "
              f"diffusers {t['diffusers']:.0f} ms ({m['diffusers']:.1f} GiB), final latents rel L2 "
              f"{row['final_latents_rel_l2']:.1e}; fastdit stages {row['fastdit_stages_ms']}", flush=True)
    else:
        print(f"skipped {row['case']}: {row['reason']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=DEFAULT_CASES, help="MODEL@HxW, MODEL in 1.3B, 14B")
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--iters", type=int, default=3, help="most timed calls per measurement")
    parser.add_argument("--measure-seconds", type=float, default=8.0, help="time per measurement that sets the count")
    parser.add_argument("--vae-sizes", nargs="*", default=["480x832", "720x1280"])
    parser.add_argument("--vae-variants", nargs="*", default=["cl1", "cl1b", "cl3", "nc1"],
                        help="fastdit decode variants: cl|nc (channels-last or NCDHW) + latent frames per pass "
                             "(+ b: cuDNN benchmark mode, algorithms timed per conv shape)")
    parser.add_argument("--e2e-steps", type=int, default=50, help="0 skips the end-to-end section")
    parser.add_argument("--e2e-model", default=presets.T2V_1_3B, help="built-in T2V model id for the e2e section")
    parser.add_argument("--e2e-size", default="480x832")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--kernel-backend", default="auto")
    parser.add_argument("--diffusers-sdpa", choices=["default", "cudnn", "flash"], default="default",
                        help="diffusers' attention: torch's SDPA choice (cuDNN on an H100), or one forced")
    parser.add_argument("--profile-top", type=int, default=0,
                        help="also profile one fastdit pass per DiT case and one decode per VAE size, listing this "
                             "many kernels (0: off)")
    parser.add_argument("--max-seconds", type=float, default=380.0, help="the whole plan's wall-clock budget")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for case in args.cases:
        if case.split("@")[0] not in MODELS or len(case.split("@")) != 2:
            parser.error(f"--cases {case!r}: use MODEL@HxW with MODEL in {sorted(MODELS)}")
    for variant in args.vae_variants:
        chunk = variant[2:].removesuffix("b")
        if variant[:2] not in ("cl", "nc") or not chunk.isdigit() or int(chunk) < 1:
            parser.error(f"--vae-variants {variant!r}: use cl or nc, latent frames per pass, optional b (cuDNN "
                         "benchmark mode), e.g. cl1 or cl1b")
    device = torch.device("cuda")
    t0, rows, pass_s = time.perf_counter(), [], {}
    left = lambda: args.max_seconds - (time.perf_counter() - t0)  # noqa: E731

    def run(row_fn, case, estimate_s):
        if estimate_s > left():
            reason = f"~{estimate_s:.0f} s estimated, {left():.0f} s left"
            rows.append({"section": "skipped", "case": case, "reason": reason})
        else:
            rows.append(row_fn())
            gc.collect()  # the section's models are unreachable once it returned: give their memory back
            torch.cuda.empty_cache()
        print_row(rows[-1])

    for case in sorted(args.cases, key=lambda c: (c.split("@")[0] != "1.3B", "720" in c)):
        name, size = case.split("@")
        base = pass_s.get(f"{name}@480x832")
        est = 0.0 if base is None else base * (RATIO_720P if size.startswith("720") else 1) * 9 + 10
        run(lambda: bench_dit(case, args, device), case, est)
        if rows[-1]["section"] == "dit":
            pass_s[case] = (rows[-1]["pass_ms"]["fastdit"] + rows[-1]["pass_ms"]["diffusers"]) / 2e3
    for size in args.vae_sizes:
        run(lambda: bench_vae(size, args, device), f"vae_decode@{size}", 0.0)
    if args.e2e_steps:
        # per step: fastdit's CFG pass + diffusers' two passes; plus loading, warm-up and two decodes
        step_s = 4 * pass_s.get("1.3B@480x832", 0.8)
        steps = min(args.e2e_steps, int((left() - 40) / step_s))
        if steps < args.e2e_steps:
            print(f"e2e: {steps} steps instead of {args.e2e_steps} to stay under --max-seconds", flush=True)
        run(lambda: bench_e2e(steps, args, device), "e2e", 0.0 if steps >= 2 else float("inf"))
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": "bfloat16",
            "wall_s": time.perf_counter() - t0}
    print(f"total {meta['wall_s']:.0f} s on {meta['device']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
