"""Triton adaLN kernels: layer_norm_modulate and gated_residual_norm_modulate (one kernel).

  layer_norm_modulate:           y = LN(x) * (1 + scale) + shift
  gated_residual_norm_modulate:  r = round(residual + gate * x);  y = LN(r) * (1 + scale) + shift

LN without affine, fp32 statistics. x, residual, r, y: contiguous [B, S, D]. shift/scale/gate: [B, D]
or [B, S, D] views with any batch/seq strides (seq stride 0 for per-sample), last dim contiguous, so
the strided views of temb.chunk(6, dim=1) are read in place. One program per token row.
Called by fastdit/ops/layer_norm_modulate.py and gated_residual_norm_modulate.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastdit.triton_kernels.rms_norm import num_warps_for


@triton.jit
def _modulated_layer_norm_kernel(
    x_ptr, res_ptr, gate_ptr, shift_ptr, scale_ptr, r_ptr, y_ptr,
    seq, dim, eps,
    gate_sb, gate_ss, shift_sb, shift_ss, scale_sb, scale_ss,
    HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // seq
    s = row % seq
    cols = tl.arange(0, BLOCK)
    mask = cols < dim
    v = tl.load(x_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + row * dim + cols, mask=mask, other=0.0).to(tl.float32)
        gate = tl.load(gate_ptr + b * gate_sb + s * gate_ss + cols, mask=mask, other=0.0).to(tl.float32)
        r = (res + gate * v).to(r_ptr.dtype.element_ty)  # rounded before the norm, as the reference
        tl.store(r_ptr + row * dim + cols, r, mask=mask)
        v = r.to(tl.float32)
    mean = tl.sum(v, axis=0) / dim
    centred = tl.where(mask, v - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(centred * centred, axis=0) / dim + eps)
    shift = tl.load(shift_ptr + b * shift_sb + s * shift_ss + cols, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + b * scale_sb + s * scale_ss + cols, mask=mask, other=0.0).to(tl.float32)
    y = centred * rstd * (1.0 + scale) + shift
    tl.store(y_ptr + row * dim + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


def _strides(mod: torch.Tensor) -> tuple[int, int]:
    # [B, D] -> (batch stride, 0); [B, S, D] -> (batch stride, seq stride)
    return (mod.stride(0), 0) if mod.dim() == 2 else (mod.stride(0), mod.stride(1))


def modulated_layer_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    r_out: torch.Tensor | None,
    y_out: torch.Tensor,
    eps: float,
) -> None:
    """Writes y_out (and r_out when residual is given). Shapes as in the module docstring."""
    batch, seq, dim = x.shape
    if batch * seq == 0:
        return
    has_residual = residual is not None
    block = triton.next_power_of_2(dim)
    gate_strides = _strides(gate) if has_residual else (0, 0)
    _modulated_layer_norm_kernel[(batch * seq,)](
        x, residual if has_residual else x, gate if has_residual else x, shift, scale,
        r_out if has_residual else y_out, y_out,
        seq, dim, eps, *gate_strides, *_strides(shift), *_strides(scale),
        HAS_RESIDUAL=has_residual, BLOCK=block, num_warps=num_warps_for(block),
    )
