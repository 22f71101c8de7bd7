"""USPAttention on 2 and 4 gloo processes equals single-process attention (fp32, rel err <= 1e-5)
at every legal (ulysses, ring) layout, with and without replicated joint text tokens, and for
cross-attention with replicated keys. One spawn per world size: layouts share the world."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from fastdit.distributed import ParallelConfig, USPAttention, make_groups
from fastdit.layers.attention import AttentionOp, attention

B, H, D, S_IMG, T_TXT = 2, 4, 12, 24, 5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _cases_on_rank(groups, world: int) -> list[tuple]:
    """Every (U, R) layout of `world` ranks; returns [(U, R, case, max rel err over ranks)]."""
    rank = groups.rank
    found = []
    for U, R in ParallelConfig.legal_sp_degrees(world):
        g = make_groups(ParallelConfig(world, U, R), rank, "cpu")
        op = USPAttention(g, AttentionOp("sdpa"))  # the ring merges the op's own with_lse blocks
        chunk = S_IMG // world
        gen = torch.Generator().manual_seed(100 * U + R)  # same full tensors on every rank
        q, k, v = (torch.randn(B, T_TXT + S_IMG, H, D, generator=gen) for _ in range(3))
        ctx_k, ctx_v = (torch.randn(B, 7, H, D, generator=gen) for _ in range(2))
        same_len_k, same_len_v = (torch.randn(B, chunk, H, D, generator=gen) for _ in range(2))
        want = attention(q, k, v)
        mine = torch.cat([torch.arange(T_TXT), T_TXT + g.sp_rank * chunk + torch.arange(chunk)])
        img_only = T_TXT + g.sp_rank * chunk + torch.arange(chunk)
        results = {
            # joint text + image attention (FLUX), text replicated
            "joint": _rel(op(q[:, mine], k[:, mine], v[:, mine], joint_txt_len=T_TXT), want[:, mine]),
            # image-only self-attention (Wan)
            "self": _rel(
                op(q[:, T_TXT:][:, img_only - T_TXT], k[:, img_only], v[:, img_only]),
                attention(q[:, T_TXT:], k[:, T_TXT:], v[:, T_TXT:])[:, img_only - T_TXT],
            ),
            # cross-attention with replicated keys, lengths differ: local
            "cross": _rel(op(q[:, img_only], ctx_k, ctx_v), attention(q[:, img_only], ctx_k, ctx_v)),
            # cross-attention whose key length equals the local query length: sharded path, still exact
            "cross_same_len": _rel(
                op(q[:, img_only], same_len_k, same_len_v), attention(q[:, img_only], same_len_k, same_len_v)
            ),
        }
        for case, err in results.items():
            t = torch.tensor([err], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            found.append((U, R, case, t.item()))
    return found


@pytest.mark.parametrize("world", [2, 4])
def test_usp_attention_matches_single_process(gloo, world):
    results = gloo.run(world, _cases_on_rank, world)
    layouts = {(u, r) for u, r, _, _ in results}
    assert layouts == set(ParallelConfig.legal_sp_degrees(world))
    assert len(results) == 4 * len(layouts)
    bad = [r for r in results if not r[3] <= 1e-5]
    assert not bad, f"rel err > 1e-5: {bad}"
