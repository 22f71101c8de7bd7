"""rms_norm: y = x / sqrt(mean(x^2) + eps) * weight, over the last dim (rows of any width up to 8192)."""

from __future__ import annotations

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """Reference in fp32 math. x: [..., D]; weight: [D] or None. Returns x's dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    return rms_norm_ref(x, weight, eps)
