"""The FLUX transformer with the fused kernels on (kernel_backend "auto" -> CUDA on a GPU, and "triton")
stays within bf16 tolerance (relative L2 <= 2e-2) of the same model and weights on the torch references."""

from __future__ import annotations

import importlib

import pytest
import torch

from fastdit.configs.flux import FluxTransformerConfig
from fastdit.loader.weights import build_module, init_dummy_weights
from fastdit.models.dits.flux import FluxTransformer2DModel
# fastdit.ops re-exports each op function under its module's name: reach the modules through sys.modules.
layer_norm_modulate_module = importlib.import_module("fastdit.ops.layer_norm_modulate")
qk_norm_rope_module = importlib.import_module("fastdit.ops.qk_norm_rope")

# FLUX.1's head layout (Dh 128, interleaved RoPE over axes 16/56/56) at 4 heads and 2 + 2 blocks.
CONFIG = FluxTransformerConfig(
    in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=128, num_attention_heads=4,
    joint_attention_dim=256, pooled_projection_dim=128, guidance_embeds=True, axes_dims_rope=(16, 56, 56),
)


def _inputs(batch=1, height=32, width=32, txt_len=77, device="cuda", dtype=torch.bfloat16):
    g = torch.Generator(device="cpu").manual_seed(0)
    img_len = (height // 2) * (width // 2)
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    return dict(
        hidden_states=torch.randn(batch, img_len, 64, generator=g).to(device, dtype),
        encoder_hidden_states=torch.randn(batch, txt_len, 256, generator=g).to(device, dtype),
        pooled_projections=torch.randn(batch, 128, generator=g).to(device, dtype),
        timestep=torch.full((batch,), 0.7, device=device),
        img_ids=img_ids.to(device),
        txt_ids=torch.zeros(txt_len, 3, device=device),
        guidance=torch.full((batch,), 3.5, device=device),
    )


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("fuse_projections", [False, True])
def test_flux_with_fused_kernels_matches_torch_path(backend, fuse_projections):
    # fuse_projections=True (the loader's default): q and k reach qk_norm_rope as strided views of one
    # QKV (or linear1) output, and the adaLN vectors as chunks of one modulation GEMM.
    def build(kernel_backend):
        return build_module(lambda: FluxTransformer2DModel(CONFIG, kernel_backend=kernel_backend,
                                                           fuse_projections=fuse_projections), torch.bfloat16, "cuda")

    reference = build("torch")
    init_dummy_weights(reference, seed=0)
    fused = build(backend)
    fused.load_state_dict(reference.state_dict())
    inputs = _inputs()
    if backend == "auto":  # on a GPU with the library, auto means the CUDA kernels for these shapes
        x = torch.randn(1, 77, 512, dtype=torch.bfloat16, device="cuda")
        mod = torch.randn(1, 512, dtype=torch.bfloat16, device="cuda")
        q = torch.randn(1, 77, 4, 128, dtype=torch.bfloat16, device="cuda")
        assert layer_norm_modulate_module.supports_cuda(x, mod, mod)
        assert qk_norm_rope_module.supports_cuda(q, q.clone())
    with torch.no_grad():
        want = reference(**inputs).float()
        got = fused(**inputs).float()
    rel = ((got - want).norm() / want.norm()).item()
    assert rel <= 2e-2, (
        f"kernel_backend={backend} fuse_projections={fuse_projections}: relative L2 error {rel:.3g} against the torch path"
    )
    assert got.shape == (1, 256, 64)
