"""The pipeline runner: a named list of small stage functions over (request, state), each one timed.

    stages = [("validate", validate), ("encode", encode), ..., ("decode", decode)]
    state = run_stages(stages, request, FluxState(...), device)      # fills state.stages_ms

A stage is `fn(request, state) -> None`; it reads the frozen request and writes its outputs into the state.
Timing is done here, once: wall clock around each stage, with `torch.cuda.synchronize` before reading the
clock when the run is on CUDA (kernels are asynchronous: without it a stage's time would land in the next one).
The denoising loop of a recipe iterates `timed_steps(...)`, which draws the progress bar and records
`denoise_steps_ms` as [{"step": i, "duration_ms": ms}] without waiting for the GPU inside the loop.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from fastdit.pipelines.request import GenerationRequest, GenerationResult, RunState

Stage = tuple[str, Callable[[GenerationRequest, RunState], None]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_stages(stages: Sequence[Stage], request: GenerationRequest, state: RunState, device: torch.device) -> RunState:
    """Run `stages` in order; state.stages_ms[name] = wall time of each stage in milliseconds."""
    device = torch.device(device)
    names = [name for name, _ in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    _sync(device)
    for name, fn in stages:
        start = time.perf_counter()
        fn(request, state)
        _sync(device)
        state.stages_ms[name] = (time.perf_counter() - start) * 1e3
    return state


def timed_steps(state: RunState, timesteps: torch.Tensor, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (step index, timestep) over `timesteps`; time each step and advance the progress bar.

    The step's work happens between two yields. On CUDA nothing here waits for the GPU inside the loop (the
    host keeps queueing steps while the GPU runs them): each step boundary records a CUDA event on the
    device's current stream, and after the last step the events are waited on in order, advancing the bar as
    the GPU finishes each step; a step's duration is the GPU time between its two events. On the CPU, wall
    clock. Appends {"step": i, "duration_ms": ms} to state.denoise_steps_ms.
    """
    device = torch.device(device)
    bar = tqdm(total=len(timesteps), desc="denoise", unit="step", disable=not state.show_progress, leave=False)
    try:
        if device.type != "cuda":
            for i, t in enumerate(timesteps):
                start = time.perf_counter()
                yield i, t
                state.denoise_steps_ms.append({"step": i, "duration_ms": (time.perf_counter() - start) * 1e3})
                bar.update(1)
            return
        stream = torch.cuda.current_stream(device)
        events = [_record_event(stream)]
        for i, t in enumerate(timesteps):
            yield i, t
            events.append(_record_event(stream))
        for i, (start, end) in enumerate(zip(events, events[1:])):
            end.synchronize()
            state.denoise_steps_ms.append({"step": i, "duration_ms": start.elapsed_time(end)})
            bar.update(1)
    finally:
        bar.close()


def _record_event(stream: torch.cuda.Stream) -> torch.cuda.Event:
    event = torch.cuda.Event(enable_timing=True)
    event.record(stream)
    return event


def make_result(state: RunState) -> GenerationResult:
    """Collect the state's outputs and timings into the caller-facing record."""
    timings = {
        "stages_ms": dict(state.stages_ms),
        "denoise_steps_ms": list(state.denoise_steps_ms),
        "total_ms": sum(state.stages_ms.values()),
    }
    return GenerationResult(
        images=state.images, frames=state.frames, latents=state.latents, seed=state.seed,
        paths=list(state.paths), timings=timings,
    )


def perf_dump(result: GenerationResult, request: GenerationRequest, meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON written by --perf-dump-path: what ran (meta + request sizes) and its timings."""
    return {
        **meta,
        "height": request.height,
        "width": request.width,
        "num_inference_steps": request.num_inference_steps,
        "batch_size": request.batch_size,
        "seed": result.seed,
        **result.timings,
    }


def write_perf_dump(path: str, dump: dict[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(dump, f, indent=2)
        f.write("\n")
