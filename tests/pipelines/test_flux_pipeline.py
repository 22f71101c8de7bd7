"""The FLUX recipe against diffusers' FluxPipeline on a tiny random checkpoint saved with save_pretrained and
loaded back through fastdit's loader: float32, relative L2 error of the final latents <= 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_flux import save_tiny_flux

from fastdit import Pipeline
from fastdit.pipelines.flux import MODULATION_ROWS, latent_image_ids, pack_latents, unpack_latents
from fastdit.pipelines.request import GenerationRequest

TOL = 1e-4
STEPS = 2


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-flux")
    peer = save_tiny_flux(folder, seed=0)
    peer.set_progress_bar_config(disable=True)
    ours = Pipeline.from_pretrained(str(folder), device="cpu", dtype=torch.float32)
    return ours, peer


def _noise(batch: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    """Packed initial latents for the tiny checkpoint: 4 latent channels, VAE scale 2 -> tokens (H/4)(W/4)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, (height // 4) * (width // 4), 16, generator=generator)


@pytest.mark.parametrize("height, width", [(32, 32), (32, 48)])
@pytest.mark.parametrize("guidance_scale", [1.0, 3.5])
def test_final_latents_match_diffusers(pipes, height, width, guidance_scale):
    ours, peer = pipes
    latents = _noise(1, height, width)
    kwargs = dict(height=height, width=width, num_inference_steps=STEPS, guidance_scale=guidance_scale)
    expected = peer("a red fox in the snow", latents=latents.clone(), output_type="latent", **kwargs).images
    got = ours("a red fox in the snow", latents=latents.clone(), output_type="latent", show_progress=False, **kwargs)
    assert got.shape == expected.shape == latents.shape
    assert rel_l2(got, expected) <= TOL
    assert rel_l2(got, latents) > 0.1  # the loop moved the latents: the comparison is not of two copies of the input


def test_seed_draws_the_same_noise_as_diffusers_cpu_generator(pipes):
    ours, peer = pipes
    kwargs = dict(height=32, width=48, num_inference_steps=1, guidance_scale=3.5)
    expected = peer("a fox", generator=torch.Generator("cpu").manual_seed(7), output_type="latent", **kwargs).images
    got = ours("a fox", seed=7, output_type="latent", show_progress=False, **kwargs)
    assert rel_l2(got, expected) <= TOL
    other = ours("a fox", seed=8, output_type="latent", show_progress=False, **kwargs)
    assert rel_l2(other, expected) > 0.1


def test_true_cfg_and_batch_match_diffusers(pipes):
    ours, peer = pipes
    prompts = ["a red fox", "a blue whale, at dawn"]
    latents = _noise(4, 32, 32, seed=3)
    kwargs = dict(height=32, width=32, num_inference_steps=STEPS, guidance_scale=3.5, num_images_per_prompt=2,
                  negative_prompt=["blurry", "dark"], true_cfg_scale=2.5)
    expected = peer(prompts, latents=latents.clone(), output_type="latent", **kwargs).images
    got = ours(prompts, latents=latents.clone(), output_type="latent", show_progress=False, **kwargs)
    assert got.shape == (4, 64, 16)
    assert rel_l2(got, expected) <= TOL
    without_cfg = ours(prompts, latents=latents.clone(), output_type="latent", show_progress=False,
                       **{**kwargs, "true_cfg_scale": 1.0})
    assert rel_l2(without_cfg, expected) > 1e-3  # the negative pass changed the result


@pytest.mark.parametrize("images, chunks", [(1, [8, 8, 2, 2]), (2, [4, 4, 4, 4, 2, 2]), (8, [1] * 20)])
def test_steps_adaln_vectors_come_a_chunk_at_a_time(pipes, monkeypatch, images, chunks):
    """The loop computes the adaLN vectors of MODULATION_ROWS // batch steps in one GEMM (StepModulations):
    10 steps with true CFG, batch 1: chunks of 8 + 2 steps per prompt side (positive and negative in turn);
    batch 2: 4 + 4 + 2; batch 8: one step at a time. Each still matches diffusers."""
    ours, peer = pipes
    model = ours.recipe.transformer
    computed, table = [], model.modulation_table
    monkeypatch.setattr(model, "modulation_table", lambda t, g, p: computed.append(t.shape[0]) or table(t, g, p))
    latents = _noise(images, 32, 32, seed=4)
    kwargs = dict(height=32, width=32, num_inference_steps=10, guidance_scale=3.5, negative_prompt="blurry",
                  true_cfg_scale=2.0, num_images_per_prompt=images)
    expected = peer("a red fox", latents=latents.clone(), output_type="latent", **kwargs).images
    got = ours("a red fox", latents=latents.clone(), output_type="latent", show_progress=False, **kwargs)
    assert MODULATION_ROWS == 8 and computed == chunks
    assert rel_l2(got, expected) <= TOL


def test_images_match_diffusers_pixels_and_timings(pipes):
    ours, peer = pipes
    latents = _noise(1, 32, 48)
    kwargs = dict(height=32, width=48, num_inference_steps=STEPS, guidance_scale=3.5)
    expected = peer("a fox", latents=latents.clone(), **kwargs).images[0]
    result = ours.run(GenerationRequest(prompt="a fox", latents=latents.clone(), **kwargs), show_progress=False)
    image = result.images[0]
    assert image.size == expected.size == (48, 32)
    diff = (torch.tensor(np.asarray(image), dtype=torch.int16) - torch.tensor(np.asarray(expected), dtype=torch.int16))
    diff = diff.abs().max().item()
    assert diff <= 1  # uint8 rounding of fp32 values that agree to 1e-4
    assert list(result.timings["stages_ms"]) == ["validate", "encode", "timesteps", "latents", "denoise", "decode"]
    assert [s["step"] for s in result.timings["denoise_steps_ms"]] == list(range(STEPS))
    assert all(s["duration_ms"] > 0 for s in result.timings["denoise_steps_ms"])


def test_pack_unpack_and_ids_layout():
    latents = torch.randn(2, 4, 6, 8)
    packed = pack_latents(latents)
    assert packed.shape == (2, 12, 16)
    # token (row 1, col 2) holds channels (c, dy, dx) of the latent 2x2 patch at rows 2..3, cols 4..5
    assert torch.equal(packed[:, 1 * 4 + 2].view(2, 4, 2, 2), latents[:, :, 2:4, 4:6])
    assert torch.equal(unpack_latents(packed, 6, 8), latents)
    ids = latent_image_ids(3, 4, torch.device("cpu"), torch.float32)
    assert ids.shape == (12, 3) and ids[6].tolist() == [0.0, 1.0, 2.0]


def test_model_specific_validation(pipes):
    ours, _ = pipes
    with pytest.raises(ValueError, match=r"^latents of shape \(1, 10, 16\) is not allowed: .* needs packed latents of shape \(1, 64, 16\)$"):
        ours("a fox", height=32, width=32, latents=torch.randn(1, 10, 16), show_progress=False)
    with pytest.raises(ValueError, match=r"^num_frames=5 is not allowed: .* is a text-to-image model"):
        ours.run(GenerationRequest(prompt="a fox", height=32, width=32, num_frames=5))


@pytest.mark.gpu
def test_bf16_on_gpu_matches_diffusers(tmp_path):
    """The GPU path (fused kernels, the auto attention backend) in bf16 against diffusers in bf16: <= 2e-2."""
    peer = save_tiny_flux(tmp_path, seed=0).to("cuda", torch.bfloat16)
    peer.set_progress_bar_config(disable=True)
    ours = Pipeline.from_pretrained(str(tmp_path), device="cuda", dtype=torch.bfloat16)
    latents = _noise(2, 64, 48).to("cuda", torch.bfloat16)
    kwargs = dict(height=64, width=48, num_inference_steps=STEPS, guidance_scale=3.5)
    expected = peer(["a red fox", "a whale"], latents=latents.clone(), output_type="latent", **kwargs).images
    got = ours(["a red fox", "a whale"], latents=latents.clone(), output_type="latent", show_progress=False, **kwargs)
    assert rel_l2(got, expected) <= 2e-2


@pytest.mark.gpu
def test_full_size_flux_dev_dummy_is_finite_on_gpu():
    """FLUX.1-dev's full architecture with random weights, 1024x1024, 50 steps, bf16: finite latents and image."""
    pipe = Pipeline.from_pretrained("black-forest-labs/FLUX.1-dev", device="cuda", load_format="dummy")
    result = pipe.run(GenerationRequest(prompt="a red fox in the snow", num_inference_steps=50, seed=0),
                      show_progress=False)
    assert result.latents.shape == (1, 4096, 64) and result.latents.dtype == torch.bfloat16
    assert torch.isfinite(result.latents).all()
    assert result.images[0].size == (1024, 1024)
    assert len(result.timings["denoise_steps_ms"]) == 50
