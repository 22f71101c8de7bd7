"""attention_fwd against the fp32 reference: the Triton kernel on the CPU (TRITON_INTERPRET=1, small odd
shapes), argument checks, and, on an H100, our sm90 kernel at the model shapes (`gpu` marker)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from fastdit.ops import attention as attention_op
from fastdit.ops.attention import attention_fwd, attention_ref

from _op_testing import run_under_interpreter


def _qkv(b, sq, sk, h, d, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(b, sq, h, d, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(b, sk, h, d, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(b, sk, h, d, generator=g).to(device=device, dtype=dtype)
    return q, k, v


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _check_against_ref(q, k, v, seqlens_k, backend, factor=3.0):
    """The kernel's error vs the fp32 reference is within `factor` x torch's own low-precision error
    (the reference computed from the same inputs, rounded to the input dtype) plus a small floor."""
    out, lse = attention_fwd(q, k, v, seqlens_k=seqlens_k, return_lse=True, backend=backend)
    ref, ref_lse = attention_ref(q.float(), k.float(), v.float(), seqlens_k)
    torch_err = _rel(ref.to(q.dtype), ref) if q.dtype != torch.float32 else 0.0
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    assert _rel(out, ref) <= factor * torch_err + 2e-3, (_rel(out, ref), torch_err)
    assert lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    assert (lse[finite] - ref_lse[finite]).abs().max().item() <= 2e-2
    return out, lse


# CPU: Triton interpreted (in a fresh process: Triton decides at import whether kernels are interpreted) ---

def interpreted_cases():
    for b, sq, sk, h, d in [(1, 1, 1, 1, 16), (2, 19, 37, 3, 32), (1, 77, 5, 2, 64), (1, 33, 70, 1, 40)]:
        q, k, v = _qkv(b, sq, sk, h, d, torch.float32, "cpu", seed=sq)
        _check_against_ref(q, k, v, None, "triton")

    # varlen with an empty batch entry; keys past seqlens_k[b] must not matter
    q, k, v = _qkv(3, 21, 45, 2, 32, torch.float32, "cpu", seed=3)
    seqlens = torch.tensor([45, 7, 0], dtype=torch.int32)
    out, lse = _check_against_ref(q, k, v, seqlens, "triton")
    assert torch.all(out[2] == 0) and torch.all(lse[2] == float("-inf"))
    k2, v2 = k.clone(), v.clone()
    k2[1, 7:], v2[1, 7:] = 1e3, -1e3
    out2 = attention_fwd(q, k2, v2, seqlens_k=seqlens, backend="triton")
    torch.testing.assert_close(out2, out)

    # a fused [B, S, 3, H, D] projection, sliced without copies
    qkv = torch.randn(2, 23, 3, 2, 32)
    q, k, v = qkv.unbind(2)
    out = attention_fwd(q, k, v, backend="triton")
    ref, _ = attention_ref(q, k, v)
    assert _rel(out, ref) <= 1e-4


def test_triton_matches_reference_interpreted():
    run_under_interpreter(__file__, "interpreted_cases")


def test_reference_is_softmax_attention():
    q, k, v = _qkv(1, 4, 6, 2, 8, torch.float64, "cpu")
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(8)
    expected = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)
    out, lse = attention_ref(q, k, v)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(lse, scores.logsumexp(-1).float())


# argument checks ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,message", [
    (lambda q, k, v: (q[0], k, v, None), r"must be \[B, S, H, D\]"),
    (lambda q, k, v: (q, k[:, :, :1], v[:, :, :1], None), "must be \\[B, Sk, H, D\\]"),
    (lambda q, k, v: (q, k.half(), v, None), "dtypes differ"),
    (lambda q, k, v: (q, k, v, torch.tensor([3, 3])), "seqlens_k must be int32"),
    (lambda q, k, v: (q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3), None), "contiguous last dim"),
    (lambda q, k, v: (q[:, :0], k, v, None), "sequence lengths must be >= 1"),
])
def test_argument_errors(make, message):
    q, k, v = _qkv(2, 5, 6, 2, 8, torch.float32, "cpu")
    q, k, v, seqlens = make(q, k, v)
    with pytest.raises(ValueError, match=message):
        attention_fwd(q, k, v, seqlens_k=seqlens, backend="torch")


def test_forced_cuda_on_cpu_says_why():
    q, k, v = _qkv(1, 5, 6, 2, 64, torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match="backend='cuda' needs an sm90 GPU"):
        attention_fwd(q, k, v, backend="cuda")
    with pytest.raises(ValueError, match="not one of"):
        attention_fwd(q, k, v, backend="flash")


def test_auto_on_cpu_is_reference():
    q, k, v = _qkv(1, 5, 6, 2, 16, torch.float32, "cpu")
    torch.testing.assert_close(attention_fwd(q, k, v), attention_ref(q, k, v)[0])


# GPU: our sm90 kernel ----------------------------------------------------------------------------------------

def _needs_sm90():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs an sm90 GPU")
    if attention_op._library() is None:
        pytest.skip("kernel library with fastdit_attention_fwd not found (FASTDIT_KERNEL_LIBRARY)")


@pytest.mark.gpu
@pytest.mark.parametrize("b,sq,sk,h,d", [
    (1, 1, 1, 2, 128), (1, 77, 77, 3, 128), (1, 512, 512, 4, 128), (1, 4608, 4608, 4, 128), (2, 4096 + 512, 333, 2, 128),
    (1, 4608, 512, 3, 128), (1, 32760, 32760, 1, 128), (2, 300, 1000, 3, 64), (1, 129, 4097, 2, 64), (3, 200, 201, 2, 128),
])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sm90_kernel_matches_reference(b, sq, sk, h, d, dtype):
    _needs_sm90()
    if sq * sk > 4608 * 4608 and dtype == torch.float16:
        pytest.skip("one dtype is enough at the largest shape")
    q, k, v = _qkv(b, sq, sk, h, d, dtype, "cuda", seed=sq + sk)
    if sq * sk > 4608 * 4608:  # fp32 reference on chunks of queries (memory)
        out, lse = attention_fwd(q, k, v, return_lse=True, backend="cuda")
        for i in range(0, sq, 4096):
            ref, ref_lse = attention_ref(q[:, i:i + 4096].float(), k.float(), v.float())
            assert _rel(out[:, i:i + 4096], ref) <= 3 * _rel(ref.to(dtype), ref) + 2e-3
            assert (lse[:, :, i:i + 4096] - ref_lse).abs().max().item() <= 2e-2
        return
    _check_against_ref(q, k, v, None, "cuda")


@pytest.mark.gpu
def test_sm90_kernel_varlen_poisoned_and_strided():
    _needs_sm90()
    qkv = torch.randn(3, 700, 3, 4, 128, device="cuda", dtype=torch.bfloat16)
    q, k, v = qkv.unbind(2)
    seqlens = torch.tensor([700, 129, 0], dtype=torch.int32, device="cuda")
    out, lse = _check_against_ref(q, k, v, seqlens, "cuda")
    assert torch.all(out[2] == 0) and torch.all(lse[2] == float("-inf"))
    # keys past the length do not change the result (they must be finite: P = 0 there, and 0 * NaN = NaN)
    k2, v2 = k.clone(), v.clone()
    k2[1, 129:], v2[1, 129:] = 1e4, -1e4
    out2 = attention_fwd(q, k2, v2, seqlens_k=seqlens, backend="cuda")
    torch.testing.assert_close(out2, out)


@pytest.mark.gpu
def test_sm90_kernel_writes_every_output_element():
    _needs_sm90()
    q, k, v = _qkv(2, 333, 517, 3, 128, torch.bfloat16, "cuda")
    scale = 1 / math.sqrt(128)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((2, 3, 333), float("nan"), device="cuda")
    attention_op._launch_cuda(q, k, v, out, lse, None, scale)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()


@pytest.mark.gpu
def test_sm90_kernel_under_cuda_graph():
    _needs_sm90()
    q, k, v = _qkv(1, 1000, 1000, 4, 128, torch.bfloat16, "cuda")
    attention_fwd(q, k, v, backend="cuda")  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention_fwd(q, k, v, backend="cuda")
    q.copy_(torch.randn_like(q))
    graph.replay()
    torch.cuda.synchronize()
    ref, _ = attention_ref(q.float(), k.float(), v.float())
    assert _rel(out, ref) <= 3 * _rel(ref.to(q.dtype), ref) + 2e-3


@pytest.mark.gpu
@pytest.mark.parametrize("b,sq,sk,h,d", [(1, 77, 77, 2, 128), (2, 300, 1000, 3, 64), (1, 1000, 257, 2, 128)])
def test_triton_on_gpu_matches_reference(b, sq, sk, h, d):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    q, k, v = _qkv(b, sq, sk, h, d, torch.bfloat16, "cuda", seed=sq)
    seqlens = torch.full((b,), sk, dtype=torch.int32, device="cuda")
    seqlens[-1] = max(1, sk // 3)
    _check_against_ref(q, k, v, seqlens, "triton")


def test_custom_op_under_torch_compile_matches_eager():
    q, k, v = _qkv(1, 9, 11, 2, 16, torch.float32, "cpu")
    compiled = torch.compile(lambda q, k, v: attention_fwd(q, k, v, backend="torch"), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attention_fwd(q, k, v, backend="torch"))


@pytest.mark.parametrize("return_lse", [False, True])
def test_custom_op_fake_matches_real(return_lse):
    q, k, v = _qkv(2, 5, 7, 2, 16, torch.float32, "cpu")
    torch.library.opcheck(attention_op._attention_fwd_op, (q, k, v, None, 0.25, return_lse, "torch"),
                          test_utils=("test_schema", "test_faketensor"))
