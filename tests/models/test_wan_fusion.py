"""Load-time fusion of the Wan transformer (wan_fuse_table): one QKV GEMM in self-attention, one KV GEMM of
the text (and one of the I2V image tokens) in cross-attention. Fused == unfused == diffusers (fp32) for T2V
and I2V, fewer GEMMs, the table's keys, exact checkpoint views that load into diffusers strictly, dummy
weights equal to the unfused model's, bench/e2e_wan.py's diffusers twin, the Triton kernels on the fused
views (CPU interpreter), and the fused CUDA kernels on a GPU."""

from __future__ import annotations

import importlib

import pytest
import torch

from fastdit.configs.wan import TRANSFORMER_PRESETS
from fastdit.loader.weights import load_state_dict, read_config
from fastdit.models.dits.wan import (
    WanTransformer3DModel,
    WanTransformerConfig,
    load_wan_transformer,
    wan_checkpoint_state_dict,
    wan_fuse_table,
)
from tests.models.test_flux_fusion import _count_gemms
from tests.models.test_wan_transformer import _rel, _saved_reference, _tiny_kwargs
from tests.ops._op_testing import run_under_interpreter

diffusers = pytest.importorskip("diffusers")


def _inputs(in_channels: int, i2v: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(2, in_channels, 3, 6, 10, generator=g),  # odd frame count, non-square grid
        timestep=torch.tensor([999.0, 317.5]),
        # diffusers' I2V processor assumes 512 text tokens after the image tokens
        encoder_hidden_states=torch.randn(2, 512 if i2v else 9, 19, generator=g),
        encoder_hidden_states_image=torch.randn(2, 257, 22, generator=g) if i2v else None,
    )


def _load(folder, fuse: bool) -> WanTransformer3DModel:
    config = WanTransformerConfig.from_dict(read_config(folder))
    return load_wan_transformer(config, str(folder), torch.float32, "cpu", kernel_backend="torch",
                                fuse_projections=fuse)


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_fused_equals_unfused_and_diffusers(tmp_path, i2v):
    ref = _saved_reference(tmp_path, i2v)
    fused, plain = _load(tmp_path, True), _load(tmp_path, False)
    assert fused.fuse_projections and not plain.fuse_projections
    keys = set(fused.state_dict())
    D = 3 * 14  # heads * head_dim of the tiny config
    attn1, attn2 = fused.blocks[1].attn1, fused.blocks[1].attn2
    assert attn1.to_qkv.weight.shape == (3 * D, D) and attn2.to_kv.weight.shape == (2 * D, D)
    assert "blocks.0.attn2.to_q.weight" in keys and "blocks.0.attn1.to_q.weight" not in keys
    assert not any(k.endswith(("to_k.weight", "to_v.bias", "add_k_proj.weight", "add_v_proj.bias")) for k in keys)
    assert ("blocks.1.attn2.add_kv_proj.weight" in keys) == i2v
    assert set(plain.state_dict()) == set(load_state_dict(tmp_path))  # unfused: the checkpoint's own keys
    inputs = _inputs(ref.config.in_channels, i2v, seed=1)
    with torch.no_grad():
        expected = ref(**inputs, return_dict=False)[0]
        got, unfused = fused(**inputs), plain(**inputs)
    assert got.shape == expected.shape == (2, 5, 3, 6, 10)
    assert _rel(got, unfused) <= 1e-5
    assert _rel(got, expected) <= 1e-4
    # per block: attn1's q, k, v -> 1 GEMM (2 fewer), attn2's text k, v -> 1 (1 fewer), I2V image k, v -> 1
    saved = (4 if i2v else 3) * ref.config.num_layers
    assert _count_gemms(fused, inputs) == _count_gemms(plain, inputs) - saved


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_fuse_table_keys(i2v):
    config = WanTransformerConfig(**_tiny_kwargs(i2v))
    table = wan_fuse_table(config)
    with torch.device("meta"):
        plain_keys = set(WanTransformer3DModel(config).state_dict())
        fused_keys = set(WanTransformer3DModel(config, fuse_projections=True).state_dict())
    assert table["blocks.1.attn1.to_qkv.bias"] == ("blocks.1.attn1.to_q.bias", "blocks.1.attn1.to_k.bias",
                                                   "blocks.1.attn1.to_v.bias")
    assert table["blocks.0.attn2.to_kv.weight"] == ("blocks.0.attn2.to_k.weight", "blocks.0.attn2.to_v.weight")
    assert len(table) == 2 * (3 if i2v else 2) * config.num_layers  # weight and bias of each fused projection
    sources = [s for group in table.values() for s in group]
    assert len(sources) == len(set(sources)) and set(sources) <= plain_keys
    assert fused_keys == (plain_keys - set(sources)) | set(table)


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
def test_checkpoint_views_are_exact_and_load_into_diffusers_strictly(tmp_path, i2v):
    _saved_reference(tmp_path, i2v)
    checkpoint = load_state_dict(tmp_path)
    fused = _load(tmp_path, True)
    views = wan_checkpoint_state_dict(fused)
    assert set(views) == set(checkpoint)
    for key, tensor in checkpoint.items():
        assert torch.equal(views[key], tensor), key
    qkv = fused.blocks[0].attn1.to_qkv.weight
    v_view = views["blocks.0.attn1.to_v.weight"]
    assert v_view.data_ptr() == qkv.data_ptr() + 2 * v_view.numel() * qkv.element_size()  # a view, no copy
    twin = diffusers.WanTransformer3DModel(**_tiny_kwargs(i2v)).eval()
    twin.load_state_dict(views, strict=True)
    inputs = _inputs(twin.config.in_channels, i2v, seed=2)
    with torch.no_grad():
        assert _rel(fused(**inputs), twin(**inputs, return_dict=False)[0]) <= 1e-4


def test_dummy_fused_equals_dummy_unfused():
    config = TRANSFORMER_PRESETS["wan-tiny-i2v"]
    fused = load_wan_transformer(config, None, torch.float32, "cpu", kernel_backend="torch")
    plain = load_wan_transformer(config, None, torch.float32, "cpu", kernel_backend="torch", fuse_projections=False)
    assert fused.fuse_projections
    views = wan_checkpoint_state_dict(fused)
    assert all(torch.equal(views[k], t) for k, t in plain.state_dict().items())
    assert views["blocks.0.attn2.add_v_proj.weight"].std() > 0
    g = torch.Generator().manual_seed(3)
    inputs = dict(hidden_states=torch.randn(1, config.in_channels, 2, 4, 6, generator=g),
                  timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 7, config.text_dim, generator=g),
                  encoder_hidden_states_image=torch.randn(1, 5, config.image_dim, generator=g))
    with torch.no_grad():
        assert _rel(fused(**inputs), plain(**inputs)) <= 1e-5


def test_bench_diffusers_twin_shares_the_fused_tensors(monkeypatch):
    """bench/e2e_wan.py's transformer_twin (on the CPU, tiny config): diffusers' model holds our fused tensors'
    checkpoint views (no copy) and computes what ours does."""
    monkeypatch.syspath_prepend("bench")
    e2e_wan = importlib.import_module("e2e_wan")
    config = WanTransformerConfig(**_tiny_kwargs(False))
    ours = load_wan_transformer(config, None, torch.float32, "cpu", kernel_backend="torch")
    with torch.no_grad():  # biases and norm scales off their 0 / 1 init, so every parameter matters
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    twin = e2e_wan.transformer_twin(ours, "cpu")
    qkv = ours.blocks[1].attn1.to_qkv.weight
    assert twin.blocks[1].attn1.to_k.weight.data_ptr() == qkv[qkv.shape[0] // 3].data_ptr()
    inputs = _inputs(config.in_channels, False, seed=4)
    with torch.no_grad():
        assert _rel(ours(**inputs), twin(**inputs, return_dict=False)[0]) <= 1e-4


def interpreted_fused_attention() -> None:
    """Run under TRITON_INTERPRET=1: the fused model with every kernel on Triton (qk_norm_rope on the to_qkv
    views, token stride 3 * H * D; rms_norm on the to_kv / add_kv_proj k views, row stride 2 * H * D) equals
    the torch path."""
    config = WanTransformerConfig(**{**_tiny_kwargs(True), "attention_head_dim": 16, "added_kv_proj_dim": 48})
    torch_path = load_wan_transformer(config, None, torch.float32, "cpu", kernel_backend="torch")
    triton_path = load_wan_transformer(config, None, torch.float32, "cpu", kernel_backend="triton")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, config.in_channels, 2, 4, 6, generator=g)
    t, txt = torch.tensor([600.0]), torch.randn(1, 7, config.text_dim, generator=g)
    img = torch.randn(1, 5, config.image_dim, generator=g)
    with torch.no_grad():
        want, got = torch_path(x, t, txt, img), triton_path(x, t, txt, img)
    assert torch.isfinite(got).all() and _rel(got, want) <= 1e-5, _rel(got, want)


def test_triton_kernels_take_the_fused_views():
    run_under_interpreter(__file__, "interpreted_fused_attention")


@pytest.mark.gpu
@pytest.mark.parametrize("dim,heads", [(1536, 12), (5120, 40)], ids=["1.3B", "14B"])
def test_gpu_cuda_kernels_take_the_fused_views_without_a_copy(dim, heads):
    """At the real models' widths the CUDA qk_norm_rope takes q, k inside the to_qkv output (token stride 3 * dim)
    and the CUDA rms_norm the to_kv k view (row stride 2 * dim) as they are: aligned, no contiguous copy."""
    from fastdit.models.dits.wan import WanAttention
    from fastdit.ops import _library as lib
    from fastdit.ops.qk_norm_rope import supports_cuda as qk_norm_rope_supports_cuda
    from fastdit.ops.rms_norm import supports_cuda as rms_norm_supports_cuda

    self_attn = WanAttention(dim, heads, 1e-6, cross=False, fused=True).cuda().bfloat16()
    cross_attn = WanAttention(dim, heads, 1e-6, cross=True, added_kv_proj_dim=dim, fused=True).cuda().bfloat16()
    x = torch.randn(2, 333, dim, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        q, k, _ = self_attn.split_heads(self_attn.to_qkv(x))
        assert q.stride(1) == k.stride(1) == 3 * dim
        assert qk_norm_rope_supports_cuda(q, k, self_attn.norm_q.weight, self_attn.norm_k.weight)
        assert lib.aligned16(q, k)  # else the CUDA path rotates an aligned copy
        for image in (False, True):
            k_ctx, _ = cross_attn._kv(x[:, :77], image=image)
            rows = k_ctx.reshape(-1, dim)
            assert rows.stride(0) == 2 * dim and rms_norm_supports_cuda(k_ctx, cross_attn.norm_k.weight)
            assert lib.rows_for_kernel(rows) is rows


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_gpu_fused_equals_unfused_bf16(backend):
    """On a GPU in bf16 with the fused kernels (auto: CUDA where the library runs them): qk_norm_rope writes q and
    k inside the to_qkv output (token stride 3 * H * D) and rms_norm reads the to_kv k view; the fused model gives
    the unfused model's numbers (the GEMMs' row blocks may differ only in cuBLAS's tiling)."""
    config = WanTransformerConfig(num_attention_heads=4, attention_head_dim=128, text_dim=64, ffn_dim=512,
                                  num_layers=2, image_dim=40, added_kv_proj_dim=512)
    fused = load_wan_transformer(config, None, torch.bfloat16, "cuda", kernel_backend=backend)
    plain = load_wan_transformer(config, None, torch.bfloat16, "cuda", kernel_backend=backend, fuse_projections=False)
    g = torch.Generator("cuda").manual_seed(6)
    x = torch.randn(2, config.in_channels, 3, 16, 24, generator=g, device="cuda").bfloat16()
    txt = torch.randn(2, 77, config.text_dim, generator=g, device="cuda").bfloat16()
    img = torch.randn(2, 257, config.image_dim, generator=g, device="cuda").bfloat16()
    t = torch.tensor([999, 400], device="cuda")
    with torch.no_grad():
        got, want = fused(x, t, txt, img), plain(x, t, txt, img)
    assert torch.isfinite(got).all() and _rel(got, want) <= 2e-2
