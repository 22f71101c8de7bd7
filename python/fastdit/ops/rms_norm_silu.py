"""rms_norm_silu: y = silu(rms_norm(x + pre_bias) * weight) over the last dim, written into `out` if given.

    v = x + pre_bias                        (fp32; pre_bias [D] or None)
    y = silu(v * rsqrt(mean(v^2) + eps) * weight)

Wan's VAE runs norm -> SiLU -> causal conv in every residual block: this is the first two as one pass,
written straight into the conv's time-padded input buffer (`out`, a view whose rows are uniformly strided),
with the previous conv's bias folded in as pre_bias (that conv then runs without one, and its output is
not rewritten to add it). Backends: cuda (csrc/norm/rms_norm.cuh's SiLU kernels through
fastdit_rms_norm_silu: bf16/fp16, width a multiple of 8 up to 8192), triton (triton_kernels/rms_norm.py),
torch (`rms_norm_silu_ref`, the truth).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from fastdit.ops import _library as lib
from fastdit.ops.rms_norm import MAX_ROWS, MAX_WIDTH

# fastdit_rms_norm_silu(x, x_row_stride, pre_bias, weight, out, out_row_stride, rows, dim, eps, dtype, device,
# stream) in csrc/api/norm.cu
_ARGTYPES = (
    ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
    ctypes.c_int64, ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
)


def rms_norm_silu_ref(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6,
                      pre_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Reference in fp32 math. x: [..., D]; weight, pre_bias: [D] or None. Returns x's dtype."""
    v = x.float() if pre_bias is None else x.float() + pre_bias.float()
    y = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return F.silu(y).to(x.dtype)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., D] -> a [rows, D] view (raises when the leading dims do not flatten to one uniform stride)."""
    return t.view(-1, t.shape[-1])


def _cuda_impl(x: torch.Tensor, weight: torch.Tensor | None, pre_bias: torch.Tensor | None, out: torch.Tensor,
               eps: float) -> None:
    rows = lib.rows_for_kernel(x.reshape(-1, x.shape[-1]))
    out_rows = _rows(out)
    fn = lib.export("fastdit_rms_norm_silu", _ARGTYPES)
    status = fn(lib.ptr(rows), lib.row_stride(rows), lib.ptr(lib.fresh_if_misaligned(pre_bias)),
                lib.ptr(lib.fresh_if_misaligned(weight)), lib.ptr(out_rows), lib.row_stride(out_rows),
                rows.shape[0], rows.shape[1], eps, lib.DTYPE_CODES[x.dtype], x.device.index, lib.stream_of(x))
    lib.check("rms_norm_silu", status)


def _triton_impl(x: torch.Tensor, weight: torch.Tensor | None, pre_bias: torch.Tensor | None, out: torch.Tensor,
                 eps: float) -> None:
    from fastdit.triton_kernels import rms_norm as triton_rms_norm

    triton_rms_norm.rms_norm_silu(x.reshape(-1, x.shape[-1]), pre_bias, weight, _rows(out), eps)


def _torch_impl(x: torch.Tensor, weight: torch.Tensor | None, pre_bias: torch.Tensor | None, out: torch.Tensor,
                eps: float) -> None:
    out.copy_(rms_norm_silu_ref(x, weight, eps, pre_bias))


_cuda_op = torch.library.custom_op("fastdit::rms_norm_silu_cuda", mutates_args=("out",))(_cuda_impl)
_triton_op = torch.library.custom_op("fastdit::rms_norm_silu_triton", mutates_args=("out",))(_triton_impl)


def _check(x: torch.Tensor, weight: torch.Tensor | None, pre_bias: torch.Tensor | None,
           out: torch.Tensor | None) -> None:
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"rms_norm_silu: x must be [..., D] with D >= 1; got shape {tuple(x.shape)}")
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        raise ValueError(f"rms_norm_silu: x's last dim must be contiguous (stride 1); got strides {x.stride()}")
    for name, t in (("weight", weight), ("pre_bias", pre_bias)):
        if t is not None and (t.shape != (x.shape[-1],) or t.device != x.device):
            raise ValueError(f"rms_norm_silu: {name} {tuple(t.shape)} on {t.device} must be [D] = [{x.shape[-1]}] "
                             f"on x's device {x.device}")
    if out is None:
        return
    if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"rms_norm_silu: out {tuple(out.shape)} {out.dtype} on {out.device} must match x "
                         f"{tuple(x.shape)} {x.dtype} on {x.device}")
    try:
        _rows(out)
    except RuntimeError:
        raise ValueError(f"rms_norm_silu: out (strides {out.stride()}) must be rows of D contiguous elements "
                         "with one row stride") from None


def _cuda_reason(x: torch.Tensor, weight: torch.Tensor | None, pre_bias: torch.Tensor | None,
                 out: torch.Tensor) -> str | None:
    reason = lib.cuda_common_reason(x, MAX_WIDTH)
    if reason is None and x.numel() // max(x.shape[-1], 1) >= MAX_ROWS:
        reason = f"{x.numel() // x.shape[-1]} rows exceeds the kernel's 2^31 - 1"
    for name, t in (("weight", weight), ("pre_bias", pre_bias)):
        if reason is None and t is not None and (t.dtype != x.dtype or not t.is_contiguous()):
            reason = f"{name} ({t.dtype}) must be contiguous and of x's dtype {x.dtype}"
    if reason is None:
        out_rows = _rows(out)
        stride = lib.row_stride(out_rows)
        if not lib.offset_aligned16(out_rows) or stride % 8 != 0 or stride < x.shape[-1]:
            reason = f"out rows (stride {stride}) must be 16-byte aligned with a row stride that is a multiple of 8"
    return reason


def _triton_reason(x: torch.Tensor, weight: torch.Tensor | None, pre_bias: torch.Tensor | None) -> str | None:
    reason = lib.triton_common_reason(x)
    if reason is None and x.shape[-1] > 65536:
        reason = f"last dim {x.shape[-1]} exceeds 65536 (one row per program)"
    if reason is None and any(t is not None and not t.is_contiguous() for t in (weight, pre_bias)):
        reason = "weight and pre_bias must be contiguous"
    return reason


def rms_norm_silu(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-6, pre_bias: torch.Tensor | None = None,
                  out: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """y = silu(rms_norm(x + pre_bias) * weight) (module docstring). x: [..., D]; weight, pre_bias: [D] | None;
    out: None (a new tensor) or a tensor of x's shape and dtype whose rows share one stride (e.g. a slice of a
    padded buffer), written and returned."""
    _check(x, weight, pre_bias, out)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    chosen = lib.resolve_backend("rms_norm_silu", backend, _cuda_reason(x, weight, pre_bias, out),
                                 _triton_reason(x, weight, pre_bias))
    if chosen == "cuda":
        lib.eager_or_op(_cuda_op, _cuda_impl)(x, weight, pre_bias, out, eps)
    elif chosen == "triton":
        lib.eager_or_op(_triton_op, _triton_impl)(x, weight, pre_bias, out, eps)
    else:
        _torch_impl(x, weight, pre_bias, out, eps)
    return out
