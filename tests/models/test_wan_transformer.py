"""WanTransformer3DModel parity with diffusers (T2V and I2V), fp32, same weights through our loader."""

from __future__ import annotations

import pytest
import torch

from fastdit.configs.wan import TRANSFORMER_PRESETS
from fastdit.loader.weights import load_state_dict, load_weights, read_config
from fastdit.models.dits.wan import WanTransformer3DModel, WanTransformerConfig, wan_rope

diffusers = pytest.importorskip("diffusers")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _tiny_kwargs(i2v: bool, cross_attn_norm: bool = True) -> dict:
    kw = dict(
        patch_size=(1, 2, 2), num_attention_heads=3, attention_head_dim=14, in_channels=36 if i2v else 5,
        out_channels=5, text_dim=19, freq_dim=32, ffn_dim=40, num_layers=2, cross_attn_norm=cross_attn_norm,
        rope_max_seq_len=64,
    )
    if i2v:
        kw.update(image_dim=22, added_kv_proj_dim=42)  # image tokens are projected to dim first
    return kw


def _saved_reference(tmp_path, i2v: bool, cross_attn_norm: bool = True):
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(**_tiny_kwargs(i2v, cross_attn_norm)).eval()
    with torch.no_grad():  # non-trivial norms, biases and tables, so every parameter matters
        for p in ref.parameters():
            p.normal_(0.0, 0.25)
    ref.save_pretrained(tmp_path)
    return ref


def _ours(folder) -> WanTransformer3DModel:
    model = WanTransformer3DModel(WanTransformerConfig.from_dict(read_config(folder)), kernel_backend="torch")
    load_weights(model, load_state_dict(folder), "transformer")
    return model.eval()


@pytest.mark.parametrize("i2v,cross_attn_norm", [(False, True), (True, True), (False, False)],
                         ids=["t2v", "i2v", "t2v-no-cross-attn-norm"])
def test_forward_matches_diffusers(tmp_path, i2v, cross_attn_norm):
    ref = _saved_reference(tmp_path, i2v, cross_attn_norm)
    ours = _ours(tmp_path)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, ref.config.in_channels, 3, 6, 10, generator=g)  # odd frame count, non-square grid
    t = torch.tensor([999.0, 317.5])
    # diffusers' I2V processor assumes 512 text tokens after the image tokens.
    txt = torch.randn(2, 512 if i2v else 9, 19, generator=g)
    img = torch.randn(2, 257, 22, generator=g) if i2v else None
    with torch.no_grad():
        expected = ref(x, t, txt, encoder_hidden_states_image=img, return_dict=False)[0]
        got = ours(x, t, txt, img)
    assert got.shape == expected.shape == (2, 5, 3, 6, 10)
    assert _rel(got, expected) <= 1e-4


def test_precomputed_rope_equals_inline(tmp_path):
    _saved_reference(tmp_path, False)
    ours = _ours(tmp_path)
    x = torch.randn(1, 5, 2, 4, 4)
    txt = torch.randn(1, 4, 19)
    t = torch.tensor([500.0])
    with torch.no_grad():
        a = ours(x, t, txt)
        b = ours(x, t, txt, rope=ours.rope(x.shape))
    assert torch.equal(a, b)


def test_rope_matches_diffusers_tables():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    ref = WanRotaryPosEmbed(14, (1, 2, 2), 64)
    cos_ref, sin_ref = ref(torch.zeros(1, 1, 3, 8, 10))  # [1, S, 1, D], each angle repeated twice
    cos, sin = wan_rope(14, (3, 4, 5), 64)
    assert cos.shape == (60, 7)
    torch.testing.assert_close(cos, cos_ref[0, :, 0, 0::2], rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, sin_ref[0, :, 0, 1::2], rtol=0, atol=1e-6)


def test_config_rejects_unknown_key_and_ignores_private():
    cfg = WanTransformerConfig.from_dict({"_class_name": "WanTransformer3DModel", "num_layers": 3})
    assert cfg.num_layers == 3
    with pytest.raises(ValueError, match="unknown WanTransformer3DModel config keys \\['bogus'\\]"):
        WanTransformerConfig.from_dict({"bogus": 1})


def test_model_errors_are_one_line():
    model = WanTransformer3DModel(TRANSFORMER_PRESETS["wan-tiny"])
    with pytest.raises(ValueError, match="must divide by patch_size"):
        model.grid((1, 16, 2, 5, 4))
    with pytest.raises(ValueError, match="T2V model"):
        model.encode_context(torch.randn(1, 3, 32), torch.randn(1, 2, 32))
    with pytest.raises(ValueError, match="image_dim=.*added_kv_proj_dim"):
        WanTransformerConfig(image_dim=8)


def test_presets_match_published_sizes():
    def params(name):
        with torch.device("meta"):
            return sum(p.numel() for p in WanTransformer3DModel(TRANSFORMER_PRESETS[name]).parameters())

    assert 1.40e9 < params("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") < 1.45e9
    assert 14.0e9 < params("Wan-AI/Wan2.1-T2V-14B-Diffusers") < 14.5e9
    assert params("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers") > params("Wan-AI/Wan2.1-T2V-14B-Diffusers")


def test_bf16_forward_matches_diffusers_bf16(tmp_path):
    """bf16 weights on both sides (diffusers keeps its adaLN tables and time MLP in fp32, so do we)."""
    from fastdit.models.dits.wan import load_wan_transformer, wan_checkpoint_state_dict

    _saved_reference(tmp_path, False)
    ref = diffusers.WanTransformer3DModel.from_pretrained(tmp_path, torch_dtype=torch.bfloat16).eval()
    config = WanTransformerConfig.from_dict(read_config(tmp_path))
    ours = load_wan_transformer(config, str(tmp_path), torch.bfloat16, "cpu", kernel_backend="torch")
    dtypes = {name: p.dtype for name, p in ref.named_parameters()}
    # fp32 exactly where diffusers keeps it (compared under the checkpoint keys: ours fuses the q/k/v projections)
    assert {name: t.dtype for name, t in wan_checkpoint_state_dict(ours).items()} == dtypes
    assert dtypes["blocks.0.norm2.weight"] == dtypes["scale_shift_table"] == torch.float32
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 5, 2, 4, 6, generator=g).bfloat16()
    txt = torch.randn(1, 7, 19, generator=g).bfloat16()
    t = torch.tensor([741])  # int64, as UniPC hands it out
    with torch.no_grad():
        expected = ref(x, t, txt, return_dict=False)[0]
        got = ours(x, t, txt)
    assert got.dtype == torch.bfloat16
    assert _rel(got, expected) <= 2e-2


def test_loading_a_folder_is_strict(tmp_path):
    """Missing, unexpected and mis-shaped keys of a diffusers transformer folder are one-line errors naming them."""
    from safetensors.torch import load_file, save_file

    from fastdit.models.dits.wan import load_wan_transformer

    _saved_reference(tmp_path, False)
    config = WanTransformerConfig.from_dict(read_config(tmp_path))
    (path,) = tmp_path.glob("*.safetensors")
    good = load_file(path)
    broken = {
        ("missing", "blocks.1.attn1.norm_k.weight"): {k: v for k, v in good.items() if k != "blocks.1.attn1.norm_k.weight"},
        ("unexpected", "blocks.0.attn1.to_z.weight"): {**good, "blocks.0.attn1.to_z.weight": torch.zeros(2)},
        ("mis-shaped", "proj_out.bias"): {**good, "proj_out.bias": torch.zeros(3)},
    }
    for (kind, key), state in broken.items():
        save_file(state, path)
        with pytest.raises(ValueError, match=f"transformer.*1 {kind} keys.*{key}") as info:
            load_wan_transformer(config, str(tmp_path), torch.float32, "cpu", kernel_backend="torch")
        assert "\n" not in str(info.value)


@pytest.mark.gpu
def test_gpu_kernels_and_auto_attention_match_diffusers_bf16():
    """On a GPU: the fused ops (kernel_backend auto) and the auto attention op, at 16384 self-attention keys
    (where the selector may pick fastdit's own kernel), against diffusers in bf16 with the same weights."""
    from fastdit.layers.attention import make_attention_op
    from fastdit.models.dits.wan import load_wan_transformer, wan_checkpoint_state_dict

    config = WanTransformerConfig(num_attention_heads=2, attention_head_dim=128, text_dim=64, ffn_dim=512, num_layers=2)
    op = make_attention_op("auto", "cuda", torch.bfloat16, 128)
    ours = load_wan_transformer(config, None, torch.bfloat16, "cuda", op, "auto")
    with torch.no_grad():  # biases and norm scales off their 0 / 1 init, so every parameter matters
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    ref = diffusers.WanTransformer3DModel(**config.to_dict()).to("cuda").eval()
    ref.load_state_dict({k: v.float() for k, v in wan_checkpoint_state_dict(ours).items()})
    ref.to(torch.bfloat16)
    for name, param in ref.named_parameters():  # as diffusers' from_pretrained(torch_dtype=bf16) keeps them
        if any(part in ref._keep_in_fp32_modules for part in name.split(".")):
            param.data = param.data.float()
    g = torch.Generator("cuda").manual_seed(3)
    x = torch.randn(2, 16, 4, 128, 128, generator=g, device="cuda").bfloat16()  # 4 * 64 * 64 = 16384 tokens
    txt = torch.randn(2, 512, 64, generator=g, device="cuda").bfloat16()
    t = torch.tensor([999, 400], device="cuda")
    with torch.no_grad():
        expected = ref(x, t, txt, return_dict=False)[0]
        got = ours(x, t, txt)
    assert got.shape == expected.shape == (2, 16, 4, 128, 128) and torch.isfinite(got).all()
    assert _rel(got, expected) <= 2e-2


def test_ffn_gelu_projection_runs_through_linear_gelu_tanh(monkeypatch):
    """net.0 (Linear + GELU tanh) is one linear_gelu_tanh call (the GEMM-epilogue path on CUDA), same numbers."""
    import torch.nn.functional as F

    import fastdit.models.dits.wan as wan

    calls = []
    real = wan.linear_gelu_tanh
    monkeypatch.setattr(wan, "linear_gelu_tanh", lambda *a, **k: calls.append(k.get("backend")) or real(*a, **k))
    torch.manual_seed(0)
    ffn = wan.FeedForward(12, 37, 12, approximate="tanh")
    x = torch.randn(2, 5, 12)
    got = ffn(x, "torch")
    expected = ffn.net["2"](F.gelu(F.linear(x, ffn.net["0"].proj.weight, ffn.net["0"].proj.bias), approximate="tanh"))
    assert calls == ["torch"]
    assert _rel(got, expected) <= 1e-6


@pytest.mark.gpu
def test_gpu_ffn_uses_the_gelu_epilogue_without_a_gelu_kernel():
    """On CUDA the FFN's first projection is one cuBLASLt GEMM with the bias+GELU(tanh) epilogue: no separate
    GELU kernel runs, and the result matches the fp64 reference as closely as the unfused bf16 path."""
    import torch.nn.functional as F

    from fastdit.models.dits.wan import FeedForward

    torch.manual_seed(1)
    ffn = FeedForward(1536, 8960, 1536, approximate="tanh").cuda().bfloat16()
    x = torch.randn(1, 777, 1536, device="cuda").bfloat16()
    with torch.no_grad():
        got = ffn(x, "auto")  # cuBLASLt heuristics and workspace outside the profile
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            ffn.net["0"](x, "auto")
            torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    compute = [k for k in kernels if "memset" not in k.lower() and "memcpy" not in k.lower()]
    assert compute and not [k for k in compute if "elementwise" in k or "Gelu" in k or "gelu_tanh_kernel" in k], compute
    w1, b1 = ffn.net["0"].proj.weight.double(), ffn.net["0"].proj.bias.double()
    w2, b2 = ffn.net["2"].weight.double(), ffn.net["2"].bias.double()
    exact = F.linear(F.gelu(F.linear(x.double(), w1, b1), approximate="tanh"), w2, b2)
    with torch.no_grad():
        unfused = ffn.net["2"](F.gelu(ffn.net["0"].proj(x), approximate="tanh"))
    assert _rel(got, exact) <= 1.5 * _rel(unfused, exact) + 1e-3
