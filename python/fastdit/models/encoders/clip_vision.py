"""CLIP vision encoder as Wan2.1 I2V uses it: the penultimate hidden states of transformers' CLIPVisionModel.

    enc = CLIPVisionEncoder.from_pretrained(checkpoint, torch.bfloat16, "cuda")   # image_encoder/ + image_processor/
    enc = CLIPVisionEncoder.dummy("clip-vit-h-14", torch.bfloat16, "cuda")        # random weights, default processor
    tokens = enc.encode([pil_image])                                            # [B, 1 + (S/p)^2, hidden] (257 x 1280)

encode() is diffusers WanImageToVideoPipeline.encode_image: the checkpoint's CLIP image processor (resize
the short side, center crop, normalise), then `hidden_states[-2]` of the vision tower (before the last layer,
no final layer norm).
"""

from __future__ import annotations

import os

import torch
from PIL import Image
from transformers import AutoImageProcessor, CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from fastdit.configs.base import lookup_preset
from fastdit.models.encoders.hf_loading import HFEncoder, dummy_encoder, load_pretrained_encoder

# CLIPVisionConfig keyword arguments: open-clip ViT-H/14 as shipped in Wan2.1-I2V's image_encoder/config.json,
# and a CPU-sized one whose hidden_size is wan-tiny-i2v's image_dim.
CLIP_VISION_PRESETS: dict[str, dict] = {
    "wan-tiny": dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3, patch_size=14,
        image_size=56, projection_dim=32, hidden_act="gelu", layer_norm_eps=1e-5,
    ),
    "clip-vit-h-14": dict(
        hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32, patch_size=14,
        image_size=224, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5,
    ),
}


def clip_vision_preset(name: str) -> CLIPVisionConfig:
    return CLIPVisionConfig(**lookup_preset(CLIP_VISION_PRESETS, name, "CLIP vision encoder"))


def default_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """OpenAI CLIP preprocessing at `image_size` (what Wan's image_processor/ holds at 224)."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


class CLIPVisionEncoder(HFEncoder):
    """A CLIPVisionModel and its image processor; `encode` gives Wan's image tokens."""

    def __init__(self, model: CLIPVisionModel, processor):
        super().__init__(model)
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls, checkpoint: str, dtype: torch.dtype, device: str | torch.device,
        subfolder: str = "image_encoder", processor_subfolder: str = "image_processor",
    ) -> "CLIPVisionEncoder":
        model = load_pretrained_encoder(CLIPVisionModel, os.path.join(checkpoint, subfolder), dtype, device, subfolder)
        return cls(model, AutoImageProcessor.from_pretrained(os.path.join(checkpoint, processor_subfolder)))

    @classmethod
    def dummy(cls, preset: str, dtype: torch.dtype, device: str | torch.device, seed: int = 0) -> "CLIPVisionEncoder":
        config = clip_vision_preset(preset)
        model = dummy_encoder(CLIPVisionModel, config, dtype, device, seed)
        return cls(model, default_image_processor(config.image_size))

    @torch.no_grad()
    def encode(self, images: Image.Image | list[Image.Image]) -> torch.Tensor:
        """PIL image(s) -> [B, 1 + (image_size / patch_size)^2, hidden_size] in the model's dtype."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        if not images or not all(isinstance(i, Image.Image) for i in images):
            raise ValueError("CLIPVisionEncoder.encode: images must be a PIL image or a non-empty list of them")
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(self.device, self.dtype), output_hidden_states=True)
        return out.hidden_states[-2]
