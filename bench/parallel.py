"""Sequence parallel and CFG-parallel on one host (issue 8): per-step time, speedup, efficiency, peak memory
per GPU and the final latents of every layout against the one-GPU run, full-size dummy weights, bf16.

    python bench/parallel.py --json parallel.json                       # every case at layouts <= the GPUs
    python bench/parallel.py --cases wan14b-720p --layouts 1 u8 cfg2u4  # a subset (one device call each)
    python bench/parallel.py --device cpu --num-gpus 2 --cases tiny     # gloo processes on the CPU (tests)
    python bench/parallel.py --cases wan14b-720p --layouts 1 u8 --ref-cache refs   # then, in a later call,
    python bench/parallel.py --cases wan14b-720p --layouts 1 cfg2u4 --ref-cache refs   # 1 is read, not re-run

A case is a model at a size (below); a layout names the degrees: 1 (one GPU, the plain path), u4 (Ulysses
4), r2 (ring 2), u2r2 (USP 2 x 2), cfg2 (CFG-parallel), cfg2u4 (CFG 2 x Ulysses 4). Each (case, layout)
loads the pipeline on its ranks (PipelineWorkers: what `--num-gpus` gives users), runs --warmup-steps
once, then --steps steps with the same seed, and reports the median step time (CUDA events on rank 0),
the measured end to end of that run (text encode + steps, + the split VAE decode with --decode), an
estimate of end to end at the case's full step count (measured e2e + the missing steps at the median; the
column says est), every rank's peak memory, speedup and efficiency (speedup / GPUs) against layout 1, and
the rel. L2 difference of the final latents to layout 1's. Exit status 1 if any difference exceeds --tol;
2 (one line) if more GPUs are asked than are visible. NVLink multicast stays off (NCCL_NVLS_ENABLE=0).

    python bench/parallel.py --vae-decode --cases wan1.3b-480p flux-1024 --json vae_split.json

--vae-decode times the VAE decode alone instead (issue 7's split, distributed/vae.py): the case's VAE with
dummy weights decodes one seeded latent of the case's size at --vae-ranks ranks (1: the plain decode);
median of --steps decodes after --warmup-steps, every rank's peak memory, the strips, and the rel. L2 of
rank 0's output to the one-rank decode's (exit 1 over --tol).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import re
import statistics
import sys
import time

import torch
import torch.distributed as dist

from fastdit.distributed import ParallelConfig, launch
from fastdit.distributed.pipeline import PipelineWorkers
from fastdit.distributed.vae import SpatialSplitVAE
from fastdit.pipelines.request import GenerationRequest


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    height: int
    width: int
    num_frames: int | None  # None: an image model
    guidance_scale: float
    full_steps: int  # the step count users run (the e2e estimate's)
    layouts: tuple[str, ...]  # issue 8's list; those needing more GPUs than --num-gpus are skipped


WAN_14B, WAN_1_3B, FLUX_DEV = "Wan-AI/Wan2.1-T2V-14B-Diffusers", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "black-forest-labs/FLUX.1-dev"
CASES = {
    # Wan2.1-14B 720p 81 frames, 40 steps, CFG on: 75600 tokens, 40 heads
    "wan14b-720p": Case(WAN_14B, 720, 1280, 81, 5.0, 40, ("1", "u2", "u4", "u8", "r2", "u2r2", "cfg2", "cfg2u4")),
    # Wan2.1-1.3B 480p: 32760 tokens, 12 heads (Ulysses 8 does not divide them)
    "wan1.3b-480p": Case(WAN_1_3B, 480, 832, 81, 5.0, 50, ("1", "u2", "u4", "cfg2", "cfg2u2", "cfg2u4")),
    "flux-2048": Case(FLUX_DEV, 2048, 2048, None, 3.5, 28, ("1", "u2", "u4")),
    "flux-1024": Case(FLUX_DEV, 1024, 1024, None, 3.5, 28, ("1", "u2", "u4")),
    # CPU smoke cases (gloo): 2 heads, 16 / 32 tokens
    "flux-tiny": Case("flux-tiny", 64, 64, None, 3.5, 4, ("1", "u2", "r2")),
    "wan-tiny": Case("wan-tiny", 64, 64, 5, 5.0, 4, ("1", "u2", "r2", "cfg2")),
}
GROUPS = {"all": ["wan14b-720p", "wan1.3b-480p", "flux-2048", "flux-1024"], "tiny": ["flux-tiny", "wan-tiny"]}
LAYOUT = re.compile(r"^(?:1|(?:cfg2)?(?:u(\d+))?(?:r(\d+))?)$")


def parse_layout(name: str) -> ParallelConfig:
    """'cfg2u4' -> ParallelConfig(8, 4, 1, cfg_parallel=True); a one-line ValueError for anything else."""
    m = LAYOUT.match(name)
    if not m or not name:
        raise ValueError(f"layout {name!r} is not allowed; allowed: 1 or [cfg2][uN][rN], e.g. u4, r2, u2r2, cfg2, cfg2u4")
    cfg = name.startswith("cfg2")
    u, r = int(m.group(1) or 1), int(m.group(2) or 1)
    return ParallelConfig(u * r * (2 if cfg else 1), u, r, cfg)


def visible_gpus(device: str) -> int | None:
    return torch.cuda.device_count() if device == "cuda" else None


def _request(case: Case, steps: int, seed: int, decode: bool) -> GenerationRequest:
    return GenerationRequest(
        prompt="a fox running through fresh snow at dawn, cinematic", height=case.height, width=case.width,
        num_frames=case.num_frames, num_inference_steps=steps, guidance_scale=case.guidance_scale, seed=seed,
        output_type="pil" if decode else "latent",
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def measure(case: Case, layout: str, args) -> tuple[dict, torch.Tensor]:
    """Loads `case` on the ranks of `layout`, warms up, runs --steps; returns (row, final latents on CPU)."""
    config = parse_layout(layout)
    t0 = time.perf_counter()
    workers = PipelineWorkers(config, case.model, device=args.device, dtype=args.dtype, load_format="dummy",
                              attention_backend=args.attention_backend)
    load_s = time.perf_counter() - t0
    try:
        workers.run(_request(case, args.warmup_steps, args.seed, decode=False), show_progress=False)
        result = workers.run(_request(case, args.steps, args.seed, args.decode), show_progress=False)
        peaks = list(workers.peak_memory)
    finally:
        workers.close()
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    steps_ms = [s["duration_ms"] for s in result.timings["denoise_steps_ms"]]
    step_ms = statistics.median(steps_ms)
    e2e_ms = result.timings["total_ms"]
    row = dict(
        case=args.case_names[case], model=case.model, size=f"{case.height}x{case.width}", frames=case.num_frames,
        layout=layout, gpus=config.world_size, ulysses=config.ulysses_degree, ring=config.ring_degree,
        cfg_parallel=config.cfg_parallel, steps=len(steps_ms), step_ms=step_ms, steps_ms=steps_ms,
        stages_ms=result.timings["stages_ms"], e2e_ms=e2e_ms,
        e2e_est_full_ms=e2e_ms + (case.full_steps - len(steps_ms)) * step_ms, full_steps=case.full_steps,
        peak_gib=[None if p is None else p / 2**30 for p in peaks], load_s=load_s, decode=args.decode,
    )
    return row, result.latents.detach().float().cpu()


def _reference(case: Case, args) -> tuple[dict, torch.Tensor]:
    """Layout 1 of `case`: measured, or read from --ref-cache when an earlier call (same steps, seed, dtype)
    measured it, so the issue's list can be split over several device calls without re-running one GPU."""
    key = f"{args.case_names[case]}_s{args.steps}_w{args.warmup_steps}_seed{args.seed}_{args.dtype}_{args.device}"
    path = os.path.join(args.ref_cache, f"{key}.pt") if args.ref_cache else None
    if path and os.path.exists(path):
        row, latents = torch.load(path, weights_only=False)
        return {**row, "cached": True}, latents
    row, latents = measure(case, "1", args)
    if path:
        os.makedirs(args.ref_cache, exist_ok=True)
        torch.save((row, latents), path)
    return row, latents


def run_case(case: Case, args, skipped: list[str]) -> list[dict]:
    """Every layout of the case that fits --num-gpus and divides the heads; layout 1 first (the reference)."""
    rows, ref = [], None
    layouts = args.layouts or list(case.layouts)
    layouts = sorted(layouts, key=lambda name: name != "1")
    for layout in layouts:
        config = parse_layout(layout)
        if config.world_size > args.num_gpus:
            skipped.append(f"{args.case_names[case]} {layout}: needs {config.world_size} GPUs, --num-gpus {args.num_gpus}")
            continue
        print(f"[parallel] {args.case_names[case]} {layout} ...", file=sys.stderr, flush=True)
        try:
            row, latents = _reference(case, args) if layout == "1" else measure(case, layout, args)
        except ValueError as err:  # a layout the model refuses (heads, tokens): say so, go on
            skipped.append(f"{args.case_names[case]} {layout}: {err}")
            continue
        if layout == "1":
            ref, base = latents, row["step_ms"]
        row["rel_err"] = _rel(latents, ref) if ref is not None else None
        row["speedup"] = base / row["step_ms"] if ref is not None else None
        row["efficiency"] = row["speedup"] / row["gpus"] if ref is not None else None
        row["match"] = None if ref is None else row["rel_err"] <= args.tol
        rows.append(row)
    return rows


def _vae(case: Case, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """The case's VAE with dummy weights, set up as its recipe sets it up on `device`."""
    if case.num_frames is None:
        from fastdit.configs.vae import vae_preset
        from fastdit.models.vaes.autoencoder_kl import dummy_autoencoder_kl

        return dummy_autoencoder_kl(vae_preset(case.model), dtype, device)
    from fastdit.configs.wan import vae_preset
    from fastdit.models.vaes.autoencoder_kl_wan import load_autoencoder_kl_wan
    from fastdit.pipelines.wan import VAE_CUDNN_BENCHMARK_ON_GPU, vae_channels_last

    vae = load_autoencoder_kl_wan(vae_preset(case.model), None, dtype, device)
    if vae_channels_last(device):
        vae.set_channels_last(True)
        vae.cudnn_benchmark = VAE_CUDNN_BENCHMARK_ON_GPU
    return vae


def _decode_rank(groups, case: Case, dtype: str, warmup: int, iters: int):
    """On every rank: the (split) decode of one seeded latent; rank 0 returns (timings, its output on the CPU)."""
    from fastdit.pipelines.wan import VAE_DECODE_CHUNK_FRAMES

    device, split = groups.device, groups.config.world_size > 1
    if device.type == "cuda":  # 1 rank runs in the bench's own process: earlier cases' peaks are not this one's
        torch.cuda.reset_peak_memory_stats(device)
    vae = _vae(case, getattr(torch, dtype), device)
    vae = SpatialSplitVAE(vae, groups) if split else vae
    frames = () if case.num_frames is None else ((case.num_frames - 1) // 4 + 1,)  # Wan2.1: 4x in time, 8x in space
    z = torch.randn(1, 16, *frames, case.height // 8, case.width // 8, generator=torch.Generator().manual_seed(0))
    z = z.to(device, getattr(torch, dtype))
    kwargs = {} if case.num_frames is None else {"chunk_frames": VAE_DECODE_CHUNK_FRAMES}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            if split:
                dist.barrier()
            sync()
            start = time.perf_counter()
            out = vae.decode(z, **kwargs)
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    peaks = [peak] * groups.config.world_size
    if split:
        dist.all_gather_object(peaks, peak)
    if groups.rank != 0:
        return None
    row = dict(decode_ms=statistics.median(times[warmup:]), decodes_ms=times[warmup:], peak_gib=peaks,
               strips=vae.last_strip_rows if split else None)
    return row, out.cpu()


def run_vae_decode(case: Case, args, skipped: list[str]) -> list[dict]:
    """The case's decode at every --vae-ranks count that fits --num-gpus; the fewest ranks are the reference."""
    rows, ref = [], None
    for ranks in sorted(set(args.vae_ranks)):
        if ranks > args.num_gpus:
            skipped.append(f"{args.case_names[case]} vae x{ranks}: needs {ranks} GPUs, --num-gpus {args.num_gpus}")
            continue
        print(f"[parallel] {args.case_names[case]} VAE decode on {ranks} ranks ...", file=sys.stderr, flush=True)
        row, out = launch(_decode_rank, ParallelConfig(ranks, ranks, 1), case, args.dtype, args.warmup_steps,
                          args.steps, device_type=args.device)
        gc.collect()
        if args.device == "cuda":  # 1 rank ran here: hand its cached blocks back before rank 0 of the next run
            torch.cuda.empty_cache()
        if ref is None:
            ref, base = out, row["decode_ms"]
        row.update(case=args.case_names[case], layout=f"vae x{ranks}", ranks=ranks, size=f"{case.height}x{case.width}",
                   frames=case.num_frames, rel_err=_rel(out, ref), speedup=base / row["decode_ms"])
        row["match"] = row["rel_err"] <= args.tol
        rows.append(row)
    return rows


def _largest_peak(row: dict) -> str:
    """The largest rank's peak GiB of a row, formatted, or "-" when no rank reported one."""
    peaks = [p for p in row["peak_gib"] if p is not None]
    return f"{max(peaks):.1f}" if peaks else "-"


def print_vae_table(rows: list[dict], skipped: list[str]) -> None:
    head = (f"{'case':13} {'ranks':>5} {'decode ms':>10} {'speedup':>7} {'peak GiB/GPU':>13} {'strips':>18} "
            f"{'rel err':>8} ok")
    print(head)
    print("-" * len(head))
    for r in rows:
        peak = _largest_peak(r)
        strips = "+".join(map(str, r["strips"] or ())) or ("rank 0 alone" if r["ranks"] > 1 else "-")
        print(f"{r['case']:13} {r['ranks']:>5} {r['decode_ms']:10.1f} {r['speedup']:7.2f} {peak:>13} {strips:>18} "
              f"{r['rel_err']:8.1e} {'yes' if r['match'] else 'NO'}")
    print("decode ms: median over --steps decodes (rank 0, gather included); strips: latent rows per rank; "
          "rel err: rank 0's output vs the fewest ranks' (1: the plain decode)")
    for line in skipped:
        print(f"skipped {line}")


def print_table(rows: list[dict], skipped: list[str]) -> None:
    head = (f"{'case':13} {'layout':7} {'gpus':>4} {'step ms':>9} {'speedup':>7} {'eff':>5} {'e2e s':>7} "
            f"{'e2e est s':>9} {'peak GiB/GPU':>13} {'rel err':>8} ok")
    print(head)
    print("-" * len(head))
    for r in rows:
        peak = _largest_peak(r)
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        ok = {True: "yes", False: "NO", None: "-"}[r["match"]]
        print(f"{r['case']:13} {r['layout']:7} {r['gpus']:>4} {r['step_ms']:9.1f} {fmt(r['speedup'], '7.2f')} "
              f"{fmt(r['efficiency'], '5.0%')} {r['e2e_ms'] / 1e3:7.1f} {r['e2e_est_full_ms'] / 1e3:9.1f} "
              f"{peak:>13} {fmt(r['rel_err'], '8.1e')} {ok}")
    print("step ms: median over --steps (rank 0); e2e s: the measured run (its steps); e2e est s: measured e2e + "
          "the case's missing steps x step ms; peak: the largest rank's; rel err: final latents vs layout 1")
    for line in skipped:
        print(f"skipped {line}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs (ranks) to use at most (default: all visible)")
    p.add_argument("--cases", nargs="+", default=None,
                   help=f"cases or groups: {', '.join(CASES)}; {', '.join(GROUPS)} (default: all on cuda, tiny on cpu)")
    p.add_argument("--layouts", nargs="+", default=None, help="override each case's layouts (include 1: the reference of speedup and rel err)")
    p.add_argument("--steps", type=int, default=3, help="measured denoising steps per layout")
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--decode", action="store_true", help="include the VAE decode in the measured run")
    p.add_argument("--vae-decode", action="store_true", help="time the VAE decode alone at --vae-ranks (no DiT)")
    p.add_argument("--vae-ranks", type=int, nargs="+", default=[1, 2, 4], help="rank counts of --vae-decode")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--attention-backend", default="auto")
    p.add_argument("--tol", type=float, default=None, help="rel. L2 of latents vs layout 1 (default 3e-2 bf16, 1e-5 fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-cache", default=None, help="folder keeping layout 1's row and latents between calls")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def resolve(args) -> None:
    """Fills defaults; ValueError (one line) for a bad choice or more GPUs than are visible."""
    have = visible_gpus(args.device)
    if args.num_gpus is None:
        if have is None:
            raise ValueError("--device cpu needs --num-gpus N (the gloo processes to use at most)")
        args.num_gpus = have
    if args.num_gpus < 1:
        raise ValueError(f"--num-gpus {args.num_gpus} is not allowed; allowed: >= 1")
    if have is not None and args.num_gpus > have:
        raise ValueError(f"--num-gpus {args.num_gpus} but {have} GPUs are visible; allowed: 1..{have} "
                         f"(a machine with {args.num_gpus} GPUs runs this)")
    names = []
    for name in args.cases or (["all"] if args.device == "cuda" else ["tiny"]):
        if name not in CASES and name not in GROUPS:
            raise ValueError(f"case {name!r} is not allowed; allowed: {', '.join([*CASES, *GROUPS])}")
        names += GROUPS.get(name, [name])
    args.case_list = [CASES[n] for n in dict.fromkeys(names)]
    args.case_names = {CASES[n]: n for n in names}
    for layout in args.layouts or []:
        parse_layout(layout)
    if min(args.vae_ranks) < 1:
        raise ValueError(f"--vae-ranks {min(args.vae_ranks)} is not allowed; allowed: >= 1")
    for flag in ("steps", "warmup_steps"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is not allowed; allowed: >= 1")
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.tol is None:
        args.tol = 1e-5 if args.dtype == "float32" else 3e-2


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        resolve(args)
    except ValueError as err:
        print(f"bench/parallel.py: error: {err}", file=sys.stderr)
        return 2
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # inherited by the spawned ranks
    rows, skipped = [], []
    for case in args.case_list:
        rows += run_vae_decode(case, args, skipped) if args.vae_decode else run_case(case, args, skipped)
    (print_vae_table if args.vae_decode else print_table)(rows, skipped)
    if args.json:
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        with open(args.json, "w") as f:
            json.dump(dict(device=device, num_gpus=args.num_gpus, dtype=args.dtype, steps=args.steps,
                           tol=args.tol, vae_decode=args.vae_decode, rows=rows, skipped=skipped), f, indent=1)
    bad = [r for r in rows if r["match"] is False]
    for r in bad:
        print(f"MISMATCH {r['case']} {r['layout']}: rel err {r['rel_err']:.2e} > tol {args.tol:.0e}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
