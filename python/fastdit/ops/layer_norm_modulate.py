"""layer_norm_modulate: y = LN(x) * (1 + scale) + shift, LayerNorm without affine, statistics in fp32.

shift/scale are [B, D] (per sample: FLUX, Wan) or [B, S, D] (per token), and may be strided views of
`temb.chunk(6, dim=1)`: every backend reads them in place (batch and seq strides passed through), no copy.
Backends: cuda (csrc/norm/modulated_layer_norm.cuh through fastdit_layer_norm_modulate: bf16/fp16,
D a multiple of 8 up to 8192), triton (triton_kernels/layer_norm_modulate.py), torch (`_ref`).
This module also holds the ctypes mirror of the kernel's params, shared with gated_residual_norm_modulate.
"""

from __future__ import annotations

import ctypes

import torch

from fastdit.log import log_once
from fastdit.ops import _library as lib

MAX_WIDTH = 8192
MAX_ROWS = 2**31  # the kernel indexes rows with 32-bit arithmetic (csrc/api/norm.cu checks)


def _broadcast(mod: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # [B, D] per sample -> [B, 1, D]; [B, S, D] per token stays.
    return mod.unsqueeze(1) if mod.dim() == 2 else mod


def layer_norm_modulate_ref(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """x: [B, S, D]; shift, scale: [B, D] (per sample) or [B, S, D] (per token). Returns x's dtype."""
    xf = x.float()
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).pow(2).mean(-1, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    y = y * (1 + _broadcast(scale, x).float()) + _broadcast(shift, x).float()
    return y.to(x.dtype)


# csrc/api/norm.cu: fastdit_modulation_t and fastdit_modulated_norm_params
class ModulationView(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("batch_stride", ctypes.c_int64), ("seq_stride", ctypes.c_int64)]


class ModulatedNormParams(ctypes.Structure):
    _fields_ = [
        ("x", ctypes.c_void_p),
        ("residual", ctypes.c_void_p),
        ("gate", ModulationView),
        ("shift", ModulationView),
        ("scale", ModulationView),
        ("r_out", ctypes.c_void_p),
        ("y_out", ctypes.c_void_p),
        ("batch", ctypes.c_int64),
        ("seq", ctypes.c_int64),
        ("dim", ctypes.c_int64),
        ("eps", ctypes.c_float),
    ]


_EXPORT_ARGTYPES = (ctypes.POINTER(ModulatedNormParams), ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _view(mod: torch.Tensor | None) -> ModulationView:
    if mod is None:
        return ModulationView(None, 0, 0)
    seq_stride = 0 if mod.dim() == 2 else mod.stride(1)
    return ModulationView(mod.data_ptr(), mod.stride(0), seq_stride)


def _mod_for_kernel(mod: torch.Tensor) -> torch.Tensor:
    # The kernel reads 16-byte vectors at b * batch_stride + s * seq_stride: a view whose start or strides
    # break that is copied once (a temb.chunk(6) view of a [B, 6D] tensor with D % 8 == 0 never is).
    strides_ok = all(st % 8 == 0 for st in mod.stride()[:-1])
    if strides_ok and lib.aligned16(mod):
        return mod
    log_once(f"fused adaLN kernels: a shift/scale/gate view with strides {mod.stride()} (or a start off a 16-byte "
             "boundary) is copied once per call before the CUDA kernel; chunks of a [B, 6*D] temb with D % 8 == 0 are not")
    return mod.clone(memory_format=torch.contiguous_format)


def launch_modulated_norm(
    export_name: str,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    r_out: torch.Tensor | None,
    y_out: torch.Tensor,
    eps: float,
) -> None:
    """Calls fastdit_layer_norm_modulate / fastdit_gated_residual_norm_modulate (csrc/api/norm.cu)."""
    batch, seq, dim = x.shape
    # Locals keep any copy _mod_for_kernel makes alive until the launch is queued.
    gate = _mod_for_kernel(gate) if gate is not None else None
    shift, scale = _mod_for_kernel(shift), _mod_for_kernel(scale)
    params = ModulatedNormParams(
        x.data_ptr(), residual.data_ptr() if residual is not None else None,
        _view(gate), _view(shift), _view(scale),
        r_out.data_ptr() if r_out is not None else None, y_out.data_ptr(), batch, seq, dim, eps,
    )
    fn = lib.export(export_name, _EXPORT_ARGTYPES)
    status = fn(ctypes.byref(params), lib.DTYPE_CODES[x.dtype], x.device.index, lib.stream_of(x))
    lib.check(export_name.removeprefix("fastdit_"), status)


def _layer_norm_modulate_cuda_impl(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.contiguous()
    if not lib.aligned16(x):
        x = x.clone()
    y = torch.empty_like(x)
    launch_modulated_norm("fastdit_layer_norm_modulate", x, None, None, shift, scale, None, y, eps)
    return y


_layer_norm_modulate_cuda = torch.library.custom_op("fastdit::layer_norm_modulate_cuda", mutates_args=())(
    _layer_norm_modulate_cuda_impl
)


@_layer_norm_modulate_cuda.register_fake
def _(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _layer_norm_modulate_triton_impl(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    from fastdit.triton_kernels.layer_norm_modulate import modulated_layer_norm

    x = x.contiguous()
    y = torch.empty_like(x)
    modulated_layer_norm(x, None, None, shift, scale, None, y, eps)
    return y


_layer_norm_modulate_triton = torch.library.custom_op("fastdit::layer_norm_modulate_triton", mutates_args=())(
    _layer_norm_modulate_triton_impl
)


@_layer_norm_modulate_triton.register_fake
def _(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def check_modulation(op: str, x: torch.Tensor, **mods: torch.Tensor) -> None:
    """Raises ValueError naming `op` and the argument unless x is [B, S, D] and each mod is [B, D] or
    [B, S, D] with a contiguous last dim, on x's device and in x's dtype."""
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be [B, S, D]; got shape {tuple(x.shape)}")
    batch, seq, dim = x.shape
    for name, mod in mods.items():
        if tuple(mod.shape) not in ((batch, dim), (batch, seq, dim)):
            raise ValueError(
                f"{op}: {name} shape {tuple(mod.shape)} must be [B, D] = {(batch, dim)} or [B, S, D] = {(batch, seq, dim)}"
            )
        if mod.device != x.device:
            raise ValueError(f"{op}: {name} is on {mod.device}, x on {x.device}; they must share a device")
        if mod.dtype != x.dtype:
            raise ValueError(f"{op}: {name} dtype {mod.dtype} must equal x's dtype {x.dtype}")
        if mod.stride(-1) != 1 and dim > 1:
            raise ValueError(f"{op}: {name}'s last dim must be contiguous (stride 1); got strides {mod.stride()}")


def modulation_cuda_reason(x: torch.Tensor, *mods: torch.Tensor) -> str | None:
    """Why the CUDA adaLN kernel cannot take this call (strides of the mods are trace-time facts)."""
    reason = lib.cuda_common_reason(x, MAX_WIDTH)
    if reason is None and any(not lib.offset_aligned16(m) for m in mods):
        reason = "a shift/scale/gate view does not start on a 16-byte boundary"
    if reason is None and x.shape[0] * x.shape[1] >= MAX_ROWS:
        reason = f"B * S = {x.shape[0] * x.shape[1]} rows exceeds the kernel's 2^31 - 1"
    return reason


def supports_cuda(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> bool:
    return modulation_cuda_reason(x, shift, scale) is None


def supports_triton(x: torch.Tensor, shift: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> bool:
    return lib.triton_common_reason(x) is None


def layer_norm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6, backend: str = "auto"
) -> torch.Tensor:
    """y = LN(x) * (1 + scale) + shift. x: [B, S, D]; shift, scale: [B, D] or [B, S, D]. Returns x's dtype."""
    check_modulation("layer_norm_modulate", x, shift=shift, scale=scale)
    chosen = lib.resolve_backend(
        "layer_norm_modulate", backend, modulation_cuda_reason(x, shift, scale), lib.triton_common_reason(x)
    )
    if chosen == "cuda":
        return lib.eager_or_op(_layer_norm_modulate_cuda, _layer_norm_modulate_cuda_impl)(x, shift, scale, eps)
    if chosen == "triton":
        return lib.eager_or_op(_layer_norm_modulate_triton, _layer_norm_modulate_triton_impl)(x, shift, scale, eps)
    return layer_norm_modulate_ref(x, shift, scale, eps)
