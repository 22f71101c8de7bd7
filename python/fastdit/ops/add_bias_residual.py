"""add_bias_residual: out = y + residual + bias, bias over the last dim (fp32 math, one rounding).

    out[..., c] = y[..., c] + residual[..., c] + bias[c]

A residual add that also adds the bias of the conv that produced y (Wan's VAE: conv2 runs without its bias,
which torch would add to a channels-last conv's output in a pass of its own). out may be y (in place).
Backends: cuda (csrc/elementwise/bias_residual.cuh through fastdit_add_bias_residual: bf16/fp16, last dim a
multiple of 8), triton (triton_kernels/bias_residual.py), torch (`add_bias_residual_ref`, the truth).
"""

from __future__ import annotations

import ctypes

import torch

from fastdit.ops import _library as lib

# fastdit_add_bias_residual(y, residual, bias, out, n, dim, dtype, device, stream) in csrc/api/elementwise.cu
_ARGTYPES = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
             ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def add_bias_residual_ref(y: torch.Tensor, residual: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Reference in fp32 math; returns y's dtype."""
    return (y.float() + residual.float() + bias.float()).to(y.dtype)


def _cuda_impl(y: torch.Tensor, residual: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
    fn = lib.export("fastdit_add_bias_residual", _ARGTYPES)
    residual, bias = lib.fresh_if_misaligned(residual), lib.fresh_if_misaligned(bias)
    status = fn(lib.ptr(y), lib.ptr(residual), lib.ptr(bias), lib.ptr(out), y.numel(), bias.numel(),
                lib.DTYPE_CODES[y.dtype], y.device.index, lib.stream_of(y))
    lib.check("add_bias_residual", status)


def _triton_impl(y: torch.Tensor, residual: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> None:
    from fastdit.triton_kernels import bias_residual

    bias_residual.add_bias_residual(y, residual, bias, out)


_cuda_op = torch.library.custom_op("fastdit::add_bias_residual_cuda", mutates_args=("out",))(_cuda_impl)
_triton_op = torch.library.custom_op("fastdit::add_bias_residual_triton", mutates_args=("out",))(_triton_impl)


def _check(y: torch.Tensor, residual: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None) -> None:
    if y.dim() < 1 or residual.shape != y.shape or bias.shape != y.shape[-1:]:
        raise ValueError(f"add_bias_residual: y {tuple(y.shape)}, residual {tuple(residual.shape)} and bias "
                         f"{tuple(bias.shape)} must be [..., C], [..., C] and [C]")
    tensors = (y, residual, bias) + ((out,) if out is not None else ())
    if any(t.dtype != y.dtype or t.device != y.device for t in tensors):
        raise ValueError("add_bias_residual: y, residual, bias and out must share y's dtype and device, got "
                         + ", ".join(f"{t.dtype} on {t.device}" for t in tensors))
    if out is not None and out.shape != y.shape:
        raise ValueError(f"add_bias_residual: out {tuple(out.shape)} must have y's shape {tuple(y.shape)}")
    if not all(t.is_contiguous() for t in tensors):
        raise ValueError("add_bias_residual: y, residual, bias and out must be contiguous (e.g. the [B, T, H, W, C] "
                         "view of a channels-last video)")


def _cuda_reason(y: torch.Tensor, residual: torch.Tensor, bias: torch.Tensor, out: torch.Tensor) -> str | None:
    reason = lib.cuda_common_reason(y)
    if reason is None and not (lib.offset_aligned16(residual) and lib.offset_aligned16(out)):
        reason = "residual and out must be 16-byte aligned"
    return reason


def add_bias_residual(y: torch.Tensor, residual: torch.Tensor, bias: torch.Tensor, out: torch.Tensor | None = None,
                      backend: str = "auto") -> torch.Tensor:
    """y + residual + bias (module docstring). y, residual: [..., C] contiguous; bias: [C]; out: None (a new
    tensor) or a contiguous tensor of y's shape, e.g. y itself. Returns out."""
    _check(y, residual, bias, out)
    if out is None:
        out = torch.empty_like(y)
    chosen = lib.resolve_backend("add_bias_residual", backend, _cuda_reason(y, residual, bias, out),
                                 lib.triton_common_reason(y))
    if chosen == "cuda":
        lib.eager_or_op(_cuda_op, _cuda_impl)(y, residual, bias, out)
    elif chosen == "triton":
        lib.eager_or_op(_triton_op, _triton_impl)(y, residual, bias, out)
    else:
        out.copy_(add_bias_residual_ref(y, residual, bias))
    return out
