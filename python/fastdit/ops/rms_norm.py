"""rms_norm: y = x / sqrt(mean(x^2) + eps) * weight, over the last dim (rows of any width up to 8192).

Backends: cuda (csrc/norm/rms_norm.cuh through fastdit_rms_norm: bf16/fp16, width a multiple of 8 up
to 8192), triton (triton_kernels/rms_norm.py), torch (`rms_norm_ref`, the truth).
"""

from __future__ import annotations

import ctypes

import torch

from fastdit.ops import _library as lib

MAX_WIDTH = 8192
MAX_ROWS = 2**31  # the kernel indexes rows with 32-bit arithmetic (csrc/api/norm.cu checks)

# fastdit_rms_norm(x, x_row_stride, weight, out, rows, dim, eps, dtype, device, stream) in csrc/api/norm.cu
_RMS_NORM_ARGTYPES = (
    ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
    ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """Reference in fp32 math. x: [..., D]; weight: [D] or None. Returns x's dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    # [..., D] -> [rows, D]; a view (with its row stride) whenever the leading dims allow one.
    return x.reshape(-1, x.shape[-1])


def _rms_norm_cuda_impl(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    rows = lib.rows_for_kernel(_as_rows(x))
    weight = lib.fresh_if_misaligned(weight)
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    fn = lib.export("fastdit_rms_norm", _RMS_NORM_ARGTYPES)
    status = fn(lib.ptr(rows), lib.row_stride(rows), lib.ptr(weight), lib.ptr(out), rows.shape[0], rows.shape[1],
                eps, lib.DTYPE_CODES[x.dtype], x.device.index, lib.stream_of(x))
    lib.check("rms_norm", status)
    return out.view(x.shape)


_rms_norm_cuda = torch.library.custom_op("fastdit::rms_norm_cuda", mutates_args=())(_rms_norm_cuda_impl)


@_rms_norm_cuda.register_fake
def _(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _rms_norm_triton_impl(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    from fastdit.triton_kernels import rms_norm as triton_rms_norm

    rows = _as_rows(x)
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    return triton_rms_norm.rms_norm(rows, weight, out, eps).view(x.shape)


_rms_norm_triton = torch.library.custom_op("fastdit::rms_norm_triton", mutates_args=())(
    _rms_norm_triton_impl
)


@_rms_norm_triton.register_fake
def _(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _check(x: torch.Tensor, weight: torch.Tensor | None) -> None:
    if x.dim() < 1:
        raise ValueError("rms_norm: x must have at least 1 dim [..., D]; got a 0-dim tensor")
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        raise ValueError(f"rms_norm: x's last dim must be contiguous (stride 1); got strides {x.stride()}")
    if weight is None:
        return
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"rms_norm: weight shape {tuple(weight.shape)} must be [D] = [{x.shape[-1]}]")
    if weight.device != x.device:
        raise ValueError(f"rms_norm: weight is on {weight.device}, x on {x.device}; they must share a device")


def _cuda_reason(x: torch.Tensor, weight: torch.Tensor | None) -> str | None:
    reason = lib.cuda_common_reason(x, MAX_WIDTH)
    if reason is None and x.numel() // max(x.shape[-1], 1) >= MAX_ROWS:
        reason = f"{x.numel() // x.shape[-1]} rows exceeds the kernel's 2^31 - 1"
    if reason is None and weight is not None and (weight.dtype != x.dtype or not weight.is_contiguous()):
        reason = f"weight ({weight.dtype}) must be contiguous and of x's dtype {x.dtype}"
    return reason


def supports_cuda(x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    return _cuda_reason(x, weight) is None


def _triton_reason(x: torch.Tensor, weight: torch.Tensor | None) -> str | None:
    reason = lib.triton_common_reason(x)
    if reason is None and x.shape[-1] > 65536:
        reason = f"last dim {x.shape[-1]} exceeds 65536 (one row per program)"
    if reason is None and weight is not None and not weight.is_contiguous():
        reason = "weight must be contiguous"
    return reason


def supports_triton(x: torch.Tensor, weight: torch.Tensor | None = None) -> bool:
    return _triton_reason(x, weight) is None


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, backend: str = "auto") -> torch.Tensor:
    """y = x * rsqrt(mean(x^2, -1) + eps) * weight. x: [..., D]; weight: [D] | None. Returns x's dtype."""
    _check(x, weight)
    chosen = lib.resolve_backend("rms_norm", backend, _cuda_reason(x, weight), _triton_reason(x, weight))
    if chosen == "cuda":
        return lib.eager_or_op(_rms_norm_cuda, _rms_norm_cuda_impl)(x, weight, eps)
    if chosen == "triton":
        return lib.eager_or_op(_rms_norm_triton, _rms_norm_triton_impl)(x, weight, eps)
    return rms_norm_ref(x, weight, eps)
