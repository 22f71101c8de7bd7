"""FLUX end to end on one GPU: fastdit against diffusers with the SAME random weights, in one process.

    python bench/e2e_flux.py --json e2e_flux.json                           # FLUX.1-dev, 1024x1024, batch 1
    python bench/e2e_flux.py --batch 1 4 --steps 28 50 --compile-peer       # + batch 4, + diffusers compiled
    python bench/e2e_flux.py --model flux-tiny --device cpu --dtype float32 --height 256 --width 256  # smoke run

fastdit loads the built-in model with --load-format dummy; diffusers' FluxTransformer2DModel and AutoencoderKL
are built on the meta device and take fastdit's tensors by assignment (the keys are equal: no second copy),
and both pipelines share the same transformers CLIP/T5 modules and tokenizers. Per side and batch: one DiT
step (median of --iters, CUDA events), text encoding, VAE decode, the whole pipeline at each --steps
(prompt -> PIL, from the same initial latents) with its peak memory, and the relative L2 difference of the
final latents. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fastdit import Pipeline
from fastdit.models.dits.flux import flux_checkpoint_state_dict
from fastdit.pipelines.flux import latent_image_ids, unpack_latents
from fastdit.pipelines.request import GenerationRequest

PROMPT = "a photograph of a red fox standing in fresh snow, morning light, 85mm"


def time_ms(fn, iters: int, device: torch.device, warmup: int = 1) -> float:
    """Median milliseconds of `fn()` over `iters` calls after `warmup`: CUDA events on a GPU, else wall clock."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def wall_and_peak(fn, device: torch.device):
    """(result, wall ms, peak GiB allocated during the call) of one synchronized call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return out, (time.perf_counter() - t0) * 1e3, peak


def diffusers_twin(cls, config: dict, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A diffusers model whose parameters ARE the tensors of `state` (checkpoint keys), built on the meta device."""
    with torch.device("meta"):
        twin = cls.from_config(config)
    twin.load_state_dict(state, strict=True, assign=True)
    return twin.eval()


def diffusers_peer(pipe: Pipeline):
    """A diffusers FluxPipeline over the same weights and encoders as `pipe`."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    c = pipe.recipe.components
    peer = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(c.scheduler_config.to_dict()),
        vae=diffusers_twin(AutoencoderKL, c.vae.config.to_dict(), c.vae.state_dict()),
        text_encoder=c.text_encoder.model, tokenizer=c.text_encoder.tokenizer,
        text_encoder_2=c.text_encoder_2.model, tokenizer_2=c.text_encoder_2.tokenizer,
        # the fused model's checkpoint keys as views of its fused tensors: still no second copy
        transformer=diffusers_twin(FluxTransformer2DModel, c.transformer.config.to_dict(),
                                   flux_checkpoint_state_dict(c.transformer)),
    )
    peer.set_progress_bar_config(disable=True)
    return peer


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def component_calls(name: str, pipe, peer, prompts: list[str], latents: torch.Tensor, height: int, width: int):
    """(one DiT step, text encoding, VAE decode) as zero-argument calls on identical inputs for one side."""
    recipe, batch, device = pipe.recipe, latents.shape[0], latents.device
    f2 = 2 * recipe.vae_scale_factor
    h2, w2 = 2 * (height // f2), 2 * (width // f2)  # unpacked latent sides
    embeds, pooled = recipe.encode_prompts(prompts, 1)  # [B, 512, 4096], [B, 768]
    txt_ids = torch.zeros(embeds.shape[1], 3, device=device, dtype=pipe.dtype)
    img_ids = latent_image_ids(h2 // 2, w2 // 2, device, pipe.dtype)
    t = torch.full([batch], 0.5, device=device, dtype=pipe.dtype)
    guidance = torch.full([batch], 3.5, device=device, dtype=torch.float32)
    z = unpack_latents(latents, h2, w2) / recipe.vae.config.scaling_factor + recipe.vae.config.shift_factor
    if name == "fastdit":
        rope = recipe.transformer.rope(img_ids, txt_ids)  # once per request, as the recipe does

        def step():
            return recipe.transformer(latents, embeds, pooled, t, img_ids, txt_ids, guidance, rope=rope)

        return step, lambda: recipe.encode_prompts(prompts, 1), lambda: recipe.vae.decode(z)

    def peer_step():
        return peer.transformer(hidden_states=latents, encoder_hidden_states=embeds, pooled_projections=pooled,
                                timestep=t, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)

    return (peer_step, lambda: peer.encode_prompt(prompts, prompt_2=None, device=device),
            lambda: peer.vae.decode(z, return_dict=False))


def pipeline_call(name: str, pipe, peer, prompts: list[str], latents: torch.Tensor, **kwargs):
    """The whole pipeline (prompt -> PIL images) from `latents`, returning the final packed latents."""
    if name == "fastdit":
        request = GenerationRequest(prompt=prompts, latents=latents, **kwargs)
        return lambda: pipe.run(request, show_progress=False).latents
    final = {}

    def keep_latents(_pipe, _step, _t, tensors):
        final["latents"] = tensors["latents"]  # after the scheduler step: at the last step, the final latents
        return {}

    def run():
        peer(prompts, latents=latents, callback_on_step_end=keep_latents, **kwargs)
        return final["latents"]

    return run


def bench_side(name, pipe, peer, batch, args, latents, device) -> dict:
    """One row: DiT step, text encode, VAE decode, end to end per step count, for fastdit or diffusers."""
    prompts = [PROMPT] * batch
    row = {"side": name, "batch": batch}
    with torch.inference_mode():
        step, encode, decode = component_calls(name, pipe, peer, prompts, latents, args.height, args.width)
        row["dit_step_ms"] = time_ms(step, args.iters, device, warmup=args.warmup)
        row["text_encode_ms"] = time_ms(encode, args.iters, device)
        row["vae_decode_ms"] = time_ms(decode, max(1, args.iters // 3), device)
    for steps in args.steps:
        run = pipeline_call(name, pipe, peer, prompts, latents, height=args.height, width=args.width,
                            num_inference_steps=steps, guidance_scale=3.5)
        out, row[f"e2e_{steps}_ms"], row[f"peak_{steps}_gib"] = wall_and_peak(run, device)
        row[f"latents_{steps}"] = out
        row[f"finite_{steps}"] = bool(torch.isfinite(out).all())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="black-forest-labs/FLUX.1-dev", help="built-in model id")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--steps", type=int, nargs="+", default=[28, 50])
    parser.add_argument("--iters", type=int, default=10, help="timed calls per DiT step / encode measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--kernel-backend", default="auto")
    parser.add_argument("--compile-peer", action="store_true", help="also time diffusers with torch.compile")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()

    device = torch.device(args.device)
    pipe = Pipeline.from_pretrained(args.model, device=device, dtype=args.dtype, load_format="dummy",
                                    attention_backend=args.attention_backend, kernel_backend=args.kernel_backend)
    peer = diffusers_peer(pipe)
    in_channels = pipe.recipe.transformer.config.in_channels
    tokens = (args.height // (2 * pipe.recipe.vae_scale_factor)) * (args.width // (2 * pipe.recipe.vae_scale_factor))
    # the same initial latents for every side at a batch size: [B, S_img, 4C], seeded on the CPU
    noise = {b: torch.randn(b, tokens, in_channels, generator=torch.Generator().manual_seed(b)).to(device, pipe.dtype)
             for b in args.batch}
    rows = []
    for name in ["fastdit", "diffusers"] + (["diffusers+compile"] if args.compile_peer else []):
        if name == "diffusers+compile":
            peer.transformer.compile()  # in place, after the eager rows: every later call runs compiled
        for batch in args.batch:
            rows.append(bench_side(name, pipe, peer, batch, args, noise[batch], device))
    for r in rows:
        ours = next(o for o in rows if o["side"] == "fastdit" and o["batch"] == r["batch"])
        for steps in args.steps:
            r[f"rel_err_{steps}"] = rel_l2(r[f"latents_{steps}"], ours[f"latents_{steps}"])
    for r in rows:
        for steps in args.steps:
            del r[f"latents_{steps}"]
    columns = ["side", "batch", "dit_step_ms", "text_encode_ms", "vae_decode_ms"]
    columns += [f"{k}_{s}{u}" for s in args.steps for k, u in (("e2e", "_ms"), ("peak", "_gib"), ("rel_err", ""))]
    print(" ".join(f"{c:>15}" for c in columns))
    for r in rows:
        print(" ".join(f"{r[c]:>15.4g}" if isinstance(r[c], float) else f"{r[c]!s:>15}" for c in columns))
    if args.json:
        meta = {"model": args.model, "height": args.height, "width": args.width, "dtype": args.dtype,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "attention_backend": pipe.recipe.attention_backend, "torch": torch.__version__}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
