"""Built-in VAE configs: the vae/config.json of each supported checkpoint, and flux-tiny's.

flux-tiny keeps FLUX's latent interface (16 latent channels, 4 resolution levels, so the VAE scale factor
2^(len(block_out_channels)-1) is 8 and image sides divide by 16, as for the real model) with 16-32
channels per level instead of 128-512, so that a CPU decodes 256x256 in seconds.
"""

from __future__ import annotations

from fastdit.configs.base import lookup_preset
from fastdit.models.vaes.autoencoder_kl import AutoencoderKLConfig

_FLUX_LATENT = dict(
    latent_channels=16,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
    force_upcast=True,
    mid_block_add_attention=True,
)

VAE_PRESETS: dict[str, AutoencoderKLConfig] = {
    "flux-tiny": AutoencoderKLConfig(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=256,
        **_FLUX_LATENT,
    ),
    # black-forest-labs/FLUX.1-dev vae/config.json
    "black-forest-labs/FLUX.1-dev": AutoencoderKLConfig(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=1024,
        **_FLUX_LATENT,
    ),
}


def vae_preset(name: str) -> AutoencoderKLConfig:
    return lookup_preset(VAE_PRESETS, name, "VAE")
