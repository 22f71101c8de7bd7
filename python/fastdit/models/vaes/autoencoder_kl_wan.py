"""Wan2.1 video VAE (AutoencoderKLWan): causal 3D convolutions, 8x spatial and 4x temporal compression,
the same numbers as diffusers' autoencoder_kl_wan.py.

    encode: video [B, 3, 1 + 4k, H, W] in [-1, 1] -> latent mean [B, z_dim, 1 + k, H/8, W/8]
    decode: latents [B, z_dim, T, h, w] (un-normalised by the caller) -> video [B, 3, 1 + 4(T - 1), 8h, 8w] in [-1, 1]

Video is processed as a stream of temporal chunks (decode: `chunk_frames` latent frames at a time; encode:
the first frame, then 4 frames at a time, as diffusers). Every causal conv with a temporal kernel of 3 keeps
the last two frames of its input stream in a per-call `Stream` (diffusers' feat_cache), so chunked results
equal a whole-video pass while the activations of only one chunk are alive. The first frame of a stream is
special in the temporal resamplers (it is never doubled on decode, nor merged on encode), as in Wan.
Spatial tiling (`tile_sample_min_*` / `tile_sample_stride_*` pixels) blends overlapping tiles linearly.
Module names equal the diffusers checkpoint keys.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdit import ops
from fastdit.configs.base import DiffusersConfig
from fastdit.layers.attention import attention

Stream = dict  # module -> its cached tail frames (or a "seen the first frame" marker): one per video pass


@dataclasses.dataclass(frozen=True)
class WanVAEConfig(DiffusersConfig):
    """diffusers' AutoencoderKLWan config.json keys; defaults = Wan2.1 (Wan-AI/Wan2.1-*-Diffusers/vae)."""

    _diffusers_class = "AutoencoderKLWan"

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latents_mean: tuple[float, ...] = (
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
        0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    )
    latents_std: tuple[float, ...] = (
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
        3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    )
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int = 4
    scale_factor_spatial: int = 8

    def __post_init__(self):
        if self.is_residual or self.patch_size is not None:
            raise ValueError(
                f"WanVAEConfig: is_residual={self.is_residual}, patch_size={self.patch_size}: only the Wan2.1 VAE "
                "(is_residual=False, patch_size=None) is supported"
            )
        if self.attn_scales:
            raise ValueError(f"WanVAEConfig.attn_scales={list(self.attn_scales)}: only [] (Wan2.1) is supported")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"WanVAEConfig: temperal_downsample has {len(self.temperal_downsample)} entries, "
                f"need len(dim_mult) - 1 = {len(self.dim_mult) - 1}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"WanVAEConfig: latents_mean/latents_std need z_dim={self.z_dim} entries")


# leaves


class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time (2 * pad_t frames in front, none behind), symmetric in space.

    With a `stream`, the front padding is the tail of the previous chunk's input instead of zeros.
    The input may be an activation of x, written straight into the time-padded input buffer, so the padding
    (cached tail or zeros) costs no extra full-size copy of the activations (a pad or cat would):
      silu=True        convolves silu(x);
      norm=n           convolves silu(n(x + pre_bias)) (n a ChannelRMSNorm; pre_bias [C] or None): one fused
                       kernel on channels-last activations (ops.rms_norm_silu), the previous conv's bias folded in.
    skip_bias=True: the conv adds no bias (the caller folds it into what reads the output).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel, stride=1, padding=0):
        super().__init__(in_dim, out_dim, kernel, stride=stride, padding=padding)
        p_t, p_h, p_w = self.padding
        self.causal_t = 2 * p_t
        # time is padded by hand (cache or zeros, in front only); space by the convolution itself, no copy
        self.padding = (0, p_h, p_w)
        self.channels_last = False  # keep NDHWC outputs (a no-op where cuDNN returns them; CPU convs do not)

    def forward(self, x: torch.Tensor, stream: Stream | None = None, silu: bool = False,
                norm: ChannelRMSNorm | None = None, pre_bias: torch.Tensor | None = None,
                skip_bias: bool = False) -> torch.Tensor:
        act = _activation(silu, norm, pre_bias)
        p = self.causal_t
        if p:
            prev = stream.get(self) if stream is not None else None
            x = self._time_padded(x, prev, act)
            if stream is not None:
                stream[self] = x[:, :, -p:].clone()
        elif act is not None:
            x = act(x, None)
        y = self._conv_forward(x, self.weight, None if skip_bias else self.bias)
        return y.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else y

    def _time_padded(self, x: torch.Tensor, prev: torch.Tensor | None, act) -> torch.Tensor:
        """[prev or zeros (causal_t frames), act(x)] along time, in x's memory layout: one write of act(x)."""
        p = self.causal_t
        B, C, T, H, W = x.shape
        fmt = torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format
        out = torch.empty(B, C, p + T, H, W, dtype=x.dtype, device=x.device, memory_format=fmt)
        if prev is None:
            out[:, :, :p].zero_()
        else:
            out[:, :, :p].copy_(prev)
        if act is not None:
            act(x, out[:, :, p:])
        else:
            out[:, :, p:].copy_(x)
        return out


def _activation(silu: bool, norm: ChannelRMSNorm | None, pre_bias: torch.Tensor | None):
    """act(x, out | None) -> the conv input (written into out when given), or None for x itself."""
    if norm is not None:
        return lambda x, out: norm.silu(x, pre_bias, out)
    if pre_bias is not None:
        raise ValueError("CausalConv3d: pre_bias is folded into the norm; it needs norm=")
    if silu:
        return lambda x, out: F.silu(x) if out is None else torch.ops.aten.silu.out(x, out=out)
    return None


class ChannelRMSNorm(nn.Module):
    """diffusers' WanRMS_norm: x / ||x||_C * sqrt(C) * gamma over the channel dim (dim 1), fp32 for bf16.

    x / ||x|| * sqrt(C) = x / sqrt(mean(x^2)), so on a channels-last video (C the unit-stride dim) this is
    ops.rms_norm over the last dim of the [B, T, H, W, C] view: one fused pass in fp32 math instead of
    diffusers' five (fp32 copy, norm, divide, cast, two scalings). eps 1e-12 as F.normalize's floor.
    """

    def __init__(self, dim: int, images: bool):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))
        self.kernel_backend = "auto"

    @staticmethod
    def _rows(x: torch.Tensor) -> torch.Tensor | None:
        """The [B, T, H, W, C] view of a channels-last video x [B, C, T, H, W], or None."""
        if x.dim() == 5 and x.shape[1] > 1 and x.permute(0, 2, 3, 4, 1).is_contiguous():
            return x.permute(0, 2, 3, 4, 1)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._rows(x)
        if rows is not None:
            y = ops.rms_norm(rows, self.gamma.view(-1), 1e-12, backend=self.kernel_backend)
            return y.permute(0, 4, 1, 2, 3)
        xn = F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1).to(x.dtype)
        return xn * self.scale * self.gamma

    def silu(self, x: torch.Tensor, pre_bias: torch.Tensor | None = None,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """silu(self(x + pre_bias)), pre_bias [C] (a conv's bias) or None, written into out when given. A
        channels-last video whose out rows share one stride (batch 1, or no out) runs ops.rms_norm_silu: one
        pass, the sum x + pre_bias in fp32; otherwise the same math in separate ops."""
        rows = self._rows(x)
        out_rows = None if out is None else out.permute(0, 2, 3, 4, 1)
        if rows is not None and (out_rows is None or out.shape[0] == 1):
            y = ops.rms_norm_silu(rows, self.gamma.view(-1), 1e-12, pre_bias=pre_bias, out=out_rows,
                                  backend=self.kernel_backend)
            return y.permute(0, 4, 1, 2, 3)
        if pre_bias is not None:
            x = x + pre_bias.view(1, -1, *([1] * (x.dim() - 2)))
        y = self(x)
        return F.silu(y) if out is None else torch.ops.aten.silu.out(y, out=out)


class ResidualBlock(nn.Module):
    """x + conv2(silu(norm2(conv1(silu(norm1(x)))))), shortcut a 1x1x1 conv when the width changes.

    The convs' biases cost no pass of their own (torch adds a channels-last conv's bias in a separate kernel):
    conv1's is added inside norm2's fused kernel, conv2's (and the shortcut's) inside the residual add
    (ops.add_bias_residual). Not when a plan wrapped the convs: distributed/vae.py's halo convs pad their input
    rows with zeros, which must stay zero after the norm (silu(norm(0 + bias)) would not)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm1 = ChannelRMSNorm(in_dim, images=False)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = ChannelRMSNorm(out_dim, images=False)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else None

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        fold = type(self.conv1) is CausalConv3d and type(self.conv2) is CausalConv3d
        shortcut = self.conv_shortcut
        h = x if shortcut is None else shortcut(x, skip_bias=fold)
        y = self.conv1(x, stream, norm=self.norm1, skip_bias=fold)
        y = self.conv2(y, stream, norm=self.norm2, pre_bias=self.conv1.bias if fold else None, skip_bias=fold)
        if not fold:
            return y + h
        bias = self.conv2.bias if shortcut is None else self.conv2.bias + shortcut.bias
        return _add_bias_residual(y, h, bias)


def _add_bias_residual(y: torch.Tensor, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y + h + bias (per channel) for videos [B, C, T, H, W]: one fused pass into y when both are channels-last,
    else two torch ops."""
    y_rows, h_rows = ChannelRMSNorm._rows(y), ChannelRMSNorm._rows(h)
    if y_rows is not None and h_rows is not None:
        ops.add_bias_residual(y_rows, h_rows, bias, out=y_rows)
        return y
    return (y + h).add_(bias.view(1, -1, 1, 1, 1))


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W pixels of each frame (frames are independent).

    rows: only the output rows [..., rows, :] (queries from those rows, keys/values from all H*W): the
    spatially split decode (distributed/vae.py) gives each rank the whole x and its own strip's rows.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChannelRMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, stream: Stream | None = None, rows: slice | None = None) -> torch.Tensor:
        B, C, T, H, W = x.shape
        h = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
        qkv = self.to_qkv(self.norm(h)).flatten(2).transpose(1, 2)  # [B*T, H*W, 3C]
        q, k, v = (t.unsqueeze(2) for t in qkv.chunk(3, dim=-1))  # [B*T, H*W, 1, C]
        if rows is not None:
            x, q = x[:, :, :, rows], q[:, rows.start * W : rows.stop * W]
            H = x.shape[3]
        h = attention(q.contiguous(), k.contiguous(), v.contiguous()).squeeze(2)
        h = self.proj(h.transpose(1, 2).reshape(B * T, C, H, W))
        return x + h.view(B, T, C, H, W).permute(0, 2, 1, 3, 4)


def _per_frame_2d(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Applies a 2D module to every frame of x [B, C, T, H, W]."""
    B, C, T, H, W = x.shape
    y = module(x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W))
    return y.view(B, T, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class Resample(nn.Module):
    """WanResample: 2x spatial up/down, and for the *3d modes 2x in time too.

    upsample3d: time_conv doubles the channels and the halves are interleaved as two frames, for every
      frame but the stream's first (which Wan keeps single, so T latents give 1 + 4(T - 1) frames).
    downsample3d: a stride-2 temporal conv over windows (f_{2j-2}, f_{2j-1}, f_{2j}); the stream's first
      frame passes alone. Chunks after the first must hold an even number of frames.
    """

    def __init__(self, dim: int, mode: str, upsample_out_dim: int | None = None):
        super().__init__()
        self.mode = mode
        # diffusers' nn.Sequential(upsample-or-zero-pad, conv): only the conv, key "1", has weights
        if mode.startswith("upsample"):
            self.resample = nn.ModuleDict({"1": nn.Conv2d(dim, upsample_out_dim or dim // 2, 3, padding=1)})
        else:
            self.resample = nn.ModuleDict({"1": nn.Conv2d(dim, dim, 3, stride=2)})
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def _spatial(self, f: torch.Tensor) -> torch.Tensor:
        """frames f [N, C, H, W]: nearest 2x up or zero pad right/bottom, then the conv. (diffusers' WanUpsample
        interpolates in fp32; nearest only copies values, so the input dtype gives the same numbers.)"""
        if self.mode.startswith("upsample"):
            f = F.interpolate(f, scale_factor=2.0, mode="nearest-exact")
        else:
            f = F.pad(f, (0, 1, 0, 1))
        return self.resample["1"](f)

    def _time_up(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        first = stream.get(("first", self)) is None
        stream[("first", self)] = True
        head, rest = (x[:, :, :1], x[:, :, 1:]) if first else (x[:, :, :0], x)
        if rest.shape[2]:
            B, C, T, H, W = rest.shape
            y = self.time_conv(rest, stream)  # [B, 2C, T, H, W]: channel halves are frames 2t and 2t + 1
            fmt = torch.channels_last_3d if self.time_conv.channels_last else torch.contiguous_format
            rest = torch.empty(B, C, 2 * T, H, W, dtype=y.dtype, device=y.device, memory_format=fmt)
            rest[:, :, 0::2] = y[:, :C]  # written in place: the layout survives (a stack would not keep NDHWC)
            rest[:, :, 1::2] = y[:, C:]
        if not head.shape[2] or not rest.shape[2]:
            return rest if rest.shape[2] else head  # a cat would copy the one non-empty part (2x upsampled)
        return torch.cat([head, rest], dim=2)

    def _time_down(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        prev = stream.get(("last", self))
        stream[("last", self)] = x[:, :, -1:].clone()
        if prev is None:  # the first frame(s) of the stream pass unchanged (diffusers keeps chunk 0 whole)
            return x
        return self.time_conv(torch.cat([prev, x], dim=2))

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_up(x, stream)
        x = _per_frame_2d(self._spatial, x)
        if self.mode == "downsample3d":
            x = self._time_down(x, stream)
        return x


class MidBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        x = self.resnets[0](x, stream)
        return self.resnets[1](self.attentions[0](x), stream)


class UpBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample_mode: str | None):
        super().__init__()
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList([ResidualBlock(a, b) for a, b in zip(dims[:-1], dims[1:])])
        self.upsamplers = nn.ModuleList([Resample(out_dim, upsample_mode)]) if upsample_mode else None

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, stream)
        return x if self.upsamplers is None else self.upsamplers[0](x, stream)


# encoder / decoder


class Encoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        dims = [cfg.base_dim * u for u in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"))
        self.down_blocks = nn.ModuleList(layers)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = ChannelRMSNorm(dims[-1], images=False)
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1)

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        x = self.conv_in(x, stream)
        for layer in self.down_blocks:
            x = layer(x, stream)
        x = self.mid_block(x, stream)
        return self.conv_out(x, stream, norm=self.norm_out)


class Decoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        base = cfg.decoder_base_dim or cfg.base_dim
        mult = cfg.dim_mult
        dims = [base * u for u in (mult[-1], *mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the previous up block's resample halves the width (Wan2.1)
            mode = None
            if i != len(mult) - 1:
                mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
            blocks.append(UpBlock(in_dim, out_dim, cfg.num_res_blocks, mode))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = ChannelRMSNorm(dims[-1], images=False)
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, stream: Stream) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x, stream), stream)
        for block in self.up_blocks:
            x = block(x, stream)
        return self.conv_out(x, stream, norm=self.norm_out)


# tiling


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """Linear cross-fade of a's last `extent` rows (along dim) into b's first ones; writes into b."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent <= 0:
        return b
    w = torch.arange(extent, device=b.device, dtype=torch.float32) / extent
    shape = [1] * b.dim()
    shape[dim] = extent
    w = w.view(shape)
    tail = a.narrow(dim, a.shape[dim] - extent, extent)
    head = b.narrow(dim, 0, extent)
    head.copy_(tail * (1 - w) + head * w)
    return b


def _tiled(run, x: torch.Tensor, in_tile: int, in_stride: int, out_tile: int, out_stride: int, out_hw: tuple[int, int]) -> torch.Tensor:
    """Runs `run` on overlapping square tiles of x [..., H, W]; blends the overlaps of the outputs."""
    H, W = x.shape[-2:]
    rows = [[run(x[..., i:i + in_tile, j:j + in_tile]) for j in range(0, W, in_stride)] for i in range(0, H, in_stride)]
    out_rows = []
    for i, row in enumerate(rows):
        cols = []
        for j, tile in enumerate(row):
            if i > 0:
                tile = _blend(rows[i - 1][j], tile, out_tile - out_stride, dim=-2)
            if j > 0:
                tile = _blend(row[j - 1], tile, out_tile - out_stride, dim=-1)
            cols.append(tile[..., :out_stride, :out_stride])
        out_rows.append(torch.cat(cols, dim=-1))
    return torch.cat(out_rows, dim=-2)[..., : out_hw[0], : out_hw[1]]


# model


@contextlib.contextmanager
def _cudnn_benchmark(enabled: bool):
    """torch.backends.cudnn.benchmark = enabled inside the block only (the process-wide flag is restored)."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or saved
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class AutoencoderKLWan(nn.Module):
    """channels_last (set_channels_last): convolutions run on NDHWC activations (cuDNN's native layout for
    tensor-core 3D convs, no transposes around each conv) and the channel RMSNorms become one fused op.
    cudnn_benchmark: encode/decode let cuDNN time its algorithms per conv shape (the first call of each video
    size pays the search; bench/e2e_wan.py's "b" variants measure it) instead of taking its heuristic's pick."""

    def __init__(self, config: WanVAEConfig, kernel_backend: str = "auto"):
        super().__init__()
        self.config = config
        self.channels_last = False
        self.cudnn_benchmark = False
        self.encoder = Encoder3d(config)
        self.quant_conv = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1)
        self.post_quant_conv = CausalConv3d(config.z_dim, config.z_dim, 1)
        self.decoder = Decoder3d(config)
        self.use_tiling = False
        self.tile_sample_min_size = 256  # pixels; diffusers' tile_sample_min_height/_width
        self.tile_sample_stride = 192
        for module in self.modules():
            if isinstance(module, ChannelRMSNorm):
                module.kernel_backend = kernel_backend

    def set_channels_last(self, enabled: bool = True) -> None:
        """Stores every conv weight channels-last (or back) in place; encode/decode then feed NDHWC activations."""
        for module in self.modules():
            if isinstance(module, CausalConv3d):
                module.channels_last = enabled
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                fmt = torch.channels_last if module.weight.dim() == 4 else torch.channels_last_3d
                fmt = fmt if enabled else torch.contiguous_format
                module.weight.data = module.weight.data.contiguous(memory_format=fmt)
        self.channels_last = enabled

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    def enable_tiling(self, tile_sample_min_size: int = 256, tile_sample_stride: int = 192) -> None:
        ratio = self.config.scale_factor_spatial
        if tile_sample_min_size % ratio or tile_sample_stride % ratio or tile_sample_stride > tile_sample_min_size:
            raise ValueError(
                f"enable_tiling: tile {tile_sample_min_size} and stride {tile_sample_stride} must be multiples of "
                f"{ratio} with stride <= tile"
            )
        self.use_tiling = True
        self.tile_sample_min_size = tile_sample_min_size
        self.tile_sample_stride = tile_sample_stride

    def latents_mean_std(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, z_dim, 1, 1, 1] each: the pipeline feeds the DiT (z - mean) / std and decodes z * std + mean."""
        shape = (1, self.config.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, device=device, dtype=dtype).view(shape)
        std = torch.tensor(self.config.latents_std, device=device, dtype=dtype).view(shape)
        return mean, std

    # encode

    def _encode_untiled(self, x: torch.Tensor) -> torch.Tensor:
        stream: Stream = {}
        x = self._layout(x)
        chunks = [x[:, :, :1]] + list(x[:, :, 1:].split(4, dim=2))
        out = torch.cat([self.encoder(c, stream) for c in chunks if c.shape[2]], dim=2)
        return self.quant_conv(out)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, 1 + 4k, H, W] in [-1, 1] -> latent mean [B, z_dim, 1 + k, H/8, W/8] (the posterior's mode)."""
        T, H, W = x.shape[2:]
        r = self.config.scale_factor_spatial
        if (T - 1) % 4 or H % r or W % r:
            raise ValueError(f"AutoencoderKLWan.encode: video (T, H, W)=({T}, {H}, {W}) needs T = 4k+1 and H, W multiples of {r}")
        tile, stride = self.tile_sample_min_size, self.tile_sample_stride
        with _cudnn_benchmark(self.cudnn_benchmark):
            if self.use_tiling and (H > tile or W > tile):
                # diffusers applies quant_conv per tile (a 1x1x1 conv: the same numbers)
                h = _tiled(self._encode_untiled, x, tile, stride, tile // r, stride // r, (H // r, W // r))
            else:
                h = self._encode_untiled(x)
        return h[:, : self.config.z_dim]

    # decode

    def _decode_untiled(self, z: torch.Tensor, chunk_frames: int) -> torch.Tensor:
        stream: Stream = {}
        x = self.post_quant_conv(self._layout(z))
        chunks = [x[:, :, :1]] + list(x[:, :, 1:].split(chunk_frames, dim=2))
        return torch.cat([self.decoder(c, stream) for c in chunks if c.shape[2]], dim=2)

    def decode_is_tiled(self, h: int, w: int) -> bool:
        """Whether decode of an h x w latent runs in tiles (tiling on and a side above one tile)."""
        tile = self.tile_sample_min_size // self.config.scale_factor_spatial
        return self.use_tiling and (h > tile or w > tile)

    def decode(self, z: torch.Tensor, chunk_frames: int = 1) -> torch.Tensor:
        """z [B, z_dim, T, h, w] (already z * std + mean) -> video [B, 3, 1 + 4(T-1), 8h, 8w] clamped to [-1, 1].

        chunk_frames: latent frames decoded per pass after the first (1 = diffusers' memory; larger is faster).
        """
        if chunk_frames < 1:
            raise ValueError(f"AutoencoderKLWan.decode: chunk_frames={chunk_frames} must be >= 1")
        h, w = z.shape[-2:]
        r = self.config.scale_factor_spatial
        tile, stride = self.tile_sample_min_size, self.tile_sample_stride
        with _cudnn_benchmark(self.cudnn_benchmark):
            if self.decode_is_tiled(h, w):
                run = lambda t: self._decode_untiled(t, chunk_frames)  # noqa: E731
                out = _tiled(run, z, tile // r, stride // r, tile, stride, (h * r, w * r))
            else:
                out = self._decode_untiled(z, chunk_frames)
        return out.clamp(-1.0, 1.0)


def load_autoencoder_kl_wan(
    config: WanVAEConfig, folder: str | None, dtype: torch.dtype, device, kernel_backend: str = "auto"
) -> AutoencoderKLWan:
    """Builds the VAE on `device` and fills it from a diffusers `vae/` folder, or randomly when folder is None."""
    from fastdit.loader.weights import build_module, init_dummy_weights, load_state_dict, load_weights

    model = build_module(lambda: AutoencoderKLWan(config, kernel_backend), dtype, device)
    if folder is None:
        init_dummy_weights(model, seed=0)
        for module in model.modules():  # norm scales start at 1, as a freshly built diffusers VAE
            if isinstance(module, ChannelRMSNorm):
                module.gamma.data.fill_(1.0)
    else:
        load_weights(model, load_state_dict(folder), "vae")
    return model
