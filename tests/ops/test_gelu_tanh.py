"""gelu_tanh: reference vs float64 formula, Triton on the CPU interpreter (CPU); CUDA and Triton vs
reference at FLUX/Wan MLP sizes and odd lengths (the scalar tail), compile and graphs (GPU)."""

from __future__ import annotations

import math

import pytest
import torch

from _op_testing import assert_within_torch_error, check_compile_and_graph, poison_cuda_allocator, run_under_interpreter
from fastdit.ops import gelu_tanh
from fastdit.ops.gelu_tanh import gelu_tanh_ref


def truth(x: torch.Tensor) -> torch.Tensor:
    xd = x.double()
    return 0.5 * xd * (1 + torch.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd**3)))


def test_reference_matches_float64_formula():
    x = torch.randn(19, 111) * 4
    torch.testing.assert_close(gelu_tanh_ref(x).double(), truth(x), atol=1e-6, rtol=1e-5)


def interpreted_cases() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        for shape in [(1,), (19, 111), (3, 4097)]:
            x = torch.randn(shape, dtype=dtype) * 4
            out = gelu_tanh(x, backend="triton")
            assert out.shape == x.shape
            assert_within_torch_error(out, gelu_tanh_ref(x), truth(x), f"triton {dtype} {shape}")


def test_triton_on_cpu_interpreter():
    pytest.importorskip("triton")
    run_under_interpreter(__file__, "interpreted_cases")


def test_forced_cuda_on_cpu_says_why():
    with pytest.raises(ValueError, match=r"gelu_tanh: backend='cuda' cannot run this call: x is on cpu"):
        gelu_tanh(torch.randn(8), backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 7), (77, 3072 * 4), (4608, 3072 * 4), (32760, 8960), (3, 1001)])
def test_gpu_matches_reference(backend, dtype, shape):
    x = torch.randn(shape, dtype=dtype, device="cuda") * 4
    poison_cuda_allocator(2 * x.numel() * x.element_size())
    out = gelu_tanh(x, backend=backend)
    assert_within_torch_error(out, gelu_tanh_ref(x), truth(x), f"{backend} {dtype} {shape}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_compile_and_cuda_graph(backend):
    x = torch.randn(4608, 3072, dtype=torch.bfloat16, device="cuda")
    check_compile_and_graph(lambda a: gelu_tanh(a, backend=backend), x)
