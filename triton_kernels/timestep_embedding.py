"""Triton timestep_embedding (diffusers' get_timestep_embedding):
freq_j = exp(-ln(max_period) * j / (half - shift)); arg = scale * t * freq_j; [sin, cos] or [cos, sin];
zero pad for odd dim. t: [N] fp32; out: [N, dim] fp32. Called by fastdit/ops/timestep_embedding.py."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _timestep_embedding_kernel(
    t_ptr, out_ptr, dim, half, neg_log_max_period, freq_shift, scale, FLIP: tl.constexpr, BLOCK: tl.constexpr
):
    i = tl.program_id(0).to(tl.int64)
    col = tl.arange(0, BLOCK)
    first = col < half
    j = tl.where(first, col, col - half)
    freq = tl.exp(neg_log_max_period * j.to(tl.float32) / (half - freq_shift))
    arg = scale * tl.load(t_ptr + i) * freq
    use_cos = first == FLIP
    val = tl.where(use_cos, tl.cos(arg), tl.sin(arg))
    val = tl.where(col < 2 * half, val, 0.0)
    tl.store(out_ptr + i * dim + col, val, mask=col < dim)


def timestep_embedding(
    t: torch.Tensor, out: torch.Tensor, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float,
    max_period: float,
) -> torch.Tensor:
    n, dim = out.shape
    if n:
        _timestep_embedding_kernel[(n,)](
            t, out, dim, dim // 2, -math.log(max_period), float(downscale_freq_shift), float(scale),
            FLIP=bool(flip_sin_to_cos), BLOCK=triton.next_power_of_2(dim),
        )
    return out
