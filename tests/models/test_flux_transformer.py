"""FluxTransformer2DModel parity with diffusers: tiny random checkpoints saved with save_pretrained (single
file and sharded), loaded through fastdit's loader, same inputs, float32 relative L2 error <= 1e-4."""

from __future__ import annotations

import json

import pytest
import torch

from fastdit.configs.flux import FLUX_TRANSFORMER_PRESETS, FluxTransformerConfig, flux_transformer_preset
from fastdit.models.dits.flux import FluxTransformer2DModel, load_flux_transformer

diffusers = pytest.importorskip("diffusers")

TINY = dict(
    patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20, axes_dims_rope=[4, 6, 6],
)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _save_reference(folder, guidance_embeds: bool, max_shard_size=None):
    """A random diffusers FluxTransformer2DModel (biases and norm weights randomized too) saved to folder."""
    torch.manual_seed(0)
    ref = diffusers.FluxTransformer2DModel(**TINY, guidance_embeds=guidance_embeds).eval()
    with torch.no_grad():
        for p in ref.parameters():  # default init leaves zero biases and unit norms: parity must see them
            p.add_(0.05 * torch.randn_like(p))
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    ref.save_pretrained(folder, safe_serialization=True, **kwargs)
    return ref


def _ids(h: int, w: int, txt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As FluxPipeline: img ids (0, row, col) over the packed grid, text ids zero."""
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    return img_ids.reshape(h * w, 3), torch.zeros(txt_len, 3)


def _inputs(batch: int, h: int, w: int, txt_len: int, guidance: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    img_ids, txt_ids = _ids(h, w, txt_len)
    return dict(
        hidden_states=torch.randn(batch, h * w, TINY["in_channels"], generator=g),
        encoder_hidden_states=torch.randn(batch, txt_len, TINY["joint_attention_dim"], generator=g),
        pooled_projections=torch.randn(batch, TINY["pooled_projection_dim"], generator=g),
        timestep=torch.rand(batch, generator=g),
        img_ids=img_ids,
        txt_ids=txt_ids,
        guidance=torch.full((batch,), 3.5) + torch.rand(batch, generator=g) if guidance else None,
    )


@pytest.mark.parametrize("guidance_embeds", [True, False])
@pytest.mark.parametrize("sharded", [False, True])
def test_parity_with_diffusers(tmp_path, guidance_embeds, sharded):
    ref = _save_reference(tmp_path, guidance_embeds, max_shard_size="20KB" if sharded else None)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert any(f.endswith(".safetensors.index.json") for f in files) == sharded
    model = load_flux_transformer(str(tmp_path), dtype=torch.float32, device="cpu")
    assert model.config == FluxTransformerConfig(**TINY, guidance_embeds=guidance_embeds)
    # square and non-square packed grids, text longer and shorter than the image
    for seed, (batch, h, w, txt_len) in enumerate([(2, 4, 4, 7), (2, 3, 5, 19), (1, 6, 2, 4)]):
        inputs = _inputs(batch, h, w, txt_len, guidance_embeds, seed)
        with torch.no_grad():
            expected = ref(**inputs, return_dict=False)[0]
            got = model(**inputs)
            rope = model.rope(inputs["img_ids"], inputs["txt_ids"])
            got_with_rope = model(**inputs, rope=rope)
        assert got.shape == (batch, h * w, TINY["in_channels"])
        assert _rel_l2(got, expected) <= 1e-4, (h, w, txt_len)
        torch.testing.assert_close(got_with_rope, got, rtol=0, atol=0)


def test_kernel_backend_torch_equals_auto_and_attn_op_is_used(tmp_path):
    _save_reference(tmp_path, guidance_embeds=True)
    inputs = _inputs(2, 4, 3, 5, True, seed=7)
    outs = {}
    for backend in ("torch", "auto"):
        model = load_flux_transformer(str(tmp_path), dtype=torch.float32, kernel_backend=backend)
        with torch.no_grad():
            outs[backend] = model(**inputs)
    torch.testing.assert_close(outs["auto"], outs["torch"], rtol=1e-5, atol=1e-6)

    calls = []

    def counting_op(q, k, v, joint_txt_len=0):
        calls.append((q.shape, joint_txt_len))
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2)

    model.set_attn_op(counting_op)
    with torch.no_grad():
        swapped = model(**inputs)
    # 2 double + 2 single blocks, each on the joint [txt, img] sequence with 5 leading text tokens
    assert calls == [((2, 5 + 12, 2, 16), 5)] * 4
    torch.testing.assert_close(swapped, outs["auto"], rtol=1e-5, atol=1e-6)


def test_bf16_parity_with_diffusers(tmp_path):
    ref = _save_reference(tmp_path, guidance_embeds=True).to(torch.bfloat16)
    model = load_flux_transformer(str(tmp_path), dtype=torch.bfloat16)
    inputs = _inputs(2, 4, 4, 6, True, seed=3)
    inputs = {k: v.to(torch.bfloat16) if k not in ("img_ids", "txt_ids") and v is not None else v
              for k, v in inputs.items()}
    with torch.no_grad():
        expected = ref(**inputs, return_dict=False)[0]
        got = model(**inputs)
    assert got.dtype == torch.bfloat16
    assert _rel_l2(got, expected) <= 2e-2


def test_checkpoint_mismatch_names_keys(tmp_path):
    _save_reference(tmp_path, guidance_embeds=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["guidance_embeds"] = False  # the checkpoint then holds an unexpected guidance embedder
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"^transformer: .*4 unexpected keys: time_text_embed\.guidance_embedder"):
        load_flux_transformer(str(tmp_path), dtype=torch.float32)
    config["guidance_embeds"], config["joint_attention_dim"] = True, 25
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"mis-shaped keys: context_embedder.weight \(32, 24\) vs model \(32, 25\)"):
        load_flux_transformer(str(tmp_path), dtype=torch.float32)


def test_guidance_must_match_config(tmp_path):
    model = load_flux_transformer(preset="flux-tiny", dtype=torch.float32, load_format="dummy")
    inputs = _inputs(1, 2, 2, 3, False, seed=1)
    with pytest.raises(ValueError, match="guidance=None but the model has guidance embedder"):
        model(**{**inputs, "hidden_states": torch.randn(1, 4, 64), "encoder_hidden_states": torch.randn(1, 3, 64),
                 "pooled_projections": torch.randn(1, 32)})


def test_flux_tiny_dummy_runs_at_256px(tmp_path):
    """flux-tiny at 256x256 (16x16 packed tokens, 32 text tokens): finite output of the right shape."""
    config = flux_transformer_preset("flux-tiny")
    model = load_flux_transformer(preset="flux-tiny", dtype=torch.float32, load_format="dummy")
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    img_ids, txt_ids = _ids(16, 16, 32)
    with torch.no_grad():
        out = model(torch.randn(1, 256, config.in_channels), torch.randn(1, 32, config.joint_attention_dim),
                    torch.randn(1, config.pooled_projection_dim), torch.tensor([0.5]), img_ids, txt_ids,
                    guidance=torch.tensor([3.5]))
    assert out.shape == (1, 256, config.out_dim) and torch.isfinite(out).all()
    assert out.std() > 0


def test_config_validation_and_presets():
    dev = flux_transformer_preset("FLUX.1-dev")
    assert (dev.num_layers, dev.num_single_layers, dev.inner_dim, dev.axes_dims_rope) == (19, 38, 3072, (16, 56, 56))
    assert dev.guidance_embeds and FLUX_TRANSFORMER_PRESETS["black-forest-labs/FLUX.1-dev"] == dev
    for preset in FLUX_TRANSFORMER_PRESETS.values():
        assert sum(preset.axes_dims_rope) == preset.attention_head_dim
    # config.json round trip: "_" keys ignored, lists become tuples
    d = {**dev.to_dict(), "_class_name": "FluxTransformer2DModel", "_diffusers_version": "0.30.0"}
    assert FluxTransformerConfig.from_dict(d) == dev
    with pytest.raises(ValueError, match=r"unknown FluxTransformer2DModel config keys \['mlp_ratio'\]"):
        FluxTransformerConfig.from_dict({"mlp_ratio": 4.0})
    with pytest.raises(ValueError, match=r"axes_dims_rope=\[16, 56, 54\] sums to 126: must sum to attention_head_dim"):
        FluxTransformerConfig(axes_dims_rope=(16, 56, 54))
    with pytest.raises(ValueError, match="axes_dims_rope=.*even integers"):
        FluxTransformerConfig(attention_head_dim=3, axes_dims_rope=(1, 1, 1))
    with pytest.raises(ValueError, match=r"num_attention_heads=0: must be an integer >= 1"):
        FluxTransformerConfig(num_attention_heads=0)
    with pytest.raises(ValueError, match="guidance_embeds='yes'"):
        FluxTransformerConfig(guidance_embeds="yes")
    with pytest.raises(ValueError, match=r"unknown FLUX transformer preset 'flux-huge'; built-in: \["):
        flux_transformer_preset("flux-huge")


def test_load_flux_transformer_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one of folder= .* and preset="):
        load_flux_transformer()
    with pytest.raises(ValueError, match="preset 'flux-tiny' has no weights: use load_format='dummy'"):
        load_flux_transformer(preset="flux-tiny")
    with pytest.raises(ValueError, match="load_format='pt': allowed are 'auto' and 'dummy'"):
        load_flux_transformer(preset="flux-tiny", load_format="pt")
    with pytest.raises(ValueError, match="no config.json"):
        load_flux_transformer(str(tmp_path))
