"""Shared by the modulated-norm tests (test_layer_norm_modulate.py, test_gated_residual_norm_modulate.py):
the float64 truth of the adaLN-modulated layer norm, the temb.chunk(6) views DiT blocks pass, and the GPU
grids of the row kernels (csrc/norm), so both ops are checked on the same shapes."""

from __future__ import annotations

import torch

# Token counts: one token, 77 (CLIP text), 4608 (FLUX at 1024x1024: 4096 image + 512 text tokens),
# 32760 (Wan2.1 at 480x832, 81 frames: 21 x 30 x 52 latent patches).
GPU_TOKENS = [1, 77, 4608, 32760]
# Hidden sizes: small (64), Wan-1.3B (1536), FLUX (3072), Wan-14B (5120).
GPU_DIMS = [64, 1536, 3072, 5120]
# One-thread rows (8), 32-lane rows with idle lanes (200), 128-thread rows with idle threads (1000),
# 1024-thread rows (8192): every row layout the kernels choose; tests use 19 tokens to leave a partial block.
ROW_LAYOUT_DIMS = [8, 200, 1000, 8192]


def expand_mod(mod: torch.Tensor) -> torch.Tensor:
    """A modulation in float64, broadcastable over tokens: [B, D] -> [B, 1, D]; [B, S, D] as is."""
    return mod.double().unsqueeze(1) if mod.dim() == 2 else mod.double()


def layer_norm_modulate_truth(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                              eps: float = 1e-6) -> torch.Tensor:
    """float64 (x - mean) / sqrt(var + eps) * (1 + scale) + shift over the last dim of x [B, S, D]."""
    xd = x.double()
    mean = xd.mean(-1, keepdim=True)
    var = ((xd - mean) ** 2).mean(-1, keepdim=True)
    return (xd - mean) / torch.sqrt(var + eps) * (1 + expand_mod(scale)) + expand_mod(shift)


def chunked_mods(batch: int, dim: int, dtype, device) -> list[torch.Tensor]:
    """The six [B, D] strided views of temb.chunk(6, dim=1), as DiT blocks receive them."""
    return list((torch.randn(batch, 6 * dim, dtype=dtype, device=device) * 0.5).chunk(6, dim=1))
