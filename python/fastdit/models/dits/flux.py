"""FLUX.1 transformer (black-forest-labs/FLUX.1-dev): the same numbers as diffusers' FluxTransformer2DModel.

    txt = context_embedder(T5 states)                          # [B, S_txt, D]
    img = x_embedder(packed latents)                           # [B, S_img, D]
    temb = time_text_embed(t * 1000, g * 1000, CLIP pooled)    # [B, D]
    19 double-stream blocks: img and txt keep their own weights, attend jointly over [txt, img]
    38 single-stream blocks over x = [txt, img]: attention and MLP in parallel from one modulated norm
    out = proj_out(LN(img) * (1 + scale) + shift)              # [B, S_img, out_dim]

Module names equal the diffusers checkpoint keys. Norms, modulation, QK-norm + RoPE and GELU go through
fastdit.ops (backend = kernel_backend); attention through `attn_op(q, k, v, joint_txt_len=S_txt)` on
[B, S, H, Dh] tensors, whose text tokens lead the sequence.

fuse_projections=True (what load_flux_transformer builds by default) keeps the same numbers with fewer,
larger GEMMs; the checkpoint tensors are concatenated on dim 0 at load by FLUX's fuse table:
    transformer_blocks.i.attn.to_qkv       = [to_q; to_k; to_v]                 one QKV GEMM for img
    transformer_blocks.i.attn.add_qkv_proj = [add_q_proj; add_k_proj; add_v_proj]  one for txt
    single_transformer_blocks.i.linear1    = [attn.to_q; attn.to_k; attn.to_v; proj_mlp]  (BFL's name)
    modulation = every block's norm1.linear, norm1_context.linear, norm.linear, then norm_out.linear:
                 all adaLN vectors of a step from ONE GEMM of silu(temb), sliced per block.
`flux_checkpoint_state_dict(model)` gives the checkpoint keys back as views (no copy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastdit.configs.flux import FluxTransformerConfig, flux_transformer_preset
from fastdit.layers.attention import attention
from fastdit.layers.embeddings import CombinedTimestepGuidanceTextProjEmbeddings
from fastdit.layers.linear import linear_gelu_tanh
from fastdit.layers.rope import rope_cos_sin
from fastdit.loader.weights import (
    build_module,
    init_dummy_weights,
    init_dummy_weights_through,
    load_state_dict,
    load_weights,
    read_config,
)
from fastdit.log import get_logger
from fastdit.ops import gated_residual_norm_modulate, layer_norm_modulate, qk_norm_rope

AttnOp = Callable[..., torch.Tensor]
Rope = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [S_txt + S_img, Dh / 2] fp32
NORM_EPS = 1e-6  # every LayerNorm and QK RMSNorm in FLUX
ROPE_THETA = 10000.0


def sdpa_attn_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, joint_txt_len: int = 0) -> torch.Tensor:
    """The default attention op: torch SDPA; single-GPU, so joint_txt_len is not needed."""
    return attention(q, k, v)


# helpers


@dataclass(frozen=True)
class Modulation:
    """One adaLN modulation: y = LN(x) * (1 + scale) + shift, then residual + gate * f(y). Each [B, D]."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


def split_modulation(vec: torch.Tensor, n: int) -> tuple[Modulation, ...]:
    """[B, 3 * n * D] -> n Modulations of (shift, scale, gate), in diffusers' chunk order (double block:
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp). The parts are strided views."""
    chunks = vec.chunk(3 * n, dim=1)
    return tuple(Modulation(*chunks[3 * i : 3 * i + 3]) for i in range(n))


class AdaLayerNormZero(nn.Module):
    """The modulation projection `linear(silu(temb))` -> [B, 3 * n * D] (checkpoint key `norm1.linear`);
    the model calls it (or the fused `modulation` GEMM in its place) and hands the block the vector."""

    def __init__(self, dim: int, n: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 3 * n * dim)


class AdaLayerNormContinuous(nn.Module):
    """norm_out: (scale, shift) = linear(silu(temb)) -- scale first, as diffusers; LN(x) * (1 + scale) + shift.
    With fuse_projections the linear lives in the model's `modulation` GEMM and forward gets its output."""

    def __init__(self, dim: int, kernel_backend: str, fused: bool) -> None:
        super().__init__()
        self.kernel_backend = kernel_backend
        if not fused:
            self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """x [B, S, D], mod [B, 2D] = linear(silu(temb))."""
        scale, shift = mod.chunk(2, dim=1)
        return layer_norm_modulate(x, shift, scale, NORM_EPS, backend=self.kernel_backend)


class QKNorm(nn.Module):
    """The RMSNorm weight [Dh] of q or k (checkpoint key `norm_q.weight`); applied inside qk_norm_rope."""

    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(head_dim))


class GELUProj(nn.Module):
    """gelu_tanh(proj(x)): diffusers' GELU(approximate="tanh") activation module, ff.net.0. On CUDA one GEMM
    with cuBLASLt's bias + GELU epilogue (layers.linear.linear_gelu_tanh)."""

    def __init__(self, dim: int, inner_dim: int, kernel_backend: str) -> None:
        super().__init__()
        self.kernel_backend = kernel_backend
        self.proj = nn.Linear(dim, inner_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_gelu_tanh(x, self.proj.weight, self.proj.bias, backend=self.kernel_backend)


class FeedForward(nn.Module):
    """net.2(gelu_tanh(net.0.proj(x))), hidden 4 * dim."""

    def __init__(self, dim: int, kernel_backend: str) -> None:
        super().__init__()
        # net.1 is diffusers' Dropout (no weights): kept so the output Linear keeps its checkpoint index 2.
        self.net = nn.ModuleList([GELUProj(dim, 4 * dim, kernel_backend), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


# attention


class FluxAttention(nn.Module):
    """Q/K/V projections, per-head RMSNorm of q and k, interleaved RoPE, attention.

    joint=True (double block): img uses to_q/to_k/to_v/norm_q/norm_k/to_out.0, txt uses add_*_proj/
    norm_added_*/to_add_out; both attend over [txt, img]. joint=False (single block): one stream, no
    output projection (the block's proj_out follows). fused=True: the double block's projections are
    to_qkv and add_qkv_proj; the single block's q/k/v come from the block's linear1, so none live here."""

    def __init__(self, dim: int, heads: int, head_dim: int, joint: bool, kernel_backend: str,
                 fused: bool = False) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.kernel_backend = kernel_backend
        self.fused = fused
        inner = heads * head_dim
        if fused and joint:
            self.to_qkv, self.add_qkv_proj = nn.Linear(dim, 3 * inner), nn.Linear(dim, 3 * inner)
        elif not fused:
            self.to_q, self.to_k, self.to_v = (nn.Linear(dim, inner) for _ in range(3))
        self.norm_q, self.norm_k = QKNorm(head_dim), QKNorm(head_dim)
        if joint:
            self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # to_out.1 is a Dropout in diffusers
            if not fused:
                self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, inner) for _ in range(3))
            self.norm_added_q, self.norm_added_k = QKNorm(head_dim), QKNorm(head_dim)
            self.to_add_out = nn.Linear(inner, dim)

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A fused projection [B, S, 3 * H * Dh] -> q, k, v [B, S, H, Dh] (views, token stride 3 * H * Dh)."""
        return qkv.unflatten(-1, (3, -1, self.head_dim)).unbind(2)

    def project(self, x: torch.Tensor, txt: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(unfused) x [B, S, D] -> q, k, v [B, S, H, Dh] through the img (or, txt=True, the txt) projections."""
        projs = (self.add_q_proj, self.add_k_proj, self.add_v_proj) if txt else (self.to_q, self.to_k, self.to_v)
        return tuple(proj(x).unflatten(-1, (-1, self.head_dim)) for proj in projs)

    def _norm_rope(self, q: torch.Tensor, k: torch.Tensor, norm_q: QKNorm, norm_k: QKNorm, cos: torch.Tensor,
                   sin: torch.Tensor) -> None:
        """q and k RMS-normed per head and rotated, in place."""
        qk_norm_rope(q, k, norm_q.weight, norm_k.weight, cos, sin, style="interleaved", norm="per_head",
                     eps=NORM_EPS, backend=self.kernel_backend)

    def forward_single(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: Rope, attn_op: AttnOp,
                       txt_len: int) -> torch.Tensor:
        """q, k, v [B, S_txt + S_img, H, Dh] (projected) -> attention output [B, S, H * Dh]."""
        self._norm_rope(q, k, self.norm_q, self.norm_k, *rope)
        return attn_op(q, k, v, joint_txt_len=txt_len).flatten(2)

    def joint_qkv(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """(fused) [txt; img] -> [B, S_txt + S_img, 3 * H * Dh]: each stream's QKV GEMM writes its own row block
        of one buffer, so q, k, v of the joint sequence need no concatenation (3 x 2 x 28 MB per block at
        1024^2). One GEMM per stream and sample: a sample's row block is contiguous, as the GEMM output must be."""
        txt_len = txt.shape[1]
        qkv = img.new_empty(img.shape[0], txt_len + img.shape[1], self.to_qkv.out_features)
        for b in range(img.shape[0]):
            torch.addmm(self.add_qkv_proj.bias, txt[b], self.add_qkv_proj.weight.t(), out=qkv[b, :txt_len])
            torch.addmm(self.to_qkv.bias, img[b], self.to_qkv.weight.t(), out=qkv[b, txt_len:])
        return qkv

    def forward_joint(self, img: torch.Tensor, txt: torch.Tensor, rope: Rope,
                      attn_op: AttnOp) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, S_img, D], txt [B, S_txt, D] -> (img_out, txt_out), same shapes."""
        txt_len = txt.shape[1]
        cos, sin = rope
        if self.fused:
            q, k, v = self.split_heads(self.joint_qkv(img, txt))  # [B, S_txt + S_img, H, Dh] views
            # per sample: a [1, S, H, Dh] row block has the uniform token stride the fused kernel takes
            for b in range(q.shape[0]):
                q_b, k_b = q[b : b + 1], k[b : b + 1]
                self._norm_rope(q_b[:, txt_len:], k_b[:, txt_len:], self.norm_q, self.norm_k,
                                cos[txt_len:], sin[txt_len:])
                self._norm_rope(q_b[:, :txt_len], k_b[:, :txt_len], self.norm_added_q, self.norm_added_k,
                                cos[:txt_len], sin[:txt_len])
        else:
            q, k, v = self.project(img)
            self._norm_rope(q, k, self.norm_q, self.norm_k, cos[txt_len:], sin[txt_len:])
            c_q, c_k, c_v = self.project(txt, txt=True)
            self._norm_rope(c_q, c_k, self.norm_added_q, self.norm_added_k, cos[:txt_len], sin[:txt_len])
            q, k, v = (torch.cat(pair, dim=1) for pair in ((c_q, q), (c_k, k), (c_v, v)))  # [B, S, H, Dh]
        out = attn_op(q, k, v, joint_txt_len=txt_len).flatten(2)
        return self.to_out[0](out[:, txt_len:]), self.to_add_out(out[:, :txt_len])


# blocks


def _clip_fp16(x: torch.Tensor) -> torch.Tensor:
    # diffusers clips the residual stream of fp16 runs to the finite fp16 range (and only those).
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


class FluxTransformerBlock(nn.Module):
    """Double-stream block: per stream, x += gate_msa * attn(mod(LN(x))); x += gate_mlp * ff(mod(LN(x))),
    with attention joint over [txt, img]. The modulation vectors come from the model (norm1.linear and
    norm1_context.linear, or the fused `modulation` GEMM, which then holds them)."""

    def __init__(self, dim: int, heads: int, head_dim: int, kernel_backend: str, attn_op: AttnOp,
                 fused: bool = False) -> None:
        super().__init__()
        self.kernel_backend = kernel_backend
        self.attn_op = attn_op
        if not fused:
            self.norm1 = AdaLayerNormZero(dim, 2)
            self.norm1_context = AdaLayerNormZero(dim, 2)
        self.attn = FluxAttention(dim, heads, head_dim, joint=True, kernel_backend=kernel_backend, fused=fused)
        self.ff = FeedForward(dim, kernel_backend)
        self.ff_context = FeedForward(dim, kernel_backend)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, img_mod: torch.Tensor, txt_mod: torch.Tensor,
                rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, S_img, D], txt [B, S_txt, D], img_mod / txt_mod [B, 6D] -> (img, txt)."""
        backend = self.kernel_backend
        (img_msa, img_mlp), (txt_msa, txt_mlp) = split_modulation(img_mod, 2), split_modulation(txt_mod, 2)
        img_in = layer_norm_modulate(img, img_msa.shift, img_msa.scale, NORM_EPS, backend=backend)
        txt_in = layer_norm_modulate(txt, txt_msa.shift, txt_msa.scale, NORM_EPS, backend=backend)
        img, txt, img_ff, txt_ff = self.branches(img, txt, img_in, txt_in, img_mod, txt_mod, rope)
        img = torch.addcmul(img, img_mlp.gate.unsqueeze(1), img_ff)
        txt = torch.addcmul(txt, txt_mlp.gate.unsqueeze(1), txt_ff)
        return img, _clip_fp16(txt)

    def branches(self, img: torch.Tensor, txt: torch.Tensor, img_in: torch.Tensor, txt_in: torch.Tensor,
                 img_mod: torch.Tensor, txt_mod: torch.Tensor,
                 rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block up to its last gated residual: img_in / txt_in = the modulated norms (msa) of img / txt
        -> (img, txt after the attention residual, img_ff, txt_ff before their gate_mlp). The block's output
        is img + gate_mlp * img_ff: the model fuses that with the next block's modulated norm."""
        backend = self.kernel_backend
        (img_msa, img_mlp), (txt_msa, txt_mlp) = split_modulation(img_mod, 2), split_modulation(txt_mod, 2)
        img_attn, txt_attn = self.attn.forward_joint(img_in, txt_in, rope, self.attn_op)
        # feed-forward: the gated residual of attention fused with the next modulated norm
        img, img_in = gated_residual_norm_modulate(img, img_attn, img_msa.gate, img_mlp.shift, img_mlp.scale,
                                                   NORM_EPS, backend=backend)
        txt, txt_in = gated_residual_norm_modulate(txt, txt_attn, txt_msa.gate, txt_mlp.shift, txt_mlp.scale,
                                                   NORM_EPS, backend=backend)
        return img, txt, self.ff(img_in), self.ff_context(txt_in)


class FluxSingleTransformerBlock(nn.Module):
    """Single-stream block over x = [txt, img]: y = mod(LN(x));
    x += gate * proj_out(cat(attn(y), gelu_tanh(proj_mlp(y)))).
    fused=True: q, k, v and the MLP input come from one GEMM, linear1 = [to_q; to_k; to_v; proj_mlp]."""

    def __init__(self, dim: int, heads: int, head_dim: int, kernel_backend: str, attn_op: AttnOp,
                 fused: bool = False) -> None:
        super().__init__()
        self.kernel_backend = kernel_backend
        self.attn_op = attn_op
        self.inner_dim = heads * head_dim
        mlp_dim = 4 * dim
        if fused:
            self.linear1 = nn.Linear(dim, 3 * self.inner_dim + mlp_dim)
        else:
            self.norm = AdaLayerNormZero(dim, 1)
            self.proj_mlp = nn.Linear(dim, mlp_dim)
        self.attn = FluxAttention(dim, heads, head_dim, joint=False, kernel_backend=kernel_backend, fused=fused)
        self.proj_out = nn.Linear(dim + mlp_dim, dim)

    def forward(self, x: torch.Tensor, mod: torch.Tensor, rope: Rope, txt_len: int) -> torch.Tensor:
        """x [B, S_txt + S_img, D], mod [B, 3D] -> x."""
        (mod,) = split_modulation(mod, 1)
        y = layer_norm_modulate(x, mod.shift, mod.scale, NORM_EPS, backend=self.kernel_backend)
        return _clip_fp16(torch.addcmul(x, mod.gate.unsqueeze(1), self.branch(y, rope, txt_len)))

    def branch(self, y: torch.Tensor, rope: Rope, txt_len: int) -> torch.Tensor:
        """The block's update before its gate: proj_out(cat(attn(y), gelu_tanh(mlp(y)))), y = the modulated
        norm of x, [B, S, D] -> [B, S, D]. The model fuses the gated residual with the next norm around it."""
        # attention and MLP in parallel, from the same normed input
        if self.attn.fused:
            # One GEMM for q, k, v and one for the MLP, on the two row blocks of linear1: the MLP input then
            # comes out contiguous, as the GELU kernel takes it (the MLP slice of a single [B, S, 3HDh + 4D]
            # output is strided and would be copied first: 2 x 113 MB per block at 1024^2, batch 1).
            rows = 3 * self.inner_dim
            weight, bias = self.linear1.weight, self.linear1.bias
            q, k, v = self.attn.split_heads(F.linear(y, weight[:rows], bias[:rows]))  # [B, S, H, Dh] views
            mlp_weight, mlp_bias = weight[rows:], bias[rows:]
        else:
            q, k, v = self.attn.project(y)
            mlp_weight, mlp_bias = self.proj_mlp.weight, self.proj_mlp.bias
        # [B, S, 4D]; on CUDA one GEMM with the GELU epilogue (the pre-activation is never written)
        mlp_out = linear_gelu_tanh(y, mlp_weight, mlp_bias, backend=self.kernel_backend)
        attn_out = self.attn.forward_single(q, k, v, rope, self.attn_op, txt_len)
        return self._proj_out(attn_out, mlp_out)

    def _proj_out(self, attn_out: torch.Tensor, mlp_out: torch.Tensor) -> torch.Tensor:
        """proj_out(cat([attn_out, mlp_out], -1)) = attn_out W_a^T + b + mlp_out W_m^T, W = [W_a | W_m]: the
        second GEMM accumulates into the first's output (beta = 1), so the [B, S, H*Dh + 4D] concatenation
        (2 x 141 MB per block at 1024^2, batch 1) is never written."""
        weight = self.proj_out.weight  # [D, H*Dh + 4D]; the column blocks are strided views, no copy
        out = F.linear(attn_out, weight[:, : self.inner_dim], self.proj_out.bias)  # [B, S, D]
        out.view(-1, out.shape[-1]).addmm_(mlp_out.reshape(-1, mlp_out.shape[-1]), weight[:, self.inner_dim :].t())
        return out


# the model


def modulation_keys(config: FluxTransformerConfig) -> list[str]:
    """The checkpoint prefixes of every adaLN projection of silu(temb), in the order the model consumes
    them (= the row order of the fused `modulation` weight)."""
    keys = []
    for i in range(config.num_layers):
        keys += [f"transformer_blocks.{i}.norm1.linear", f"transformer_blocks.{i}.norm1_context.linear"]
    keys += [f"single_transformer_blocks.{i}.norm.linear" for i in range(config.num_single_layers)]
    return keys + ["norm_out.linear"]


def flux_fuse_table(config: FluxTransformerConfig) -> dict[str, tuple[str, ...]]:
    """FLUX's fuse table for loader.weights.load_weights: fused key -> checkpoint keys, concatenated on dim 0.
    Keys are full (block index included) so that no rule can match another block kind's tensors."""
    table: dict[str, tuple[str, ...]] = {}
    for p in ("weight", "bias"):
        for i in range(config.num_layers):
            attn = f"transformer_blocks.{i}.attn"
            table[f"{attn}.to_qkv.{p}"] = tuple(f"{attn}.to_{x}.{p}" for x in "qkv")
            table[f"{attn}.add_qkv_proj.{p}"] = tuple(f"{attn}.add_{x}_proj.{p}" for x in "qkv")
        for i in range(config.num_single_layers):
            block = f"single_transformer_blocks.{i}"
            table[f"{block}.linear1.{p}"] = (*(f"{block}.attn.to_{x}.{p}" for x in "qkv"), f"{block}.proj_mlp.{p}")
        table[f"modulation.{p}"] = tuple(f"{key}.{p}" for key in modulation_keys(config))
    return table


class FluxTransformer2DModel(nn.Module):
    """forward(hidden_states [B, S_img, in_ch], encoder_hidden_states [B, S_txt, joint_dim],
    pooled_projections [B, pool_dim], timestep [B] (t / 1000, as FluxPipeline passes it), img_ids [S_img, 3],
    txt_ids [S_txt, 3], guidance [B] | None, rope=None, modulation=None) -> [B, S_img, out_dim].

    `rope` is `model.rope(img_ids, txt_ids)`, computed once per request by the caller; when None it is
    computed here. `modulation` [B, sum(modulation_sizes)] is this step's row of `model.modulation_table(...)`
    (fused models only): the conditioning of several steps computed ahead in one GEMM, and timestep, guidance
    and pooled_projections are then not read; when None the step computes its own from them.
    `set_attn_op(op)` swaps the attention op of every block (sequence parallel uses it).
    fuse_projections=True builds the fused layout of flux_fuse_table (same numbers, fewer GEMMs)."""

    def __init__(self, config: FluxTransformerConfig, attn_op: AttnOp | None = None,
                 kernel_backend: str = "auto", fuse_projections: bool = False) -> None:
        super().__init__()
        self.config = config
        self.kernel_backend = kernel_backend
        self.fuse_projections = fuse_projections
        attn_op = attn_op or sdpa_attn_op
        dim, heads, head_dim = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        self.time_text_embed = CombinedTimestepGuidanceTextProjEmbeddings(
            dim, config.pooled_projection_dim, config.guidance_embeds, kernel_backend
        )
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim)
        self.x_embedder = nn.Linear(config.in_channels, dim)
        fused = fuse_projections
        self.transformer_blocks = nn.ModuleList(
            FluxTransformerBlock(dim, heads, head_dim, kernel_backend, attn_op, fused) for _ in range(config.num_layers)
        )
        self.single_transformer_blocks = nn.ModuleList(
            FluxSingleTransformerBlock(dim, heads, head_dim, kernel_backend, attn_op, fused)
            for _ in range(config.num_single_layers)
        )
        self.norm_out = AdaLayerNormContinuous(dim, kernel_backend, fused)
        self.proj_out = nn.Linear(dim, config.out_dim)
        # [double: 6D, 6D] * num_layers, [single: 3D] * num_single_layers, [norm_out: 2D]
        self.modulation_sizes = [6 * dim] * (2 * config.num_layers) + [3 * dim] * config.num_single_layers + [2 * dim]
        if fused:
            self.modulation = nn.Linear(dim, sum(self.modulation_sizes))

    def set_attn_op(self, attn_op: AttnOp) -> None:
        for block in (*self.transformer_blocks, *self.single_transformer_blocks):
            block.attn_op = attn_op

    def rope(self, img_ids: torch.Tensor, txt_ids: torch.Tensor) -> Rope:
        """(cos, sin) [S_txt + S_img, Dh / 2] fp32 for the joint sequence [txt, img]."""
        ids = torch.cat([txt_ids, img_ids], dim=0)
        return rope_cos_sin(ids, self.config.axes_dims_rope, ROPE_THETA)

    def modulations(self, silu_temb: torch.Tensor) -> list[torch.Tensor]:
        """Every adaLN vector of the step, [B, n_i] each in modulation_keys order: one GEMM when fused
        (slices of one [B, sum n_i] output), else one per checkpoint projection."""
        if self.fuse_projections:
            return list(self.modulation(silu_temb).split(self.modulation_sizes, dim=1))
        return [self.get_submodule(key)(silu_temb) for key in modulation_keys(self.config)]

    def silu_temb(self, timestep: torch.Tensor, guidance: torch.Tensor | None,
                  pooled_projections: torch.Tensor) -> torch.Tensor:
        """silu(conditioning embedding) [N, D] for N rows of (timestep [N] as forward takes it, guidance [N],
        pooled [N, pool_dim]). As diffusers, t and g are rounded to the model's dtype before the scaling by
        1000."""
        dtype = self.x_embedder.weight.dtype
        timestep = timestep.to(dtype) * 1000
        guidance = None if guidance is None else guidance.to(dtype) * 1000
        return F.silu(self.time_text_embed(timestep, guidance, pooled_projections))

    def modulation_table(self, timestep: torch.Tensor, guidance: torch.Tensor | None,
                         pooled_projections: torch.Tensor) -> torch.Tensor:
        """The `modulation` argument of forward for several steps at once: timestep [T, B] (each step's
        forward timestep), guidance [B] | None and pooled_projections [B, pool_dim] (the same every step) ->
        [T, B, sum(modulation_sizes)], one fused GEMM for all T * B rows. The modulation weights (6.5 GB for
        FLUX.1-dev) are then read once for T steps instead of once per step. Fused models only."""
        if not self.fuse_projections:
            raise ValueError("modulation_table needs a model built with fuse_projections=True")
        steps, batch = timestep.shape
        if pooled_projections.shape[0] != batch or (guidance is not None and guidance.shape != (batch,)):
            raise ValueError(f"modulation_table: timestep {tuple(timestep.shape)} is [steps, B] but pooled "
                             f"{tuple(pooled_projections.shape)} / guidance "
                             f"{None if guidance is None else tuple(guidance.shape)} are not [B, ...] / [B]")
        rows = self.silu_temb(timestep.reshape(-1), None if guidance is None else guidance.repeat(steps),
                              pooled_projections.repeat(steps, 1))
        return self.modulation(rows).view(steps, batch, -1)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, timestep: torch.Tensor, img_ids: torch.Tensor,
                txt_ids: torch.Tensor, guidance: torch.Tensor | None = None, rope: Rope | None = None,
                modulation: torch.Tensor | None = None) -> torch.Tensor:
        img = self.x_embedder(hidden_states)  # [B, S_img, D]
        txt = self.context_embedder(encoder_hidden_states)  # [B, S_txt, D]
        txt_len = txt.shape[1]
        if modulation is not None:
            if not self.fuse_projections:
                raise ValueError("modulation= needs a model built with fuse_projections=True (modulation_table)")
            mods = iter(modulation.split(self.modulation_sizes, dim=1))
        else:
            mods = iter(self.modulations(self.silu_temb(timestep, guidance, pooled_projections)))
        if rope is None:
            rope = self.rope(img_ids, txt_ids)
        img, txt = self._double_stream(img, txt, [next(mods) for _ in range(2 * len(self.transformer_blocks))], rope)
        # single-stream blocks over the joint sequence, text first, then the output norm
        x = torch.cat([txt, img], dim=1)
        single_mods = [next(mods) for _ in self.single_transformer_blocks]
        return self.proj_out(self._single_stream(x, single_mods, next(mods), rope, txt_len))

    def _double_stream(self, img: torch.Tensor, txt: torch.Tensor, mods: list[torch.Tensor],
                       rope: Rope) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, S_img, D], txt [B, S_txt, D] through the double blocks (mods: img_mod, txt_mod per block).

        Each block's last gated residual x + gate_mlp * ff(...) is fused with the next block's first modulated
        norm (gated_residual_norm_modulate), per stream: one pass over [B, S, D] instead of two, and no
        separate addcmul kernel; the last block's residuals stay addcmuls (the single blocks concatenate
        them). fp16 runs keep the unfused blocks: diffusers clips the fp16 txt residual after each block."""
        blocks, backend = self.transformer_blocks, self.kernel_backend
        if img.dtype == torch.float16 or len(blocks) == 0:
            for i, block in enumerate(blocks):
                img, txt = block(img, txt, mods[2 * i], mods[2 * i + 1], rope)
            return img, txt
        # per block and stream: (msa, mlp) Modulations
        split = [split_modulation(mod, 2) for mod in mods]
        img_in = layer_norm_modulate(img, split[0][0].shift, split[0][0].scale, NORM_EPS, backend=backend)
        txt_in = layer_norm_modulate(txt, split[1][0].shift, split[1][0].scale, NORM_EPS, backend=backend)
        for i, block in enumerate(blocks[:-1]):
            img, txt, img_ff, txt_ff = block.branches(img, txt, img_in, txt_in, mods[2 * i], mods[2 * i + 1], rope)
            (_, img_mlp), (img_next, _) = split[2 * i], split[2 * i + 2]
            (_, txt_mlp), (txt_next, _) = split[2 * i + 1], split[2 * i + 3]
            img, img_in = gated_residual_norm_modulate(img, img_ff, img_mlp.gate, img_next.shift, img_next.scale,
                                                       NORM_EPS, backend=backend)
            txt, txt_in = gated_residual_norm_modulate(txt, txt_ff, txt_mlp.gate, txt_next.shift, txt_next.scale,
                                                       NORM_EPS, backend=backend)
        img, txt, img_ff, txt_ff = blocks[-1].branches(img, txt, img_in, txt_in, mods[-2], mods[-1], rope)
        img_gate, txt_gate = split[-2][1].gate, split[-1][1].gate
        return torch.addcmul(img, img_gate.unsqueeze(1), img_ff), torch.addcmul(txt, txt_gate.unsqueeze(1), txt_ff)

    def _single_stream(self, x: torch.Tensor, mods: list[torch.Tensor], out_mod: torch.Tensor, rope: Rope,
                       txt_len: int) -> torch.Tensor:
        """x [B, S_txt + S_img, D] through the single blocks -> norm_out(image rows) [B, S_img, D].

        Each block's gated residual x + gate * branch(y) is fused with the next block's modulated norm
        (gated_residual_norm_modulate: one pass over [B, S, D] instead of two), the last one with norm_out on
        the image rows only (the text rows are not used after the last block). fp16 runs keep the unfused
        blocks: diffusers clips the fp16 residual to the finite range before the next norm reads it."""
        blocks, backend = self.single_transformer_blocks, self.kernel_backend
        if x.dtype == torch.float16 or len(blocks) == 0:
            for block, mod in zip(blocks, mods):
                x = block(x, mod, rope, txt_len)
            return self.norm_out(x[:, txt_len:].contiguous(), out_mod)
        mods = [split_modulation(mod, 1)[0] for mod in mods]
        y = layer_norm_modulate(x, mods[0].shift, mods[0].scale, NORM_EPS, backend=backend)
        for i, block in enumerate(blocks[:-1]):
            x, y = gated_residual_norm_modulate(x, block.branch(y, rope, txt_len), mods[i].gate,
                                                mods[i + 1].shift, mods[i + 1].scale, NORM_EPS, backend=backend)
        out = blocks[-1].branch(y, rope, txt_len)
        scale, shift = out_mod.chunk(2, dim=1)  # norm_out's order: scale first (AdaLayerNormContinuous)
        _, img = gated_residual_norm_modulate(x[:, txt_len:], out[:, txt_len:], mods[-1].gate, shift, scale,
                                              NORM_EPS, backend=backend)
        return img


# loading


def flux_checkpoint_state_dict(model: FluxTransformer2DModel) -> dict[str, torch.Tensor]:
    """The model's tensors under the diffusers checkpoint keys: for a fused model, each fused tensor's
    dim-0 slices (views sharing its memory, e.g. for `load_state_dict(..., assign=True)` of a diffusers twin)."""
    state = model.state_dict()
    if not model.fuse_projections:
        return state
    with torch.device("meta"):
        shapes = {k: t.shape for k, t in FluxTransformer2DModel(model.config).state_dict().items()}
    for target, sources in flux_fuse_table(model.config).items():
        fused, offset = state.pop(target), 0
        for source in sources:
            state[source] = fused.narrow(0, offset, shapes[source][0])
            offset += shapes[source][0]
    return state


def _init_dummy_fused(model: FluxTransformer2DModel, seed: int) -> None:
    """init_dummy_weights of the UNFUSED model (same seed: the same numbers), written through checkpoint
    views into the fused tensors."""
    with torch.device("meta"):
        shadow = FluxTransformer2DModel(model.config)
    init_dummy_weights_through(shadow, flux_checkpoint_state_dict(model), seed)


def load_flux_transformer(folder: str | None = None, preset: str | None = None, dtype: torch.dtype = torch.bfloat16,
                          device: str | torch.device = "cpu", attn_op: AttnOp | None = None,
                          kernel_backend: str = "auto", load_format: str = "auto",
                          fuse_projections: bool = True) -> FluxTransformer2DModel:
    """A FLUX transformer from a diffusers `transformer/` folder (config.json + safetensors), or with
    load_format="dummy" random weights for the folder's config or the built-in `preset` (the same numbers
    fused or not). Parameters are allocated once, on `device`, in `dtype`; fuse_projections (the inference
    default) concatenates the checkpoint's projections by flux_fuse_table."""
    if load_format not in ("auto", "dummy"):
        raise ValueError(f"load_format={load_format!r}: allowed are 'auto' and 'dummy'")
    if (folder is None) == (preset is None):
        raise ValueError("load_flux_transformer needs exactly one of folder= (a transformer/ folder) and preset=")
    if folder is None and load_format != "dummy":
        raise ValueError(f"preset {preset!r} has no weights: use load_format='dummy' or pass a checkpoint folder")
    config = FluxTransformerConfig.from_dict(read_config(folder)) if folder else flux_transformer_preset(preset)
    model = build_module(lambda: FluxTransformer2DModel(config, attn_op, kernel_backend, fuse_projections),
                         dtype, device)
    if load_format == "dummy" and fuse_projections:
        _init_dummy_fused(model, seed=0)
    elif load_format == "dummy":
        init_dummy_weights(model, seed=0)
    else:
        fuse_table = flux_fuse_table(config) if fuse_projections else None
        load_weights(model, load_state_dict(folder), "transformer", fuse_table=fuse_table)
    get_logger().info(
        "transformer: FLUX %d+%d blocks, %d heads x %d, %s on %s, weights %s, projections %s",
        config.num_layers, config.num_single_layers, config.num_attention_heads, config.attention_head_dim,
        str(dtype).removeprefix("torch."), device, "random (dummy)" if load_format == "dummy" else f"from {folder}",
        "fused" if fuse_projections else "as in the checkpoint",
    )
    return model
