"""Parallel plans: sequence parallel (USP) and CFG-parallel applied to a DiT from OUTSIDE the model.

The models stay single-GPU definitions; a plan swaps their attention op (`set_attn_op`) for a
USPAttention and wraps them in a module with the same forward signature:

  SequenceParallelFlux(model, groups, attn_op)   hidden_states [B, S_img, C] and img_ids sharded along S_img
                                                 (chunk = SP rank), RoPE rows sliced to [txt, img chunk],
                                                 text replicated; output gathered to [B, S_img, C_out].
  SequenceParallelWan(model, groups, attn_op)    tokens sharded right after patch embedding and gathered
                                                 right after proj_out (two forward hooks), RoPE sliced;
                                                 cross-attention runs locally (replicated text, usp.py).
  CfgParallel(model, groups)                     a batch of 2B rows (B unconditional, B conditional) split
                                                 over the two CFG ranks, outputs all-gathered back to 2B.

Every rank ends with the full output, so the sampler runs identically (and deterministically) on all.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from fastdit.distributed.groups import ParallelGroups
from fastdit.distributed.usp import USPAttention
from fastdit.log import log_once


def _gather(x: torch.Tensor, group: dist.ProcessGroup | None, dim: int) -> torch.Tensor:
    """Concatenation along `dim` of every group member's x, in group-rank order."""
    if group is None:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _chunk(groups: ParallelGroups, num_tokens: int) -> slice:
    sp = groups.config.sp_degree
    if num_tokens % sp:
        raise ValueError(
            f"sequence parallel: {num_tokens} image tokens must divide by ulysses_degree * ring_degree = {sp}"
        )
    n = num_tokens // sp
    return slice(groups.sp_rank * n, (groups.sp_rank + 1) * n)


class _Plan(nn.Module):
    """A wrapper that keeps the model's interface: unknown attributes (config, rope, grid, encode_context,
    ...) resolve on the wrapped model, so the recipe that called the model calls the plan unchanged."""

    def __init__(self, model: nn.Module, groups: ParallelGroups):
        super().__init__()
        self.model = model
        self.groups = groups

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":  # not set yet: no delegation loop
                raise
            return getattr(self.model, name)


class SequenceParallelFlux(_Plan):
    """FluxTransformer2DModel on one rank of the SP group; same forward and `rope` as the model."""

    def __init__(self, model: nn.Module, groups: ParallelGroups, attn_op, attn_with_lse=None):
        super().__init__(model, groups)
        groups.config.check_model(model.config.num_attention_heads, has_true_cfg=False)
        model.set_attn_op(USPAttention(groups, attn_op, attn_with_lse))

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                guidance=None, rope=None) -> torch.Tensor:
        chunk = _chunk(self.groups, hidden_states.shape[1])
        if rope is None:  # the runner passes model.rope(img_ids, txt_ids) of the FULL sequence
            rope = self.model.rope(img_ids, txt_ids)
        txt_len = txt_ids.shape[0]
        rope = tuple(torch.cat([t[:txt_len], t[txt_len:][chunk]]) for t in rope)  # rows [txt, img chunk]
        out = self.model(hidden_states[:, chunk], encoder_hidden_states, pooled_projections, timestep,
                         img_ids[chunk], txt_ids, guidance, rope=rope)  # [B, S_img / SP, C_out]
        return _gather(out, self.groups.sp_group, dim=1)


class SequenceParallelWan(_Plan):
    """WanTransformer3DModel on one rank of the SP group; same forward (any arguments) as the model.

    The token sequence only exists inside the model's forward (patchify ... unpatchify), so the plan
    shards it with two forward hooks: patch_embedding's output [B, dim, F', H', W'] becomes this rank's
    contiguous chunk of the flattened (f, h, w) tokens, shaped [B, dim, 1, 1, S/SP] so the model's own
    flatten/transpose yields [B, S/SP, dim]; proj_out's output [B, S/SP, C] is all-gathered back to S.
    The RoPE rows (full sequence, from model.rope) are sliced to the same chunk.
    """

    def __init__(self, model: nn.Module, groups: ParallelGroups, attn_op, attn_with_lse=None):
        super().__init__(model, groups)
        groups.config.check_model(model.config.num_attention_heads)
        model.set_attn_op(USPAttention(groups, attn_op, attn_with_lse))
        if groups.sp_group is not None:
            model.patch_embedding.register_forward_hook(self._shard_tokens)
            model.proj_out.register_forward_hook(self._gather_tokens)

    def _shard_tokens(self, module, args, out: torch.Tensor) -> torch.Tensor:
        tokens = out.flatten(2)  # [B, dim, S] in (f, h, w) order
        return tokens[:, :, _chunk(self.groups, tokens.shape[2])].unsqueeze(2).unsqueeze(2)

    def _gather_tokens(self, module, args, out: torch.Tensor) -> torch.Tensor:
        return _gather(out, self.groups.sp_group, dim=1)

    def forward(self, hidden_states: torch.Tensor, *args, rope=None, **kwargs) -> torch.Tensor:
        if rope is None:
            rope = self.model.rope(hidden_states.shape, device=hidden_states.device)
        chunk = _chunk(self.groups, math.prod(self.model.grid(hidden_states.shape)))
        rope = tuple(t[chunk] for t in rope)
        return self.model(hidden_states, *args, rope=rope, **kwargs)


def _split(value, batch: int, half: slice):
    """value[half] for a tensor (or each tensor of a tuple/list) whose dim 0 is the CFG batch; else value."""
    if isinstance(value, torch.Tensor):
        return value[half] if value.dim() > 0 and value.shape[0] == batch else value
    if isinstance(value, (tuple, list)):
        return type(value)(_split(v, batch, half) for v in value)
    return value


class CfgParallel(_Plan):
    """Runs half of a CFG batch on each of the two CFG ranks: model(x [2B, ...], ...) -> [2B, ...].

    Every positional or keyword tensor (also inside a tuple, e.g. Wan's precomputed `context`) whose
    dim 0 equals x's 2B is split, except the keywords in `replicated` (RoPE tables and token ids, whose
    dim 0 is a sequence length that could equal 2B by chance). Outputs are all-gathered back to 2B rows.
    """

    def __init__(self, model: nn.Module, groups: ParallelGroups, replicated: tuple[str, ...] = ("rope", "img_ids", "txt_ids")):
        super().__init__(model, groups)
        self.replicated = replicated

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.groups.cfg_group is None:
            return self.model(hidden_states, *args, **kwargs)
        batch = hidden_states.shape[0]
        if batch % 2:
            # One CFG branch (guidance off) or an odd batch: nothing splits evenly, so both CFG halves run
            # the whole batch (same result on both, no speedup) rather than refusing the request.
            log_once(f"CfgParallel: a batch of {batch} rows (no true CFG) runs unsplit on both CFG ranks")
            return self.model(hidden_states, *args, **kwargs)
        half = slice(self.groups.cfg_rank * batch // 2, (self.groups.cfg_rank + 1) * batch // 2)
        args = tuple(_split(a, batch, half) for a in args)
        kwargs = {k: v if k in self.replicated else _split(v, batch, half) for k, v in kwargs.items()}
        out = self.model(hidden_states[half], *args, **kwargs)
        return _gather(out, self.groups.cfg_group, dim=0)
