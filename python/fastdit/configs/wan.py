"""Built-in Wan2.1 component configs: the diffusers config.json contents of each checkpoint, and wan-tiny.

`wan-tiny` is a CPU-sized architecture (seconds per video) for smoke tests and the README's first
command; the others equal the Wan-AI/*-Diffusers checkpoints, used for `--load-format dummy`.
"""

from __future__ import annotations

from fastdit.models.dits.wan import WanTransformerConfig

_T2V_1_3B = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30)
_14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)
_I2V = dict(in_channels=36, image_dim=1280, added_kv_proj_dim=5120)

TRANSFORMER_PRESETS: dict[str, WanTransformerConfig] = {
    "wan-tiny": WanTransformerConfig(
        num_attention_heads=2, attention_head_dim=24, text_dim=32, freq_dim=32, ffn_dim=96, num_layers=2
    ),
    "wan-tiny-i2v": WanTransformerConfig(
        num_attention_heads=2, attention_head_dim=24, in_channels=36, text_dim=32, freq_dim=32, ffn_dim=96,
        num_layers=2, image_dim=32, added_kv_proj_dim=48,
    ),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": WanTransformerConfig(**_T2V_1_3B),
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": WanTransformerConfig(**_14B),
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers": WanTransformerConfig(**_14B, **_I2V),
    "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers": WanTransformerConfig(**_14B, **_I2V),
}


def transformer_preset(name: str) -> WanTransformerConfig:
    if name not in TRANSFORMER_PRESETS:
        raise ValueError(f"unknown Wan transformer preset {name!r}; built-in: {sorted(TRANSFORMER_PRESETS)}")
    return TRANSFORMER_PRESETS[name]
