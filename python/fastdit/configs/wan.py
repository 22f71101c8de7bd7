"""Built-in Wan2.1 component configs: the diffusers config.json contents of each checkpoint, and wan-tiny.

`wan-tiny` (T2V) and `wan-tiny-i2v` are CPU-sized architectures (seconds per video) for smoke tests and the
README's first command; the others equal the Wan-AI/*-Diffusers checkpoints, used for `--load-format dummy`
(real checkpoint folders bring their own configs).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastdit.configs.base import lookup_preset
from fastdit.models.dits.wan import WanTransformerConfig
from fastdit.models.vaes.autoencoder_kl_wan import WanVAEConfig
from fastdit.schedulers.unipc import UniPCSchedulerConfig

T2V_1_3B = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
T2V_14B = "Wan-AI/Wan2.1-T2V-14B-Diffusers"
I2V_480P = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
I2V_720P = "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"

_1_3B = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)
_14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)
_I2V = dict(in_channels=36, image_dim=1280, added_kv_proj_dim=5120)  # 16 noise + 4 mask + 16 image latents
_TINY = dict(num_attention_heads=2, attention_head_dim=24, text_dim=32, freq_dim=32, ffn_dim=96, num_layers=2)

TRANSFORMER_PRESETS: dict[str, WanTransformerConfig] = {
    "wan-tiny": WanTransformerConfig(**_TINY),
    "wan-tiny-i2v": WanTransformerConfig(**_TINY, in_channels=36, image_dim=32, added_kv_proj_dim=48),
    T2V_1_3B: WanTransformerConfig(**_1_3B),
    T2V_14B: WanTransformerConfig(**_14B),
    I2V_480P: WanTransformerConfig(**_14B, **_I2V),
    I2V_720P: WanTransformerConfig(**_14B, **_I2V),
}

# The tiny VAE keeps Wan's latent interface (16 channels, 8x spatial and 4x temporal compression).
_TINY_VAE = WanVAEConfig(base_dim=8, num_res_blocks=1)
VAE_PRESETS: dict[str, WanVAEConfig] = {
    "wan-tiny": _TINY_VAE, "wan-tiny-i2v": _TINY_VAE,
    T2V_1_3B: WanVAEConfig(), T2V_14B: WanVAEConfig(), I2V_480P: WanVAEConfig(), I2V_720P: WanVAEConfig(),
}

# scheduler/scheduler_config.json: UniPC flow matching, flow_shift 3.0 (480P) or 5.0 (720P) as Wan recommends.
SCHEDULER_PRESETS: dict[str, UniPCSchedulerConfig] = {
    "wan-tiny": UniPCSchedulerConfig(flow_shift=3.0), "wan-tiny-i2v": UniPCSchedulerConfig(flow_shift=3.0),
    T2V_1_3B: UniPCSchedulerConfig(flow_shift=3.0), T2V_14B: UniPCSchedulerConfig(flow_shift=3.0),
    I2V_480P: UniPCSchedulerConfig(flow_shift=3.0), I2V_720P: UniPCSchedulerConfig(flow_shift=5.0),
}

# Encoder presets (models/encoders/umt5.py, clip_vision.py) per model preset.
TEXT_ENCODER_PRESETS: dict[str, str] = {name: "umt5-xxl" for name in TRANSFORMER_PRESETS} | {
    "wan-tiny": "wan-tiny", "wan-tiny-i2v": "wan-tiny",
}
IMAGE_ENCODER_PRESETS: dict[str, str] = {"wan-tiny-i2v": "wan-tiny", I2V_480P: "clip-vit-h-14", I2V_720P: "clip-vit-h-14"}


@dataclass(frozen=True)
class VideoDefaults:
    """What a request may leave None beyond SamplingDefaults: frame count (4k + 1) and frame rate."""

    num_frames: int
    fps: int


WAN_VIDEO_DEFAULTS = VideoDefaults(num_frames=81, fps=16)  # diffusers WanPipeline; Wan exports at 16 fps
VIDEO_DEFAULTS: dict[str, VideoDefaults] = {name: WAN_VIDEO_DEFAULTS for name in TRANSFORMER_PRESETS} | {
    "wan-tiny": VideoDefaults(num_frames=9, fps=8), "wan-tiny-i2v": VideoDefaults(num_frames=9, fps=8),
}


def transformer_preset(name: str) -> WanTransformerConfig:
    return lookup_preset(TRANSFORMER_PRESETS, name, "Wan transformer")


def vae_preset(name: str) -> WanVAEConfig:
    return lookup_preset(VAE_PRESETS, name, "Wan VAE")


def scheduler_preset(name: str) -> UniPCSchedulerConfig:
    return lookup_preset(SCHEDULER_PRESETS, name, "Wan scheduler")
