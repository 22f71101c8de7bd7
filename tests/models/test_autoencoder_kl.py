"""AutoencoderKL against diffusers: a tiny random diffusers VAE saved with save_pretrained, loaded back
through fastdit's loader, decode and encode compared in float32."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL

from fastdit.configs.flux import flux_transformer_preset
from fastdit.configs.vae import vae_preset
from fastdit.models.vaes.autoencoder_kl import (
    AutoencoderKL,
    AutoencoderKLConfig,
    dummy_autoencoder_kl,
    load_autoencoder_kl,
)

# flux-tiny's VAE, and an SD-style one that exercises quant convs, a 3-level stack and no mid attention.
_SD_STYLE = AutoencoderKLConfig(
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(8, 16, 24),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=4,
    use_quant_conv=True,
    use_post_quant_conv=True,
    mid_block_add_attention=False,
)
CONFIGS = {"flux-tiny": vae_preset("flux-tiny"), "sd-style": _SD_STYLE}


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def saved_vae(request, tmp_path_factory):
    """(diffusers model, folder) for a tiny random VAE whose norms are random too (not 1/0)."""
    torch.manual_seed(0)
    ref = DiffusersAutoencoderKL(**CONFIGS[request.param].to_dict()).eval()
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if "norm" in name:  # make norm1/norm2/group_norm distinguishable
                param.add_(0.2 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp(request.param) / "vae"
    ref.save_pretrained(folder)
    return ref, folder


@pytest.mark.parametrize("latent_hw", [(4, 4), (3, 5)])
def test_decode_matches_diffusers(saved_vae, latent_hw):
    ref, folder = saved_vae
    ours = load_autoencoder_kl(folder, torch.float32, "cpu")
    c = ref.config.latent_channels
    z = torch.randn(2, c, *latent_hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref.decode(z).sample
        got = ours.decode(z)
    f = ours.config.scale_factor
    assert got.shape == (2, 3, latent_hw[0] * f, latent_hw[1] * f)
    assert _rel_l2(got, want) <= 1e-4


@pytest.mark.parametrize("image_hw", [(32, 32), (24, 40), (27, 45)])
def test_encode_matches_diffusers(saved_vae, image_hw):
    ref, folder = saved_vae
    ours = load_autoencoder_kl(folder, torch.float32, "cpu")
    x = torch.rand(2, 3, *image_hw, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        want = ref.encode(x).latent_dist.mean
        got = ours.encode(x)
    assert got.shape == want.shape
    assert _rel_l2(got, want) <= 1e-4


def test_channels_last_gives_the_same_image(saved_vae):
    ref, folder = saved_vae
    ours = load_autoencoder_kl(folder, torch.float32, "cpu")
    z = torch.randn(1, ref.config.latent_channels, 4, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ours.decode(z)
        got = ours.to(memory_format=torch.channels_last).decode(z.to(memory_format=torch.channels_last))
    assert _rel_l2(got, want) <= 1e-5


def test_module_names_are_the_checkpoint_keys(saved_vae):
    ref, _ = saved_vae
    config = AutoencoderKLConfig.from_dict(dict(ref.config))
    assert set(AutoencoderKL(config).state_dict()) == set(ref.state_dict())


def test_flux_dev_keys_and_shapes_match_diffusers():
    """The full FLUX.1-dev VAE, both built on the meta device: same keys, same shapes, no quant convs."""
    config = vae_preset("black-forest-labs/FLUX.1-dev")
    with torch.device("meta"):
        ref = DiffusersAutoencoderKL(**config.to_dict())
        ours = AutoencoderKL(config)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == want
    assert ours.quant_conv is None and ours.post_quant_conv is None and config.scale_factor == 8


@pytest.mark.parametrize("preset", ["flux-tiny", "black-forest-labs/FLUX.1-dev"])
def test_presets_fit_the_flux_transformer_preset(preset):
    """FLUX packs 2x2 latent patches: the transformer's in_channels is 4 * latent_channels."""
    assert 4 * vae_preset(preset).latent_channels == flux_transformer_preset(preset).in_channels


def test_dummy_weights_decode_finite_on_the_target_dtype():
    vae = dummy_autoencoder_kl(vae_preset("flux-tiny"), torch.bfloat16, "cpu", seed=0)
    assert all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in vae.parameters())
    with torch.no_grad():
        image = vae.decode(torch.randn(1, 16, 4, 4, dtype=torch.bfloat16))
    assert image.shape == (1, 3, 32, 32) and bool(torch.isfinite(image).all())


def test_missing_key_is_named(tmp_path):
    config = vae_preset("flux-tiny")
    ref = DiffusersAutoencoderKL(**dataclasses.replace(config, use_post_quant_conv=True).to_dict())
    ref.save_pretrained(tmp_path)
    # config says post_quant_conv; rewrite config.json to say no: the checkpoint then has unexpected keys
    (tmp_path / "config.json").write_text((tmp_path / "config.json").read_text().replace(
        '"use_post_quant_conv": true', '"use_post_quant_conv": false'))
    with pytest.raises(ValueError, match=r"vae: .*unexpected keys: post_quant_conv.bias, post_quant_conv.weight"):
        load_autoencoder_kl(tmp_path, torch.float32, "cpu")


def test_bad_config_and_input_errors():
    with pytest.raises(ValueError, match=r"unknown AutoencoderKL config keys \['conv_type'\]"):
        AutoencoderKLConfig.from_dict({"_class_name": "AutoencoderKL", "conv_type": "x"})
    with pytest.raises(ValueError, match=r"not divisible by norm_num_groups=32"):
        AutoencoderKLConfig(block_out_channels=(48,))
    with pytest.raises(ValueError, match=r"down_block_types=\['DownEncoderBlock2D'\]: need 2 x"):
        AutoencoderKLConfig(block_out_channels=(32, 64), up_block_types=("UpDecoderBlock2D",) * 2)
    with pytest.raises(ValueError, match=r"unknown VAE preset 'sdxl'"):
        vae_preset("sdxl")
    vae = AutoencoderKL(vae_preset("flux-tiny"))
    with pytest.raises(ValueError, match=r"decode: expected \[B, 16, H, W\], got \(1, 4, 8, 8\)"):
        vae.decode(torch.randn(1, 4, 8, 8))
