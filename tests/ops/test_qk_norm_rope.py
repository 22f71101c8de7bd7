"""qk_norm_rope: reference vs float64 formula (both styles, all norms), Triton on the CPU interpreter,
argument checks, the interleaved CUDA kernel's row layouts (a host program built with nvcc) (CPU); CUDA
and Triton vs reference at FLUX/Wan head layouts and every row layout of the interleaved kernel, in place
inside a fused QKV buffer, compile and graphs (GPU)."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

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


# Simulates make_vec_row_layout's chunk assignment (thread t of a row holds chunks t, t + tpr, ...) for
# every row the CUDA export takes (heads >= 1, head_dim 64/128/256, heads * head_dim <= 8192) and checks
# what the interleaved kernel relies on: at every vector slot, each aligned group of head_dim/8 lanes holds
# one whole head in order or nothing (its per-head sum is a shuffle over that group), a thread's chunks
# all sit at place t % (head_dim/8) of their heads (one cos/sin and weight chunk per thread), and every
# chunk of every row of a block is held exactly once. Prints the failing shapes, exits 1 on any.
_LAYOUT_CHECK_CU = r"""
#include <cstdio>
#include <vector>
#include "norm/row_vectors.cuh"
int main() {
  int bad = 0;
  for (int head_dim : {64, 128, 256}) {
    const int cph = head_dim / 8;
    for (int heads = 1; heads * head_dim <= 8192; ++heads) {
      const int chunks = heads * cph;
      const fastdit::VecRowLayout L = fastdit::make_vec_row_layout(chunks);
      const int tpr = L.threads_per_row;
      bool ok = cph <= 32 && L.block_threads() <= fastdit::kVecRowThreads;
      std::vector<int> held(chunks, 0);
      for (int tid = 0; tid < L.block_threads(); ++tid) {
        const int t = tid % tpr, lane = tid % 32, tid0 = tid - lane + lane / cph * cph, t0 = tid0 % tpr;
        ok = ok && tid0 / tpr == tid / tpr;  // the lane group stays inside one row
        for (int i = 0; i < L.vecs; ++i) {
          const int c = t + i * tpr, c0 = t0 + i * tpr;
          ok = ok && (c < chunks) == (c0 < chunks);
          if (c >= chunks) continue;
          ++held[c];
          ok = ok && c0 % cph == 0 && c == c0 + (tid - tid0) && c % cph == t % cph;
        }
      }
      for (int c = 0; c < chunks; ++c) ok = ok && held[c] == L.rows_per_block;
      if (!ok) printf("heads %d head_dim %d: %d threads x %d vectors\n", heads, head_dim, tpr, L.vecs);
      bad += !ok;
    }
  }
  return bad != 0;
}
"""


def test_interleaved_kernel_row_layouts_keep_heads_in_lane_groups(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the layout check is a host program built with it")
    csrc = Path(__file__).resolve().parents[2] / "csrc"
    source, binary = tmp_path / "layout_check.cu", tmp_path / "layout_check"
    source.write_text(_LAYOUT_CHECK_CU)
    subprocess.run([nvcc, "-std=c++17", f"-I{csrc}", "-o", str(binary), str(source)], check=True, timeout=300)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"rows whose heads do not sit in aligned lane groups:\n{result.stdout}"


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
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm", ["per_head", "across_heads", "none"])
@pytest.mark.parametrize(
    "heads,head_dim",
    [(1, 64), (1, 128), (1, 256), (5, 64), (7, 128), (9, 256), (30, 64), (86, 64), (100, 64)],
)
def test_gpu_interleaved_row_layouts(dtype, norm, heads, head_dim):
    # The interleaved CUDA kernel's row layouts (csrc/norm/row_vectors.cuh, threads x vectors per row)
    # that the grids above do not reach: 8-, 16- and 32-thread rows of one head (16, 8 and 4 rows per
    # block; 32 lanes = one 256-wide head), 64 threads x 1 with 24 idle (5x64), 128 x 1 with 16 idle
    # (7x128), 64 x 5 with 32-lane heads (9x256), 128 x 2 (30x64), 128 x 6 (86x64), 128 x 8 with 224
    # idle slots (100x64). 19 tokens over batch 2 leave a partial block.
    torch.manual_seed(heads * head_dim + 1)
    case = make_case(2, 19, heads, head_dim, norm, dtype, "cuda")
    _check("cuda", *case, "interleaved", norm, f"cuda {dtype} {norm} H={heads} D={head_dim}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_norm_without_k_weight(backend):
    # k_weight None with a norm: k is scaled by its rms factor alone, q by factor times weight.
    torch.manual_seed(7)
    for norm in ("per_head", "across_heads"):
        for style in ("interleaved", "half"):
            q, k, qw, _, cos, sin = make_case(2, 19, 12, 128, norm, torch.bfloat16, "cuda")
            _check(backend, q, k, qw, None, cos, sin, style, norm, f"{backend} {style} {norm} no k weight")


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
