"""rms_norm: the reference against the float64 formula, Triton on the CPU interpreter, argument checks
(CPU); CUDA and Triton kernels against the reference at FLUX/Wan widths, compile and graphs (GPU)."""

from __future__ import annotations

import pytest
import torch

from _op_testing import assert_within_torch_error, check_compile_and_graph, poison_cuda_allocator, run_under_interpreter
from fastdit.ops import rms_norm
from fastdit.ops.rms_norm import rms_norm_ref


def _truth(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    xd = x.double()
    y = xd / torch.sqrt((xd * xd).mean(-1, keepdim=True) + eps)
    return y * weight.double() if weight is not None else y


@pytest.mark.parametrize("shape", [(1, 8), (19, 111), (2, 3, 500)])
@pytest.mark.parametrize("with_weight", [True, False])
def test_reference_matches_float64_formula(shape, with_weight):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 0.5
    w = torch.randn(shape[-1]) if with_weight else None
    torch.testing.assert_close(rms_norm_ref(x, w, 1e-5).double(), _truth(x, w, 1e-5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rms_norm(x, w, 1e-5, backend="torch"), rms_norm_ref(x, w, 1e-5))


def interpreted_cases() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        for shape in [(1, 8), (19, 111), (3, 5, 64)]:
            x = torch.randn(shape, dtype=dtype)
            for w in (torch.randn(shape[-1], dtype=dtype), None):
                out = rms_norm(x, w, backend="triton")
                assert out.shape == x.shape and out.dtype == dtype
                assert_within_torch_error(out, rms_norm_ref(x, w), _truth(x, w, 1e-6), f"triton {dtype} {shape}")
    # rows with a stride (a slice of a wider tensor) are read where they lie
    wide = torch.randn(7, 96)
    torch.testing.assert_close(rms_norm(wide[:, :40], None, backend="triton"), rms_norm_ref(wide[:, :40], None))


def test_triton_on_cpu_interpreter():
    pytest.importorskip("triton")
    run_under_interpreter(__file__, "interpreted_cases")


def test_argument_errors_name_op_and_argument():
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match=r"rms_norm: weight shape \(8,\) must be \[D\] = \[16\]"):
        rms_norm(x, torch.ones(8))
    with pytest.raises(ValueError, match=r"rms_norm: x's last dim must be contiguous"):
        rms_norm(torch.randn(16, 4).t(), None)
    with pytest.raises(ValueError, match=r"rms_norm: backend='cuda' cannot run this call: x is on cpu"):
        rms_norm(x, None, backend="cuda")
    with pytest.raises(ValueError, match=r"rms_norm: backend='fast' is not one of auto, cuda, triton, torch"):
        rms_norm(x, None, backend="fast")


def test_auto_on_cpu_is_the_reference():
    x = torch.randn(3, 24)
    assert torch.equal(rms_norm(x, None), rms_norm_ref(x, None))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 77, 4608, 32760])
@pytest.mark.parametrize("dim", [64, 1536, 3072, 5120, 8192])
def test_gpu_matches_reference(backend, dtype, rows, dim):
    torch.manual_seed(rows + dim)
    x = torch.randn(rows, dim, dtype=dtype, device="cuda") * 2 + 0.25
    w = torch.randn(dim, dtype=dtype, device="cuda")
    poison_cuda_allocator(4 * x.numel() * x.element_size())
    out = rms_norm(x, w, backend=backend)
    assert_within_torch_error(out, rms_norm_ref(x, w), _truth(x, w, 1e-6), f"{backend} {dtype} {rows}x{dim}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dim", [8, 200, 1000, 8192])
def test_gpu_every_row_layout(backend, dim):
    # The CUDA row layouts: 256 one-thread rows per block (8), 8 rows of 32 lanes with idle lanes (200),
    # 2 rows of 128 threads with 3 idle (1000), one row of 1024 threads (8192); 19 rows leave a partial block.
    torch.manual_seed(dim)
    x = torch.randn(19, dim, dtype=torch.bfloat16, device="cuda") * 2 + 0.25
    w = torch.randn(dim, dtype=torch.bfloat16, device="cuda")
    poison_cuda_allocator(4 * x.numel() * x.element_size())
    out = rms_norm(x, w, backend=backend)
    assert_within_torch_error(out, rms_norm_ref(x, w), _truth(x, w, 1e-6), f"{backend} 19x{dim}")


@pytest.mark.gpu
def test_gpu_strided_rows_and_per_head_use():
    # FLUX applies it per head to q of [B, S, H, D] sliced out of a fused QKV projection.
    qkv = torch.randn(2, 77, 3, 24, 128, dtype=torch.bfloat16, device="cuda")
    q = qkv[:, :, 0]
    w = torch.randn(128, dtype=torch.bfloat16, device="cuda")
    for backend in ("cuda", "triton"):
        out = rms_norm(q, w, backend=backend)
        assert_within_torch_error(out, rms_norm_ref(q, w), _truth(q, w, 1e-6), backend)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_compile_and_cuda_graph(backend):
    x = torch.randn(77, 3072, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(3072, dtype=torch.bfloat16, device="cuda")
    check_compile_and_graph(lambda a, b: rms_norm(a, b, backend=backend), x, w)
