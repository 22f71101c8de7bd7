"""Attention over [B, S, H, D] tensors, through one backend chosen once at load.

    op = make_attention_op("auto", device, dtype, head_dim)   # resolves and logs the choice once
    out = op(q, k, v)                                         # q: [B, Sq, H, D], k, v: [B, Sk, H, D]
    out, lse = attention_with_lse(q, k, v, backend)           # lse: [B, H, Sq] fp32 (ring attention)
    out = attention(q, k, v, backend="sdpa")                  # one call, no resolution

Backends (backends.py): fastdit, fa4, triton, aiter, sdpa, sdpa-cudnn; `auto` follows the measured
table in selector.py. The backend is an argument passed in by the model's owner, never a module global.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastdit import envs
from fastdit.layers.attention.backends import BACKENDS, attend, attend_with_lse
from fastdit.layers.attention.selector import AUTO_TABLE, choose, device_info
from fastdit.log import log_once

__all__ = ["AUTO_TABLE", "BACKENDS", "AttentionOp", "attention", "attention_with_lse", "make_attention_op"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Non-causal softmax(q k^T / sqrt(D)) v. q: [B, Sq, H, D]; k, v: [B, Sk, H, D] -> [B, Sq, H, D]."""
    return attend(backend, q, k, v)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       backend: str = "sdpa") -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Sq, H, D], lse [B, H, Sq] fp32, natural log) for a resolved backend name."""
    return attend_with_lse(backend, q, k, v)


@dataclass(frozen=True)
class AttentionOp:
    """A callable bound to resolved backends: op(q, k, v, *, joint_txt_len=0) -> out.

    Calls with fewer than `min_keys` keys (k.shape[1]) use `short_backend` when set (the auto table's
    length rule). joint_txt_len (leading text tokens of a FLUX joint sequence) matters only to
    sequence-parallel ops; single-GPU attention ignores it.
    """

    backend: str = "sdpa"
    short_backend: str | None = None
    min_keys: int = 0

    def backend_for(self, num_keys: int) -> str:
        return self.short_backend if self.short_backend is not None and num_keys < self.min_keys else self.backend

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, joint_txt_len: int = 0) -> torch.Tensor:
        return attend(self.backend_for(k.shape[1]), q, k, v)

    def with_lse(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return attend_with_lse(self.backend_for(k.shape[1]), q, k, v)


def make_attention_op(backend: str = "auto", device=None, dtype: torch.dtype | None = None,
                      head_dim: int | None = None) -> AttentionOp:
    """Resolve `backend` once for (device, dtype, head_dim) and log the choice once.

    backend "auto" defers to FASTDIT_ATTENTION_BACKEND when that is set (the argument, when not "auto", wins).
    A forced backend that cannot run raises ValueError naming why and which backend would.
    """
    if backend == "auto":
        backend = envs.attention_backend()
    info = device_info(device, dtype, head_dim)
    choice = choose(backend, info)
    log_once(f"attention backend: {choice.backend} [{choice.reason}] for {info.kind} "
             f"sm{info.capability[0]}{info.capability[1]} {str(info.dtype).removeprefix('torch.')} "
             f"head_dim={info.head_dim}")
    return AttentionOp(choice.backend, choice.short_backend, choice.min_keys)
