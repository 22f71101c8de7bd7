"""Wan2.1 video DiT (WanTransformer3DModel), the same numbers as diffusers' transformer_wan.py.

    video latents [B, C, F, H, W] --patch (1, 2, 2)--> img tokens [B, S, dim], S = F * H/2 * W/2
    each block:  img = img + gate_msa * SelfAttn(LN(img) * (1 + scale_msa) + shift_msa)   (3-axis RoPE)
                 img = img + CrossAttn(LN_affine(img), txt [, image tokens])
                 img = img + c_gate * FFN(LN(img) * (1 + c_scale) + c_shift)
    out: LN(img) * (1 + scale) + shift -> proj_out -> unpatchify -> [B, C_out, F, H, W]

Q and K are RMS-normalised across all heads (weight [H*D]) before the split into heads. The six
modulation vectors of a block are `scale_shift_table[1, 6, dim] + time_proj(silu(temb))` (fp32).
Module names equal the diffusers checkpoint keys. Hot ops go through fastdit.ops with
`backend=self.kernel_backend`; attention goes through `attn_op(q, k, v)` on [B, S, H, D] tensors.

fuse_projections=True (what load_wan_transformer builds by default) keeps the same numbers with fewer,
larger GEMMs; the checkpoint tensors are concatenated on dim 0 at load by Wan's fuse table:
    blocks.i.attn1.to_qkv      = [to_q; to_k; to_v]          one GEMM of x; q, k, v are views of it
    blocks.i.attn2.to_kv       = [to_k; to_v]                one GEMM of the text (to_q reads x: alone)
    blocks.i.attn2.add_kv_proj = [add_k_proj; add_v_proj]    I2V: one GEMM of the image tokens
`wan_checkpoint_state_dict(model)` gives the checkpoint keys back as views (no copy).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdit import ops
from fastdit.configs.base import DiffusersConfig
from fastdit.layers.attention import attention
from fastdit.layers.linear import linear_gelu_tanh

AttnOp = Callable[..., torch.Tensor]


def _default_attn_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, joint_txt_len: int = 0) -> torch.Tensor:
    return attention(q, k, v)


# config


@dataclasses.dataclass(frozen=True)
class WanTransformerConfig(DiffusersConfig):
    """The fields of diffusers' WanTransformer3DModel config.json (defaults: Wan2.1-T2V-14B)."""

    _diffusers_class = "WanTransformer3DModel"

    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    qk_norm: str | None = "rms_norm_across_heads"
    eps: float = 1e-6
    image_dim: int | None = None
    added_kv_proj_dim: int | None = None
    rope_max_seq_len: int = 1024
    pos_embed_seq_len: int | None = None

    def __post_init__(self):
        if self.qk_norm != "rms_norm_across_heads":
            raise ValueError(f"WanTransformerConfig.qk_norm={self.qk_norm!r}: only 'rms_norm_across_heads' is supported")
        if self.pos_embed_seq_len is not None:
            raise ValueError(f"WanTransformerConfig.pos_embed_seq_len={self.pos_embed_seq_len}: Wan2.1 FLF2V is not supported (use None)")
        if (self.image_dim is None) != (self.added_kv_proj_dim is None):
            raise ValueError(
                f"WanTransformerConfig: image_dim={self.image_dim} and added_kv_proj_dim={self.added_kv_proj_dim} "
                "must be both set (I2V) or both None (T2V)"
            )
        if self.added_kv_proj_dim is not None and self.added_kv_proj_dim != self.inner_dim:
            raise ValueError(
                f"WanTransformerConfig.added_kv_proj_dim={self.added_kv_proj_dim} must equal heads * head_dim "
                f"= {self.inner_dim} (image tokens are projected to that width first)"
            )
        if self.num_layers < 1:
            raise ValueError(f"WanTransformerConfig.num_layers={self.num_layers} must be >= 1")
        if self.attention_head_dim % 2:
            raise ValueError(f"WanTransformerConfig.attention_head_dim={self.attention_head_dim} must be even (RoPE pairs)")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


# rope


def wan_rope(
    head_dim: int, grid: tuple[int, int, int], max_seq_len: int = 1024, theta: float = 10000.0, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [S, head_dim/2] fp32 for a (F, H, W) token grid, S = F*H*W in (f, h, w) order.

    The head's rotated pairs split into t, h, w groups (h and w get 2*(D//6) channels each, t the
    rest); pair i of an axis of size d turns by pos * theta^(-2i/d). Angles in fp64 as diffusers.
    """
    h_dim = w_dim = 2 * (head_dim // 6)
    t_dim = head_dim - h_dim - w_dim
    angles = []
    for axis, (dim, n) in enumerate(zip((t_dim, h_dim, w_dim), grid)):
        if n > max_seq_len:
            raise ValueError(f"wan_rope: grid axis {axis} has {n} positions, more than rope_max_seq_len={max_seq_len}")
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
        a = torch.outer(torch.arange(n, dtype=torch.float64, device=device), freqs)  # [n, dim/2]
        shape = [1, 1, 1, dim // 2]
        shape[axis] = n
        angles.append(a.view(shape).expand(*grid, dim // 2))
    ang = torch.cat(angles, dim=-1).reshape(-1, head_dim // 2)  # [S, D/2]
    return ang.cos().float(), ang.sin().float()


# attention


class WanAttention(nn.Module):
    """Self- or cross-attention with RMSNorm of q and k over all heads (weight [H*D]).

    Cross-attention of the I2V model also attends to image tokens through add_k_proj / add_v_proj
    (k normalised by norm_added_k), and adds the two attention outputs.
    fused=True (wan_fuse_table): self-attention projects q, k, v with ONE GEMM, to_qkv = [to_q; to_k; to_v];
    cross-attention projects the text's k, v with one, to_kv = [to_k; to_v] (and the image tokens' with
    add_kv_proj = [add_k_proj; add_v_proj]); its to_q stays alone, as it reads x, not the context.
    """

    def __init__(self, dim: int, heads: int, eps: float, cross: bool, added_kv_proj_dim: int | None = None,
                 fused: bool = False):
        super().__init__()
        self.heads = heads
        self.eps = eps
        self.fused = fused
        if fused and not cross:
            self.to_qkv = nn.Linear(dim, 3 * dim)
        else:
            self.to_q = nn.Linear(dim, dim)
        if fused and cross:
            self.to_kv = nn.Linear(dim, 2 * dim)
        elif not fused:
            self.to_k = nn.Linear(dim, dim)
            self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        if added_kv_proj_dim is not None:
            if fused:
                self.add_kv_proj = nn.Linear(added_kv_proj_dim, 2 * dim)
            else:
                self.add_k_proj = nn.Linear(added_kv_proj_dim, dim)
                self.add_v_proj = nn.Linear(added_kv_proj_dim, dim)
            self.norm_added_k = nn.RMSNorm(dim, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1))  # [B, S, H*D] -> [B, S, H, D]

    def split_heads(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """to_qkv's output [B, S, 3 * H * D] -> q, k, v [B, S, H, D] (views, token stride 3 * H * D)."""
        return qkv.unflatten(-1, (3, self.heads, -1)).unbind(2)

    def _kv(self, ctx: torch.Tensor, image: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Context tokens [B, S_ctx, dim_ctx] -> (k before its norm [B, S_ctx, H*D], v [B, S_ctx, H, D]) through the
        text (image=False) or image (image=True) projections; fused: views of one [B, S_ctx, 2*H*D] GEMM output."""
        if self.fused:
            k, v = (self.add_kv_proj if image else self.to_kv)(ctx).chunk(2, dim=-1)  # row stride 2 * H * D
        else:
            k_proj, v_proj = (self.add_k_proj, self.add_v_proj) if image else (self.to_k, self.to_v)
            k, v = k_proj(ctx), v_proj(ctx)
        return k, self._heads(v)

    def self_attention(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn_op: AttnOp, backend: str
    ) -> torch.Tensor:
        """x [B, S, dim] -> [B, S, dim]; q, k normalised and rotated in place by one fused op (fused: in the
        to_qkv output itself; qk_norm_rope takes the token stride 3 * dim on every backend)."""
        if self.fused:
            q, k, v = self.split_heads(self.to_qkv(x))  # [B, S, H, D] views
        else:
            q, k, v = (self._heads(proj(x)) for proj in (self.to_q, self.to_k, self.to_v))
        cos, sin = rope
        q, k = ops.qk_norm_rope(
            q, k, self.norm_q.weight, self.norm_k.weight, cos, sin,
            style="interleaved", norm="across_heads", eps=self.eps, backend=backend,
        )
        out = attn_op(q, k, v)  # [B, S, H, D]
        return self.to_out[0](out.flatten(2))

    def cross_attention(
        self, x: torch.Tensor, txt: torch.Tensor, img_ctx: torch.Tensor | None, attn_op: AttnOp, backend: str
    ) -> torch.Tensor:
        """x [B, S, dim] attends to txt [B, S_txt, dim] (and img_ctx [B, S_ctx, dim] for I2V). rms_norm reads
        the fused k views through their row stride and writes a fresh contiguous k."""
        q = self._heads(ops.rms_norm(self.to_q(x), self.norm_q.weight, self.eps, backend=backend))
        k, v = self._kv(txt, image=False)
        out = attn_op(q, self._heads(ops.rms_norm(k, self.norm_k.weight, self.eps, backend=backend)), v)
        if img_ctx is not None:
            k_img, v_img = self._kv(img_ctx, image=True)
            k_img = ops.rms_norm(k_img, self.norm_added_k.weight, self.eps, backend=backend)
            out = out + attn_op(q, self._heads(k_img), v_img)
        return self.to_out[0](out.flatten(2))


# blocks


class Modulation(NamedTuple):
    """adaLN vectors of one block, each [B, dim] in the activations' dtype: msa for self-attention, c_ for the FFN."""

    shift_msa: torch.Tensor
    scale_msa: torch.Tensor
    gate_msa: torch.Tensor
    c_shift: torch.Tensor
    c_scale: torch.Tensor
    c_gate: torch.Tensor


class GELUProj(nn.Module):
    """diffusers' GELU activation module: a Linear followed by GELU (tanh or exact)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)
        self.approximate = approximate

    def forward(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        if self.approximate == "tanh":
            # On CUDA one GEMM with cuBLASLt's bias+GELU(tanh) epilogue: the [B, S, ffn_dim] pre-activation is
            # never written and re-read (a full GELU pass per block); elsewhere Linear + ops.gelu_tanh.
            return linear_gelu_tanh(x, self.proj.weight, self.proj.bias, backend=backend)
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    """net.0 = Linear + GELU, net.2 = Linear (net.1 is diffusers' dropout, weightless, so absent here)."""

    def __init__(self, dim: int, inner_dim: int, dim_out: int, approximate: str):
        super().__init__()
        self.net = nn.ModuleDict({"0": GELUProj(dim, inner_dim, approximate), "2": nn.Linear(inner_dim, dim_out)})

    def forward(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        return self.net["2"](self.net["0"](x, backend))


class WanTransformerBlock(nn.Module):
    def __init__(self, cfg: WanTransformerConfig, fused: bool = False):
        super().__init__()
        dim = cfg.inner_dim
        self.eps = cfg.eps
        self.attn1 = WanAttention(dim, cfg.num_attention_heads, cfg.eps, cross=False, fused=fused)
        self.attn2 = WanAttention(dim, cfg.num_attention_heads, cfg.eps, cross=True,
                                  added_kv_proj_dim=cfg.added_kv_proj_dim, fused=fused)
        # norm2 is the (affine) LayerNorm in front of cross-attention; diffusers' Identity when off.
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(dim, cfg.ffn_dim, dim, approximate="tanh")
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def modulation(self, timestep_proj: torch.Tensor, dtype: torch.dtype) -> Modulation:
        """timestep_proj [B, 6, dim] -> six [B, dim] strided views, summed in fp32 as diffusers, then cast to
        the activations' dtype (what the fused norm ops take)."""
        mod = self.scale_shift_table.float() + timestep_proj.float()  # [B, 6, dim]
        return Modulation(*mod.to(dtype).unbind(1))

    def _norm2_as_modulation(self, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine LayerNorm y = LN(r) * w + b as a modulation: shift = b, scale = w - 1, each [B, dim]."""
        shift = self.norm2.bias.to(dtype).expand(batch, -1)
        scale = (self.norm2.weight.float() - 1).to(dtype).expand(batch, -1)
        return shift, scale

    def forward(
        self,
        img: torch.Tensor,
        x: torch.Tensor,
        txt: torch.Tensor,
        img_ctx: torch.Tensor | None,
        m: Modulation,
        next_mod: tuple[torch.Tensor, torch.Tensor],
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_op: AttnOp,
        backend: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """img: the residual stream [B, S, dim]; x = LN(img) * (1 + scale_msa) + shift_msa, made by the caller.
        txt [B, S_txt, dim], img_ctx [B, S_ctx, dim] | None. Each residual add is fused with the norm after it
        (gated_residual_norm_modulate); the last one with the NEXT block's (or the output's) modulated norm,
        next_mod = (shift, scale). Returns (img, that normalised input)."""
        B, dtype, eps = img.shape[0], img.dtype, self.eps

        # self-attention
        attn = self.attn1.self_attention(x, rope, attn_op, backend)
        if self.norm2 is None:
            img = (img.float() + attn.float() * m.gate_msa[:, None].float()).to(dtype)
            x = img
        else:
            img, x = ops.gated_residual_norm_modulate(
                img, attn, m.gate_msa, *self._norm2_as_modulation(B, dtype), eps, backend=backend
            )

        # cross-attention (ungated residual)
        cross = self.attn2.cross_attention(x, txt, img_ctx, attn_op, backend)
        ones = img.new_ones(img.shape[-1]).expand(B, -1)  # gate 1; the ops want a unit-stride last dim
        img, x = ops.gated_residual_norm_modulate(img, cross, ones, m.c_shift, m.c_scale, eps, backend=backend)

        # feed-forward
        ff = self.ffn(x, backend)
        return ops.gated_residual_norm_modulate(img, ff, m.c_gate, *next_mod, eps, backend=backend)


# embeddings


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TextProjection(nn.Module):
    """linear_1 -> GELU(tanh) -> linear_2 (diffusers' PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        return self.linear_2(ops.gelu_tanh(self.linear_1(x), backend=backend))


def _fp32_layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    w = ln.weight.float() if ln.weight is not None else None
    b = ln.bias.float() if ln.bias is not None else None
    return F.layer_norm(x.float(), ln.normalized_shape, w, b, ln.eps).to(x.dtype)


class WanImageEmbedding(nn.Module):
    """CLIP image tokens [B, 257, image_dim] -> [B, 257, dim]: LN -> FFN(exact GELU) -> LN (fp32 norms)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(in_dim)
        self.ff = FeedForward(in_dim, in_dim, dim, approximate="none")
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _fp32_layer_norm(self.ff(_fp32_layer_norm(x, self.norm1)), self.norm2)


class WanTimeTextImageEmbedding(nn.Module):
    def __init__(self, cfg: WanTransformerConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)
        self.text_embedder = TextProjection(cfg.text_dim, dim)
        self.image_embedder = WanImageEmbedding(cfg.image_dim, dim) if cfg.image_dim is not None else None

    def time(self, timestep: torch.Tensor, dtype: torch.dtype, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep [B] (0..1000) -> temb [B, dim], timestep_proj [B, 6, dim]."""
        # diffusers embeds float(t); the scheduler may hand out int64 timesteps (UniPC)
        t_freq = ops.timestep_embedding(timestep.float(), self.freq_dim, flip_sin_to_cos=True, backend=backend)
        t_freq = t_freq.to(self.time_embedder.linear_1.weight.dtype)
        temb = self.time_embedder(t_freq).to(dtype)
        timestep_proj = self.time_proj(F.silu(temb))
        return temb, timestep_proj.unflatten(1, (6, -1))


# model


class WanTransformer3DModel(nn.Module):
    """Wan2.1 DiT. forward(hidden_states [B, C_in, F, H, W], timestep [B], encoder_hidden_states
    [B, S_txt, text_dim], encoder_hidden_states_image [B, S_ctx, image_dim] | None) -> [B, C_out, F, H, W].
    fuse_projections=True builds the fused layout of wan_fuse_table (same numbers, fewer GEMMs).
    """

    def __init__(self, config: WanTransformerConfig, attn_op: AttnOp | None = None, kernel_backend: str = "auto",
                 fuse_projections: bool = False):
        super().__init__()
        self.config = config
        self.kernel_backend = kernel_backend
        self.fuse_projections = fuse_projections
        self.attn_op = attn_op or _default_attn_op
        dim = config.inner_dim
        self.patch_embedding = nn.Conv3d(config.in_channels, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(config)
        self.blocks = nn.ModuleList([WanTransformerBlock(config, fuse_projections) for _ in range(config.num_layers)])
        self.norm_out = nn.LayerNorm(dim, eps=config.eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, config.out_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def set_attn_op(self, attn_op: AttnOp) -> None:
        self.attn_op = attn_op

    def grid(self, latent_shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (F', H', W') of latents [B, C, F, H, W] after patching."""
        p_t, p_h, p_w = self.config.patch_size
        _, _, f, h, w = latent_shape
        if f % p_t or h % p_h or w % p_w:
            raise ValueError(f"WanTransformer3DModel: latent size (F, H, W)=({f}, {h}, {w}) must divide by patch_size {self.config.patch_size}")
        return f // p_t, h // p_h, w // p_w

    def rope(self, latent_shape, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [S, D/2] for latents of this shape: step-invariant, computed once per request."""
        cfg = self.config
        return wan_rope(cfg.attention_head_dim, self.grid(latent_shape), cfg.rope_max_seq_len, device=device)

    def encode_context(
        self, encoder_hidden_states: torch.Tensor, encoder_hidden_states_image: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projects text [B, S_txt, text_dim] and image [B, S_ctx, image_dim] tokens to dim (step-invariant)."""
        emb = self.condition_embedder
        txt = emb.text_embedder(encoder_hidden_states, self.kernel_backend)
        if encoder_hidden_states_image is None:
            if emb.image_embedder is not None:
                raise ValueError("WanTransformer3DModel: this I2V model needs encoder_hidden_states_image")
            return txt, None
        if emb.image_embedder is None:
            raise ValueError("WanTransformer3DModel: encoder_hidden_states_image given to a T2V model (image_dim=None)")
        return txt, emb.image_embedder(encoder_hidden_states_image)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        context: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """rope: `self.rope(shape)`, context: `self.encode_context(...)`, both step-invariant: a sampling loop
        computes them once and passes them instead of recomputing (then encoder_hidden_states* are unused)."""
        backend = self.kernel_backend
        B = hidden_states.shape[0]
        f, h, w = self.grid(hidden_states.shape)
        if rope is None:
            rope = self.rope(hidden_states.shape, device=hidden_states.device)

        # embeddings
        img = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()  # [B, S, dim]
        temb, timestep_proj = self.condition_embedder.time(timestep, img.dtype, backend)
        if context is None:
            if encoder_hidden_states is None:
                raise ValueError("WanTransformer3DModel: give encoder_hidden_states or a precomputed context")
            context = self.encode_context(encoder_hidden_states, encoder_hidden_states_image)
        txt, img_ctx = context

        # blocks: each hands the next one its modulated norm (the output norm's, after the last)
        mods = [block.modulation(timestep_proj, img.dtype) for block in self.blocks]
        out_mod = (self.scale_shift_table.float() + temb.float()[:, None]).to(img.dtype)  # [B, 2, dim]: shift, scale
        norm_mods = [(m.shift_msa, m.scale_msa) for m in mods[1:]] + [tuple(out_mod.unbind(1))]
        x = ops.layer_norm_modulate(img, mods[0].shift_msa, mods[0].scale_msa, self.config.eps, backend=backend)
        for block, m, next_mod in zip(self.blocks, mods, norm_mods):
            img, x = block(img, x, txt, img_ctx, m, next_mod, rope, self.attn_op, backend)

        # output projection, unpatchify
        img = self.proj_out(x)  # [B, S, p_t*p_h*p_w*C_out]
        p_t, p_h, p_w = self.config.patch_size
        img = img.reshape(B, f, h, w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return img.reshape(B, -1, f * p_t, h * p_h, w * p_w)


# loading

# Parameters diffusers keeps in fp32 in a bf16 model (its _keep_in_fp32_modules, matched against the name's
# dot-separated parts as its loader does): the adaLN tables, the timestep MLP and the affine LayerNorms (each
# block's norm2, the I2V image embedder's norm1/norm2), whose small differences from 0 or 1 would otherwise be
# rounded away before they modulate every token.
KEEP_IN_FP32 = ("time_embedder", "scale_shift_table", "norm1", "norm2", "norm3")


def _kept_in_fp32(name: str) -> bool:
    return any(part in KEEP_IN_FP32 for part in name.split("."))


def wan_fuse_table(config: WanTransformerConfig) -> dict[str, tuple[str, ...]]:
    """Wan's fuse table for loader.weights.load_weights: fused key -> checkpoint keys, concatenated on dim 0
    (each source has dim = H * D output rows). Keys are full (block index included)."""
    table: dict[str, tuple[str, ...]] = {}
    for i in range(config.num_layers):
        self_attn, cross_attn = f"blocks.{i}.attn1", f"blocks.{i}.attn2"
        for p in ("weight", "bias"):
            table[f"{self_attn}.to_qkv.{p}"] = tuple(f"{self_attn}.to_{x}.{p}" for x in "qkv")
            table[f"{cross_attn}.to_kv.{p}"] = tuple(f"{cross_attn}.to_{x}.{p}" for x in "kv")
            if config.added_kv_proj_dim is not None:
                table[f"{cross_attn}.add_kv_proj.{p}"] = tuple(f"{cross_attn}.add_{x}_proj.{p}" for x in "kv")
    return table


def wan_checkpoint_state_dict(model: WanTransformer3DModel) -> dict[str, torch.Tensor]:
    """The model's tensors under the diffusers checkpoint keys: for a fused model, each fused tensor's
    equal dim-0 parts (views sharing its memory, e.g. for `load_state_dict(..., assign=True)` of a diffusers
    twin; no copy)."""
    state = model.state_dict()
    if not model.fuse_projections:
        return state
    for target, sources in wan_fuse_table(model.config).items():
        state.update(zip(sources, state.pop(target).chunk(len(sources), dim=0)))
    return state


def _init_dummy_fused(model: WanTransformer3DModel, seed: int) -> None:
    """init_dummy_weights of the UNFUSED model (same seed: the same numbers), written through checkpoint
    views into the fused tensors."""
    from fastdit.loader.weights import init_dummy_weights_through

    with torch.device("meta"):
        shadow = WanTransformer3DModel(model.config)
    init_dummy_weights_through(shadow, wan_checkpoint_state_dict(model), seed)


def load_wan_transformer(
    config: WanTransformerConfig, folder: str | None, dtype: torch.dtype, device,
    attn_op: AttnOp | None = None, kernel_backend: str = "auto", fuse_projections: bool = True,
) -> WanTransformer3DModel:
    """Builds the model on `device` (parameters allocated once, there) and fills it from a diffusers
    `transformer/` folder, or with random weights when folder is None (--load-format dummy; the same numbers
    fused or not). fuse_projections (the inference default) concatenates the checkpoint's attention
    projections by wan_fuse_table."""
    from fastdit.loader.weights import build_module, init_dummy_weights, load_state_dict, load_weights

    model = build_module(lambda: WanTransformer3DModel(config, attn_op, kernel_backend, fuse_projections),
                         dtype, device)
    for name, param in model.named_parameters():
        if _kept_in_fp32(name):
            param.data = param.data.float()
    if folder is None and fuse_projections:
        _init_dummy_fused(model, seed=0)
    elif folder is None:
        init_dummy_weights(model, seed=0)
    else:
        fuse_table = wan_fuse_table(config) if fuse_projections else None
        load_weights(model, load_state_dict(folder), "transformer", fuse_table=fuse_table)
    return model
