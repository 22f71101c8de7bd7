"""gated_residual_norm_modulate: reference vs float64 formula, Triton on the CPU interpreter, argument
checks (CPU); CUDA and Triton vs reference with strided temb.chunk(6) views, compile and graphs (GPU)."""

from __future__ import annotations

import pytest
import torch

from _norm_testing import GPU_DIMS, GPU_TOKENS, ROW_LAYOUT_DIMS, chunked_mods, expand_mod, layer_norm_modulate_truth
from _op_testing import assert_within_torch_error, check_compile_and_graph, poison_cuda_allocator, run_under_interpreter
from fastdit.ops import gated_residual_norm_modulate
from fastdit.ops.gated_residual_norm_modulate import gated_residual_norm_modulate_ref


def truth(residual, x, gate, shift, scale, eps=1e-6):
    """float64 r, and y from the r rounded to residual's dtype (as the op defines it)."""
    r = residual.double() + expand_mod(gate) * x.double()
    return r, layer_norm_modulate_truth(r.to(residual.dtype), shift, scale, eps)


def _check(backend, residual, x, gate, shift, scale, what):
    r, y = gated_residual_norm_modulate(residual, x, gate, shift, scale, backend=backend)
    r_ref, y_ref = gated_residual_norm_modulate_ref(residual, x, gate, shift, scale)
    r_truth, y_truth = truth(residual, x, gate, shift, scale)
    assert r.shape == y.shape == x.shape and r.dtype == y.dtype == x.dtype
    assert_within_torch_error(r, r_ref, r_truth, f"{what} r")
    assert_within_torch_error(y, y_ref, y_truth, f"{what} y")


def test_reference_matches_float64_formula():
    torch.manual_seed(0)
    residual, x = torch.randn(2, 2, 19, 111)
    gate, shift, scale = torch.randn(3, 2, 111)
    r, y = gated_residual_norm_modulate_ref(residual, x, gate, shift, scale)
    r_truth, y_truth = truth(residual, x, gate, shift, scale)
    torch.testing.assert_close(r.double(), r_truth, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.double(), y_truth, atol=1e-5, rtol=1e-5)


def interpreted_cases() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        for batch, seq, dim in [(1, 1, 8), (2, 19, 111)]:
            residual, x = torch.randn(2, batch, seq, dim, dtype=dtype)
            shift, scale, gate, *_ = chunked_mods(batch, dim, dtype, "cpu")
            _check("triton", residual, x, gate, shift, scale, f"triton {dtype} {seq}x{dim}")


def test_triton_on_cpu_interpreter():
    pytest.importorskip("triton")
    run_under_interpreter(__file__, "interpreted_cases")


def test_argument_errors_name_op_and_argument():
    x = torch.randn(2, 5, 16)
    mod = torch.randn(2, 16)
    with pytest.raises(ValueError, match=r"gated_residual_norm_modulate: residual shape \(2, 4, 16\) must equal"):
        gated_residual_norm_modulate(torch.randn(2, 4, 16), x, mod, mod, mod)
    with pytest.raises(ValueError, match=r"gated_residual_norm_modulate: gate shape \(3, 16\) must be \[B, D\]"):
        gated_residual_norm_modulate(x, x, torch.randn(3, 16), mod, mod)
    with pytest.raises(ValueError, match=r"gated_residual_norm_modulate: residual \(torch.float16, cpu\) must share"):
        gated_residual_norm_modulate(x.half(), x, mod, mod, mod)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seq", GPU_TOKENS)
@pytest.mark.parametrize("dim", GPU_DIMS)
def test_gpu_matches_reference_with_chunk_views(backend, dtype, seq, dim):
    torch.manual_seed(seq + dim)
    batch = 2  # with one sample a [1, D] chunk view would be contiguous
    residual, x = torch.randn(2, batch, seq, dim, dtype=dtype, device="cuda")
    shift, scale, gate, *_ = chunked_mods(batch, dim, dtype, "cuda")
    poison_cuda_allocator(8 * x.numel() * x.element_size())
    _check(backend, residual, x, gate, shift, scale, f"{backend} {dtype} {seq}x{dim}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dim", ROW_LAYOUT_DIMS)
def test_gpu_every_row_layout(backend, dim):
    torch.manual_seed(dim)
    residual, x = torch.randn(2, 2, 19, dim, dtype=torch.bfloat16, device="cuda")
    shift, scale, gate, *_ = chunked_mods(2, dim, torch.bfloat16, "cuda")
    poison_cuda_allocator(8 * x.numel() * x.element_size())
    _check(backend, residual, x, gate, shift, scale, f"{backend} {dim}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_rows_far_from_zero_or_led_by_an_outlier(backend, dtype):
    """The CUDA kernel shifts its sums by the mean of r's first 8 elements, recomputed by every thread as
    thread 0 computes them: rows far from zero, and rows whose first element of r is thousands of standard
    deviations out (with the first element alone as the shift, this read 1 fp16 ulp of error in y)."""
    torch.manual_seed(5)
    x = torch.randn(2, 77, 3072, device="cuda").to(dtype)
    gate, shift, scale, *_ = chunked_mods(2, 3072, dtype, "cuda")
    far = (torch.randn(2, 77, 3072, device="cuda") * 0.5 + 300).to(dtype)
    _check(backend, far, x, gate, shift, scale, f"{backend} {dtype} far from zero")
    led = torch.randn(2, 77, 3072, device="cuda")
    led[..., 0] = 3000.0
    _check(backend, led.to(dtype), x, gate, shift, scale, f"{backend} {dtype} outlier first")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_per_token_modulation(backend):
    residual, x, gate, shift, scale = torch.randn(5, 2, 77, 1536, dtype=torch.bfloat16, device="cuda")
    _check(backend, residual, x, gate, shift, scale, f"{backend} per token")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_compile_and_cuda_graph(backend):
    residual, x = torch.randn(2, 1, 4608, 3072, dtype=torch.bfloat16, device="cuda")
    shift, scale, gate, *_ = chunked_mods(1, 3072, torch.bfloat16, "cuda")
    check_compile_and_graph(
        lambda *a: gated_residual_norm_modulate(*a, backend=backend), residual, x, gate, shift, scale
    )
