"""Sequence-parallel and CFG-parallel plans on the tiny FLUX and Wan DiTs: the forward on 2 and 4 gloo
processes, at every legal (ulysses, ring, cfg) layout, equals the single-process forward (fp32, rel err
<= 1e-5). One spawn per world size; the layouts share it. Also: the plan on one process is the identity."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from fastdit.distributed import ParallelConfig, make_groups, single_process_groups
from fastdit.distributed.plans import CfgParallel, SequenceParallelFlux, SequenceParallelWan
from fastdit.layers.attention import attention
from fastdit.loader.weights import init_dummy_weights
from fastdit.models.dits.flux import FluxTransformer2DModel, FluxTransformerConfig
from fastdit.models.dits.wan import WanTransformer3DModel, WanTransformerConfig

# 4 heads so that Ulysses 4 is legal; 24 FLUX image tokens and 12 Wan tokens divide by 1, 2 and 4.
FLUX = FluxTransformerConfig(
    in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=4,
    joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
)
WAN = WanTransformerConfig(num_attention_heads=4, attention_head_dim=12, text_dim=32, freq_dim=32, ffn_dim=48, num_layers=2)


def _op(q, k, v, joint_txt_len=0):
    return attention(q, k, v)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _flux():
    model = FluxTransformer2DModel(FLUX).eval()
    init_dummy_weights(model, seed=0)
    gen = torch.Generator().manual_seed(1)
    h, w, B, txt = 4, 6, 2, 5
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(h).float(), torch.arange(w).float(), indexing="ij"), -1).reshape(-1, 3)
    inputs = dict(
        hidden_states=torch.randn(B, h * w, 16, generator=gen), encoder_hidden_states=torch.randn(B, txt, 32, generator=gen),
        pooled_projections=torch.randn(B, 16, generator=gen), timestep=torch.tensor([0.7, 0.3]),
        img_ids=img_ids, txt_ids=torch.zeros(txt, 3), guidance=torch.tensor([3.5, 3.5]),
    )
    return model, inputs


def _wan(batch: int):
    model = WanTransformer3DModel(WAN).eval()
    init_dummy_weights(model, seed=0)
    gen = torch.Generator().manual_seed(2)
    inputs = dict(
        hidden_states=torch.randn(batch, 16, 2, 4, 6, generator=gen),  # 2 x 2 x 3 = 12 tokens
        timestep=torch.full((batch,), 500.0),
        encoder_hidden_states=torch.randn(batch, 6, 32, generator=gen),  # 6 text tokens = the local length at SP 2
    )
    return model, inputs


@torch.no_grad()
def _layouts_on_rank(groups, world: int) -> list[tuple]:
    """[(model, U, R, cfg, max rel err over ranks)] for every legal layout of `world` ranks."""
    found = []
    flux, flux_in = _flux()
    wan, wan_in = _wan(batch=2)
    want_flux, want_wan = flux(**flux_in), wan(**wan_in)
    for cfg in (False, True):
        for U, R in ParallelConfig.legal_sp_degrees(world, cfg):
            g = make_groups(ParallelConfig(world, U, R, cfg), groups.rank, "cpu")
            errs = {}
            if not cfg:  # FLUX.1-dev is guidance-distilled: no true CFG
                errs["flux"] = _rel(SequenceParallelFlux(_flux()[0], g, _op)(**flux_in), want_flux)
            dit = SequenceParallelWan(_wan(2)[0], g, _op)
            if cfg:
                dit = CfgParallel(dit, g)
            errs["wan"] = _rel(dit(**wan_in), want_wan)
            for name, err in errs.items():
                t = torch.tensor([err], dtype=torch.float64)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                found.append((name, U, R, cfg, t.item()))
    return found


@pytest.mark.parametrize("world", [2, 4])
def test_plans_match_single_process(gloo, world):
    results = gloo.run(world, _layouts_on_rank, world)
    expected = {("flux", u, r, False) for u, r in ParallelConfig.legal_sp_degrees(world)}
    expected |= {("wan", u, r, c) for c in (False, True) for u, r in ParallelConfig.legal_sp_degrees(world, c)}
    assert {r[:4] for r in results} == expected
    bad = [r for r in results if not r[4] <= 1e-5]
    assert not bad, f"rel err > 1e-5: {bad}"


@torch.no_grad()
def test_plans_on_one_process_are_the_plain_model():
    groups = single_process_groups("cpu")
    flux, flux_in = _flux()
    assert torch.equal(SequenceParallelFlux(_flux()[0], groups, _op)(**flux_in), flux(**flux_in))
    wan, wan_in = _wan(batch=2)
    dit = CfgParallel(SequenceParallelWan(_wan(2)[0], groups, _op), groups)
    assert torch.equal(dit(**wan_in), wan(**wan_in))


def test_bad_token_count_is_named():
    config = ParallelConfig(4, 4, 1)
    with pytest.raises(ValueError, match="7 image tokens must divide by ulysses_degree \\* ring_degree = 4"):
        config.check_model(num_heads=4, num_img_tokens=7)
    with pytest.raises(ValueError, match="ulysses_degree=4 must divide the model's 2 attention heads"):
        config.check_model(num_heads=2)
