"""Tensor-parallel (TP) text encoders: T5-XXL (FLUX) and UMT5-XXL (Wan) split over a group of T ranks.

Megatron-style, applied from outside the transformers model once its weights are loaded (whole) on
every rank; rank t of the group keeps

  attention   q, k, v   column-sharded: the rows of heads [t*H/T, (t+1)*H/T), so n_heads = H/T locally
              o         row-sharded: the same heads' input columns; out = all_reduce_sum(partial)
              relative_attention_bias [buckets, H] -> [buckets, H/T] (T5: layer 0 computes the bias
              [1, H/T, L, L] and passes it to the later layers; UMT5: every layer has its own)
  FFN         wi / wi_0 / wi_1 column-sharded (d_ff split in T contiguous ranges, uneven allowed)
              wo        row-sharded; out = all_reduce_sum(partial)

Attention is per head and the gated FFN elementwise per d_ff column, so each rank computes exact partial
sums of o's and wo's outputs; the two all-reduces per layer ([B, L, d_model] each) restore the unsharded
activations, and everything between them (embedding, RMS norms, residuals) stays replicated. Every rank
of the group ends with the full encoder output. Per-rank encoder weights drop from
embedding + layers to embedding + layers / T (T5-XXL: 9.5 GB -> 0.26 + 9.2/T GB in bf16).

Groups are T consecutive ranks [g*T, (g+1)*T) (groups.py): neighbours share the closest links, and
each group encodes the same prompts independently, so no traffic crosses groups. CLIP-L (FLUX's pooled
text embedding, 123 M parameters) and Wan's CLIP vision encoder stay replicated: at that size the two
all-reduces per layer would cost more than the sharded GEMMs save.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers.models.t5.modeling_t5 import T5Attention, T5DenseActDense, T5DenseGatedActDense
from transformers.models.umt5.modeling_umt5 import UMT5Attention, UMT5DenseActDense, UMT5DenseGatedActDense

from fastdit.distributed.groups import ParallelGroups
from fastdit.log import get_logger
from fastdit.models.encoders.hf_loading import HFEncoder

_ATTENTION = (T5Attention, UMT5Attention)
_FFN = (T5DenseActDense, T5DenseGatedActDense, UMT5DenseActDense, UMT5DenseGatedActDense)
# transformers model classes this plan shards (the encoders whose modules are all _ATTENTION / _FFN)
TP_ENCODERS = ("T5EncoderModel", "UMT5EncoderModel")


def shard_range(n: int, parts: int, index: int) -> slice:
    """The index-th of `parts` contiguous ranges covering [0, n); sizes differ by at most one."""
    return slice(index * n // parts, (index + 1) * n // parts)


class RowParallelLinear(nn.Linear):
    """y = sum over the group of x_t @ W_t^T (bias-free, as every T5 linear).

    x_t [..., in_t] is this rank's slice of the input features, W_t [out, in_t] the matching columns of
    the full weight; the all-reduce (in the activations' dtype) gives y [..., out] = the unsharded linear.
    """

    def __init__(self, weight: torch.Tensor, group: dist.ProcessGroup):
        super().__init__(weight.shape[1], weight.shape[0], bias=False, device="meta")
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        dist.all_reduce(out, group=self.group)
        return out


def _keep_rows(linear: nn.Linear, rows: slice) -> None:
    """Column sharding: the output features `rows` of linear (a copy, so the full weight is freed)."""
    linear.weight = nn.Parameter(linear.weight[rows].clone(), requires_grad=False)
    linear.out_features = linear.weight.shape[0]


def _row_parallel(linear: nn.Linear, cols: slice, group: dist.ProcessGroup) -> RowParallelLinear:
    if linear.bias is not None:
        raise ValueError(f"tensor parallel: {linear} has a bias; the T5 plan shards bias-free linears only")
    return RowParallelLinear(linear.weight[:, cols].clone(memory_format=torch.contiguous_format), group)


def _shard_attention(attn: nn.Module, tp_rank: int, tp_size: int, group: dist.ProcessGroup) -> None:
    heads = shard_range(attn.n_heads, tp_size, tp_rank)  # even: check_text_encoder ran first
    features = slice(heads.start * attn.key_value_proj_dim, heads.stop * attn.key_value_proj_dim)
    for linear in (attn.q, attn.k, attn.v):
        _keep_rows(linear, features)
    attn.o = _row_parallel(attn.o, features, group)
    if attn.has_relative_attention_bias:  # [num_buckets, n_heads]: one bias column per head
        bias = attn.relative_attention_bias
        bias.weight = nn.Parameter(bias.weight[:, heads].clone(memory_format=torch.contiguous_format),
                                   requires_grad=False)
        bias.embedding_dim = bias.weight.shape[1]
    # the forward's head count (views, the zero bias of layers without their own) and q/k/v width
    attn.n_heads = heads.stop - heads.start
    attn.inner_dim = attn.n_heads * attn.key_value_proj_dim


def _shard_ffn(ffn: nn.Module, tp_rank: int, tp_size: int, group: dist.ProcessGroup) -> None:
    d_ff = ffn.wo.in_features
    cols = shard_range(d_ff, tp_size, tp_rank)
    for name in ("wi", "wi_0", "wi_1"):  # wi (ReLU FFN) or wi_0, wi_1 (gated-GELU FFN)
        if hasattr(ffn, name):
            _keep_rows(getattr(ffn, name), cols)
    ffn.wo = _row_parallel(ffn.wo, cols, group)


def shard_encoder(model: nn.Module, tp_rank: int, tp_size: int, group: dist.ProcessGroup) -> None:
    """Shards a loaded T5EncoderModel / UMT5EncoderModel in place for rank `tp_rank` of `group` (T ranks).

    Collective at run time only: every forward does 2 all-reduces per layer over `group`, so every rank
    of the group must encode the same batch at the same time. The output equals the unsharded model's.
    """
    name = type(model).__name__
    if name not in TP_ENCODERS:
        raise ValueError(f"tensor parallel: {name} has no TP plan; allowed: {', '.join(TP_ENCODERS)}")
    for module in list(model.modules()):
        if isinstance(module, _ATTENTION):
            _shard_attention(module, tp_rank, tp_size, group)
        elif isinstance(module, _FFN):
            _shard_ffn(module, tp_rank, tp_size, group)


def parallelize_text_encoders(components, groups: ParallelGroups) -> list[str]:
    """Shards every T5/UMT5 encoder among a recipe's components (a dataclass) over groups.tp_group.

    Returns the component names sharded. The heads check is a one-line ValueError naming the allowed
    tp sizes; nothing is sharded before every encoder passed it.
    """
    if groups.tp_group is None:
        return []
    encoders = {}
    for field in dataclasses.fields(components):
        value = getattr(components, field.name)
        if isinstance(value, HFEncoder) and type(value.model).__name__ in TP_ENCODERS:
            groups.config.check_text_encoder(value.model.config.num_heads, f"{field.name} ({type(value.model).__name__})")
            encoders[field.name] = value.model
    for model in encoders.values():
        shard_encoder(model, groups.tp_rank, groups.config.tp_size, groups.tp_group)
    if groups.is_output_rank and encoders:
        get_logger().info("%s tensor-parallel over groups of %d consecutive ranks", ", ".join(encoders),
                          groups.config.tp_size)
    return list(encoders)
