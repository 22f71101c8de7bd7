"""fastdit.loader.weights: safetensors round trips (single file and sharded), strict key checks, fuse
table, dummy init and meta-device building."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from fastdit.loader.weights import (
    build_module,
    init_dummy_weights,
    load_state_dict,
    load_weights,
    read_config,
)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(6, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4, bias=False) for _ in range(3)])
        # computed in __init__, not in the checkpoint: build_module must keep its values
        self.register_buffer("positions", torch.arange(5, dtype=torch.float32), persistent=False)


def _random_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=g) for k, v in module.state_dict().items()}


def test_single_file_round_trip(tmp_path):
    state = _random_state(Tiny())
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 4, "_class_name": "Tiny"}))
    assert read_config(tmp_path) == {"hidden": 4, "_class_name": "Tiny"}
    loaded = load_state_dict(tmp_path)
    assert loaded.keys() == state.keys()
    model = Tiny()
    load_weights(model, loaded, "tiny")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_sharded_round_trip_casts_dtype(tmp_path):
    state = _random_state(Tiny())
    keys = sorted(state)
    shards = {"m-00001-of-00002.safetensors": keys[:3], "m-00002-of-00002.safetensors": keys[3:]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, str(tmp_path / name))
    weight_map = {k: name for name, names in shards.items() for k in names}
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = Tiny().to(torch.bfloat16)
    load_weights(model, load_state_dict(tmp_path), "tiny")
    for k, v in model.state_dict().items():
        assert v.dtype == torch.bfloat16
        torch.testing.assert_close(v, state[k].to(torch.bfloat16), rtol=0, atol=0)


def test_missing_unexpected_and_mis_shaped_keys_are_named():
    model = Tiny()
    state = _random_state(model)
    del state["blocks.1.weight"]
    state["blocks.7.weight"] = torch.zeros(4, 4)
    state["proj.bias"] = torch.zeros(5)
    with pytest.raises(ValueError) as err:
        load_weights(model, state, "transformer")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("transformer: ")
    assert "1 missing keys: blocks.1.weight;" in msg
    assert "1 unexpected keys: blocks.7.weight;" in msg
    assert "1 mis-shaped keys: proj.bias (5,) vs model (4,)" in msg


def test_many_missing_keys_are_counted():
    pattern = r"vae: checkpoint does not match the model: 7 missing keys: blocks.0.weight, .* \(and 2 more\)$"
    with pytest.raises(ValueError, match=pattern):
        load_weights(Tiny(), {}, "vae")


def test_errors_on_folders(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        read_config(tmp_path)
    with pytest.raises(ValueError, match="0 \\*.safetensors files"):
        load_state_dict(tmp_path)
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(ValueError, match="shard files that are not there: gone.safetensors"):
        load_state_dict(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_state_dict(tmp_path / "nope")


class Fused(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.ModuleDict({"to_qkv": torch.nn.Linear(4, 12)}) for _ in range(2)])


def test_fuse_table_concatenates_sources():
    g = torch.Generator().manual_seed(2)
    state = {
        f"blocks.{i}.to_{n}.{p}": torch.randn((4, 4) if p == "weight" else (4,), generator=g)
        for i in range(2)
        for n in "qkv"
        for p in ("weight", "bias")
    }
    table = {
        "to_qkv.weight": ("to_q.weight", "to_k.weight", "to_v.weight"),
        "to_qkv.bias": ("to_q.bias", "to_k.bias", "to_v.bias"),
    }
    model = Fused()
    load_weights(model, state, "transformer", fuse_table=table)
    expected = torch.cat([state[f"blocks.1.to_{n}.weight"] for n in "qkv"])
    torch.testing.assert_close(model.blocks[1].to_qkv.weight.data, expected, rtol=0, atol=0)
    del state["blocks.0.to_k.bias"]
    with pytest.raises(ValueError, match="cannot fuse into 'blocks.0.to_qkv.bias': missing blocks.0.to_k.bias"):
        load_weights(Fused(), state, "transformer", fuse_table=table)


def test_build_module_on_meta_then_device_and_dummy_init():
    model = build_module(Tiny, torch.bfloat16, "cpu")
    assert all(p.device.type == "cpu" and p.dtype == torch.bfloat16 for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model.positions, torch.arange(5, dtype=torch.float32))
    init_dummy_weights(model, seed=3)
    assert torch.all(model.norm.weight == 1) and torch.all(model.proj.bias == 0)
    std = model.proj.weight.float().std().item()
    assert 0.2 < std < 0.7  # N(0, 1/6): std 0.41
    again = build_module(Tiny, torch.bfloat16, "cpu")
    init_dummy_weights(again, seed=3)
    torch.testing.assert_close(again.proj.weight, model.proj.weight, rtol=0, atol=0)
    # the patch that puts parameters on meta is gone after building
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


def test_build_module_keeps_tied_parameters():
    def tied() -> torch.nn.Module:
        m = torch.nn.Sequential(torch.nn.Embedding(7, 4), torch.nn.Linear(4, 7, bias=False))
        m[1].weight = m[0].weight
        return m

    model = build_module(tied, torch.float32, "cpu")
    assert model[1].weight is model[0].weight
    with torch.device("meta"):
        on_meta = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="parameter 'weight' is on the meta device"):
        init_dummy_weights(on_meta)
    with pytest.raises(ValueError, match="proj: 2 tensors are on the meta device \\(bias, weight\\)"):
        load_weights(on_meta, {"weight": torch.ones(2, 2), "bias": torch.ones(2)}, "proj")
