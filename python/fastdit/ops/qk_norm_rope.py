"""qk_norm_rope: RMSNorm of q and k (per head or across heads), then rotary embedding, in place.

q, k: [B, S, H, D]. cos, sin: [S, D/2] fp32, one angle per rotated pair.
style "interleaved" rotates pairs (2i, 2i+1) (FLUX and Wan, as diffusers computes them);
style "half" rotates pairs (i, i + D/2) (NeoX-style models).
norm "per_head": weight [D], statistics over D (FLUX); "across_heads": weight [H*D], statistics over
H*D (Wan); "none": no norm. Math in fp32.
"""

from __future__ import annotations

import torch

STYLES = ("interleaved", "half")
NORMS = ("per_head", "across_heads", "none")


def _norm_ref(x: torch.Tensor, weight: torch.Tensor | None, norm: str, eps: float) -> torch.Tensor:
    xf = x.float()
    if norm == "none":
        return xf
    B, S, H, D = x.shape
    if norm == "across_heads":
        flat = xf.reshape(B, S, H * D)
        flat = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + eps)
        if weight is not None:
            flat = flat * weight.float()
        return flat.reshape(B, S, H, D)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf * weight.float() if weight is not None else xf


def _rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    cos = cos[None, :, None, :].float()  # [1, S, 1, D/2]
    sin = sin[None, :, None, :].float()
    if style == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def qk_norm_rope_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    style: str = "interleaved",
    norm: str = "per_head",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Writes the result into q and k (in place) and returns them."""
    for t, w in ((q, q_weight), (k, k_weight)):
        t.copy_(_rope_ref(_norm_ref(t, w, norm, eps), cos, sin, style))
    return q, k


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    style: str = "interleaved",
    norm: str = "per_head",
    eps: float = 1e-6,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    return qk_norm_rope_ref(q, k, q_weight, k_weight, cos, sin, style, norm, eps)
