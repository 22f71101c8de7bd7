"""timestep_embedding: reference vs float64 formula (and diffusers' own function when installed), Triton
on the CPU interpreter, argument checks (CPU); CUDA and Triton vs reference (GPU)."""

from __future__ import annotations

import math

import pytest
import torch

from _op_testing import check_compile_and_graph, poison_cuda_allocator, run_under_interpreter
from fastdit.ops import timestep_embedding
from fastdit.ops.timestep_embedding import timestep_embedding_ref

CASES = [  # dim, flip_sin_to_cos, downscale_freq_shift, scale, max_period
    (256, True, 0.0, 1.0, 10000.0),  # FLUX time_proj
    (33, False, 1.0, 1.0, 10000.0),  # odd dim: zero pad
    (64, True, 1.0, 1000.0, 5000.0),  # t in [0, 1] scaled by 1000 (FLUX passes t / 1000)
]


def timesteps(case, n=7, device="cpu"):
    # scale * t stays within [0, 1000], where fp32 arguments keep sin/cos accurate to ~1e-4
    return torch.rand(n, device=device) * 1000 / case[3]


def truth(t, dim, flip, shift, scale, max_period):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64) / (half - shift))
    args = scale * t.double()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)] if flip else [torch.sin(args), torch.cos(args)], dim=-1)
    return torch.nn.functional.pad(emb, (0, dim % 2))


@pytest.mark.parametrize("case", CASES)
def test_reference_matches_float64_formula(case):
    t = timesteps(case)
    torch.testing.assert_close(timestep_embedding_ref(t, *case).double(), truth(t, *case), atol=2e-4, rtol=0)


def test_reference_matches_diffusers():
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    t = torch.rand(5) * 1000
    want = embeddings.get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding_ref(t, 256, True, 0.0), want)


def interpreted_cases() -> None:
    for case in CASES:
        t = timesteps(case, 5)
        out = timestep_embedding(t, *case, backend="triton")
        assert out.shape == (5, case[0]) and out.dtype == torch.float32
        torch.testing.assert_close(out, timestep_embedding_ref(t, *case), atol=1e-4, rtol=0)


def test_triton_on_cpu_interpreter():
    pytest.importorskip("triton")
    run_under_interpreter(__file__, "interpreted_cases")


def test_argument_errors_name_op_and_argument():
    with pytest.raises(ValueError, match=r"timestep_embedding: t must be 1-D \[N\]; got shape \(2, 2\)"):
        timestep_embedding(torch.rand(2, 2), 8)
    with pytest.raises(ValueError, match=r"timestep_embedding: dim=0 must be >= 1"):
        timestep_embedding(torch.rand(2), 0)
    with pytest.raises(ValueError, match=r"timestep_embedding: t dtype torch.int64 must be a float dtype"):
        timestep_embedding(torch.arange(2), 8)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("t_dtype", [torch.float32, torch.bfloat16])
def test_gpu_matches_reference(backend, case, t_dtype):
    t = timesteps(case, 9, "cuda").to(t_dtype)
    poison_cuda_allocator(1 << 20)
    out = timestep_embedding(t, *case, backend=backend)
    assert not out.isnan().any(), "an output element was left unwritten"
    torch.testing.assert_close(out, timestep_embedding_ref(t, *case), atol=2e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_compile_and_cuda_graph(backend):
    t = torch.rand(4, device="cuda") * 1000
    check_compile_and_graph(lambda a: timestep_embedding(a, 256, backend=backend), t)
