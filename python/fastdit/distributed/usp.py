"""USPAttention: the attention op of a sequence-parallel rank, Ulysses (U) x ring (R), a drop-in `attn_op`.

    op(q, k, v, *, joint_txt_len=T) -> out
    q, k, v: [B, T + S, H, D] with T replicated text tokens first (FLUX joint attention; T = 0 for Wan
    self-attention) and S = this rank's chunk of the U*R*S image tokens; out [B, T + S, H, D].

Steps: Ulysses all-to-all to [B, T + U*S, H/U, D] (ulysses.py), attention over the R ring ranks' image
keys merged by log-sum-exp (ring.py; the plain op when R = 1), all-to-all back. Exact: every query sees
every text key once and every image key once, so the result equals single-process attention up to
floating-point summation order.

Cross-attention (Wan: image queries, text keys/values replicated on every rank) needs no communication:
when k's length differs from q's the keys are taken as replicated and the plain op runs locally. If a
cross-attention's text length happens to equal the local query length it takes the sharded path instead,
which is still exact: each replicated key then appears U*R times, and softmax over a multiset in which
every key has the same multiplicity equals softmax over the set.
"""

from __future__ import annotations

import torch

from fastdit.distributed import ring, ulysses
from fastdit.distributed.groups import ParallelGroups
from fastdit.layers.attention import AttentionOp


class USPAttention:
    """Callable `op(q, k, v, *, joint_txt_len=0)` for one rank; `attn_op` is the single-GPU attention op,
    `attn_with_lse(q, k, v) -> (out, lse [B, H, Sq] fp32)` the block kernel of the ring (R > 1): by
    default the AttentionOp's own `with_lse` (same backend), for a plain callable the torch fallback."""

    def __init__(self, groups: ParallelGroups, attn_op, attn_with_lse=None, pack_backend: str = "auto"):
        self.groups = groups
        self.attn_op = attn_op
        if attn_with_lse is None:
            attn_with_lse = attn_op.with_lse if isinstance(attn_op, AttentionOp) else ring.attention_with_lse_torch
        self.attn_with_lse = attn_with_lse
        self.pack_backend = pack_backend
        self.ulysses_degree = groups.config.ulysses_degree
        self.ring_degree = groups.config.ring_degree

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, joint_txt_len: int = 0) -> torch.Tensor:
        U, R, T = self.ulysses_degree, self.ring_degree, joint_txt_len
        if (U == 1 and R == 1) or k.shape[1] != q.shape[1]:
            return self.attn_op(q, k, v, joint_txt_len=T)
        if q.shape[2] % U:
            raise ValueError(f"USPAttention: {q.shape[2]} heads must divide by ulysses_degree={U}")
        g = self.groups
        if U > 1:
            q, k, v = ulysses.scatter_heads((q, k, v), T, g.ulysses_group, g.ulysses_rank, self.pack_backend)
        if R > 1:
            out = ring.ring_attention(q, k, v, T, g.ring_group, g.ring_ranks, g.ring_rank, self.attn_with_lse)
        else:
            out = self.attn_op(q, k, v, joint_txt_len=T)
        if U > 1:
            out = ulysses.gather_heads(out, T, g.ulysses_group, self.pack_backend)
        return out
