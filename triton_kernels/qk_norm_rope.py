"""Triton qk_norm_rope: RMSNorm of q and k (per head or across heads), then rotary embedding, in place.

q, k: [B, S, H, D] with any batch/seq/head strides and a contiguous last dim. cos, sin: [S, D/2] fp32.
One program per (token, tensor): the token's [H, D] tile is read as two halves of each rotated pair,
x1 and x2 ([H_BLOCK, D/2] each): pairs (2j, 2j+1) for interleaved, (j, j + D/2) for half.
Norm codes: 0 per_head (weight [D]), 1 across_heads (weight [H*D]), 2 none.
Called by fastdit/ops/qk_norm_rope.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NORM_CODES = {"per_head": 0, "across_heads": 1, "none": 2}


@triton.jit
def _qk_norm_rope_kernel(
    x_ptr, w_ptr, cos_ptr, sin_ptr, seq, heads, eps, stride_b, stride_s, stride_h,
    HEAD_DIM: tl.constexpr, H_BLOCK: tl.constexpr, INTERLEAVED: tl.constexpr, NORM: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    b = token // seq
    s = token % seq
    HALF: tl.constexpr = HEAD_DIM // 2
    h = tl.arange(0, H_BLOCK)[:, None]
    j = tl.arange(0, HALF)[None, :]
    if INTERLEAVED:
        c1 = 2 * j
        c2 = 2 * j + 1
    else:
        c1 = j
        c2 = j + HALF
    mask = (h < heads) & (j < HALF)
    base = x_ptr + b * stride_b + s * stride_s + h * stride_h
    x1 = tl.load(base + c1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + c2, mask=mask, other=0.0).to(tl.float32)
    if NORM == 0:
        inv = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / HEAD_DIM + eps)[:, None]
        x1 = x1 * inv
        x2 = x2 * inv
        if HAS_WEIGHT:
            x1 = x1 * tl.load(w_ptr + c1).to(tl.float32)
            x2 = x2 * tl.load(w_ptr + c2).to(tl.float32)
    elif NORM == 1:
        inv = tl.rsqrt((tl.sum(tl.sum(x1 * x1, axis=1), axis=0) + tl.sum(tl.sum(x2 * x2, axis=1), axis=0))
                       / (heads * HEAD_DIM) + eps)
        x1 = x1 * inv
        x2 = x2 * inv
        if HAS_WEIGHT:
            x1 = x1 * tl.load(w_ptr + h * HEAD_DIM + c1, mask=mask, other=0.0).to(tl.float32)
            x2 = x2 * tl.load(w_ptr + h * HEAD_DIM + c2, mask=mask, other=0.0).to(tl.float32)
    cos = tl.load(cos_ptr + s * HALF + j).to(tl.float32)
    sin = tl.load(sin_ptr + s * HALF + j).to(tl.float32)
    out1 = x1 * cos - x2 * sin
    out2 = x1 * sin + x2 * cos
    tl.store(base + c1, out1.to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(base + c2, out2.to(x_ptr.dtype.element_ty), mask=mask)


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool,
    norm: str,
    eps: float,
) -> None:
    """Rotates q and k in place; shapes and codes as in the module docstring."""
    batch, seq, heads, head_dim = q.shape
    if batch * seq == 0:
        return
    h_block = triton.next_power_of_2(heads)
    for x, w in ((q, q_weight), (k, k_weight)):
        _qk_norm_rope_kernel[(batch * seq,)](
            x, w if w is not None else x, cos, sin, seq, heads, eps, x.stride(0), x.stride(1), x.stride(2),
            HEAD_DIM=head_dim, H_BLOCK=h_block, INTERLEAVED=interleaved, NORM=NORM_CODES[norm],
            HAS_WEIGHT=w is not None, num_warps=4,
        )
