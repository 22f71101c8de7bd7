"""The spatially split VAE decode (distributed/vae.py) on 2 and 4 gloo processes, float32: a tiny random FLUX
AutoencoderKL (GroupNorm, mid-block attention, 2 upsamplings) and a tiny random Wan VAE (causal convs with a
temporal feature cache, chunked in time) decode latents of odd heights that do not divide by the ranks equal
to the one-process decode (rel L2 <= 1e-5), with the strips each rank decoded recorded; too few rows or Wan's
tiling leave rank 0 decoding alone (same output, followers get None); the flux-tiny and wan-tiny pipelines
return the one-process images and frames through the split; a conv that cannot be split is refused;
bench/parallel.py --vae-decode times the split on 2 gloo ranks."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from fastdit import Pipeline
from fastdit.distributed.config import ParallelConfig
from fastdit.distributed.groups import ParallelGroups
from fastdit.distributed.pipeline import PipelineWorkers, parallelize_pipeline
from fastdit.distributed.vae import MIN_STRIP_ROWS, SpatialSplitVAE, _HaloConv, _Strip, strip_rows
from fastdit.loader.weights import init_dummy_weights
from fastdit.models.vaes.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from fastdit.models.vaes.autoencoder_kl_wan import AutoencoderKLWan, WanVAEConfig
from fastdit.pipelines.request import GenerationRequest

FLUX_VAE = AutoencoderKLConfig(
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
    use_quant_conv=False, use_post_quant_conv=True,
)
WAN_VAE = WanVAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                       latents_mean=(0.1, -0.2, 0.3, 0.0), latents_std=(1.5, 0.5, 2.0, 1.0))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _vae(kind: str) -> nn.Module:
    """The same random VAE on every rank; every weight (norms included) moved off its init value."""
    vae = AutoencoderKL(FLUX_VAE) if kind == "flux" else AutoencoderKLWan(WAN_VAE)
    init_dummy_weights(vae, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return vae.eval()


def _split_vs_single(groups, kind: str, shape: tuple[int, ...], kwargs: dict, tile: int | None = None,
                     channels_last: bool = False):
    """(rel err of rank 0's split decode vs the unsplit one, strips decoded, followers all got None)."""
    vae = _vae(kind)
    if tile is not None:
        vae.enable_tiling(tile, tile * 3 // 4)
    if channels_last:  # Wan's GPU layout: NDHWC activations, halo buffers and the gathered attention input too
        vae.set_channels_last(True)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = vae.decode(z, **kwargs)
        split = SpatialSplitVAE(vae, groups)
        got = split.decode(z, **kwargs)
    followers_none = torch.tensor([got is None or groups.rank == 0], dtype=torch.int32)
    dist.all_reduce(followers_none, op=dist.ReduceOp.MIN)
    if groups.rank == 0:
        assert got.shape == want.shape, (got.shape, want.shape)
        return _rel(got, want), split.last_strip_rows, bool(followers_none.item())
    return None


@pytest.mark.parametrize("world, kind, shape, kwargs, rows, channels_last", [
    (2, "flux", (2, 4, 9, 7), {}, (5, 4), False),
    (4, "flux", (1, 4, 19, 6), {}, (5, 5, 5, 4), False),
    (2, "wan", (1, 4, 3, 9, 5), {"chunk_frames": 1}, (5, 4), False),
    (2, "wan", (1, 4, 3, 9, 5), {"chunk_frames": 1}, (5, 4), True),
    (4, "wan", (1, 4, 4, 17, 4), {"chunk_frames": 2}, (5, 4, 4, 4), False),
])
def test_split_decode_equals_one_process(gloo, world, kind, shape, kwargs, rows, channels_last):
    err, strips, followers_none = gloo.run(world, _split_vs_single, kind, shape, kwargs, None, channels_last)
    assert strips == rows == strip_rows(shape[-2], world)
    assert followers_none
    assert err <= 1e-5


@pytest.mark.parametrize("kind, shape, kwargs, tile", [
    ("flux", (1, 4, 4 * MIN_STRIP_ROWS - 1, 5), {}, None),  # 15 latent rows: fewer than 4 per rank
    ("wan", (1, 4, 2, 17, 9), {}, 64),  # tiling on and the latent larger than an 8 x 8 tile
])
def test_rank_zero_decodes_alone_where_the_split_does_not_apply(gloo, kind, shape, kwargs, tile):
    err, strips, followers_none = gloo.run(4, _split_vs_single, kind, shape, kwargs, tile)
    assert strips is None and followers_none
    assert err <= 1e-6


def _pipeline_outputs(groups, model: str, request: GenerationRequest):
    """(rank 0's uint8 output of the 2-rank pipeline, the one-process one, the split's strips)."""
    single = Pipeline.from_pretrained(model, device="cpu", dtype=torch.float32).run(request, show_progress=False)
    pipe = Pipeline.from_pretrained(model, device="cpu", dtype=torch.float32)
    parallelize_pipeline(pipe, groups)
    got = pipe.run(request, show_progress=False)
    key = "images" if model.startswith("flux") else "frames"
    if groups.rank != 0:
        assert getattr(got, key) is None
        return None
    return _uint8(got, key), _uint8(single, key), pipe.recipe.vae.last_strip_rows


def _uint8(result, key: str) -> np.ndarray:
    """Every image (or every frame of every clip) of a result, stacked: [N, H, W, 3] uint8."""
    items = result.images if key == "images" else [frame for clip in result.frames for frame in clip]
    return np.stack([np.asarray(item) for item in items])


@pytest.mark.parametrize("model, request_", [
    ("flux-tiny", GenerationRequest(prompt="a red fox", height=80, width=64, num_inference_steps=2, seed=3)),
    ("wan-tiny", GenerationRequest(prompt="a red fox", height=80, width=64, num_inference_steps=2, seed=3,
                                   num_frames=5, guidance_scale=5.0)),
])
def test_pipelines_decode_through_the_split(gloo, model, request_):
    got, want, strips = gloo.run(2, _pipeline_outputs, model, request_)
    assert strips == (5, 5)  # 80 pixels = 10 latent rows
    assert got.shape == want.shape and got.dtype == np.uint8
    # fp32 decodes equal to ~1e-6: a uint8 value may only round the other way at a .5 boundary
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_pipeline_workers_followers_join_the_split_decode():
    request = GenerationRequest(prompt="a fox", height=64, width=64, num_inference_steps=1, seed=4)
    want = Pipeline.from_pretrained("flux-tiny", device="cpu", dtype=torch.float32).run(request, show_progress=False)
    workers = PipelineWorkers(ParallelConfig(2, 1, 2), "flux-tiny", device="cpu", collective_timeout_s=60.0,
                              dtype=torch.float32)
    try:
        got = workers.run(request, show_progress=False)
    finally:
        workers.close()
    diff = np.abs(np.asarray(got.images[0], dtype=np.int16) - np.asarray(want.images[0], dtype=np.int16))
    assert len(got.images) == 1 and diff.max() <= 1


def test_a_conv_that_cannot_be_split_is_refused():
    strip = _Strip(rank=0, world=2)
    with pytest.raises(ValueError, match=r"kernel 3, stride 2, dilation 1, padding 0 \(zeros\) along the height cannot"):
        _HaloConv(nn.Conv2d(4, 4, 3, stride=2), strip)
    groups = ParallelGroups(ParallelConfig(2, 2, 1), 0, torch.device("cpu"), 0, 0, 0, None, None, None, None, (0,))
    with pytest.raises(ValueError, match="Linear is not supported; allowed: AutoencoderKL, AutoencoderKLWan"):
        SpatialSplitVAE(nn.Linear(2, 2), groups)


def test_strip_rows_are_even_first_ranks_taller():
    assert strip_rows(60, 8) == (8, 8, 8, 8, 7, 7, 7, 7) and sum(strip_rows(61, 4)) == 61


def test_bench_times_the_split_decode(tmp_path, capsys, monkeypatch):
    # imported by name from bench/ on sys.path: the spawned ranks unpickle its rank function from there
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "bench"))
    out = tmp_path / "vae.json"
    argv = ["--vae-decode", "--device", "cpu", "--num-gpus", "2", "--cases", "flux-tiny", "--vae-ranks", "1", "2", "4",
            "--steps", "1", "--json", str(out)]
    try:
        rc = importlib.import_module("parallel").main(argv)
    finally:
        sys.modules.pop("parallel", None)
    assert rc == 0
    rows = {r["ranks"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {1, 2} and rows[2]["strips"] == [4, 4] and rows[1]["strips"] is None
    assert rows[2]["match"] is True and rows[2]["rel_err"] <= 1e-5 and rows[2]["decode_ms"] > 0
    assert "flux-tiny         2" in capsys.readouterr().out
