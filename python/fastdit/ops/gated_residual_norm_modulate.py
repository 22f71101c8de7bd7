"""gated_residual_norm_modulate: r = residual + gate * x; y = LN(r) * (1 + scale) + shift. Returns (r, y).

Fuses the end of one sub-block (gated residual add) into the modulated norm of the next: one read of
residual and x, one write of r and y. r is rounded to residual's dtype before the norm (as the
reference). gate/shift/scale: [B, D] or [B, S, D], strided temb.chunk(6) views read in place.
Backends: cuda (csrc/norm/modulated_layer_norm.cuh), triton (triton_kernels/layer_norm_modulate.py),
torch (`_ref`).
"""

from __future__ import annotations

import torch

from fastdit.ops import _library as lib
from fastdit.ops.layer_norm_modulate import (
    _broadcast,
    check_modulation,
    launch_modulated_norm,
    layer_norm_modulate_ref,
    modulation_cuda_reason,
)


def gated_residual_norm_modulate_ref(
    residual: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """residual, x: [B, S, D]; gate, shift, scale: [B, D] or [B, S, D]. r in residual's dtype."""
    r = (residual.float() + _broadcast(gate, x).float() * x.float()).to(residual.dtype)
    return r, layer_norm_modulate_ref(r, shift, scale, eps)


def _contiguous_aligned(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t if lib.aligned16(t) else t.clone()


def _gated_cuda_impl(
    residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    residual, x = _contiguous_aligned(residual), _contiguous_aligned(x)
    r, y = torch.empty_like(x), torch.empty_like(x)
    launch_modulated_norm("fastdit_gated_residual_norm_modulate", x, residual, gate, shift, scale, r, y, eps)
    return r, y


_gated_cuda = torch.library.custom_op("fastdit::gated_residual_norm_modulate_cuda", mutates_args=())(
    _gated_cuda_impl
)


@_gated_cuda.register_fake
def _(residual, x, gate, shift, scale, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _gated_triton_impl(
    residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    from fastdit.triton_kernels.layer_norm_modulate import modulated_layer_norm

    residual, x = residual.contiguous(), x.contiguous()
    r, y = torch.empty_like(x), torch.empty_like(x)
    modulated_layer_norm(x, residual, gate, shift, scale, r, y, eps)
    return r, y


_gated_triton = torch.library.custom_op("fastdit::gated_residual_norm_modulate_triton", mutates_args=())(
    _gated_triton_impl
)


@_gated_triton.register_fake
def _(residual, x, gate, shift, scale, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _check(residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
    op = "gated_residual_norm_modulate"
    check_modulation(op, x, gate=gate, shift=shift, scale=scale)
    if residual.shape != x.shape:
        raise ValueError(f"{op}: residual shape {tuple(residual.shape)} must equal x's {tuple(x.shape)}")
    if residual.dtype != x.dtype or residual.device != x.device:
        raise ValueError(
            f"{op}: residual ({residual.dtype}, {residual.device}) must share x's dtype and device ({x.dtype}, {x.device})"
        )


def supports_cuda(residual: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, shift: torch.Tensor,
                  scale: torch.Tensor) -> bool:
    return modulation_cuda_reason(x, gate, shift, scale) is None


def supports_triton(residual: torch.Tensor, x: torch.Tensor, *mods: torch.Tensor) -> bool:
    return lib.triton_common_reason(x) is None


def gated_residual_norm_modulate(
    residual: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    eps: float = 1e-6,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """r = residual + gate * x; y = LN(r) * (1 + scale) + shift. residual, x: [B, S, D]; gate, shift,
    scale: [B, D] or [B, S, D]. Returns (r, y) in x's dtype."""
    _check(residual, x, gate, shift, scale)
    chosen = lib.resolve_backend(
        "gated_residual_norm_modulate", backend, modulation_cuda_reason(x, gate, shift, scale),
        lib.triton_common_reason(x),
    )
    if chosen == "cuda":
        return lib.eager_or_op(_gated_cuda, _gated_cuda_impl)(residual, x, gate, shift, scale, eps)
    if chosen == "triton":
        return lib.eager_or_op(_gated_triton, _gated_triton_impl)(residual, x, gate, shift, scale, eps)
    return gated_residual_norm_modulate_ref(residual, x, gate, shift, scale, eps)
