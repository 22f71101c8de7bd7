"""Conditioning embeddings of diffusion transformers: timestep, guidance and pooled-text MLPs.

Module names equal diffusers' (CombinedTimestepGuidanceTextProjEmbeddings and its parts), so checkpoint
keys load unchanged:

    temb = mlp_t(sinusoid(t)) [+ mlp_g(sinusoid(g))] + mlp_text(pooled)        # [B, D]
    mlp(x) = linear_2(silu(linear_1(x)))

The sinusoid is fastdit.ops.timestep_embedding with 256 channels, cos first (flip_sin_to_cos), shift 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastdit.ops import timestep_embedding

TIME_PROJ_DIM = 256  # sinusoid width of diffusers' Timesteps(num_channels=256) in FLUX


class TimestepEmbedding(nn.Module):
    """linear_2(silu(linear_1(x))): [N, in_channels] -> [N, time_embed_dim] (diffusers TimestepEmbedding)."""

    def __init__(self, in_channels: int, time_embed_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TextProjection(nn.Module):
    """linear_2(silu(linear_1(pooled))): [B, in_features] -> [B, hidden_size]
    (diffusers PixArtAlphaTextProjection with act_fn="silu")."""

    def __init__(self, in_features: int, hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class CombinedTimestepGuidanceTextProjEmbeddings(nn.Module):
    """FLUX's conditioning vector. With guidance_embeds it is diffusers'
    CombinedTimestepGuidanceTextProjEmbeddings (adds `guidance_embedder`), without it
    CombinedTimestepTextProjEmbeddings; the other module names are shared.

    forward(timestep [B], guidance [B] | None, pooled [B, P]) -> [B, D] in pooled's dtype. timestep and
    guidance come already scaled (FLUX: t * 1000); the sinusoid is fp32, cast to pooled's dtype before the MLP.
    """

    def __init__(self, embedding_dim: int, pooled_projection_dim: int, guidance_embeds: bool,
                 kernel_backend: str = "auto") -> None:
        super().__init__()
        self.kernel_backend = kernel_backend
        self.timestep_embedder = TimestepEmbedding(TIME_PROJ_DIM, embedding_dim)
        self.guidance_embedder = TimestepEmbedding(TIME_PROJ_DIM, embedding_dim) if guidance_embeds else None
        self.text_embedder = TextProjection(pooled_projection_dim, embedding_dim)

    def _sinusoid(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = timestep_embedding(t, TIME_PROJ_DIM, flip_sin_to_cos=True, downscale_freq_shift=0.0,
                                 backend=self.kernel_backend)
        return emb.to(dtype)

    def forward(self, timestep: torch.Tensor, guidance: torch.Tensor | None, pooled: torch.Tensor) -> torch.Tensor:
        if (guidance is None) != (self.guidance_embedder is None):
            has = "has" if self.guidance_embedder is not None else "has no"
            raise ValueError(
                f"guidance={'None' if guidance is None else 'a tensor'} but the model {has} guidance embedder: "
                "pass guidance exactly when the config has guidance_embeds=true"
            )
        temb = self.timestep_embedder(self._sinusoid(timestep, pooled.dtype))
        if self.guidance_embedder is not None:
            temb = temb + self.guidance_embedder(self._sinusoid(guidance, pooled.dtype))
        return temb + self.text_embedder(pooled)
