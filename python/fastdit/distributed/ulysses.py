"""Ulysses all-to-all: sequence-sharded [B, T + S, H, D] <-> head-sharded [B, T + U*S, H/U, D].

T leading text tokens are replicated on every rank (FLUX's joint attention; T = 0 for Wan), S image tokens
are this rank's chunk of U*S. `scatter_heads` gives each of the U ranks all U*S image tokens for its H/U
heads (plus its heads of the replicated text, sliced locally: no traffic); `gather_heads` is the way back,
and also hands every rank the text output of all heads, so the replicated text stream stays identical on
every rank. Each direction is ONE all_to_all_single over one contiguous buffer, filled and drained by
`comm_pack` (out[n, q, p, :] = x[n, p, q, :]) on strided views, one pass per tensor and side.

Buffer layouts (peer-major, as all_to_all_single splits dim 0):
    scatter: send [U, n, B, S, H/U*D]     (peer u gets heads chunk u of my S tokens, for each of n tensors)
             recv [U, n, B, S, H/U*D]     (from peer u: its S tokens of my heads chunk)
    gather:  send [U, B, T + S, H/U*D]    (peer u gets its S output tokens of my heads, and all T text ones)
             recv [U, B, T + S, H/U*D]    (from peer u: heads chunk u of my T + S tokens)
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from fastdit.ops.comm_pack import comm_pack


def _view(x: torch.Tensor, *shape: int) -> torch.Tensor:
    """A view when the strides allow (the usual case), else a contiguous copy."""
    try:
        return x.view(*shape)
    except RuntimeError:
        return x.contiguous().view(*shape)


def scatter_heads(
    xs: Sequence[torch.Tensor], txt_len: int, group: dist.ProcessGroup, ulysses_rank: int, backend: str = "auto"
) -> list[torch.Tensor]:
    """Each x [B, T + S, H, D] (T = txt_len) -> [B, T + U*S, H/U, D]: text heads sliced, image tokens gathered."""
    U = dist.get_world_size(group)
    B, L, H, D = xs[0].shape
    T, S, h = txt_len, L - txt_len, H // U
    n = len(xs)
    send = xs[0].new_empty(U, n, B, S, h * D)
    for i, x in enumerate(xs):
        img = _view(x[:, T:], B, S, U, h * D)  # [B(N), S(P), U(Q), h*D]
        comm_pack(img, send[:, i].permute(1, 0, 2, 3), backend)  # -> [B, U, S, h*D]
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    outs = []
    for i, x in enumerate(xs):
        out = x.new_empty(B, T + U * S, h, D)
        if T:
            out[:, :T].copy_(x[:, :T, ulysses_rank * h : (ulysses_rank + 1) * h])
        src = recv[:, i].reshape(1, U, B, S * h * D)  # [1, U(P), B(Q), S*h*D]
        comm_pack(src, out[:, T:].view(1, B, U, S * h * D), backend)
        outs.append(out)
    return outs


def gather_heads(o: torch.Tensor, txt_len: int, group: dist.ProcessGroup, backend: str = "auto") -> torch.Tensor:
    """o [B, T + U*S, H/U, D] (attention output on head chunk) -> [B, T + S, H, D] on this rank's tokens."""
    U = dist.get_world_size(group)
    B, L, h, D = o.shape
    T = txt_len
    S = (L - T) // U
    send = o.new_empty(U, B, T + S, h * D)
    if T:
        txt = _view(o[:, :T], B, 1, T * h * D).expand(B, U, T * h * D)  # every peer gets all T text rows
        comm_pack(txt.unsqueeze(0), send[:, :, :T].view(1, U, B, T * h * D), backend)
    img = _view(o[:, T:], 1, B, U, S * h * D)  # [1, B(P), U(Q), S*h*D]
    comm_pack(img, send[:, :, T:].view(1, U, B, S * h * D), backend)
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    out = o.new_empty(B, T + S, U * h, D)
    comm_pack(recv.permute(1, 0, 2, 3), out.view(B, T + S, U, h * D), backend)  # [B, U, T+S, .] -> [B, T+S, U, .]
    return out
