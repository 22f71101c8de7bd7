"""gated_residual_norm_modulate: r = residual + gate * x; y = LN(r) * (1 + scale) + shift. Returns (r, y).

Fuses the end of one sub-block (gated residual add) into the modulated norm of the next.
"""

from __future__ import annotations

import torch

from fastdit.ops.layer_norm_modulate import _broadcast, layer_norm_modulate_ref


def gated_residual_norm_modulate_ref(
    residual: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """residual, x: [B, S, D]; gate, shift, scale: [B, D] or [B, S, D]. r in residual's dtype."""
    r = (residual.float() + _broadcast(gate, x).float() * x.float()).to(residual.dtype)
    return r, layer_norm_modulate_ref(r, shift, scale, eps)


def gated_residual_norm_modulate(
    residual: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    return gated_residual_norm_modulate_ref(residual, x, gate, shift, scale, eps)
