"""Triton version of comm_pack: out[n, q, p, :] = x[n, p, q, :] for strided 4-D views with contiguous rows.

Both sides of a Ulysses all-to-all are this copy on different views (see fastdit/distributed/ulysses.py).
One program copies BLOCK_R elements of one output row; programs walk the output in memory order so the
writes stream. Row offsets are int64 (a Wan-14B 720p activation has ~4e8 elements).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _comm_pack_kernel(
    x_ptr, out_ptr, P, Q, R,
    x_stride_n, x_stride_p, x_stride_q,
    out_stride_n, out_stride_q, out_stride_p,
    blocks_per_row,
    BLOCK_R: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    rb = pid % blocks_per_row
    row = pid // blocks_per_row  # output row in (n, q, p) order
    p = row % P
    q = (row // P) % Q
    n = row // (P * Q)
    cols = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = cols < R
    vals = tl.load(x_ptr + n * x_stride_n + p * x_stride_p + q * x_stride_q + cols, mask=mask)
    tl.store(out_ptr + n * out_stride_n + q * out_stride_q + p * out_stride_p + cols, vals, mask=mask)


def comm_pack(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x [N, P, Q, R], out [N, Q, P, R] (any strides, last dim contiguous, same dtype): writes out, returns it."""
    N, P, Q, R = x.shape
    if N * P * Q * R == 0:
        return out
    block_r = min(triton.next_power_of_2(R), 2048)
    blocks_per_row = triton.cdiv(R, block_r)
    grid = (N * Q * P * blocks_per_row,)
    _comm_pack_kernel[grid](
        x, out, P, Q, R,
        x.stride(0), x.stride(1), x.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        blocks_per_row,
        BLOCK_R=block_r,
        num_warps=4 if block_r <= 1024 else 8,
    )
    return out
