"""AutoencoderKL: the image VAE of FLUX (and of SD-family checkpoints), encoder and decoder.

Module names equal the diffusers checkpoint keys (encoder.down_blocks.0.resnets.0.conv1.weight, ...,
decoder.mid_block.attentions.0.to_q.weight), so a diffusers `vae/` folder loads with no rename table.

    image [B, 3, H, W] in [-1, 1]  --encode-->  latent mean [B, latent_channels, H/f, W/f]
    latent z [B, latent_channels, h, w]  --decode-->  image [B, 3, h*f, w*f]      f = 2^(len(block_out_channels)-1)

Latent scaling is the caller's: FLUX decodes `z / scaling_factor + shift_factor`.
Everything works in any memory format; convolutions run fastest in channels_last on GPUs, and the mid-block
attention reads a channels_last map as [B, H*W, C] without a copy.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastdit.configs.base import DiffusersConfig
from fastdit.loader.weights import build_module, init_dummy_weights, load_state_dict, load_weights, read_config

_DOWN_BLOCK = "DownEncoderBlock2D"
_UP_BLOCK = "UpDecoderBlock2D"
_RESNET_EPS = 1e-6  # diffusers' Encoder/Decoder hard-code eps 1e-6 for every GroupNorm
# nearest-upsampling of a channels_last tensor fails past 2^31 output elements (pytorch#141831)
_MAX_NHWC_UPSAMPLE_NUMEL = 2**31


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig(DiffusersConfig):
    """diffusers AutoencoderKL config.json, field for field."""

    _diffusers_class = "AutoencoderKL"

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple[str, ...] = (_DOWN_BLOCK,)
    up_block_types: tuple[str, ...] = (_UP_BLOCK,)
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | tuple[int, ...] = 32
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        for name in ("down_block_types", "up_block_types", "block_out_channels", "sample_size",
                     "latents_mean", "latents_std"):
            value = getattr(self, name)
            if isinstance(value, list):  # JSON gives lists; keep the frozen config hashable
                object.__setattr__(self, name, tuple(value))
        n = len(self.block_out_channels)
        if n == 0:
            raise ValueError("block_out_channels is empty; it needs one entry per resolution level")
        if any(t != _DOWN_BLOCK for t in self.down_block_types) or len(self.down_block_types) != n:
            raise ValueError(
                f"down_block_types={list(self.down_block_types)}: need {n} x {_DOWN_BLOCK!r} (one per block_out_channels)"
            )
        if any(t != _UP_BLOCK for t in self.up_block_types) or len(self.up_block_types) != n:
            raise ValueError(
                f"up_block_types={list(self.up_block_types)}: need {n} x {_UP_BLOCK!r} (one per block_out_channels)"
            )
        if self.act_fn != "silu":
            raise ValueError(f"act_fn={self.act_fn!r}: only 'silu' is supported")
        if self.layers_per_block < 1:
            raise ValueError(f"layers_per_block={self.layers_per_block} must be >= 1")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"block_out_channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}"
            )

    @property
    def scale_factor(self) -> int:
        """Pixels per latent pixel along each side: 2^(number of down blocks - 1)."""
        return 2 ** (len(self.block_out_channels) - 1)


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=_RESNET_EPS, affine=True)


# blocks


class ResnetBlock2D(nn.Module):
    """y = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))); shortcut is a 1x1 conv when channels change."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return shortcut + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv after padding one zero row/column at the bottom/right (diffusers' padding=0 path)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2D(nn.Module):
    """Nearest 2x upsampling, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() * 4 > _MAX_NHWC_UPSAMPLE_NUMEL:
            x = x.contiguous()
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlockAttention(nn.Module):
    """Single-head self-attention over the H*W positions, with a GroupNorm in front and a residual.

    x [B, C, H, W] -> t = GroupNorm(x) as [B, H*W, C]; y = x + to_out(softmax(q k^T / sqrt(C)) v)
    (diffusers' Attention with heads = 1, dim_head = C, residual_connection=True, rescale 1).
    rows: only the output rows y[:, :, rows] (queries from those rows, keys/values from all H*W): the
    spatially split decode (distributed/vae.py) gives each rank the whole x and its own strip's rows.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = _group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # key "to_out.0" as in the checkpoint

    def forward(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        # [B, C, H, W] -> [B, H*W, C]: a view when x is channels_last
        tokens = self.group_norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        k = self.to_k(tokens).unsqueeze(1)  # [B, 1, H*W, C]
        v = self.to_v(tokens).unsqueeze(1)
        if rows is not None:
            x, tokens = x[:, :, rows], tokens[:, rows.start * w : rows.stop * w]
            h = x.shape[2]
        q = self.to_q(tokens).unsqueeze(1)  # [B, 1, h*W, C]
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # [B, h*W, C]
        out = self.to_out[0](out)
        return x + out.reshape(b, h, w, c).permute(0, 3, 1, 2)


class MidBlock2D(nn.Module):
    """resnets[0], then (attentions[i], resnets[i+1]) pairs; no attention when the config turns it off."""

    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.attentions = nn.ModuleList([MidBlockAttention(channels, groups)] if add_attention else [])
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, groups) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for i, resnet in enumerate(self.resnets[1:]):
            if i < len(self.attentions):
                x = self.attentions[i](x)
            x = resnet(x)
        return x


class _ResnetStack(nn.Module):
    """num_layers ResnetBlock2D (in -> out, then out -> out), then the optional 2x resampler that the subclass
    keeps in the ModuleList named `resampler_name` (the diffusers checkpoint key), or None there."""

    resampler_name = ""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        resamplers = getattr(self, self.resampler_name)
        if resamplers is not None:
            x = resamplers[0](x)
        return x


class DownEncoderBlock2D(_ResnetStack):
    resampler_name = "downsamplers"

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_downsample: bool):
        super().__init__(in_channels, out_channels, num_layers, groups)
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if add_downsample else None


class UpDecoderBlock2D(_ResnetStack):
    resampler_name = "upsamplers"

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, add_upsample: bool):
        super().__init__(in_channels, out_channels, num_layers, groups)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None


# encoder and decoder


class Encoder(nn.Module):
    """image [B, in_channels, H, W] -> moments [B, 2*latent_channels, H/f, W/f] (mean, then log-variance)."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        channels, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(
                channels[max(i - 1, 0)], channels[i], config.layers_per_block, groups,
                add_downsample=i < len(channels) - 1,
            )
            for i in range(len(channels))
        )
        self.mid_block = MidBlock2D(channels[-1], groups, config.mid_block_add_attention)
        self.conv_norm_out = _group_norm(channels[-1], groups)
        self.conv_out = nn.Conv2d(channels[-1], 2 * config.latent_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """latent [B, latent_channels, h, w] -> image [B, out_channels, h*f, w*f]."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        groups = config.norm_num_groups
        channels = tuple(reversed(config.block_out_channels))
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], kernel_size=3, padding=1)
        self.mid_block = MidBlock2D(channels[0], groups, config.mid_block_add_attention)
        # The decoder has one more resnet per block than the encoder, as in diffusers.
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(
                channels[max(i - 1, 0)], channels[i], config.layers_per_block + 1, groups,
                add_upsample=i < len(channels) - 1,
            )
            for i in range(len(channels))
        )
        self.conv_norm_out = _group_norm(channels[-1], groups)
        self.conv_out = nn.Conv2d(channels[-1], config.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        x = self.mid_block(x)
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


# the model


class AutoencoderKL(nn.Module):
    """FLUX's VAE (16 latent channels, no quant convs) or any diffusers AutoencoderKL of the same blocks."""

    def __init__(self, config: AutoencoderKLConfig):
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # Registered only when used, so their keys exist exactly when the checkpoint has them.
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, kernel_size=1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, kernel_size=1) if config.use_post_quant_conv else None

    def _check_input(self, x: torch.Tensor, channels: int, what: str) -> None:
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"AutoencoderKL.{what}: expected [B, {channels}, H, W], got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """image [B, in_channels, H, W] in [-1, 1] -> the posterior's mean [B, latent_channels, H/f, W/f].

        H and W that do not divide by f are floored at each stride-2 step, as in diffusers."""
        self._check_input(x, self.config.in_channels, "encode")
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments[:, : self.config.latent_channels]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """un-scaled latent [B, latent_channels, h, w] -> image [B, out_channels, h*f, w*f], nominally in
        [-1, 1] (not clamped: the image post-processing clamps, as diffusers' does)."""
        self._check_input(z, self.config.latent_channels, "decode")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)


# loading


def load_autoencoder_kl(folder: str, dtype: torch.dtype, device: str | torch.device) -> AutoencoderKL:
    """The VAE of a diffusers `vae/` folder (config.json + safetensors), weights strictly checked."""
    config = AutoencoderKLConfig.from_dict(read_config(folder))
    model = build_module(lambda: AutoencoderKL(config), dtype, device)
    load_weights(model, load_state_dict(folder), "vae")
    return model


def dummy_autoencoder_kl(
    config: AutoencoderKLConfig, dtype: torch.dtype, device: str | torch.device, seed: int = 0
) -> AutoencoderKL:
    """The VAE of `config` with random weights (load_format dummy), allocated directly on `device`."""
    model = build_module(lambda: AutoencoderKL(config), dtype, device)
    init_dummy_weights(model, seed=seed)
    return model
