"""Ring attention over R ranks: K/V image blocks travel round the ring, partial results merge by log-sum-exp.

For one query block and key blocks j with partial results (o_j [B, Sq, H, D], lse_j [B, H, Sq]):
    lse = log(sum_j exp(lse_j)),   o = sum_j exp(lse_j - lse) * o_j
which is exactly softmax attention over the union of the blocks. The first block holds this rank's own
keys plus the T replicated text keys (counted once, on every rank, for every query); only the image K/V
(one stacked contiguous buffer [2, B, S, H, D]) travels, and the next transfer is posted before the
current block is computed, so communication hides behind attention.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

AttnWithLse = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def attention_with_lse_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, max_score_elems: int = 1 << 28
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(D)) v and its lse in fp32 math. q [B, Sq, H, D], k/v [B, Sk, H, D]
    -> (out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] fp32). The portable fallback: it materialises the
    fp32 scores, in query chunks of at most `max_score_elems` scores (1 GiB) so memory stays bounded."""
    B, Sq, H, D = q.shape
    rows = max(1, max_score_elems // max(1, B * H * k.shape[1]))
    kf, vf = k.float(), v.float()
    outs, lses = [], []
    for start in range(0, Sq, rows):
        scores = torch.einsum("bqhd,bkhd->bhqk", q[:, start : start + rows].float(), kf) * D**-0.5
        lse = torch.logsumexp(scores, dim=-1)  # [B, H, rows]
        probs = torch.exp(scores - lse.unsqueeze(-1))
        outs.append(torch.einsum("bhqk,bkhd->bqhd", probs, vf).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=1), torch.cat(lses, dim=2)


def merge_attention_(out: torch.Tensor, lse: torch.Tensor, blk_out: torch.Tensor, blk_lse: torch.Tensor) -> None:
    """Folds one block into the running fp32 result, in place. out [B, Sq, H, D] fp32, lse [B, H, Sq] fp32."""
    new_lse = torch.logaddexp(lse, blk_lse)
    w_old = torch.exp(lse - new_lse).transpose(1, 2).unsqueeze(-1)  # [B, Sq, H, 1]
    w_blk = torch.exp(blk_lse - new_lse).transpose(1, 2).unsqueeze(-1)
    out.mul_(w_old).add_(blk_out.float() * w_blk)
    lse.copy_(new_lse)


def _start_shift(buf: torch.Tensor, next_rank: int, prev_rank: int, group: dist.ProcessGroup):
    recv = torch.empty_like(buf)
    ops = [dist.P2POp(dist.isend, buf, next_rank, group), dist.P2POp(dist.irecv, recv, prev_rank, group)]
    return recv, dist.batch_isend_irecv(ops)


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    txt_len: int,
    group: dist.ProcessGroup,
    ring_ranks: tuple[int, ...],
    ring_rank: int,
    attn_with_lse: AttnWithLse,
) -> torch.Tensor:
    """q [B, Lq, H, D] (local queries); k, v [B, T + S, H, D] (T replicated text keys, S local image keys).
    Returns softmax attention of q over the text keys and the image keys of all R ranks: [B, Lq, H, D]."""
    R = len(ring_ranks)
    next_rank, prev_rank = ring_ranks[(ring_rank + 1) % R], ring_ranks[(ring_rank - 1) % R]
    block = torch.stack([k[:, txt_len:], v[:, txt_len:]])  # [2, B, S, H, D]: the one buffer that travels
    recv, reqs = _start_shift(block, next_rank, prev_rank, group)
    blk_out, blk_lse = attn_with_lse(q, k, v)  # own block (with the text keys), overlapped with the first shift
    out, lse = blk_out.float(), blk_lse.float().clone()
    for step in range(1, R):
        for req in reqs:
            req.wait()
        block = recv
        if step < R - 1:
            recv, reqs = _start_shift(block, next_rank, prev_rank, group)
        blk_out, blk_lse = attn_with_lse(q, block[0], block[1])
        merge_attention_(out, lse, blk_out, blk_lse)
    return out.to(q.dtype)
