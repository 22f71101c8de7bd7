"""timestep_embedding: the sinusoidal embedding of diffusion timesteps (as diffusers' get_timestep_embedding).

emb[i, j] = f(t_i * exp(-ln(max_period) * j / (half - shift))), f = sin for the first half and cos for
the second (swapped when flip_sin_to_cos), j < half = dim // 2.
Backends: cuda (csrc/elementwise/timestep_embedding.cuh through fastdit_timestep_embedding), triton
(triton_kernels/timestep_embedding.py), torch (`_ref`). t is read as fp32; the output is fp32.
"""

from __future__ import annotations

import ctypes
import math

import torch

from fastdit.ops import _library as lib

# fastdit_timestep_embedding(t, out, n, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period,
#                            device, stream) in csrc/api/elementwise.cu
_EXPORT_ARGTYPES = (
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_float,
    ctypes.c_float, ctypes.c_int, ctypes.c_void_p,
)


def timestep_embedding_ref(
    t: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """t: [N] (any float dtype). Returns [N, dim] fp32."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = scale * t[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def _timestep_embedding_cuda_impl(
    t: torch.Tensor, dim: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float, max_period: float
) -> torch.Tensor:
    t = t.float().contiguous()
    out = torch.empty((t.shape[0], dim), dtype=torch.float32, device=t.device)
    fn = lib.export("fastdit_timestep_embedding", _EXPORT_ARGTYPES)
    status = fn(lib.ptr(t), lib.ptr(out), t.shape[0], dim, int(flip_sin_to_cos), downscale_freq_shift, scale,
                max_period, t.device.index, lib.stream_of(t))
    lib.check("timestep_embedding", status)
    return out


_timestep_embedding_cuda = torch.library.custom_op("fastdit::timestep_embedding_cuda", mutates_args=())(
    _timestep_embedding_cuda_impl
)


@_timestep_embedding_cuda.register_fake
def _(t, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period):
    return torch.empty((t.shape[0], dim), dtype=torch.float32, device=t.device)


def _timestep_embedding_triton_impl(
    t: torch.Tensor, dim: int, flip_sin_to_cos: bool, downscale_freq_shift: float, scale: float, max_period: float
) -> torch.Tensor:
    from fastdit.triton_kernels.timestep_embedding import timestep_embedding as triton_timestep_embedding

    t = t.float().contiguous()
    out = torch.empty((t.shape[0], dim), dtype=torch.float32, device=t.device)
    return triton_timestep_embedding(t, out, flip_sin_to_cos, downscale_freq_shift, scale, max_period)


_timestep_embedding_triton = torch.library.custom_op("fastdit::timestep_embedding_triton", mutates_args=())(
    _timestep_embedding_triton_impl
)


@_timestep_embedding_triton.register_fake
def _(t, dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period):
    return torch.empty((t.shape[0], dim), dtype=torch.float32, device=t.device)


def _check(t: torch.Tensor, dim: int, max_period: float) -> None:
    if t.dim() != 1:
        raise ValueError(f"timestep_embedding: t must be 1-D [N]; got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"timestep_embedding: t dtype {t.dtype} must be a float dtype")
    if dim < 1:
        raise ValueError(f"timestep_embedding: dim={dim} must be >= 1")
    if max_period <= 0:
        raise ValueError(f"timestep_embedding: max_period={max_period} must be > 0")


def _cuda_reason(t: torch.Tensor) -> str | None:
    if t.device.type != "cuda":
        return f"t is on {t.device}, not a CUDA device"
    if not lib.cuda_ready(t.device.index):
        return "the kernel library is not loaded or has no build for this GPU"
    return None


def supports_cuda(t: torch.Tensor) -> bool:
    return _cuda_reason(t) is None


def supports_triton(t: torch.Tensor) -> bool:
    return lib.triton_ready(t.device)


def timestep_embedding(
    t: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
    backend: str = "auto",
) -> torch.Tensor:
    """The sinusoidal embedding [N, dim] fp32 of timesteps t [N] (formula: module docstring)."""
    _check(t, dim, max_period)
    triton_reason = None if supports_triton(t) else f"triton not importable or t on {t.device}"
    chosen = lib.resolve_backend("timestep_embedding", backend, _cuda_reason(t), triton_reason)
    args = (t, dim, bool(flip_sin_to_cos), float(downscale_freq_shift), float(scale), float(max_period))
    if chosen == "cuda":
        return lib.eager_or_op(_timestep_embedding_cuda, _timestep_embedding_cuda_impl)(*args)
    if chosen == "triton":
        return lib.eager_or_op(_timestep_embedding_triton, _timestep_embedding_triton_impl)(*args)
    return timestep_embedding_ref(*args)
