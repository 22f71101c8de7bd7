"""layer_norm_modulate: y = LN(x) * (1 + scale) + shift, LayerNorm without affine, statistics in fp32."""

from __future__ import annotations

import torch


def _broadcast(mod: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # [B, D] per sample -> [B, 1, D]; [B, S, D] per token stays.
    return mod.unsqueeze(1) if mod.dim() == 2 else mod


def layer_norm_modulate_ref(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """x: [B, S, D]; shift, scale: [B, D] (per sample) or [B, S, D] (per token). Returns x's dtype."""
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    y = y * (1 + _broadcast(scale, x).float()) + _broadcast(shift, x).float()
    return y.to(x.dtype)


def layer_norm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6, backend: str = "auto"
) -> torch.Tensor:
    return layer_norm_modulate_ref(x, shift, scale, eps)
