"""The flux-tiny pipeline on 2 (and, slow, 4) gloo processes: final latents equal the single-process run
(fp32, rel err <= 1e-5) at every (ulysses, ring) layout its 2 heads allow; PipelineWorkers serves several
requests (a refused one included) like Pipeline.run; bad plans are one-line errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from fastdit import Pipeline
from fastdit.distributed import ParallelConfig, ParallelGroups, launch, make_groups
from fastdit.distributed.pipeline import PipelineWorkers, parallelize_pipeline
from fastdit.pipelines.request import GenerationRequest

REQUEST = GenerationRequest(prompt="a red fox", height=64, width=64, num_inference_steps=2, seed=1, output_type="latent")
HEADS = 2  # flux-tiny


def _pipe() -> Pipeline:
    return Pipeline.from_pretrained("flux-tiny", device="cpu", dtype=torch.float32)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _layouts_on_rank(groups, world: int) -> list[tuple]:
    want = _pipe().run(REQUEST, show_progress=False).latents
    found = []
    for U, R in ParallelConfig.legal_sp_degrees(world):
        g = make_groups(ParallelConfig(world, U, R), groups.rank, "cpu")
        pipe = _pipe()
        if HEADS % U:
            with pytest.raises(ValueError, match=f"ulysses_degree={U} must divide the model's {HEADS} attention heads"):
                parallelize_pipeline(pipe, g)
            continue
        parallelize_pipeline(pipe, g)
        t = torch.tensor([_rel(pipe.run(REQUEST, show_progress=False).latents, want)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        found.append((U, R, t.item()))
    return found


# 4 processes on the 2-core CI machine take over a minute: slow-marked.
@pytest.mark.parametrize("world", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_final_latents_match_single_process(world):
    results = launch(_layouts_on_rank, ParallelConfig(world, world, 1), world, device_type="cpu")
    assert {(u, r) for u, r, _ in results} == {(u, r) for u, r in ParallelConfig.legal_sp_degrees(world) if HEADS % u == 0}
    bad = [r for r in results if not r[2] <= 1e-5]
    assert not bad, f"rel err > 1e-5: {bad}"


def test_pipeline_workers_serve_like_pipeline_run():
    want = _pipe().run(REQUEST, show_progress=False).latents
    workers = PipelineWorkers(ParallelConfig(2, 1, 2), "flux-tiny", device_type="cpu", dtype=torch.float32)
    try:
        got = workers.run(REQUEST, show_progress=False)
        assert _rel(got.latents, want) <= 1e-5
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
        parallelize_pipeline(_pipe(), groups)
