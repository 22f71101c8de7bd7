"""Load-time fusion of the FLUX transformer (flux_fuse_table): one QKV GEMM per stream in double blocks,
linear1 = [q; k; v; mlp] in single blocks, every adaLN vector from ONE modulation GEMM. Parity with
diffusers (fp32, rel L2 <= 1e-4) with fusion on, GEMM counts, exact checkpoint views, strict loading,
dummy weights equal to the unfused model's, and the sequence-parallel plan on the fused model."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from safetensors.torch import save_file

from fastdit.configs.flux import FluxTransformerConfig
from fastdit.distributed import ParallelConfig, launch
from fastdit.distributed.plans import SequenceParallelFlux
from fastdit.layers.attention import attention
from fastdit.loader.weights import build_module, init_dummy_weights, load_state_dict
from fastdit.models.dits.flux import (
    FluxTransformer2DModel,
    flux_checkpoint_state_dict,
    flux_fuse_table,
    load_flux_transformer,
)
from tests.models.test_flux_transformer import TINY, _inputs, _rel_l2, _save_reference

diffusers = pytest.importorskip("diffusers")


class _GemmCounter(TorchDispatchMode):
    """Counts the matrix multiplies that reach the aten level (F.linear lowers to addmm/mm; addmm_ accumulates)."""

    GEMMS = ("aten.addmm.default", "aten.addmm.out", "aten.addmm_.default", "aten.mm.default", "aten.bmm.default",
             "aten.baddbmm.default")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += str(func) in self.GEMMS
        return func(*args, **(kwargs or {}))


def _count_gemms(model: torch.nn.Module, inputs: dict) -> int:
    with torch.no_grad(), _GemmCounter() as counter:
        model(**inputs)
    return counter.count


def test_fused_parity_with_diffusers_and_gemm_count(tmp_path):
    ref = _save_reference(tmp_path, guidance_embeds=True)
    fused = load_flux_transformer(str(tmp_path), dtype=torch.float32, fuse_projections=True)
    plain = load_flux_transformer(str(tmp_path), dtype=torch.float32, fuse_projections=False)
    keys = set(fused.state_dict())
    assert {"transformer_blocks.1.attn.to_qkv.weight", "transformer_blocks.0.attn.add_qkv_proj.bias",
            "single_transformer_blocks.1.linear1.weight", "modulation.weight"} <= keys
    assert not any(k.endswith(("to_q.weight", "proj_mlp.weight", "norm1.linear.weight", "norm.linear.bias"))
                   or k.startswith("norm_out.linear") for k in keys)
    D = TINY["num_attention_heads"] * TINY["attention_head_dim"]
    assert fused.single_transformer_blocks[0].linear1.weight.shape == (3 * D + 4 * D, D)
    assert fused.modulation.weight.shape == ((12 * 2 + 3 * 2 + 2) * D, D)
    # the unfused model keeps exactly the checkpoint's keys
    assert set(plain.state_dict()) == set(load_state_dict(tmp_path))
    for seed, (batch, h, w, txt_len) in enumerate([(2, 4, 4, 7), (1, 3, 5, 19)]):
        inputs = _inputs(batch, h, w, txt_len, True, seed)
        with torch.no_grad():
            expected = ref(**inputs, return_dict=False)[0]
            got = fused(**inputs)
        assert _rel_l2(got, expected) <= 1e-4, (h, w, txt_len)
    # GEMMs per forward: embedders 2 + time/guidance/text MLPs 6 + proj_out 1, plus per double block
    # (q,k,v x2 + 2 out + 4 ff + 2 adaLN) or fused (2 qkv per sample, batch 1 here + 2 out + 4 ff), per single block (q,k,v,mlp,adaLN
    # + proj_out as 2 accumulating GEMMs) or fused (linear1's qkv and mlp row blocks + the same 2 for proj_out),
    # and norm_out's adaLN (unfused) or the one modulation GEMM (fused).
    n2, n1 = TINY["num_layers"], TINY["num_single_layers"]
    assert _count_gemms(plain, inputs) == 9 + 14 * n2 + 7 * n1 + 1
    assert _count_gemms(fused, inputs) == 9 + 8 * n2 + 4 * n1 + 1


def test_checkpoint_views_are_exact_and_share_memory(tmp_path):
    _save_reference(tmp_path, guidance_embeds=False)
    checkpoint = load_state_dict(tmp_path)
    fused = load_flux_transformer(str(tmp_path), dtype=torch.float32)
    views = flux_checkpoint_state_dict(fused)
    assert set(views) == set(checkpoint)
    for key, tensor in checkpoint.items():
        assert torch.equal(views[key], tensor), key
    qkv = fused.transformer_blocks[0].attn.to_qkv.weight
    k_view = views["transformer_blocks.0.attn.to_k.weight"]
    assert k_view.data_ptr() == qkv.data_ptr() + qkv.shape[1] * k_view.shape[0] * qkv.element_size()
    # a diffusers twin built from the views (assign=True, as bench/e2e_flux.py does) computes the same
    with torch.device("meta"):
        twin = diffusers.FluxTransformer2DModel(**TINY, guidance_embeds=False)
    twin.load_state_dict(views, strict=True, assign=True)
    inputs = _inputs(1, 2, 3, 4, False, seed=5)
    with torch.no_grad():
        assert _rel_l2(fused(**inputs), twin.eval()(**inputs, return_dict=False)[0]) <= 1e-4


def test_fused_loading_is_strict(tmp_path):
    _save_reference(tmp_path, guidance_embeds=True)
    checkpoint = load_state_dict(tmp_path)
    del checkpoint["single_transformer_blocks.1.proj_mlp.bias"]
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    save_file(checkpoint, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match=r"^transformer: cannot fuse into 'single_transformer_blocks\.1\.linear1\."
                                         r"bias': missing single_transformer_blocks\.1\.proj_mlp\.bias"):
        load_flux_transformer(str(tmp_path), dtype=torch.float32)
    with pytest.raises(ValueError, match=r"1 missing keys: single_transformer_blocks\.1\.proj_mlp\.bias"):
        load_flux_transformer(str(tmp_path), dtype=torch.float32, fuse_projections=False)


def test_fuse_table_covers_every_checkpoint_projection_once():
    config = FluxTransformerConfig(**TINY, guidance_embeds=True)
    table = flux_fuse_table(config)
    with torch.device("meta"):
        plain_keys = set(FluxTransformer2DModel(config).state_dict())
        fused_keys = set(FluxTransformer2DModel(config, fuse_projections=True).state_dict())
    sources = [s for group in table.values() for s in group]
    assert len(sources) == len(set(sources)) and set(sources) <= plain_keys
    assert set(table) <= fused_keys
    assert fused_keys == (plain_keys - set(sources)) | set(table)


def test_dummy_fused_equals_dummy_unfused():
    fused = load_flux_transformer(preset="flux-tiny", dtype=torch.float32, load_format="dummy")
    plain = load_flux_transformer(preset="flux-tiny", dtype=torch.float32, load_format="dummy",
                                  fuse_projections=False)
    assert fused.fuse_projections and not plain.fuse_projections
    views = flux_checkpoint_state_dict(fused)
    assert all(torch.equal(views[k], t) for k, t in plain.state_dict().items())
    assert views["single_transformer_blocks.0.proj_mlp.weight"].std() > 0
    config = fused.config
    g = torch.Generator().manual_seed(0)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(3.0), torch.arange(4.0), indexing="ij"),
                          -1).reshape(-1, 3)
    inputs = dict(hidden_states=torch.randn(1, 12, config.in_channels, generator=g),
                  encoder_hidden_states=torch.randn(1, 5, config.joint_attention_dim, generator=g),
                  pooled_projections=torch.randn(1, config.pooled_projection_dim, generator=g),
                  timestep=torch.tensor([0.4]), img_ids=img_ids, txt_ids=torch.zeros(5, 3),
                  guidance=torch.tensor([3.5]))
    with torch.no_grad():
        assert _rel_l2(fused(**inputs), plain(**inputs)) <= 1e-5


def _sp_on_rank(groups, folder: str) -> float:
    """max rel err of SequenceParallelFlux over the fused model on 2 ranks vs the plain single-process model."""
    inputs = _inputs(2, 4, 4, 6, True, seed=9)
    op = lambda q, k, v, joint_txt_len=0: attention(q, k, v)  # noqa: E731
    with torch.no_grad():
        want = load_flux_transformer(folder, dtype=torch.float32, fuse_projections=False)(**inputs)
        sp = SequenceParallelFlux(load_flux_transformer(folder, dtype=torch.float32), groups, op)
        err = torch.tensor([_rel_l2(sp(**inputs), want)], dtype=torch.float64)
    torch.distributed.all_reduce(err, op=torch.distributed.ReduceOp.MAX)
    return err.item()


def test_sequence_parallel_plan_on_fused_model(tmp_path):
    _save_reference(tmp_path, guidance_embeds=True)
    err = launch(_sp_on_rank, ParallelConfig(2, 2, 1), str(tmp_path), device_type="cpu")
    assert err <= 1e-5


class _OpCounter(TorchDispatchMode):
    """Counts the aten ops of a forward by name."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func)] = self.counts.get(str(func), 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("fuse", [True, False])
def test_double_block_chain_equals_per_block_forward(fuse):
    """The model's double-stream chain (each block's last gated residual fused with the next block's norm)
    computes what calling every block's own forward does, and leaves only the last block's two addcmuls
    (the single blocks' residuals are fused too): 3 double blocks, batch 2, odd sizes."""
    config = FluxTransformerConfig(**{**TINY, "num_layers": 3}, guidance_embeds=True)
    model = build_module(lambda: FluxTransformer2DModel(config, fuse_projections=fuse), torch.float32, "cpu")
    init_dummy_weights(model, seed=4)
    g = torch.Generator().manual_seed(11)
    D = config.inner_dim
    img, txt = torch.randn(2, 15, D, generator=g), torch.randn(2, 7, D, generator=g)
    mods = [0.3 * torch.randn(2, 6 * D, generator=g) for _ in range(6)]
    ids = torch.cat([torch.zeros(7, 3), torch.randn(15, 3, generator=g)])
    rope = model.rope(ids[7:], ids[:7])
    with torch.no_grad(), _OpCounter() as counter:
        got_img, got_txt = model._double_stream(img, txt, mods, rope)
    assert counter.counts.get("aten.addcmul.default", 0) == 2, counter.counts
    with torch.no_grad():
        want_img, want_txt = img, txt
        for i, block in enumerate(model.transformer_blocks):
            want_img, want_txt = block(want_img, want_txt, mods[2 * i], mods[2 * i + 1], rope)
    assert _rel_l2(got_img, want_img) <= 1e-6 and _rel_l2(got_txt, want_txt) <= 1e-6


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_modulation_table_rows_equal_each_steps_own(guidance_embeds):
    """modulation_table computes several steps' adaLN vectors in one GEMM; forward(modulation=row) equals the
    forward that computes its own, step by step (fp32, batch 2, 5 steps with distinct timesteps)."""
    config = FluxTransformerConfig(**TINY, guidance_embeds=guidance_embeds)
    model = build_module(lambda: FluxTransformer2DModel(config, fuse_projections=True), torch.float32, "cpu")
    init_dummy_weights(model, seed=5)
    inputs = _inputs(2, 3, 4, 5, guidance_embeds, seed=12)
    timesteps = torch.rand(5, 2, generator=torch.Generator().manual_seed(3))  # [steps, B], as the loop passes them
    with torch.no_grad():
        table = model.modulation_table(timesteps, inputs["guidance"], inputs["pooled_projections"])
        assert table.shape == (5, 2, sum(model.modulation_sizes))
        for step in range(5):
            own = torch.cat(model.modulations(model.silu_temb(timesteps[step], inputs["guidance"],
                                                              inputs["pooled_projections"])), dim=1)
            assert _rel_l2(table[step], own) <= 1e-6
            step_inputs = {**inputs, "timestep": timesteps[step]}
            assert _rel_l2(model(**step_inputs, modulation=table[step]), model(**step_inputs)) <= 1e-6
        # the row is what the step uses: with step 0's row, step 4's timestep changes nothing
        first = {**inputs, "timestep": timesteps[0]}
        assert _rel_l2(model(**{**inputs, "timestep": timesteps[4]}, modulation=table[0]), model(**first)) <= 1e-6


def test_modulation_table_rejects_bad_input():
    config = FluxTransformerConfig(**TINY, guidance_embeds=True)
    plain = build_module(lambda: FluxTransformer2DModel(config), torch.float32, "cpu")
    fused = build_module(lambda: FluxTransformer2DModel(config, fuse_projections=True), torch.float32, "cpu")
    inputs = _inputs(2, 2, 2, 3, True, seed=1)
    with pytest.raises(ValueError, match="fuse_projections=True"):
        plain.modulation_table(torch.rand(3, 2), inputs["guidance"], inputs["pooled_projections"])
    with pytest.raises(ValueError, match="fuse_projections=True"):
        plain(**inputs, modulation=torch.zeros(2, sum(plain.modulation_sizes)))
    with pytest.raises(ValueError, match=r"not \[B, \.\.\.\] / \[B\]"):
        fused.modulation_table(torch.rand(3, 4), inputs["guidance"], inputs["pooled_projections"])
