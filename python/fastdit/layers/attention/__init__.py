"""Attention over [B, S, H, D] tensors, through one backend chosen once at load.

    out = attention(q, k, v, backend="sdpa")      # q: [B, Sq, H, D], k, v: [B, Sk, H, D] -> [B, Sq, H, D]

The backend is a resolved name, passed in by the model's owner (never a module global).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa") -> torch.Tensor:
    """Non-causal softmax(q k^T / sqrt(D)) v. q: [B, Sq, H, D]; k, v: [B, Sk, H, D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)
