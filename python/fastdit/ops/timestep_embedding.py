"""timestep_embedding: the sinusoidal embedding of diffusion timesteps (as diffusers' get_timestep_embedding).

emb[i, j] = f(t_i * exp(-ln(max_period) * j / (half - shift))), f = sin for the first half and cos for
the second (swapped when flip_sin_to_cos), j < half = dim // 2.
"""

from __future__ import annotations

import math

import torch


def timestep_embedding_ref(
    t: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """t: [N] (any float dtype). Returns [N, dim] fp32."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = scale * t[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def timestep_embedding(
    t: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
    backend: str = "auto",
) -> torch.Tensor:
    return timestep_embedding_ref(t, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period)
