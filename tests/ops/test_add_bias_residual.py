"""add_bias_residual: the reference against float64, Triton on the CPU interpreter, argument checks (CPU); CUDA and
Triton kernels against the reference at Wan VAE widths, in place, compile and graphs (GPU)."""

from __future__ import annotations

import pytest
import torch

from _op_testing import assert_within_torch_error, check_compile_and_graph, poison_cuda_allocator, run_under_interpreter
from fastdit.ops import add_bias_residual
from fastdit.ops.add_bias_residual import add_bias_residual_ref


def _inputs(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    y, r = (torch.randn(shape, generator=g) * 3 + 0.5 for _ in range(2))
    b = torch.randn(shape[-1], generator=g)
    return tuple(t.to(device=device, dtype=dtype) for t in (y, r, b))


def _truth(y, r, b):
    return y.double() + r.double() + b.double()


@pytest.mark.parametrize("shape", [(1, 8), (19, 111), (2, 3, 500)])
def test_reference_matches_float64(shape):
    y, r, b = _inputs(shape)
    torch.testing.assert_close(add_bias_residual_ref(y, r, b).double(), _truth(y, r, b), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(add_bias_residual(y, r, b, backend="torch"), add_bias_residual_ref(y, r, b))


def interpreted_cases() -> None:
    for dtype in (torch.float32, torch.float16):
        for shape in [(1, 8), (19, 111), (3, 5, 64)]:
            y, r, b = _inputs(shape, dtype)
            out = add_bias_residual(y, r, b, backend="triton")
            assert_within_torch_error(out, add_bias_residual_ref(y, r, b), _truth(y, r, b), f"triton {dtype} {shape}")
    y, r, b = _inputs((4, 5, 16))
    expected = add_bias_residual_ref(y, r, b)
    assert add_bias_residual(y, r, b, out=y, backend="triton") is y  # in place
    torch.testing.assert_close(y, expected)


def test_triton_on_cpu_interpreter():
    pytest.importorskip("triton")
    run_under_interpreter(__file__, "interpreted_cases")


def test_argument_errors():
    y, r, b = _inputs((4, 16))
    with pytest.raises(ValueError, match=r"add_bias_residual: y \(4, 16\), residual \(4, 8\) and bias \(16,\) must be"):
        add_bias_residual(y, r[:, :8], b)
    with pytest.raises(ValueError, match=r"must share y's dtype and device"):
        add_bias_residual(y, r.double(), b)
    with pytest.raises(ValueError, match=r"must be contiguous"):
        add_bias_residual(y, torch.randn(16, 4).t(), b)
    with pytest.raises(ValueError, match=r"add_bias_residual: backend='cuda' cannot run this call: x is on cpu"):
        add_bias_residual(y, r, b, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 8), (3001, 96), (4, 60, 104, 384), (1, 3, 7, 1000)])
def test_gpu_matches_reference_in_place(backend, dtype, shape):
    y, r, b = _inputs(shape, dtype, "cuda", seed=shape[-1])
    expected = add_bias_residual_ref(y, r, b)
    poison_cuda_allocator(4 * y.numel() * y.element_size())
    out = add_bias_residual(y, r, b, backend=backend)
    assert_within_torch_error(out, expected, _truth(y, r, b), f"{backend} {dtype} {shape}")
    assert add_bias_residual(y, r, b, out=y, backend=backend) is y
    torch.testing.assert_close(y, out, atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_compile_and_cuda_graph(backend):
    y, r, b = _inputs((77, 384), torch.bfloat16, "cuda")
    check_compile_and_graph(lambda a, c, d: add_bias_residual(a, c, d, backend=backend), y, r, b)
