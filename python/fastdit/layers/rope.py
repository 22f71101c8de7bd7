"""Multi-axis rotary position embedding angles, as diffusers' FluxPosEmbed computes them.

Each token carries one position per axis (FLUX: [index, row, column]). Axis a of width d_a contributes
d_a / 2 rotated pairs with frequencies w_j = theta^(-2j / d_a), j < d_a / 2; the pair angle is
pos_a * w_j. The per-axis angles are concatenated, giving one (cos, sin) per rotated pair:

    cos, sin = rope_cos_sin(ids, axes_dim=(16, 56, 56))   # ids [S, 3] -> cos, sin [S, 64] fp32

These feed fastdit.ops.qk_norm_rope with style="interleaved" (pairs (2i, 2i+1)). Angles are computed in
float64 (as diffusers) and rounded to fp32 once, so large positions keep their precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rope_cos_sin(
    ids: torch.Tensor, axes_dim: Sequence[int], theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """ids: [S, n_axes] positions (any numeric dtype); axes_dim: n_axes even widths.
    Returns (cos, sin), each [S, sum(axes_dim) / 2] fp32 on ids' device."""
    if ids.dim() != 2 or ids.shape[1] != len(axes_dim):
        raise ValueError(
            f"rope ids of shape {tuple(ids.shape)}: must be [S, {len(axes_dim)}], "
            f"one column per axis of {list(axes_dim)}"
        )
    if any(d % 2 for d in axes_dim):
        raise ValueError(f"rope axes_dim={list(axes_dim)}: every axis width must be even")
    # MPS has no float64; everywhere else keep diffusers' float64 angles.
    dtype = torch.float32 if ids.device.type == "mps" else torch.float64
    pos = ids.float().to(dtype)
    angles = []
    for axis, dim in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=dtype, device=ids.device) / dim))  # [d/2]
        angles.append(torch.outer(pos[:, axis], freqs))  # [S, d/2]
    angle = torch.cat(angles, dim=-1)  # [S, D/2]
    return angle.cos().float(), angle.sin().float()
