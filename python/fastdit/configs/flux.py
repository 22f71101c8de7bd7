"""The FLUX.1 transformer's config (the fields of diffusers' FluxTransformer2DModel config.json) and the
built-in presets.

    config = FluxTransformerConfig.from_dict(read_config(folder))   # a checkpoint's transformer/config.json
    config = flux_transformer_preset("flux-tiny")                    # a built-in, for dummy weights

`flux-tiny` is a CPU-sized FLUX architecture (2 + 2 blocks, 2 heads of 32) for smoke tests and the README's
first command: it keeps FLUX.1's 16 latent channels (64 packed input channels) and 3-axis RoPE.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastdit.configs.base import DiffusersConfig, lookup_preset


@dataclass(frozen=True)
class FluxTransformerConfig(DiffusersConfig):
    """Field names and defaults equal diffusers' FluxTransformer2DModel.__init__ arguments.

    inner_dim = num_attention_heads * attention_head_dim; out_channels None means in_channels;
    axes_dims_rope: RoPE dims per position axis (frame/index, row, column), summing to attention_head_dim.
    """

    _diffusers_class = "FluxTransformer2DModel"

    patch_size: int = 1
    in_channels: int = 64
    out_channels: int | None = None
    num_layers: int = 19
    num_single_layers: int = 38
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    guidance_embeds: bool = False
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)

    def __post_init__(self) -> None:
        positive = ("patch_size", "in_channels", "attention_head_dim", "num_attention_heads",
                    "joint_attention_dim", "pooled_projection_dim")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FluxTransformerConfig.{name}={value!r}: must be an integer >= 1")
        for name in ("num_layers", "num_single_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"FluxTransformerConfig.{name}={value!r}: must be an integer >= 0")
        out = self.out_channels
        if out is not None and (isinstance(out, bool) or not isinstance(out, int) or out < 1):
            raise ValueError(f"FluxTransformerConfig.out_channels={out!r}: must be None or an integer >= 1")
        if not isinstance(self.guidance_embeds, bool):
            raise ValueError(f"FluxTransformerConfig.guidance_embeds={self.guidance_embeds!r}: must be true or false")
        # config.json stores a list; the frozen config keeps a tuple (hashable, immutable).
        axes = tuple(self.axes_dims_rope) if isinstance(self.axes_dims_rope, (list, tuple)) else None
        if not axes or any(isinstance(a, bool) or not isinstance(a, int) or a < 2 or a % 2 for a in axes):
            raise ValueError(
                f"FluxTransformerConfig.axes_dims_rope={self.axes_dims_rope!r}: must be a list of even integers >= 2"
            )
        if sum(axes) != self.attention_head_dim:
            raise ValueError(
                f"FluxTransformerConfig.axes_dims_rope={list(axes)} sums to {sum(axes)}: "
                f"must sum to attention_head_dim={self.attention_head_dim}"
            )
        object.__setattr__(self, "axes_dims_rope", axes)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def out_dim(self) -> int:
        """Channels per token of the output: patch_size^2 * (out_channels or in_channels)."""
        return self.patch_size**2 * (self.out_channels or self.in_channels)


FLUX_1_DEV = FluxTransformerConfig(
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

FLUX_TRANSFORMER_PRESETS: dict[str, FluxTransformerConfig] = {
    "flux-tiny": FluxTransformerConfig(
        in_channels=64,  # 16 latent channels packed 2x2, as FLUX.1
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=64,  # the tiny T5's d_model
        pooled_projection_dim=32,  # the tiny CLIP's hidden_size (FLUX takes its pooler_output)
        guidance_embeds=True,
        axes_dims_rope=(8, 12, 12),
    ),
    "FLUX.1-dev": FLUX_1_DEV,
    # the same architecture under its hub id, the key configs/models.py uses
    "black-forest-labs/FLUX.1-dev": FLUX_1_DEV,
}


def flux_transformer_preset(name: str) -> FluxTransformerConfig:
    return lookup_preset(FLUX_TRANSFORMER_PRESETS, name, "FLUX transformer")
