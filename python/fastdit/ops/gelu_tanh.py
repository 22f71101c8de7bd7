"""gelu_tanh: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), fp32 math.

Backends: cuda (csrc/elementwise/gelu_tanh.cuh through fastdit_gelu_tanh: bf16/fp16, contiguous x),
triton (triton_kernels/gelu_tanh.py), torch (`gelu_tanh_ref`).
"""

from __future__ import annotations

import ctypes

import torch

from fastdit.ops import _library as lib

# fastdit_gelu_tanh(x, out, n, dtype, device, stream) in csrc/api/elementwise.cu
_EXPORT_ARGTYPES = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def gelu_tanh_ref(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x.float(), approximate="tanh").to(x.dtype)


def _gelu_tanh_cuda_impl(x: torch.Tensor) -> torch.Tensor:
    x = lib.fresh_if_misaligned(x.contiguous())
    out = torch.empty_like(x)
    fn = lib.export("fastdit_gelu_tanh", _EXPORT_ARGTYPES)
    status = fn(lib.ptr(x), lib.ptr(out), x.numel(), lib.DTYPE_CODES[x.dtype], x.device.index, lib.stream_of(x))
    lib.check("gelu_tanh", status)
    return out


_gelu_tanh_cuda = torch.library.custom_op("fastdit::gelu_tanh_cuda", mutates_args=())(_gelu_tanh_cuda_impl)


@_gelu_tanh_cuda.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _gelu_tanh_triton_impl(x: torch.Tensor) -> torch.Tensor:
    from fastdit.triton_kernels.gelu_tanh import gelu_tanh as triton_gelu_tanh

    x = x.contiguous()
    return triton_gelu_tanh(x, torch.empty_like(x))


_gelu_tanh_triton = torch.library.custom_op("fastdit::gelu_tanh_triton", mutates_args=())(
    _gelu_tanh_triton_impl
)


@_gelu_tanh_triton.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _cuda_reason(x: torch.Tensor) -> str | None:
    if x.device.type != "cuda":
        return f"x is on {x.device}, not a CUDA device"
    if x.dtype not in lib.HALF_DTYPES:
        return f"x dtype {x.dtype} is not bfloat16 or float16"
    if not x.is_contiguous() or not lib.offset_aligned16(x):
        return "x is not contiguous from a 16-byte boundary"
    if not lib.cuda_ready(x.device.index):
        return "the kernel library is not loaded or has no build for this GPU"
    return None


def supports_cuda(x: torch.Tensor) -> bool:
    return _cuda_reason(x) is None


def supports_triton(x: torch.Tensor) -> bool:
    return lib.triton_common_reason(x) is None


def gelu_tanh(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Elementwise tanh-approximated GELU of x (any shape), fp32 math, x's dtype."""
    chosen = lib.resolve_backend("gelu_tanh", backend, _cuda_reason(x), lib.triton_common_reason(x))
    if chosen == "cuda":
        return lib.eager_or_op(_gelu_tanh_cuda, _gelu_tanh_cuda_impl)(x)
    if chosen == "triton":
        return lib.eager_or_op(_gelu_tanh_triton, _gelu_tanh_triton_impl)(x)
    return gelu_tanh_ref(x)
