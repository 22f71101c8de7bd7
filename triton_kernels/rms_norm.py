"""Triton rms_norm: y = x * rsqrt(mean(x^2) + eps) * weight over the last dim, fp32 math; rms_norm_silu:
y = silu(rms_norm(x + pre_bias) * weight), out rows strided.

One program per row; the whole row sits in registers (BLOCK = next power of two >= dim).
Called by fastdit/ops/rms_norm.py, which checks the arguments and allocates `out`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, x_row_stride, dim, eps, HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, axis=0) / dim + eps)
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * dim + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def num_warps_for(block: int) -> int:
    """Warps for a row of `block` elements: about 256 elements per warp, between 1 and 16."""
    return max(1, min(16, block // 256))


def rms_norm(x2d: torch.Tensor, weight: torch.Tensor | None, out: torch.Tensor, eps: float) -> torch.Tensor:
    """x2d: [rows, dim] (rows may be strided, last dim contiguous); weight: [dim] | None; out: [rows, dim]."""
    rows, dim = x2d.shape
    if rows == 0:
        return out
    block = triton.next_power_of_2(dim)
    _rms_norm_kernel[(rows,)](
        x2d, weight if weight is not None else x2d, out, x2d.stride(0), dim, eps,
        HAS_WEIGHT=weight is not None, BLOCK=block, num_warps=num_warps_for(block),
    )
    return out


@triton.jit
def _rms_norm_silu_kernel(x_ptr, b_ptr, w_ptr, out_ptr, x_row_stride, out_row_stride, dim, eps,
                          HAS_BIAS: tl.constexpr, HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x = x + tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, axis=0) / dim + eps)
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = y / (1.0 + tl.exp(-y))
    tl.store(out_ptr + row * out_row_stride + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm_silu(x2d: torch.Tensor, pre_bias: torch.Tensor | None, weight: torch.Tensor | None, out2d: torch.Tensor,
                  eps: float) -> torch.Tensor:
    """out2d = silu(rms_norm(x2d + pre_bias) * weight): x2d, out2d [rows, dim] (rows may be strided, last dim
    contiguous); pre_bias, weight: [dim] | None."""
    rows, dim = x2d.shape
    if rows == 0:
        return out2d
    block = triton.next_power_of_2(dim)
    _rms_norm_silu_kernel[(rows,)](
        x2d, pre_bias if pre_bias is not None else x2d, weight if weight is not None else x2d, out2d,
        x2d.stride(0), out2d.stride(0), dim, eps,
        HAS_BIAS=pre_bias is not None, HAS_WEIGHT=weight is not None, BLOCK=block, num_warps=num_warps_for(block),
    )
    return out2d
