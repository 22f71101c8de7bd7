"""CUDA graphs and torch.compile of the FLUX denoising step (pipelines/cuda_graph.py).

CPU: the graphed denoiser passes CPU calls through; torch.compile(fullgraph=True) traces the whole DiT with no
graph break and the same output, through the torch references and (Triton on the CPU interpreter, in a
subprocess) through our custom ops, which must appear in the traced graph; the API and CLI switches.
GPU: graphed steps equal eager ones (flux-tiny and a mid-size config, bf16), a new shape re-captures and a
known one replays, the denoise loop makes no host synchronisation, the compile path matches eager.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from fastdit import Pipeline
from fastdit.configs.flux import FluxTransformerConfig, flux_transformer_preset
from fastdit.layers.attention import make_attention_op
from fastdit.loader.weights import build_module, init_dummy_weights
from fastdit.models.dits.flux import FluxTransformer2DModel
from fastdit.pipelines.api import resolve_cuda_graph
from fastdit.pipelines.cuda_graph import GraphedDenoiser, compile_model
from fastdit.pipelines.flux import FluxRecipe, FluxState, latent_image_ids
from fastdit.pipelines.request import GenerationRequest

# 2 + 2 blocks of 8 heads x 128 (inner 1024): FLUX.1's head size, so the GPU runs the real kernels' shapes
MID = FluxTransformerConfig(in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=128,
                            num_attention_heads=8, joint_attention_dim=256, pooled_projection_dim=64,
                            guidance_embeds=True, axes_dims_rope=(16, 56, 56))
# flux-tiny with one block of each kind: what the CPU compile tests trace (tracing time grows with blocks)
ONE_BLOCK_EACH = FluxTransformerConfig(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=32,
                                       num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
                                       guidance_embeds=True, axes_dims_rope=(8, 12, 12))


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _model(config: FluxTransformerConfig, device: str, dtype: torch.dtype, kernel_backend: str = "auto"):
    attn_op = make_attention_op("auto", torch.device(device), dtype, config.attention_head_dim)
    model = build_module(lambda: FluxTransformer2DModel(config, attn_op, kernel_backend, fuse_projections=True),
                         dtype, device)
    init_dummy_weights(model, seed=0)
    return model.eval()


def _step_inputs(config: FluxTransformerConfig, batch: int, side: int, txt_len: int, seed: int, device, dtype):
    """One denoising step's arguments: packed latents of a side x side token grid, text states, t, ids, rope."""
    g = torch.Generator().manual_seed(seed)
    img_ids = latent_image_ids(side, side, device, dtype)
    txt_ids = torch.zeros(txt_len, 3, device=device, dtype=dtype)
    args = [torch.randn(batch, side * side, config.in_channels, generator=g),
            torch.randn(batch, txt_len, config.joint_attention_dim, generator=g),
            torch.randn(batch, config.pooled_projection_dim, generator=g),
            torch.rand(batch, generator=g)]
    args = [a.to(device, dtype) for a in args] + [img_ids, txt_ids, torch.full([batch], 3.5, device=device)]
    return args


# CPU


def test_graphed_denoiser_passes_cpu_calls_through():
    config = flux_transformer_preset("flux-tiny")
    model = _model(config, "cpu", torch.float32)
    graphed = GraphedDenoiser(model)
    args = _step_inputs(config, 2, 4, 7, 0, "cpu", torch.float32)
    with torch.inference_mode():
        torch.testing.assert_close(graphed(*args), model(*args), rtol=0, atol=0)
    assert graphed.captures == 0
    with pytest.raises(ValueError, match=r"^max_graphs=0 is not allowed: keep at least one graph"):
        GraphedDenoiser(model, max_graphs=0)


def test_compile_fullgraph_same_output_torch_ops():
    """fullgraph=True raises on any graph break: compiling and running is the check; outputs equal eager."""
    config = ONE_BLOCK_EACH
    model = _model(config, "cpu", torch.float32, kernel_backend="torch")
    args = _step_inputs(config, 2, 4, 7, 1, "cpu", torch.float32)
    with torch.inference_mode():
        expected = model(*args, rope=model.rope(args[4], args[5]))
        compile_model(model, backend="aot_eager")
        got = model(*args, rope=model.rope(args[4], args[5]))
    assert isinstance(model, FluxTransformer2DModel) and "_orig_mod" not in "".join(model.state_dict())
    assert _rel_l2(got, expected) <= 1e-6


_CUSTOM_OPS_SCRIPT = textwrap.dedent("""
    import torch
    from fastdit.configs.flux import flux_transformer_preset
    from fastdit.pipelines.cuda_graph import compile_model
    from tests.pipelines.test_cuda_graph import ONE_BLOCK_EACH, _model, _rel_l2, _step_inputs
    traced = set()

    def recording_backend(gm, example_inputs):
        traced.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    config = ONE_BLOCK_EACH
    model = _model(config, "cpu", torch.float32, kernel_backend="triton")
    args = _step_inputs(config, 1, 3, 5, 2, "cpu", torch.float32)
    with torch.inference_mode():
        expected = model(*args)
        compile_model(model, backend=recording_backend)
        got = model(*args)
    print(sorted(t for t in traced if "fastdit" in t))
    print("REL", _rel_l2(got, expected))
""")


def test_compile_fullgraph_traces_our_custom_ops():
    """With the Triton backend (CPU interpreter) every fused op is a fastdit custom op in ONE traced graph."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _CUSTOM_OPS_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops_line, rel_line = proc.stdout.strip().splitlines()[-2:]
    for op in ("layer_norm_modulate_triton", "gated_residual_norm_modulate_triton", "qk_norm_rope_triton",
               "gelu_tanh_triton", "timestep_embedding_triton"):
        assert f"fastdit.{op}" in ops_line, (op, ops_line)
    assert float(rel_line.split()[1]) <= 1e-6, rel_line


class _EagerOnlyRecipe:
    """A recipe without `supports_cuda_graph` (as the Wan recipes are today)."""


def test_cuda_graph_switch_resolution():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_cuda_graph(None, cuda, FluxRecipe) is True
    assert resolve_cuda_graph(None, cpu, FluxRecipe) is False
    assert resolve_cuda_graph(False, cuda, FluxRecipe) is False
    assert resolve_cuda_graph(None, cuda, _EagerOnlyRecipe) is False  # no graphed step: off, not an error
    with pytest.raises(ValueError, match=r"^cuda_graph=True is not allowed on cpu: CUDA graphs need a CUDA device"):
        resolve_cuda_graph(True, cpu, FluxRecipe)
    with pytest.raises(ValueError, match=r"^cuda_graph=True is not allowed for _EagerOnlyRecipe: its denoising step"):
        resolve_cuda_graph(True, cuda, _EagerOnlyRecipe)
    with pytest.raises(ValueError, match=r"^cuda_graph='yes' is not allowed: cuda_graph must be True, False or None"):
        Pipeline.from_pretrained("flux-tiny", device="cpu", cuda_graph="yes")
    with pytest.raises(ValueError, match=r"^torch_compile=1 is not allowed: torch_compile must be True or False$"):
        Pipeline.from_pretrained("flux-tiny", device="cpu", torch_compile=1)
    with pytest.raises(ValueError, match=r"^cuda_graph=True is not allowed on cpu"):
        Pipeline.from_pretrained("flux-tiny", device="cpu", cuda_graph=True)


# GPU


# Replays run the same kernels as eager calls; 1e-2 leaves room for a GEMM algorithm picked differently under
# capture (bf16 rounding), while a stale static input or an overwritten output would be off by ~1.
GRAPH_TOL = 1e-2


def _graph_vs_eager(config: FluxTransformerConfig, side: int, txt_len: int) -> None:
    model = _model(config, "cuda", torch.bfloat16)
    graphed = GraphedDenoiser(model)
    with torch.inference_mode():
        calls = [(1, 0), (1, 1), (2, 2), (1, 3)]  # a replay with new values, a new batch size, back again
        outputs = []
        for batch, seed in calls:
            args = _step_inputs(config, batch, side, txt_len, seed, "cuda", torch.bfloat16)
            rope = model.rope(args[4], args[5])
            got = graphed(*args, rope=rope)
            expected = model(*args, rope=rope)
            assert got.shape == expected.shape == (batch, side * side, config.out_dim)
            assert _rel_l2(got, expected) <= GRAPH_TOL, (batch, seed)
            outputs.append((got, expected))
        assert graphed.failure is None and graphed.captures == 2  # batch 1 and 2; the other calls replayed
        for got, expected in outputs:  # earlier results are copies: later replays did not overwrite them
            assert _rel_l2(got, expected) <= GRAPH_TOL


@pytest.mark.gpu
@pytest.mark.parametrize("name, config, side, txt_len", [
    ("flux-tiny", flux_transformer_preset("flux-tiny"), 16, 77),
    ("mid", MID, 32, 128),
])
def test_graphed_step_equals_eager(name, config, side, txt_len):
    _graph_vs_eager(config, side, txt_len)


@pytest.mark.gpu
def test_graph_cache_evicts_least_recent():
    config = flux_transformer_preset("flux-tiny")
    graphed = GraphedDenoiser(_model(config, "cuda", torch.bfloat16), max_graphs=1)
    with torch.inference_mode():
        for side in (8, 12, 8):
            graphed(*_step_inputs(config, 1, side, 16, 0, "cuda", torch.bfloat16))
    assert graphed.captures == 3


def _prepared_state(pipe, request):
    """A FluxState after every stage before denoise."""
    state = FluxState(seed=request.seed, show_progress=False)
    for name, fn in pipe.recipe.stages(request, None):
        if name == "denoise":
            return state
        fn(request, state)
    raise AssertionError("the FLUX recipe has no denoise stage")


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [True, False])
def test_denoise_loop_never_synchronizes_the_host(cuda_graph):
    """torch's sync debug mode turns every implicit host synchronisation (.item(), .cpu(), a device-to-host copy,
    a data-dependent shape) into an error; the loop runs under it after a first run has captured the graph."""
    pipe = Pipeline.from_pretrained("flux-tiny", device="cuda", load_format="dummy", cuda_graph=cuda_graph)
    request = GenerationRequest(prompt="a fox", height=256, width=256, num_inference_steps=4, seed=0,
                                output_type="latent", negative_prompt="blur", true_cfg_scale=2.0)
    request = request.with_defaults(pipe.defaults)
    with torch.inference_mode():
        pipe.recipe.denoise(request, _prepared_state(pipe, request))
        state = _prepared_state(pipe, request)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            pipe.recipe.denoise(request, state)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    if cuda_graph:
        assert pipe.recipe.denoiser.failure is None and pipe.recipe.denoiser.captures == 1
    assert len(state.denoise_steps_ms) == 4 and all(s["duration_ms"] > 0 for s in state.denoise_steps_ms)
    assert torch.isfinite(state.latents).all()


@pytest.mark.gpu
def test_pipeline_graphed_equals_eager_and_recaptures_per_shape():
    graphed = Pipeline.from_pretrained("flux-tiny", device="cuda", load_format="dummy")
    eager = Pipeline.from_pretrained("flux-tiny", device="cuda", load_format="dummy", cuda_graph=False)
    assert graphed.recipe.cuda_graph and not eager.recipe.cuda_graph
    for height, width in ((256, 256), (256, 384), (256, 256)):
        kwargs = dict(height=height, width=width, num_inference_steps=3, seed=5, output_type="latent",
                      show_progress=False)
        assert _rel_l2(graphed("a red fox", **kwargs), eager("a red fox", **kwargs)) <= GRAPH_TOL
    assert graphed.recipe.denoiser.failure is None and graphed.recipe.denoiser.captures == 2


@pytest.mark.gpu
def test_torch_compile_path_matches_eager():
    """--enable-torch-compile (Inductor, fullgraph) under the CUDA graph: bf16 tolerance against eager."""
    compiled = Pipeline.from_pretrained("flux-tiny", device="cuda", load_format="dummy", torch_compile=True)
    eager = Pipeline.from_pretrained("flux-tiny", device="cuda", load_format="dummy", cuda_graph=False)
    kwargs = dict(height=256, width=256, num_inference_steps=3, seed=3, output_type="latent", show_progress=False)
    assert _rel_l2(compiled("a red fox", **kwargs), eager("a red fox", **kwargs)) <= 2e-2
    assert compiled.recipe.denoiser.failure is None and compiled.recipe.denoiser.captures == 1


def _pool_segment_of(ptr: int, pool) -> bool:
    """Whether device address `ptr` lies in a segment of the caching allocator's private pool `pool`."""
    for seg in torch.cuda.memory_snapshot():
        if tuple(seg.get("segment_pool_id", (0, 0))) == tuple(pool) and \
                seg["address"] <= ptr < seg["address"] + seg["total_size"]:
            return True
    return False


@pytest.mark.gpu
def test_pool_memory_lends_the_graph_pool_and_replays_stay_exact():
    """Inside pool_memory() allocations come from the graphs' pool (the step's freed activations: no new
    memory reserved), on the capture stream; garbage written there does not change later replays."""
    config = MID
    model = _model(config, "cuda", torch.bfloat16)
    graphed = GraphedDenoiser(model)
    with torch.inference_mode():
        with graphed.pool_memory():  # nothing captured yet: a plain block
            plain = torch.empty(1024, device="cuda")
        args = _step_inputs(config, 1, 32, 128, 0, "cuda", torch.bfloat16)
        rope = model.rope(args[4], args[5])
        first = graphed(*args, rope=rope)
        expected = model(*args, rope=rope)
        assert graphed.captures == 1 and not _pool_segment_of(plain.data_ptr(), graphed._pool)
        torch.cuda.synchronize()
        reserved = torch.cuda.memory_reserved()
        caller = torch.cuda.current_stream()
        with graphed.pool_memory():
            assert torch.cuda.current_stream() == graphed._stream != caller
            # one MLP activation's size [S, 4D]: the step freed blocks at least this large during capture
            lent = torch.full((32 * 32 + 128, 4 * config.inner_dim), float("nan"), dtype=torch.bfloat16,
                              device="cuda")
            assert _pool_segment_of(lent.data_ptr(), graphed._pool)
            lent.mul_(2)
            del lent
        assert torch.cuda.current_stream() == caller
        assert torch.cuda.memory_reserved() == reserved
        again = graphed(*args, rope=rope)
    assert graphed.captures == 1 and graphed.failure is None
    assert _rel_l2(again, expected) <= GRAPH_TOL and _rel_l2(again, first) <= 1e-6


@pytest.mark.gpu
def test_pipeline_images_graphed_equal_eager():
    """output_type pil: the VAE decodes in the graphs' pool between requests; images and latents match eager
    over two requests of one shape (the second replays after a decode used the pool)."""
    graphed = Pipeline.from_pretrained("flux-tiny", device="cuda", load_format="dummy")
    eager = Pipeline.from_pretrained("flux-tiny", device="cuda", load_format="dummy", cuda_graph=False)
    for seed in (1, 2):
        request = GenerationRequest(prompt="a red fox", height=256, width=256, num_inference_steps=3, seed=seed)
        got, want = graphed.run(request, show_progress=False), eager.run(request, show_progress=False)
        assert _rel_l2(got.latents, want.latents) <= GRAPH_TOL
        pixels = [torch.from_numpy(np.asarray(im, dtype=np.float32)) for im in (got.images[0], want.images[0])]
        assert pixels[0].shape == (256, 256, 3)
        assert (pixels[0] - pixels[1]).abs().mean() <= 2.0, seed  # 8-bit images of latents within GRAPH_TOL
    assert graphed.recipe.denoiser.failure is None and graphed.recipe.denoiser.captures == 1


class _Syncing(torch.nn.Module):
    """x * sum(x) with the sum read on the host: fine eagerly, not capturable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x.sum().item()


@pytest.mark.gpu
def test_failed_capture_falls_back_to_eager():
    graphed = GraphedDenoiser(_Syncing())
    x = torch.randn(8, device="cuda")
    torch.testing.assert_close(graphed(x), x * x.sum().item())
    assert graphed.captures == 0 and "captur" in graphed.failure
    torch.testing.assert_close(graphed(2 * x), 2 * x * (2 * x).sum().item())
