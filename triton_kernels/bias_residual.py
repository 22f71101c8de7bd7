"""Triton add_bias_residual: out = y + residual + bias[c] over rows of dim channels, fp32 math.

Called by fastdit/ops/add_bias_residual.py, which checks the arguments (flat, contiguous, n a multiple of dim).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_bias_residual_kernel(y_ptr, r_ptr, b_ptr, out_ptr, n, dim, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs % dim, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, (y + r + b).to(out_ptr.dtype.element_ty), mask=mask)


def add_bias_residual(y: torch.Tensor, residual: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """y, residual, out: contiguous, n elements (n a multiple of bias.numel()); bias: [dim]."""
    n = y.numel()
    if n == 0:
        return out
    block = 4096
    _add_bias_residual_kernel[(triton.cdiv(n, block),)](y, residual, bias, out, n, bias.numel(), BLOCK=block,
                                                         num_warps=8)
    return out
