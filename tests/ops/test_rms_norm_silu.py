"""rms_norm_silu: the reference against the float64 formula, Triton on the CPU interpreter (strided out rows,
pre_bias), argument checks (CPU); CUDA and Triton kernels against the reference at Wan VAE widths, into a
slice of a padded buffer, compile and graphs (GPU)."""

from __future__ import annotations

import pytest
import torch

from _op_testing import assert_within_torch_error, check_compile_and_graph, poison_cuda_allocator, run_under_interpreter
from fastdit.ops import rms_norm_silu
from fastdit.ops.rms_norm_silu import rms_norm_silu_ref


def _truth(x, weight, eps, pre_bias=None):
    v = x.double() if pre_bias is None else x.double() + pre_bias.double()
    y = v / torch.sqrt((v * v).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.double()
    return y * torch.sigmoid(y)


@pytest.mark.parametrize("shape", [(1, 8), (19, 111), (2, 3, 500)])
@pytest.mark.parametrize("with_weight,with_bias", [(True, True), (True, False), (False, True), (False, False)])
def test_reference_matches_float64_formula(shape, with_weight, with_bias):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 0.5
    w = torch.randn(shape[-1]) if with_weight else None
    b = torch.randn(shape[-1]) if with_bias else None
    torch.testing.assert_close(rms_norm_silu_ref(x, w, 1e-5, b).double(), _truth(x, w, 1e-5, b), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rms_norm_silu(x, w, 1e-5, pre_bias=b, backend="torch"), rms_norm_silu_ref(x, w, 1e-5, b))


def interpreted_cases() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        for shape in [(1, 8), (19, 111), (3, 5, 64)]:
            x = torch.randn(shape, dtype=dtype)
            for w, b in ((torch.randn(shape[-1], dtype=dtype), torch.randn(shape[-1], dtype=dtype)), (None, None)):
                out = rms_norm_silu(x, w, pre_bias=b, backend="triton")
                assert out.shape == x.shape and out.dtype == dtype
                assert_within_torch_error(out, rms_norm_silu_ref(x, w, 1e-6, b), _truth(x, w, 1e-6, b),
                                          f"triton {dtype} {shape}")
    # out: the frames after 2 padding frames of a [T + 2, H, W, C] buffer, whose other rows stay untouched
    x = torch.randn(3, 4, 5, 16)
    buf = torch.full((5, 4, 5, 16), float("nan"))
    w, b = torch.randn(16), torch.randn(16)
    got = rms_norm_silu(x, w, pre_bias=b, out=buf[2:], backend="triton")
    assert got.data_ptr() == buf[2:].data_ptr() and torch.isnan(buf[:2]).all()
    torch.testing.assert_close(buf[2:], rms_norm_silu_ref(x, w, 1e-6, b))


def test_triton_on_cpu_interpreter():
    pytest.importorskip("triton")
    run_under_interpreter(__file__, "interpreted_cases")


def test_torch_backend_writes_into_out():
    x = torch.randn(1, 6, 24)
    buf = torch.full((1, 9, 24), float("nan"))
    got = rms_norm_silu(x, None, out=buf[:, 3:], backend="torch")
    assert got.data_ptr() == buf[:, 3:].data_ptr() and torch.isnan(buf[:, :3]).all()
    torch.testing.assert_close(buf[:, 3:], rms_norm_silu_ref(x, None))


def test_argument_errors_name_op_and_argument():
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match=r"rms_norm_silu: weight \(8,\) on cpu must be \[D\] = \[16\]"):
        rms_norm_silu(x, torch.ones(8))
    with pytest.raises(ValueError, match=r"rms_norm_silu: pre_bias \(15,\) on cpu must be \[D\] = \[16\]"):
        rms_norm_silu(x, None, pre_bias=torch.ones(15))
    with pytest.raises(ValueError, match=r"rms_norm_silu: x's last dim must be contiguous"):
        rms_norm_silu(torch.randn(16, 4).t(), None)
    with pytest.raises(ValueError, match=r"rms_norm_silu: out \(4, 8\) torch.float32 on cpu must match x"):
        rms_norm_silu(x, None, out=torch.empty(4, 8))
    with pytest.raises(ValueError, match=r"rms_norm_silu: out \(strides .*\) must be rows of D contiguous"):
        rms_norm_silu(torch.randn(2, 3, 16), None, out=torch.empty(3, 2, 16).transpose(0, 1))
    with pytest.raises(ValueError, match=r"rms_norm_silu: backend='cuda' cannot run this call: x is on cpu"):
        rms_norm_silu(x, None, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dim", [96, 192, 384, 1000])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gpu_matches_reference(backend, dtype, dim, with_bias):
    torch.manual_seed(dim)
    x = torch.randn(3001, dim, dtype=dtype, device="cuda") * 2 + 0.25
    w = torch.randn(dim, dtype=dtype, device="cuda")
    b = torch.randn(dim, dtype=dtype, device="cuda") if with_bias else None
    poison_cuda_allocator(4 * x.numel() * x.element_size())
    out = rms_norm_silu(x, w, pre_bias=b, backend=backend)
    assert_within_torch_error(out, rms_norm_silu_ref(x, w, 1e-6, b), _truth(x, w, 1e-6, b), f"{backend} {dtype} {dim}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_into_a_time_padded_channels_last_buffer(backend):
    """Wan's causal conv input: a [B, C, 2 + T, H, W] channels-last buffer; the norm of [B, C, T, H, W] lands in
    frames 2.. as [B, T, H, W, C] rows, frames 0-1 (the padding) stay as they were."""
    torch.manual_seed(1)
    c = 384
    x = torch.randn(1, c, 4, 30, 52, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    buf = torch.full((1, c, 6, 30, 52), float("nan"), device="cuda", dtype=torch.bfloat16)
    buf = buf.contiguous(memory_format=torch.channels_last_3d)
    w, b = torch.randn(c, device="cuda", dtype=torch.bfloat16), torch.randn(c, device="cuda", dtype=torch.bfloat16)
    rows_in, rows_out = x.permute(0, 2, 3, 4, 1), buf[:, :, 2:].permute(0, 2, 3, 4, 1)
    rms_norm_silu(rows_in, w, 1e-12, pre_bias=b, out=rows_out, backend=backend)
    assert torch.isnan(buf[:, :, :2]).all()
    assert_within_torch_error(rows_out, rms_norm_silu_ref(rows_in, w, 1e-12, b), _truth(rows_in, w, 1e-12, b), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_compile_and_cuda_graph(backend):
    x = torch.randn(77, 384, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(384, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(384, dtype=torch.bfloat16, device="cuda")
    check_compile_and_graph(lambda a, c, d: rms_norm_silu(a, c, pre_bias=d, backend=backend), x, w, b)
