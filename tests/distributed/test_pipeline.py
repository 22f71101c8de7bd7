"""The flux-tiny and wan-tiny pipelines on 2 and 4 gloo processes: final latents equal the single-process
run (fp32, rel err <= 1e-5) at every legal (ulysses, ring, cfg) layout; a Ulysses degree that does not
divide the 2 heads is a one-line error; CFG-parallel is refused for FLUX (no batched true CFG) and runs a
request without CFG unsplit on Wan. PipelineWorkers serves several requests (a refused one included) like
Pipeline.run."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch
import torch.distributed as dist

from fastdit import Pipeline
from fastdit.distributed import ParallelConfig, ParallelGroups, make_groups
from fastdit.distributed.pipeline import PipelineWorkers, parallelize_pipeline
from fastdit.pipelines.request import GenerationRequest

REQUEST = GenerationRequest(prompt="a red fox", height=64, width=64, num_inference_steps=2, seed=1, output_type="latent")
# 64x64, 5 frames: latents [1, 16, 2, 8, 8], 32 tokens; guidance 5 batches [uncond; cond]
WAN_REQUEST = dataclasses.replace(REQUEST, num_frames=5, guidance_scale=5.0)
WAN_NO_CFG = dataclasses.replace(WAN_REQUEST, guidance_scale=1.0)
HEADS = 2  # flux-tiny and wan-tiny


def _pipe(model: str) -> Pipeline:
    return Pipeline.from_pretrained(model, device="cpu", dtype=torch.float32)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _max_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def _layouts_on_rank(groups, world: int, model: str, requests: tuple) -> list[tuple]:
    """[(U, R, cfg, request index, max rel err over ranks)] for every layout the model allows."""
    single = _pipe(model)
    wants = [single.run(r, show_progress=False).latents for r in requests]
    found = []
    for cfg in (False, True) if model.startswith("wan") else (False,):
        for U, R in ParallelConfig.legal_sp_degrees(world, cfg):
            g = make_groups(ParallelConfig(world, U, R, cfg), groups.rank, "cpu")
            pipe = _pipe(model)
            if HEADS % U:
                with pytest.raises(ValueError, match=f"ulysses_degree={U} must divide the model's {HEADS} attention heads"):
                    parallelize_pipeline(pipe, g)
                continue
            parallelize_pipeline(pipe, g)
            for i, (request, want) in enumerate(zip(requests, wants)):
                found.append((U, R, cfg, i, _max_over_ranks(_rel(pipe.run(request, show_progress=False).latents, want))))
    return found


def _expected(world: int, cfg_values: tuple[bool, ...], n_requests: int) -> set[tuple]:
    return {(u, r, c, i) for c in cfg_values for u, r in ParallelConfig.legal_sp_degrees(world, c) if HEADS % u == 0
            for i in range(n_requests)}


@pytest.mark.parametrize("world", [2, 4])
def test_flux_final_latents_match_single_process(gloo, world):
    results = gloo.run(world, _layouts_on_rank, world, "flux-tiny", (REQUEST,))
    assert {r[:4] for r in results} == _expected(world, (False,), 1)
    bad = [r for r in results if not r[4] <= 1e-5]
    assert not bad, f"rel err > 1e-5: {bad}"


@pytest.mark.parametrize("world", [2, 4])
def test_wan_final_latents_match_single_process(gloo, world):
    results = gloo.run(world, _layouts_on_rank, world, "wan-tiny", (WAN_REQUEST, WAN_NO_CFG))
    assert {r[:4] for r in results} == _expected(world, (False, True), 2)
    bad = [r for r in results if not r[4] <= 1e-5]
    assert not bad, f"rel err > 1e-5: {bad}"


def test_pipeline_workers_serve_like_pipeline_run():
    want = _pipe("flux-tiny").run(REQUEST, show_progress=False).latents
    # collectives time out after 10 s: idle ranks must wait on their queues, not inside a collective
    workers = PipelineWorkers(ParallelConfig(2, 1, 2), "flux-tiny", device="cpu", collective_timeout_s=10.0,
                              dtype=torch.float32)
    try:
        time.sleep(11.0)
        assert (workers.model_id, workers.task, workers.dtype) == ("flux-tiny", "text-to-image", torch.float32)
        assert (workers.info.pipeline_class, workers.info.cuda_graph) == ("FluxRecipe", False)
        got = workers.run(REQUEST, show_progress=False)
        assert _rel(got.latents, want) <= 1e-5 and workers.peak_memory == [None, None]
        with pytest.raises(ValueError, match=r"latents of shape \(1, 5, 64\) is not allowed"):
            workers.run(dataclasses.replace(REQUEST, latents=torch.randn(1, 5, 64)), show_progress=False)
        unseeded = workers.run(GenerationRequest(prompt="a fox", height=64, width=64, num_inference_steps=1,
                                                 output_type="latent"), show_progress=False)
        assert unseeded.latents.shape == want.shape and torch.isfinite(unseeded.latents).all()
    finally:
        workers.close()


def test_cfg_parallel_is_refused_for_flux():
    config = ParallelConfig(2, 1, 1, cfg_parallel=True)
    groups = ParallelGroups(config, 0, torch.device("cpu"), 0, 0, 0, None, None, None, None, (0,))
    with pytest.raises(ValueError, match="--enable-cfg-parallel needs a model whose pipeline batches true CFG"):
        parallelize_pipeline(_pipe("flux-tiny"), groups)
