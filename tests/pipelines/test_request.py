"""GenerationRequest validation: every rule gives a one-line ValueError naming the value and what is allowed."""

from __future__ import annotations

import pytest
import torch

from fastdit.pipelines.request import GenerationRequest, SamplingDefaults


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=1000), "height=1000 is not allowed: height must be an integer multiple of 16 in [16, 4096]"),
        (dict(width=8), "width=8 is not allowed: width must be an integer multiple of 16 in [16, 4096]"),
        (dict(width=4112), "width=4112 is not allowed"),
        (dict(height=256.0), "height=256.0 is not allowed"),
        (dict(height=True), "height=True is not allowed"),
        (dict(num_inference_steps=0), "num_inference_steps=0 is not allowed: num_inference_steps must be an integer in [1, 1000]"),
        (dict(num_inference_steps=-3), "num_inference_steps=-3 is not allowed"),
        (dict(guidance_scale=float("nan")), "guidance_scale=nan is not allowed: guidance_scale must be a finite number >= 0"),
        (dict(guidance_scale=-1.0), "guidance_scale=-1.0 is not allowed"),
        (dict(true_cfg_scale=0.5), "true_cfg_scale=0.5 is not allowed: true_cfg_scale must be a finite number >= 1"),
        (dict(seed=-1), "seed=-1 is not allowed: seed must be None or an integer in [0, 2**63)"),
        (dict(output_type="np"), "output_type='np' is not allowed: output_type must be one of pil, latent"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt=0 is not allowed"),
        (dict(latents=[[0.0]]), "latents='list' is not allowed: latents must be None or a torch.Tensor"),
        (dict(num_frames=0), "num_frames=0 is not allowed"),
    ],
)
def test_bad_fields_raise_one_line(kwargs, message):
    with pytest.raises(ValueError) as info:
        GenerationRequest(prompt="a fox", **kwargs)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("prompt", [None, 3, [], ["ok", 5], b"bytes", {"p": "x"}])
def test_prompt_must_be_str_or_list_of_str(prompt):
    with pytest.raises(ValueError, match=r"^prompt=.* is not allowed: prompt must be a string or a non-empty list"):
        GenerationRequest(prompt=prompt)


def test_negative_prompt_list_needs_one_per_prompt():
    with pytest.raises(ValueError, match=r"one entry per prompt \(2\)"):
        GenerationRequest(prompt=["a", "b"], negative_prompt=["x"])
    request = GenerationRequest(prompt=["a", "b"], negative_prompt="blurry")
    assert request.negative_prompts == ["blurry", "blurry"]


def test_lists_become_tuples_and_batch_counts_images():
    prompts = ["a", "b", "c"]
    request = GenerationRequest(prompt=prompts, num_images_per_prompt=2)
    prompts.append("d")  # the frozen request does not see the caller's later edits
    assert request.prompt == ("a", "b", "c")
    assert request.prompts == ["a", "b", "c"]
    assert request.batch_size == 6
    with pytest.raises(AttributeError):
        request.height = 64


def test_with_defaults_fills_only_missing_fields():
    defaults = SamplingDefaults(height=256, width=256, num_inference_steps=4, guidance_scale=3.5)
    request = GenerationRequest(prompt="a", width=64, guidance_scale=1.0).with_defaults(defaults)
    assert (request.height, request.width, request.num_inference_steps, request.guidance_scale) == (256, 64, 4, 1.0)


def test_image_models_reject_video_fields():
    request = GenerationRequest(prompt="a", num_frames=9)
    with pytest.raises(ValueError, match=r"^num_frames=9 is not allowed: flux-tiny is a text-to-image model"):
        request.require_image_fields("flux-tiny")
    GenerationRequest(prompt="a", latents=torch.randn(1, 4, 16)).require_image_fields("flux-tiny")
