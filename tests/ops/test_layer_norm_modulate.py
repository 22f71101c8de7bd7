"""layer_norm_modulate: reference vs float64 formula, Triton on the CPU interpreter, argument checks
(CPU); CUDA and Triton vs reference with per-sample, per-token and strided temb.chunk(6) views (GPU)."""

from __future__ import annotations

import pytest
import torch

from _norm_testing import GPU_DIMS, GPU_TOKENS, ROW_LAYOUT_DIMS, chunked_mods
from _norm_testing import layer_norm_modulate_truth as truth
from _op_testing import assert_within_torch_error, check_compile_and_graph, poison_cuda_allocator, run_under_interpreter
from fastdit.ops import layer_norm_modulate
from fastdit.ops.layer_norm_modulate import layer_norm_modulate_ref


@pytest.mark.parametrize("per_token", [False, True])
def test_reference_matches_float64_formula(per_token):
    torch.manual_seed(0)
    x = torch.randn(2, 19, 111) * 2 + 1
    shift, scale = (torch.randn(2, 19, 111) if per_token else torch.randn(2, 111) for _ in range(2))
    torch.testing.assert_close(layer_norm_modulate_ref(x, shift, scale).double(), truth(x, shift, scale), atol=1e-5, rtol=1e-5)


def interpreted_cases() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        for batch, seq, dim in [(1, 1, 8), (2, 19, 111), (3, 5, 64)]:
            x = torch.randn(batch, seq, dim, dtype=dtype)
            shift, scale, *_ = chunked_mods(batch, dim, dtype, "cpu")
            out = layer_norm_modulate(x, shift, scale, backend="triton")
            assert_within_torch_error(out, layer_norm_modulate_ref(x, shift, scale), truth(x, shift, scale), f"{dtype}")
            tok_shift, tok_scale = torch.randn(2, batch, seq, dim, dtype=dtype)
            out = layer_norm_modulate(x, tok_shift, tok_scale, backend="triton")
            ref = layer_norm_modulate_ref(x, tok_shift, tok_scale)
            assert_within_torch_error(out, ref, truth(x, tok_shift, tok_scale), f"per token {dtype}")


def test_triton_on_cpu_interpreter():
    pytest.importorskip("triton")
    run_under_interpreter(__file__, "interpreted_cases")


def test_argument_errors_name_op_and_argument():
    x = torch.randn(2, 5, 16)
    ok = torch.randn(2, 16)
    with pytest.raises(ValueError, match=r"layer_norm_modulate: x must be \[B, S, D\]"):
        layer_norm_modulate(x[0], ok, ok)
    with pytest.raises(ValueError, match=r"layer_norm_modulate: shift shape \(2, 8\) must be \[B, D\]"):
        layer_norm_modulate(x, torch.randn(2, 8), ok)
    with pytest.raises(ValueError, match=r"layer_norm_modulate: scale dtype torch.float16 must equal x's dtype"):
        layer_norm_modulate(x, ok, ok.half())
    with pytest.raises(ValueError, match=r"layer_norm_modulate: scale's last dim must be contiguous"):
        layer_norm_modulate(x, ok, torch.randn(16, 2).t())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seq", GPU_TOKENS)
@pytest.mark.parametrize("dim", GPU_DIMS)
def test_gpu_matches_reference_with_chunk_views(backend, dtype, seq, dim):
    torch.manual_seed(seq + dim)
    batch = 2  # with one sample a [1, D] chunk view would be contiguous
    x = torch.randn(batch, seq, dim, dtype=dtype, device="cuda") * 2 + 0.5
    shift, scale, *_ = chunked_mods(batch, dim, dtype, "cuda")
    assert not shift.is_contiguous()  # the strided views are read in place
    poison_cuda_allocator(4 * x.numel() * x.element_size())
    out = layer_norm_modulate(x, shift, scale, backend=backend)
    ref = layer_norm_modulate_ref(x, shift, scale)
    assert_within_torch_error(out, ref, truth(x, shift, scale), f"{backend} {dtype} {seq}x{dim}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dim", ROW_LAYOUT_DIMS)
def test_gpu_every_row_layout(backend, dim):
    torch.manual_seed(dim)
    x = torch.randn(2, 19, dim, dtype=torch.bfloat16, device="cuda") * 2 + 0.5
    shift, scale, *_ = chunked_mods(2, dim, torch.bfloat16, "cuda")
    poison_cuda_allocator(4 * x.numel() * x.element_size())
    out = layer_norm_modulate(x, shift, scale, backend=backend)
    assert_within_torch_error(out, layer_norm_modulate_ref(x, shift, scale), truth(x, shift, scale), f"{backend} {dim}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_rows_far_from_zero(backend, dtype):
    """Rows whose mean is hundreds of standard deviations from zero: the statistics must not cancel (the CUDA
    kernel's one-pass sums are shifted by the mean of the row's first 8 elements)."""
    torch.manual_seed(3)
    x = (torch.randn(2, 77, 3072, device="cuda") * 0.5 + 300).to(dtype)
    shift, scale, *_ = chunked_mods(2, 3072, dtype, "cuda")
    out = layer_norm_modulate(x, shift, scale, backend=backend)
    assert_within_torch_error(out, layer_norm_modulate_ref(x, shift, scale), truth(x, shift, scale), f"{backend} {dtype}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("outlier", [300.0, 3000.0])
def test_gpu_rows_whose_first_element_is_an_outlier(backend, dtype, outlier):
    """The worst case of the CUDA kernel's shift (the mean of the row's first 8 elements): one of them thousands
    of standard deviations from the rest, so every (v - k)^2 is large and s2 - s1^2 / dim cancels most.
    Checked without modulation and without the outlier column, where an error in the row's variance shows
    undiluted."""
    torch.manual_seed(4)
    x = torch.randn(2, 77, 3072, device="cuda") + 0.5
    x[..., 0] = outlier
    x = x.to(dtype)
    shift, scale = torch.zeros(2, 2, 3072, dtype=dtype, device="cuda")
    out = layer_norm_modulate(x, shift, scale, backend=backend)[..., 1:]
    ref = layer_norm_modulate_ref(x, shift, scale)[..., 1:]
    assert_within_torch_error(out, ref, truth(x, shift, scale)[..., 1:], f"{backend} {dtype} outlier {outlier}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_per_token_modulation(backend):
    x = torch.randn(2, 77, 1536, dtype=torch.bfloat16, device="cuda")
    shift, scale = torch.randn(2, 2, 77, 1536, dtype=torch.bfloat16, device="cuda")
    out = layer_norm_modulate(x, shift, scale, backend=backend)
    assert_within_torch_error(out, layer_norm_modulate_ref(x, shift, scale), truth(x, shift, scale), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_compile_and_cuda_graph(backend):
    x = torch.randn(1, 4608, 3072, dtype=torch.bfloat16, device="cuda")
    shift, scale, *_ = chunked_mods(1, 3072, torch.bfloat16, "cuda")
    check_compile_and_graph(lambda a, b, c: layer_norm_modulate(a, b, c, backend=backend), x, shift, scale)
