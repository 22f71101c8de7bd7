"""The VAE decode split spatially over the ranks of the world (issue 7): each rank decodes one horizontal strip.

    vae = SpatialSplitVAE(vae, groups)      # AutoencoderKL (FLUX) or AutoencoderKLWan; encode is untouched
    image = vae.decode(z, **kwargs)         # rank 0: the whole image, as one process decodes it; others: None

The latent [..., h, w] is cut along h into one strip per rank (`strip_rows`: sizes differ by at most one
row, the first h % n ranks get the extra one). Every rank runs the unchanged decoder on its strip; three
kinds of decoder modules are wrapped (in place, once) so that the strips together compute exactly the
unsplit decode:

  _HaloConv        a conv whose kernel spans k = 2p + 1 > 1 rows (stride 1, zero padding p): its input gets
                   p rows of the neighbouring strips above and below (zero rows at the image's top and bottom
                   edges, which is the conv's own zero padding) and the conv then pads only the width. Wan's
                   causal convs cache the tail frames of that halo-padded input, so the cached frames carry
                   their halo rows too and every later temporal chunk stays exact without another exchange.
  _SplitGroupNorm  GroupNorm (FLUX) statistics are over all pixels: per sample and group each rank computes
                   (count, mean, M2) in fp32 of its rows, all ranks all-gather them and merge with Chan's
                   formula (mean = sum n_i m_i / N, M2 = sum M2_i + n_i (m_i - mean)^2), then normalise.
  _SplitAttention  the mid-block self-attention (over all pixels of an image / of a frame) runs at the lowest
                   resolution: its input is all-gathered and each rank computes only its own rows' outputs
                   (queries from its rows, keys and values from all), the model's `rows` argument.

Nothing else mixes rows: Wan's RMS norms are per pixel (over channels), nearest 2x upsampling maps row i to
rows 2i and 2i + 1 (strips double with the image), 1x1 convs, the temporal convs (kernel (3, 1, 1)) and the
final clamp are per pixel; no stride-2 conv runs in a decoder (wrapping one is refused). Rank 0 gathers the
decoded strips (padded to the tallest, trimmed: gloo needs equal sizes) and owns the output.

Where it pays: each rank needs at least MIN_STRIP_ROWS latent rows; below that (and when Wan's own spatial
tiling would tile the latent: tiles are an approximation of their own, the multi-GPU output must equal one
process's) rank 0 decodes alone, as before, and a log line says why once. With one process nothing is
wrapped: the plain decode path is untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.distributed as dist
from torch import nn

from fastdit.distributed.groups import ParallelGroups
from fastdit.distributed.plans import _Plan
from fastdit.log import log_once
from fastdit.models.vaes.autoencoder_kl import AutoencoderKL, MidBlockAttention
from fastdit.models.vaes.autoencoder_kl_wan import AttentionBlock, AutoencoderKLWan

# Latent rows per rank at least. Every 3-row conv reads 2 halo rows more than its strip: at 4 latent rows
# that is +50% input rows at the latent level (the cheap one) and +6% at the 8x level, where most of a
# decode's time goes, while each conv's exchange costs a fixed latency. Chosen by that arithmetic, not yet
# measured: bench/parallel.py --vae-decode times the split at 1, 2, 4 ranks (Wan 480p: 60 rows, FLUX 1024: 128).
MIN_STRIP_ROWS = 4
SPLIT_VAES = (AutoencoderKL, AutoencoderKLWan)


def strip_rows(height: int, ranks: int) -> tuple[int, ...]:
    """Rows of each rank's strip of `height` rows: as even as possible, the first height % ranks one more."""
    base, extra = divmod(height, ranks)
    return tuple(base + (r < extra) for r in range(ranks))


@dataclasses.dataclass
class _Strip:
    """This rank's place in the split decode, shared by every wrapped module of one VAE.

    rows: latent rows of every rank's strip while a split decode runs; None otherwise (the wrapped modules
    then run exactly as unwrapped: rank 0 decoding alone)."""

    rank: int
    world: int
    group: dist.ProcessGroup | None = None  # None: the default (world) group
    rows: tuple[int, ...] | None = None

    def heights(self, x: torch.Tensor) -> tuple[int, ...]:
        """Rows of every rank's part of x [..., h_r, W] (this rank's part of an activation at some resolution)."""
        scale, rest = divmod(x.shape[-2], self.rows[self.rank])
        if rest:
            raise ValueError(
                f"split VAE decode: {x.shape[-2]} rows are not a multiple of the strip's {self.rows[self.rank]}"
            )
        return tuple(scale * r for r in self.rows)

    def all_gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return parts


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x [..., h, W] with zero rows appended up to `rows` rows (equal sizes for gloo's gathers)."""
    if x.shape[-2] == rows:
        return x.contiguous()
    pad = x.new_zeros(*x.shape[:-2], rows - x.shape[-2], x.shape[-1])
    return torch.cat([x, pad], dim=-2)


def gather_rows(x: torch.Tensor, strip: _Strip) -> torch.Tensor:
    """Every rank's part x [..., h_r, W] -> the whole [..., sum h_r, W] on every rank (all-gather)."""
    heights = strip.heights(x)
    parts = strip.all_gather(_pad_rows(x, max(heights)))
    return torch.cat([p[..., :h, :] for p, h in zip(parts, heights)], dim=-2)


def gather_rows_to_output_rank(x: torch.Tensor, strip: _Strip) -> torch.Tensor | None:
    """Every rank's part x [..., h_r, W] -> the whole [..., sum h_r, W] on rank 0 (gather), None elsewhere."""
    heights = strip.heights(x)
    x = _pad_rows(x, max(heights))
    parts = [torch.empty_like(x) for _ in range(strip.world)] if strip.rank == 0 else None
    dist.gather(x, parts, dst=0, group=strip.group)
    if strip.rank != 0:
        return None
    return torch.cat([p[..., :h, :] for p, h in zip(parts, heights)], dim=-2)


def with_halo(x: torch.Tensor, p: int, strip: _Strip) -> torch.Tensor:
    """This rank's rows x [..., h, W] -> [..., p + h + p, W]: the previous rank's last p rows on top, the next
    rank's first p rows below, zeros at the image's top and bottom edges. One all-gather of every rank's
    first and last p rows (small; equal sizes on every rank) serves both neighbours."""
    parts = strip.all_gather(torch.stack([x[..., :p, :], x[..., -p:, :]]))  # per rank: [2, ..., p, W]
    h = x.shape[-2]
    out = torch.empty(*x.shape[:-2], h + 2 * p, x.shape[-1], dtype=x.dtype, device=x.device,
                      memory_format=_memory_format(x))
    out[..., p : p + h, :].copy_(x)
    if strip.rank > 0:
        out[..., :p, :].copy_(parts[strip.rank - 1][1])
    else:
        out[..., :p, :].zero_()
    if strip.rank < strip.world - 1:
        out[..., p + h :, :].copy_(parts[strip.rank + 1][0])
    else:
        out[..., p + h :, :].zero_()
    return out


class _HaloConv(nn.Module):
    """A conv (nn.Conv2d, or Wan's CausalConv3d with its stream arguments) that reads its halo rows from the
    neighbouring strips during a split decode; the conv's own height padding is off for that call."""

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, strip: _Strip):
        super().__init__()
        k, s, d, p = conv.kernel_size[-2], conv.stride[-2], conv.dilation[-2], conv.padding[-2]
        if conv.padding_mode != "zeros" or s != 1 or d != 1 or k % 2 == 0 or p != k // 2:
            raise ValueError(
                f"split VAE decode: a conv with kernel {k}, stride {s}, dilation {d}, padding {p} "
                f"({conv.padding_mode}) along the height cannot be split; allowed: odd kernel, stride 1, "
                "dilation 1, zero padding (kernel - 1) / 2"
            )
        self.conv, self.strip, self.halo = conv, strip, p
        self.padding = tuple(conv.padding)
        self.split_padding = (*conv.padding[:-2], 0, conv.padding[-1])

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.strip.rows is None:
            return self.conv(x, *args, **kwargs)
        x = with_halo(x, self.halo, self.strip)
        self.conv.padding = self.split_padding
        try:
            return self.conv(x, *args, **kwargs)
        finally:
            self.conv.padding = self.padding


class _SplitGroupNorm(nn.Module):
    """nn.GroupNorm whose statistics cover every rank's rows during a split decode (fp32, Chan-merged)."""

    def __init__(self, norm: nn.GroupNorm, strip: _Strip):
        super().__init__()
        self.norm, self.strip = norm, strip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strip.rows is None:
            return self.norm(x)
        norm = self.norm
        B, C, G = x.shape[0], x.shape[1], norm.num_groups
        xf = x.float().reshape(B, G, -1)  # [B, G, n]
        var, mean = torch.var_mean(xf, dim=2, correction=0)
        count = torch.full_like(mean, xf.shape[2])
        parts = torch.stack(self.strip.all_gather(torch.stack([count, mean, var * count])))  # [ranks, 3, B, G]
        n, m, m2 = parts.unbind(1)
        total = n.sum(0)
        mean = (n * m).sum(0) / total
        var = (m2 + n * (m - mean) ** 2).sum(0) / total
        # y = (x - mean) * rstd * weight + bias = x * a + b per (sample, channel): one fused pass over x
        a = torch.rsqrt(var + norm.eps).repeat_interleave(C // G, dim=1) * norm.weight.float()  # [B, C]
        b = norm.bias.float() - mean.repeat_interleave(C // G, dim=1) * a
        shape = (B, C) + (1,) * (x.dim() - 2)
        return torch.addcmul(b.view(shape), xf.view(x.shape), a.view(shape)).to(x.dtype)


class _SplitAttention(nn.Module):
    """The mid-block attention on the all-gathered input, computing only this rank's rows."""

    def __init__(self, attn: nn.Module, strip: _Strip):
        super().__init__()
        self.attn, self.strip = attn, strip

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.strip.rows is None:
            return self.attn(x, *args, **kwargs)
        heights = self.strip.heights(x)
        start = sum(heights[: self.strip.rank])
        rows = slice(start, start + heights[self.strip.rank])
        # in x's layout, so the output (x's rows + attention) stays channels-last for the next fused norm
        whole = gather_rows(x, self.strip).contiguous(memory_format=_memory_format(x))
        return self.attn(whole, *args, rows=rows, **kwargs)


def _wrap(module: nn.Module, strip: _Strip) -> int:
    """Replaces, below `module`, every row-mixing module by its split wrapper; returns how many were wrapped.
    The attention's own norm sees the gathered input, so nothing inside an attention is wrapped."""
    wrapped = 0
    for name, child in list(module.named_children()):
        if isinstance(child, (MidBlockAttention, AttentionBlock)):
            replacement = _SplitAttention(child, strip)
        elif isinstance(child, (nn.Conv2d, nn.Conv3d)) and child.kernel_size[-2] > 1:
            replacement = _HaloConv(child, strip)
        elif isinstance(child, nn.GroupNorm):
            replacement = _SplitGroupNorm(child, strip)
        else:
            wrapped += _wrap(child, strip)
            continue
        setattr(module, name, replacement)
        wrapped += 1
    return wrapped


class SpatialSplitVAE(_Plan):
    """A VAE whose `decode` is split over the world's ranks (see the module docstring); every other attribute
    (encode, config, latents_mean_std, ...) is the wrapped VAE's. `last_strip_rows` records the last decode:
    the latent rows of each rank's strip, or None when rank 0 decoded alone."""

    def __init__(self, vae: nn.Module, groups: ParallelGroups):
        super().__init__(vae, groups)
        if not isinstance(vae, SPLIT_VAES):
            allowed = ", ".join(c.__name__ for c in SPLIT_VAES)
            raise ValueError(f"split VAE decode: {type(vae).__name__} is not supported; allowed: {allowed}")
        self.strip = _Strip(rank=groups.rank, world=groups.config.world_size)
        _wrap(vae.decoder, self.strip)
        self.last_strip_rows: tuple[int, ...] | None = None

    def _unsplit_reason(self, z: torch.Tensor) -> str | None:
        h, w = z.shape[-2:]
        world = self.strip.world
        if h < MIN_STRIP_ROWS * world:
            return f"a latent height of {h} rows is below {MIN_STRIP_ROWS} rows x {world} ranks"
        tiled = getattr(self.model, "decode_is_tiled", None)
        if tiled is not None and tiled(h, w):
            return f"the VAE's spatial tiling applies to a {h}x{w} latent (tiles blend their own way)"
        return None

    def decode(self, z: torch.Tensor, **kwargs) -> torch.Tensor | None:
        """z [..., h, w] (the same on every rank) -> the decoded image/video on rank 0, None on the others."""
        reason = self._unsplit_reason(z)
        if reason is not None:
            log_once(f"VAE decode on rank 0 alone: {reason}")
            self.last_strip_rows = None
            return self.model.decode(z, **kwargs) if self.strip.rank == 0 else None
        rows = strip_rows(z.shape[-2], self.strip.world)
        start = sum(rows[: self.strip.rank])
        with self._decoding(rows):
            part = self.model.decode(z[..., start : start + rows[self.strip.rank], :], **kwargs)
            out = gather_rows_to_output_rank(part, self.strip)
        self.last_strip_rows = rows
        return out

    @contextlib.contextmanager
    def _decoding(self, rows: tuple[int, ...]):
        self.strip.rows = rows
        try:
            yield
        finally:
            self.strip.rows = None
