"""Triton forward attention (FlashAttention-2 recipe): the sm80-class path (A100, L40, RTX 4090), ROCm,
and the CPU tests under TRITON_INTERPRET=1.

    out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h]) v[b, j, h],  j < seqlens_k[b]
    lse[b, h, i] = log sum_j exp(scale * q[b, i, h] . k[b, j, h])               (fp32, natural log)

One program per (BLOCK_M query rows, batch * head); it streams BLOCK_N keys at a time with the online
softmax in base 2 (scale * log2(e) folded into one multiply). Head dims that are not a power of two are
padded to BLOCK_D and masked. Called by fastdit/ops/attention.py, which checks the arguments and
allocates `out` and `lse`.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _attend_block(q, k_base, v_base, start, keys, stride_ks, stride_vs, cols, col_ok, acc, m_i, l_i, scale_log2,
                  BLOCK_N: tl.constexpr):
    """One BLOCK_N slice of keys: online-softmax update of (acc, m_i, l_i). m_safe keeps rows with no key
    so far (m = -inf) away from (-inf) - (-inf)."""
    n = start + tl.arange(0, BLOCK_N)
    n_ok = n < keys
    kv_mask = n_ok[:, None] & col_ok[None, :]
    k = tl.load(k_base + n[:, None] * stride_ks + cols[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k)).to(tl.float32)
    s = tl.where(n_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2((m_i - m_safe) * scale_log2)
    p = tl.exp2(s * scale_log2 - (m_safe * scale_log2)[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_base + n[:, None] * stride_vs + cols[None, :], mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
    return acc, m_new, l_i


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k"])
def _attention_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, seqlens_k_ptr,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
    num_heads, seqlen_q, seqlen_k, head_dim, scale_log2,
    HAS_SEQLENS: tl.constexpr, WRITE_LSE: tl.constexpr, INTERPRET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    m_block = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)
    keys = seqlen_k
    if HAS_SEQLENS:
        keys = tl.minimum(tl.load(seqlens_k_ptr + b), seqlen_k)

    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < seqlen_q
    col_ok = cols < head_dim
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qs + cols[None, :],
                mask=row_ok[:, None] & col_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = k_ptr + b * stride_kb + h * stride_kh
    v_base = v_ptr + b * stride_vb + h * stride_vh
    # Keys past seqlens_k[b] are masked inside the block. Under TRITON_INTERPRET a runtime loop bound is a
    # 1-element array that numpy >= 2.4 refuses to turn into a range() bound: a while loop there instead.
    if INTERPRET:
        start = 0
        while start < keys:
            acc, m_i, l_i = _attend_block(q, k_base, v_base, start, keys, stride_ks, stride_vs, cols, col_ok,
                                          acc, m_i, l_i, scale_log2, BLOCK_N)
            start += BLOCK_N
    else:
        for start in range(0, keys, BLOCK_N):
            acc, m_i, l_i = _attend_block(q, k_base, v_base, start, keys, stride_ks, stride_vs, cols, col_ok,
                                          acc, m_i, l_i, scale_log2, BLOCK_N)

    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    tl.store(out_ptr + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])
    if WRITE_LSE:
        lse = tl.where(empty, float("-inf"), (m_i * scale_log2 + tl.log2(tl.where(empty, 1.0, l_i))) / 1.4426950408889634)
        tl.store(lse_ptr + (b * num_heads + h) * seqlen_q + rows, lse, mask=row_ok)


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor | None,
                  seqlens_k: torch.Tensor | None, softmax_scale: float) -> None:
    """q/out: [B, Sq, H, D], k/v: [B, Sk, H, D] (any strides, last dim contiguous); lse: [B, H, Sq] fp32
    contiguous or None; seqlens_k: [B] int32 or None. Writes out (and lse)."""
    batch, seqlen_q, num_heads, head_dim = q.shape
    seqlen_k = k.shape[1]
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_m, block_n = (64, 64) if block_d <= 128 else (32, 32)
    grid = (triton.cdiv(seqlen_q, block_m), batch * num_heads)
    _attention_fwd_kernel[grid](
        q, k, v, out, lse if lse is not None else out, seqlens_k if seqlens_k is not None else q,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        num_heads, seqlen_q, seqlen_k, head_dim, softmax_scale * LOG2E,
        HAS_SEQLENS=seqlens_k is not None, WRITE_LSE=lse is not None,
        INTERPRET=os.environ.get("TRITON_INTERPRET") == "1",
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4 if block_d <= 64 else 8, num_stages=2,
    )
