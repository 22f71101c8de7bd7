"""The ring's math on one process: LSE merging of key blocks equals attention over all keys, and the
chunked torch fallback equals one-shot attention (fp32)."""

from __future__ import annotations

import pytest
import torch

from fastdit.distributed.ring import attention_with_lse_torch, merge_attention_
from fastdit.layers.attention import attention


def test_merging_key_blocks_in_any_order_equals_full_attention():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 19, 3, 16, generator=gen)
    k, v = (torch.randn(2, 45, 3, 16, generator=gen) * 3 for _ in range(2))  # scaled: wide score range
    want = attention(q, k, v)
    bounds = [(0, 7), (7, 8), (8, 30), (30, 45)]  # uneven blocks, one of a single key
    for order in ([0, 1, 2, 3], [2, 0, 3, 1]):
        out, lse = None, None
        for i in order:
            blk_out, blk_lse = attention_with_lse_torch(q, k[:, slice(*bounds[i])], v[:, slice(*bounds[i])])
            if out is None:
                out, lse = blk_out.clone(), blk_lse.clone()
            else:
                merge_attention_(out, lse, blk_out, blk_lse)
        assert ((out - want).norm() / want.norm()).item() <= 1e-6
        _, full_lse = attention_with_lse_torch(q, k, v)
        assert torch.allclose(lse, full_lse, atol=1e-5)


def test_chunked_fallback_equals_one_shot():
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 99, 2, 8, generator=gen) for _ in range(3))
    out, lse = attention_with_lse_torch(q, k, v)
    out_c, lse_c = attention_with_lse_torch(q, k, v, max_score_elems=2 * 99 * 10)  # 10 query rows a chunk
    assert out.shape == (1, 99, 2, 8) and lse.shape == (1, 2, 99) and lse.dtype == torch.float32
    assert torch.allclose(out_c, out, atol=1e-6) and torch.allclose(lse_c, lse, atol=1e-6)
    want_lse = torch.logsumexp(torch.einsum("bqhd,bkhd->bhqk", q, k) * 8**-0.5, dim=-1)
    assert torch.allclose(lse, want_lse, atol=1e-5)
    assert ((out - attention(q, k, v)).norm() / out.norm()).item() <= 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "fastdit", "triton", "sdpa", "sdpa-cudnn"])
def test_gpu_ring_merge_of_attention_op_blocks_equals_full_attention(backend):
    """The ring merges the AttentionOp's own with_lse blocks: their lse must be natural-log softmax
    normalisers, or the merged result drifts. bf16, D=128, uneven blocks (text + own image keys, then a
    peer's), keys long enough for auto to pick the long-sequence kernel."""
    from fastdit.layers.attention import make_attention_op

    try:
        op = make_attention_op(backend, torch.device("cuda"), torch.bfloat16, 128)
    except ValueError as err:
        pytest.skip(f"{backend}: {err}")
    gen = torch.Generator(device="cuda").manual_seed(2)
    q = torch.randn(1, 1000, 4, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(1, 17000, 4, 128, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    split = 8517  # 512 text + 8005 own image keys; the peer's 8483
    out, lse = op.with_lse(q, k[:, :split], v[:, :split])
    assert lse.shape == (1, 4, 1000) and lse.dtype == torch.float32
    out, lse = out.float(), lse.clone()
    merge_attention_(out, lse, *op.with_lse(q, k[:, split:], v[:, split:]))
    want_out, want_lse = attention_with_lse_torch(q.float(), k.float(), v.float())
    assert ((out - want_out).norm() / want_out.norm()).item() <= 2e-2
    assert (lse - want_lse).abs().max().item() <= 2e-2
