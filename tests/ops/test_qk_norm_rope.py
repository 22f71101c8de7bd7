"""qk_norm_rope: reference vs float64 formula (both styles, all norms), Triton on the CPU interpreter,
argument checks (CPU); CUDA and Triton vs reference at FLUX/Wan head layouts, in place inside a fused QKV
buffer, compile and graphs (GPU)."""

from __future__ import annotations

import math

import pytest
import torch

from _op_testing import assert_within_torch_error, check_compile_and_graph, run_under_interpreter
from fastdit.ops import qk_norm_rope
from fastdit.ops.qk_norm_rope import qk_norm_rope_ref


def _truth_one(x, weight, cos, sin, style, norm, eps=1e-6):
    B, S, H, D = x.shape
    xd = x.double()
    if norm == "across_heads":
        flat = xd.reshape(B, S, H * D)
        flat = flat / torch.sqrt((flat * flat).mean(-1, keepdim=True) + eps)
        xd = (flat * weight.double() if weight is not None else flat).reshape(B, S, H, D)
    elif norm == "per_head":
        xd = xd / torch.sqrt((xd * xd).mean(-1, keepdim=True) + eps)
        xd = xd * weight.double() if weight is not None else xd
    c, s = cos.double()[None, :, None, :], sin.double()[None, :, None, :]
    out = torch.empty_like(xd)
    if style == "interleaved":
        x1, x2 = xd[..., 0::2], xd[..., 1::2]
        out[..., 0::2], out[..., 1::2] = x1 * c - x2 * s, x1 * s + x2 * c
    else:
        x1, x2 = xd[..., : D // 2], xd[..., D // 2 :]
        out[..., : D // 2], out[..., D // 2 :] = x1 * c - x2 * s, x1 * s + x2 * c
    return out


def make_case(B, S, H, D, norm, dtype, device):
    q, k = torch.randn(2, B, S, H, D, dtype=dtype, device=device) * 2
    width = H * D if norm == "across_heads" else D
    qw, kw = torch.randn(2, width, dtype=dtype, device=device)
    angles = torch.rand(S, D // 2, device=device) * 2 * math.pi
    return q, k, qw, kw, torch.cos(angles), torch.sin(angles)


def _check(backend, q, k, qw, kw, cos, sin, style, norm, what):
    q_ref, k_ref = q.clone(), k.clone()
    truth_q, truth_k = (_truth_one(t, w, cos, sin, style, norm) for t, w in ((q, qw), (k, kw)))
    qk_norm_rope_ref(q_ref, k_ref, qw, kw, cos, sin, style, norm)
    q_ptr, k_ptr = q.data_ptr(), k.data_ptr()
    q_out, k_out = qk_norm_rope(q, k, qw, kw, cos, sin, style, norm, backend=backend)
    assert q_out is q and k_out is k and q.data_ptr() == q_ptr and k.data_ptr() == k_ptr  # in place
    assert_within_torch_error(q, q_ref, truth_q, f"{what} q")
    assert_within_torch_error(k, k_ref, truth_k, f"{what} k")


@pytest.mark.parametrize("style", ["interleaved", "half"])
@pytest.mark.parametrize("norm", ["per_head", "across_heads", "none"])
def test_reference_matches_float64_formula(style, norm):
    torch.manual_seed(0)
    q, k, qw, kw, cos, sin = make_case(2, 5, 3, 16, norm, torch.float32, "cpu")
    truth_q = _truth_one(q, qw, cos, sin, style, norm)
    qk_norm_rope_ref(q, k, qw, kw, cos, sin, style, norm)
    torch.testing.assert_close(q.double(), truth_q, atol=1e-5, rtol=1e-5)


def interpreted_cases() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        for style in ("interleaved", "half"):
            for norm in ("per_head", "across_heads", "none"):
                case = make_case(2, 7, 3, 64, norm, dtype, "cpu")
                _check("triton", *case, style, norm, f"triton {dtype} {style} {norm}")


def test_triton_on_cpu_interpreter():
    pytest.importorskip("triton")
    run_under_interpreter(__file__, "interpreted_cases")


def test_argument_errors_name_op_and_argument():
    q, k, qw, kw, cos, sin = make_case(1, 4, 2, 16, "per_head", torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"qk_norm_rope: style='neox' is not one of interleaved, half"):
        qk_norm_rope(q, k, qw, kw, cos, sin, style="neox")
    with pytest.raises(ValueError, match=r"qk_norm_rope: norm='layer' is not one of per_head, across_heads, none"):
        qk_norm_rope(q, k, qw, kw, cos, sin, norm="layer")
    with pytest.raises(ValueError, match=r"qk_norm_rope: cos shape \(4, 4\) must be \[S, D/2\] = \(4, 8\)"):
        qk_norm_rope(q, k, qw, kw, cos[:, :4], sin)
    with pytest.raises(ValueError, match=r"qk_norm_rope: q_weight shape \(16,\) must be \[32\] for norm='across_heads'"):
        qk_norm_rope(q, k, qw, kw, cos, sin, norm="across_heads")
    with pytest.raises(ValueError, match=r"qk_norm_rope: k shape \(1, 3, 2, 16\) must equal q's"):
        qk_norm_rope(q, k[:, :3], qw, kw, cos, sin)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("style", ["interleaved", "half"])
@pytest.mark.parametrize("norm", ["per_head", "across_heads", "none"])
@pytest.mark.parametrize("seq,heads,head_dim", [(1, 24, 128), (77, 12, 64), (4608, 24, 128), (4096, 16, 256), (32760, 12, 128)])
def test_gpu_matches_reference(backend, dtype, style, norm, seq, heads, head_dim):
    torch.manual_seed(seq + heads)
    case = make_case(1, seq, heads, head_dim, norm, dtype, "cuda")
    _check(backend, *case, style, norm, f"{backend} {dtype} {style} {norm} S={seq} H={heads} D={head_dim}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("style", ["interleaved", "half"])
@pytest.mark.parametrize("norm", ["per_head", "across_heads"])
@pytest.mark.parametrize("heads,head_dim", [(3, 64), (5, 256), (40, 128), (64, 128)])
def test_gpu_odd_head_layouts(backend, style, norm, heads, head_dim):
    # CUDA rows of one token's heads: 24 chunks in 32 lanes (3x64, idle lanes join the half-style
    # shuffles), 160 threads with 32-lane heads (5x256), Wan-14B's 640 threads (40x128), the widest
    # 1024-thread row (64x128); 19 tokens over batch 2 leave a partial block.
    torch.manual_seed(heads * head_dim)
    case = make_case(2, 19, heads, head_dim, norm, torch.bfloat16, "cuda")
    _check(backend, *case, style, norm, f"{backend} {style} {norm} H={heads} D={head_dim}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_in_place_inside_fused_qkv_leaves_v_alone(backend):
    # FLUX/Wan slice q, k, v out of one [B, S, 3, H, D] projection: q and k are strided views.
    qkv = torch.randn(2, 333, 3, 24, 128, dtype=torch.bfloat16, device="cuda")
    v_before = qkv[:, :, 2].clone()
    q, k = qkv[:, :, 0], qkv[:, :, 1]
    _, _, qw, kw, cos, sin = make_case(1, 333, 24, 128, "per_head", torch.bfloat16, "cuda")
    _check(backend, q, k, qw, kw, cos, sin, "interleaved", "per_head", f"{backend} fused qkv")
    assert torch.equal(qkv[:, :, 2], v_before)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_compile_and_cuda_graph(backend):
    q, k, qw, kw, cos, sin = make_case(1, 4608, 24, 128, "per_head", torch.bfloat16, "cuda")

    def fn(q, k, qw, kw, cos, sin):
        q, k = q.clone(), k.clone()
        return qk_norm_rope(q, k, qw, kw, cos, sin, backend=backend)

    check_compile_and_graph(fn, q, k, qw, kw, cos, sin)
