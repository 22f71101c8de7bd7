"""configs/base.py: the shared config.json reading/writing of every component config, and preset look-up."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fastdit.configs import flux as flux_configs
from fastdit.configs import scheduler as scheduler_configs
from fastdit.configs import vae as vae_configs
from fastdit.configs import wan as wan_configs
from fastdit.configs.base import DiffusersConfig, lookup_preset
from fastdit.models.dits.wan import WanTransformerConfig
from fastdit.models.vaes.autoencoder_kl import AutoencoderKLConfig
from fastdit.models.vaes.autoencoder_kl_wan import WanVAEConfig
from fastdit.schedulers.flow_match_euler import FlowMatchEulerSchedulerConfig
from fastdit.schedulers.unipc import UniPCSchedulerConfig

EVERY_CONFIG = [
    flux_configs.flux_transformer_preset("flux-tiny"),
    flux_configs.FLUX_1_DEV,
    vae_configs.vae_preset("flux-tiny"),
    scheduler_configs.scheduler_preset("flux-tiny"),
    wan_configs.transformer_preset("wan-tiny-i2v"),
    wan_configs.vae_preset("wan-tiny"),
    UniPCSchedulerConfig(disable_corrector=(0, 2), flow_shift=5.0),
]


@dataclasses.dataclass(frozen=True)
class _Toy(DiffusersConfig):
    _diffusers_class = "ToyModel"
    sizes: tuple[int, ...] = (1, 2)
    scale: float = 1.0


@pytest.mark.parametrize("config", EVERY_CONFIG, ids=lambda c: type(c).__name__)
def test_json_round_trip(config):
    d = config.to_dict()
    text = json.dumps({"_class_name": type(config)._diffusers_class, "_diffusers_version": "0.35.0", **d})
    assert not any(isinstance(v, tuple) for v in d.values())  # JSON-ready: tuples written as lists
    back = type(config).from_dict(json.loads(text))
    assert back == config
    assert hash(back) == hash(config)  # lists came back as tuples: still frozen and hashable


@pytest.mark.parametrize(
    "cls, diffusers_class",
    [
        (AutoencoderKLConfig, "AutoencoderKL"), (WanVAEConfig, "AutoencoderKLWan"),
        (WanTransformerConfig, "WanTransformer3DModel"),
        (FlowMatchEulerSchedulerConfig, "FlowMatchEulerDiscreteScheduler"),
        (UniPCSchedulerConfig, "UniPCMultistepScheduler"), (flux_configs.FluxTransformerConfig, "FluxTransformer2DModel"),
    ],
)
def test_unknown_keys_one_line_error(cls, diffusers_class):
    with pytest.raises(ValueError) as err:
        cls.from_dict({"_class_name": diffusers_class, "zz_bad": 1, "aa_bad": 2})
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"unknown {diffusers_class} config keys ['aa_bad', 'zz_bad']; allowed: [")
    assert all(repr(f.name) in msg for f in dataclasses.fields(cls))


def test_from_dict_ignores_private_keys_and_converts_lists():
    toy = _Toy.from_dict({"_class_name": "ToyModel", "_anything": [1], "sizes": [3, 4, 5]})
    assert toy == _Toy(sizes=(3, 4, 5)) and isinstance(toy.sizes, tuple)
    assert _Toy.from_dict({}) == _Toy()
    assert _Toy(sizes=(7,), scale=0.5).to_dict() == {"sizes": [7], "scale": 0.5}


def test_lookup_preset():
    table = {"b": 2, "a": 1}
    assert lookup_preset(table, "a", "toy") == 1
    with pytest.raises(ValueError, match=r"^unknown toy preset 'c'; built-in: \['a', 'b'\]$"):
        lookup_preset(table, "c", "toy")
    with pytest.raises(ValueError, match=r"unknown Wan VAE preset 'nope'; built-in: \["):
        wan_configs.vae_preset("nope")
