"""Wan's text encoder (UMT5) and I2V image encoder (CLIP vision) against diffusers' own encode functions."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fastdit.models.encoders.clip_vision import CLIPVisionEncoder, clip_vision_preset, default_image_processor
from fastdit.models.encoders.tokenizers import t5_standin_tokenizer
from fastdit.models.encoders.umt5 import UMT5TextEncoder, prompt_clean, umt5_preset

diffusers = pytest.importorskip("diffusers")
from transformers import CLIPVisionModel, UMT5EncoderModel  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def wan_text_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_text")
    torch.manual_seed(0)
    UMT5EncoderModel(umt5_preset("wan-tiny")).eval().save_pretrained(folder / "text_encoder")
    t5_standin_tokenizer(300, 512).save_pretrained(folder / "tokenizer")
    return folder


def test_umt5_matches_wan_pipeline_prompt_embeds(wan_text_folder):
    ours = UMT5TextEncoder.from_pretrained(str(wan_text_folder), torch.float32, "cpu")
    ref = SimpleNamespace(tokenizer=ours.tokenizer, text_encoder=ours.model, _execution_device=torch.device("cpu"))
    prompts = ["a red  fox &amp; a hen", "x" * 600]  # html entity, double space, a prompt cut at 64 tokens
    expected = diffusers.WanPipeline._get_t5_prompt_embeds(ref, prompt=prompts, max_sequence_length=64)
    got = ours.encode(prompts, max_sequence_length=64)
    assert got.shape == expected.shape == (2, 64, 32)
    assert _rel(got, expected) <= 1e-6
    n = len("a red fox & a hen") + 1  # byte tokens + </s>
    assert got[0, n:].abs().max() == 0 and got[0, n - 1].abs().max() > 0  # zeroed exactly past the true length


def test_umt5_errors_and_cleaning(wan_text_folder):
    ours = UMT5TextEncoder.from_pretrained(str(wan_text_folder), torch.float32, "cpu")
    with pytest.raises(ValueError, match="max_sequence_length=513 must be an integer in 1..512"):
        ours.encode("fox", max_sequence_length=513)
    with pytest.raises(ValueError, match="max_sequence_length=True must be an integer in 1..512"):
        ours.encode("fox", max_sequence_length=True)
    assert ours.to("cpu") is ours and ours.device == torch.device("cpu") and ours.dtype == torch.float32
    with pytest.raises(ValueError, match="prompt must be a string"):
        ours.encode([])
    assert prompt_clean("  a\n\tb &amp;amp; c ") == "a b & c"


def test_clip_vision_matches_wan_i2v_encode_image():
    torch.manual_seed(0)
    model = CLIPVisionModel(clip_vision_preset("wan-tiny")).eval()
    ours = CLIPVisionEncoder(model, default_image_processor(56))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8))
    ref = SimpleNamespace(image_processor=ours.processor, image_encoder=model, _execution_device=torch.device("cpu"))
    expected = diffusers.WanImageToVideoPipeline.encode_image(ref, image)
    got = ours.encode(image)
    assert got.shape == (1, 17, 32)  # CLS + (56/14)^2 patches
    assert _rel(got, expected) <= 1e-6
    with pytest.raises(ValueError, match="must be a PIL image"):
        ours.encode([])


def test_dummy_full_size_encoders_build_on_meta_sizes():
    from fastdit.models.encoders.umt5 import UMT5_PRESETS

    with torch.device("meta"):
        n_t5 = sum(p.numel() for p in UMT5EncoderModel(umt5_preset("umt5-xxl")).parameters())
        n_clip = sum(p.numel() for p in CLIPVisionModel(clip_vision_preset("clip-vit-h-14")).parameters())
    assert 5.6e9 < n_t5 < 5.8e9  # UMT5-XXL encoder: 5.7B (its 256k vocabulary is 1B of it)
    assert 0.62e9 < n_clip < 0.64e9  # ViT-H/14 vision tower: 632M
    assert UMT5_PRESETS["wan-tiny"]["d_model"] == 32  # = wan-tiny's text_dim
