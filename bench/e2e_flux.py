"""FLUX end to end on one GPU: fastdit against diffusers with the SAME random weights, in one process.

    python bench/e2e_flux.py --json e2e_flux.json        # quick set (default): 1024x1024, 28 steps, batch 1,
                                                         #   fastdit, diffusers eager, diffusers + torch.compile
    python bench/e2e_flux.py --full --json e2e_flux.json # 28 and 50 steps, batch 1 and 4, + fastdit + torch.compile
    python bench/e2e_flux.py --model flux-tiny --device cpu --dtype float32 --height 256 --width 256  # smoke run

fastdit loads the built-in model with --load-format dummy; diffusers' FluxTransformer2DModel and AutoencoderKL
are built on the meta device and take fastdit's tensors by assignment (checkpoint keys, views of the fused
tensors: no second copy), and both pipelines share the same transformers CLIP/T5 modules and tokenizers.
Per side and batch: one DiT step (median of --iters, CUDA events; fastdit through its CUDA graph, and eagerly),
text encoding, VAE decode, the whole pipeline at each --steps (prompt -> PIL, from the same initial latents)
with its peak memory (max reserved and allocated, each side measured alone: fastdit's graphs dropped first),
and the relative L2 difference of the final latents to diffusers eager's. Then a torch-profiler breakdown of
one eager fastdit DiT step: the top kernels by CUDA time, and totals per group (gemm, attention, norm, other).
Prints the tables and writes JSON. The quick set fits one 560 s device call on an H100 (about half of it is
diffusers' torch.compile).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import time
from collections import Counter

import torch

from fastdit import Pipeline
from fastdit.models.dits.flux import flux_checkpoint_state_dict
from fastdit.pipelines.cuda_graph import compile_model
from fastdit.pipelines.flux import MODULATION_ROWS, latent_image_ids, unpack_latents
from fastdit.pipelines.request import GenerationRequest

PROMPT = "a photograph of a red fox standing in fresh snow, morning light, 85mm"


def time_ms(fn, iters: int, device: torch.device, warmup: int = 1) -> float:
    """Median milliseconds of `fn()` over `iters` calls after `warmup`: bench/timer.py on a GPU, else wall clock."""
    if device.type == "cuda":
        from timer import time_cuda  # bench/timer.py: the shared CUDA-event timer

        return time_cuda(fn, warmup=warmup, iters=iters, cold_l2=False, device=device).median_ms
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def wall_and_peak(fn, device: torch.device):
    """(result, wall ms, peak GiB reserved, peak GiB allocated) of one synchronized call. Reserved counts
    what the process holds, a CUDA graph's private pool included (its replays bypass the allocator's
    allocated counter), so it is the number to compare; the cache is emptied first."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall_ms = (time.perf_counter() - t0) * 1e3
    if device.type != "cuda":
        return out, wall_ms, float("nan"), float("nan")
    return (out, wall_ms, torch.cuda.max_memory_reserved(device) / 2**30,
            torch.cuda.max_memory_allocated(device) / 2**30)


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


def finite_or_none(obj):
    """NaN (a number a side does not have, or no GPU) as null: JSON has no NaN."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def component_calls(name: str, pipe, peer, prompts: list[str], latents: torch.Tensor, height: int, width: int):
    """{"dit_step", ["dit_step_eager",] "text_encode", "vae_decode", "steps_per_call"}: zero-argument calls on
    identical inputs for one side. fastdit's dit_step is what its denoising loop does: MODULATION_ROWS steps
    per call, with the adaLN vectors of MODULATION_ROWS // B steps from each modulation GEMM (StepModulations)
    and each step's DiT call (the CUDA graph when on); a step is that call's time / steps_per_call. diffusers'
    is one transformer call."""
    recipe, batch, device = pipe.recipe, latents.shape[0], latents.device
    f2 = 2 * recipe.vae_scale_factor
    h2, w2 = 2 * (height // f2), 2 * (width // f2)  # unpacked latent sides
    embeds, pooled = recipe.encode_prompts(prompts, 1)  # [B, 512, 4096], [B, 768]
    txt_ids = torch.zeros(embeds.shape[1], 3, device=device, dtype=pipe.dtype)
    img_ids = latent_image_ids(h2 // 2, w2 // 2, device, pipe.dtype)
    t = torch.full([batch], 0.5, device=device, dtype=pipe.dtype)
    guidance = torch.full([batch], 3.5, device=device, dtype=torch.float32)
    z = unpack_latents(latents, h2, w2) / recipe.vae.config.scaling_factor + recipe.vae.config.shift_factor
    if name.startswith("fastdit"):
        rope = recipe.transformer.rope(img_ids, txt_ids)  # once per request, as the recipe does
        args = (latents, embeds, pooled, t, img_ids, txt_ids, guidance)
        timesteps = torch.linspace(1.0, 0.1, MODULATION_ROWS, device=device)[:, None].expand(-1, batch)

        def loop_steps(model, table: bool = True):
            # model() is looked up per call: a GraphedDenoiser held here would keep its graphs' memory pool
            # alive after release_graphs, into the pipeline's peak-memory run
            def run():
                modulations = recipe.step_modulations(timesteps.to(pipe.dtype), guidance, pooled) if table else None
                for i in range(MODULATION_ROWS):
                    extra = {} if modulations is None else {"modulation": modulations(i)}
                    out = model()(*args, rope=rope, **extra)
                return out
            return run

        return {"dit_step": loop_steps(lambda: recipe.denoiser),
                "dit_step_eager": loop_steps(lambda: recipe.transformer),
                "steps_per_call": MODULATION_ROWS, "text_encode": lambda: recipe.encode_prompts(prompts, 1),
                "vae_decode": lambda: recipe.vae.decode(z),
                # the A/B of --modulation-ab: every step computes its own adaLN vectors (one GEMV each)
                "dit_step_own_modulation": loop_steps(lambda: recipe.denoiser, table=False)}

    def peer_step():
        return peer.transformer(hidden_states=latents, encoder_hidden_states=embeds, pooled_projections=pooled,
                                timestep=t, img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)

    return {"dit_step": peer_step, "steps_per_call": 1,
            "text_encode": lambda: peer.encode_prompt(prompts, prompt_2=None, device=device),
            "vae_decode": lambda: peer.vae.decode(z, return_dict=False)}


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


def release_graphs(pipe) -> None:
    """Drop fastdit's captured graphs (and their memory pool): the next step captures again."""
    if pipe.recipe.cuda_graph:
        pipe.recipe.set_cuda_graph(True)


def bench_side(name, pipe, peer, batch, args, latents, device) -> dict:
    """One row: DiT step, text encode, VAE decode, end to end per step count, for fastdit or diffusers."""
    prompts = [PROMPT] * batch
    row = {"side": name, "batch": batch}
    # each side's calls in the grad mode its pipeline runs in (fastdit: inference_mode, diffusers: no_grad), so
    # that torch.compile's guards see the same tensors in the step timing and in the pipeline: no recompile
    with torch.inference_mode() if name.startswith("fastdit") else torch.no_grad():
        calls = component_calls(name, pipe, peer, prompts, latents, args.height, args.width)
        steps = calls["steps_per_call"]
        row["dit_step_ms"] = time_ms(calls["dit_step"], args.iters, device, warmup=args.warmup) / steps
        row["dit_step_per_image_ms"] = row["dit_step_ms"] / batch
        row["dit_step_eager_ms"] = (time_ms(calls["dit_step_eager"], args.iters, device, warmup=args.warmup) / steps
                                    if "dit_step_eager" in calls else float("nan"))
        row["text_encode_ms"] = time_ms(calls["text_encode"], args.iters, device)
        row["vae_decode_ms"] = time_ms(calls["vae_decode"], max(1, args.iters // 3), device)
    for steps in args.steps:
        run = pipeline_call(name, pipe, peer, prompts, latents, height=args.height, width=args.width,
                            num_inference_steps=steps, guidance_scale=3.5)
        release_graphs(pipe)  # every side's memory alone: fastdit's run below captures (and counts) its own
        _, _, row[f"peak_{steps}_gib"], row[f"peak_alloc_{steps}_gib"] = wall_and_peak(run, device)
        out, row[f"e2e_{steps}_ms"], _, _ = wall_and_peak(run, device)  # warm: the timed run
        row[f"latents_{steps}"] = out
        row[f"finite_{steps}"] = bool(torch.isfinite(out).all())
    return row


# kernel name -> group, first match wins (attention before gemm: cuDNN's and our attention kernels use MMA too)
KERNEL_GROUPS = [
    ("attention", re.compile(r"attention|attn|flash|fmha|sdpa|softmax", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|xmma|cutlass|cublas|wgmma", re.I)),
    ("norm", re.compile(r"norm|rope|modulate", re.I)),
]


def kernel_group(name: str) -> str:
    return next((group for group, pattern in KERNEL_GROUPS if pattern.search(name)), "other")


def kernel_launchers(events) -> dict[str, Counter]:
    """kernel name -> Counter of the CPU op chains that launched it ("inner < parent < grandparent"): the
    profiler attaches each kernel to the op whose scope it was launched in (e.g. which op's memsets these are)."""
    launchers: dict[str, Counter] = {}
    for event in events:
        for kernel in getattr(event, "kernels", ()):
            chain, op = [], event
            while op is not None and len(chain) < 3:
                chain.append(op.name)
                op = op.cpu_parent
            launchers.setdefault(kernel.name, Counter())[" < ".join(chain)] += 1
    return launchers


def kernel_breakdown(step, device: torch.device, top: int = 25, steps: int = 1) -> dict:
    """CUDA time per kernel of one step under the torch profiler, `step()` running `steps` of them: the `top`
    kernels (with the ops that launched them) and per-group totals, per step (times and calls / steps)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        step()
        torch.cuda.synchronize(device)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize(device)
    kernels = [(e.key, e.self_device_time_total / 1e3 / steps, e.count / steps) for e in prof.key_averages()
               if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    kernels.sort(key=lambda k: -k[1])
    launchers = kernel_launchers(prof.events())
    total = sum(ms for _, ms, _ in kernels)
    groups: dict[str, float] = {}
    for name, ms, _ in kernels:
        groups[kernel_group(name)] = groups.get(kernel_group(name), 0.0) + ms
    return {
        "total_ms": total,
        "groups": {g: {"ms": ms, "share": ms / total} for g, ms in sorted(groups.items(), key=lambda x: -x[1])},
        "top": [{"kernel": name, "group": kernel_group(name), "ms": ms, "calls": n, "share": ms / total,
                 "launched_by": launchers.get(name, Counter()).most_common(3)}
                for name, ms, n in kernels[:top]],
    }


def print_breakdown(breakdown: dict) -> None:
    print(f"\nfastdit DiT step, eager, per kernel (torch profiler): {breakdown['total_ms']:.2f} ms of CUDA time")
    for group, v in breakdown["groups"].items():
        print(f"  {group:>9}: {v['ms']:8.2f} ms  {100 * v['share']:5.1f}%")
    print(f"{'ms':>8} {'%':>5} {'calls':>5} {'group':>9}  kernel")
    for k in breakdown["top"]:
        print(f"{k['ms']:8.2f} {100 * k['share']:5.1f} {k['calls']:5.3g} {k['group']:>9}  {k['kernel'][:100]}")
        if k["group"] in ("other", "norm") or "memset" in k["kernel"].lower():  # where the small kernels come from
            print(" " * 32 + "<- " + ", ".join(f"{chain[:90]} x{n}" for chain, n in k["launched_by"]))


SIDES = ("fastdit", "diffusers", "diffusers+compile", "fastdit+compile")
QUICK = {"steps": [28], "batch": [1], "sides": ["fastdit", "diffusers", "diffusers+compile"]}
FULL = {"steps": [28, 50], "batch": [1, 4], "sides": list(SIDES)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="black-forest-labs/FLUX.1-dev", help="built-in model id")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--full", action="store_true", help=f"the issue's whole set: {FULL} (else quick: {QUICK})")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (overrides the set's)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="step counts (overrides the set's)")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=None, help="what to run (overrides the set's)")
    parser.add_argument("--iters", type=int, default=10, help="timed calls per DiT step / encode measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (torch.compile compiles in the first)")
    parser.add_argument("--profile-top", type=int, default=25, help="kernels listed in the breakdown (0: no profile)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--kernel-backend", default="auto")
    parser.add_argument("--disable-cuda-graph", action="store_true", help="fastdit's steps eagerly")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--modulation-ab", action="store_true",
                        help="only fastdit's step with the adaLN vectors of several steps per GEMM (the loop's "
                             "way) vs every step computing its own, timed round-robin in this process")
    args = parser.parse_args()
    preset = FULL if args.full else QUICK
    for key in ("steps", "batch", "sides"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    return args


def print_table(rows: list[dict], steps: list[int]) -> None:
    columns = ["side", "batch", "dit_step_ms", "dit_step_per_image_ms", "dit_step_eager_ms", "text_encode_ms",
               "vae_decode_ms"]
    columns += [f"{k}_{s}{u}" for s in steps for k, u in (("e2e", "_ms"), ("peak", "_gib"), ("rel_err", ""))]
    print(" ".join(f"{c.removesuffix('_ms').removesuffix('_gib'):>17}" for c in columns))
    def cell(value) -> str:  # a missing or None value (e.g. rel_err without diffusers in the run) prints nan
        if isinstance(value, (str, int)):
            return f"{value!s:>17}"
        return f"{float('nan') if value is None else value:>17.4g}"

    for r in rows:
        print(" ".join(cell(r.get(c)) for c in columns))


def modulation_ab(pipe, peer, latents: torch.Tensor, args) -> None:
    """fastdit's graphed step, adaLN vectors of several steps per GEMM (the loop's way) vs one GEMM per step,
    timed round-robin (bench/timer.py time_interleaved) so that both see the same clocks."""
    from timer import time_interleaved

    if latents.device.type != "cuda":
        raise SystemExit("--modulation-ab times CUDA events: it needs --device cuda")
    with torch.inference_mode():
        calls = component_calls("fastdit", pipe, peer, [PROMPT] * latents.shape[0], latents, args.height, args.width)
        times = time_interleaved({"table": calls["dit_step"], "own": calls["dit_step_own_modulation"]},
                                 warmup=args.warmup, rounds=args.iters, cold_l2=False)
    steps = calls["steps_per_call"]
    table, own = times["table"].median_ms / steps, times["own"].median_ms / steps
    batch = latents.shape[0]
    print(f"fastdit step, batch {batch}, median of {args.iters} rounds of {steps} steps: adaLN vectors of "
          f"{max(1, MODULATION_ROWS // batch)} steps per GEMM {table:.2f} ms, each step its own {own:.2f} ms "
          f"({own / table:.3f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch": latents.shape[0], "table_ms": table, "own_ms": own, "steps_per_call": steps}, f)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    pipe = Pipeline.from_pretrained(args.model, device=device, dtype=args.dtype, load_format="dummy",
                                    attention_backend=args.attention_backend, kernel_backend=args.kernel_backend,
                                    cuda_graph=False if args.disable_cuda_graph else None)
    peer = diffusers_peer(pipe)
    in_channels = pipe.recipe.transformer.config.in_channels
    tokens = (args.height // (2 * pipe.recipe.vae_scale_factor)) * (args.width // (2 * pipe.recipe.vae_scale_factor))
    # the same initial latents for every side at a batch size: [B, S_img, 4C], seeded on the CPU
    noise = {b: torch.randn(b, tokens, in_channels, generator=torch.Generator().manual_seed(b)).to(device, pipe.dtype)
             for b in args.batch}
    if args.modulation_ab:
        modulation_ab(pipe, peer, noise[args.batch[0]], args)
        return
    breakdown = None
    if device.type == "cuda" and args.profile_top > 0:
        calls = component_calls("fastdit", pipe, peer, [PROMPT], noise[args.batch[0]], args.height, args.width)
        breakdown = kernel_breakdown(calls["dit_step_eager"], device, args.profile_top, calls["steps_per_call"])
    rows = []
    # compiled sides last: nn.Module.compile is in place, every later call of that model runs compiled
    for name in sorted(args.sides, key=SIDES.index):
        if name == "diffusers+compile":
            peer.transformer.compile()  # diffusers' documented way (default mode), as the issue's 132.9 ms
        if name == "fastdit+compile":
            compile_model(pipe.recipe.transformer)
            release_graphs(pipe)  # the next capture records the compiled step
        for batch in args.batch:
            rows.append(bench_side(name, pipe, peer, batch, args, noise[batch], device))
            print(f"done: {name} batch {batch}", flush=True)
    for r in rows:  # against diffusers eager, the numerical truth
        truth = next((o for o in rows if o["side"] == "diffusers" and o["batch"] == r["batch"]), None)
        for steps in args.steps:
            r[f"rel_err_{steps}"] = rel_l2(r[f"latents_{steps}"], truth[f"latents_{steps}"]) if truth else None
    for r in rows:
        for steps in args.steps:
            del r[f"latents_{steps}"]
    print_table(rows, args.steps)
    if breakdown is not None:
        print_breakdown(breakdown)
    if args.json:
        meta = {"model": args.model, "height": args.height, "width": args.width, "dtype": args.dtype,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "attention_backend": pipe.recipe.attention_backend, "cuda_graph": pipe.recipe.cuda_graph,
                "torch": torch.__version__, "steps": args.steps, "batch": args.batch, "sides": args.sides}
        with open(args.json, "w") as f:
            json.dump(finite_or_none({"meta": meta, "rows": rows, "dit_step_kernels": breakdown}), f, indent=2)


if __name__ == "__main__":
    main()
