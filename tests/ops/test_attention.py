"""attention_fwd against the fp32 reference: the Triton kernel on the CPU (TRITON_INTERPRET=1, small odd
shapes), argument checks, and, on an H100, our sm90 kernel at the model shapes (`gpu` marker)."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from fastdit.ops import attention as attention_op
from fastdit.ops import _library
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


def _reference(q, k, v, seqlens_k):
    """attention_ref in fp32, in query chunks of at most 2^28 scores (the [B, H, Sq, Sk] matrix of a
    32760-key self attention would not fit at once)."""
    rows = max(1, (1 << 28) // (q.shape[0] * q.shape[2] * k.shape[1]))
    parts = [attention_ref(q[:, i:i + rows].float(), k.float(), v.float(), seqlens_k)
             for i in range(0, q.shape[1], rows)]
    return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=2)


def _poisoned_run(q, k, v, seqlens_k, backend):
    """The backend's kernel writing into NaN-filled out and lse: an element it fails to write stays NaN."""
    out = torch.full(q.shape, float("nan"), dtype=q.dtype, device=q.device)
    lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), float("nan"), dtype=torch.float32, device=q.device)
    scale = 1.0 / math.sqrt(q.shape[-1])
    if backend == "cuda":
        attention_op._launch_cuda(q, k, v, out, lse, seqlens_k, scale)
    else:
        from fastdit.triton_kernels.attention import attention_fwd as triton_attention_fwd

        triton_attention_fwd(q, k, v, out, lse, seqlens_k, scale)
    return out, lse


def _check_against_ref(q, k, v, seqlens_k, backend, factor=3.0):
    """The kernel, run into poisoned outputs, against the fp32 reference: its relative L2 error is within
    `factor` x torch's own rounding error (the reference rounded to the input dtype) plus a small floor,
    the LSE within 2e-2 (-inf exactly where a batch has no keys), and the public attention_fwd returns the
    same bits."""
    out, lse = _poisoned_run(q, k, v, seqlens_k, backend)
    ref, ref_lse = _reference(q, k, v, seqlens_k)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any(), "an output element was not written"
    torch_err = _rel(ref.to(q.dtype), ref) if q.dtype != torch.float32 else 0.0
    floor = 2e-3 if q.dtype != torch.float32 else 1e-4
    assert torch.isfinite(out).all()
    assert _rel(out, ref) <= factor * torch_err + floor, (_rel(out, ref), torch_err)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(finite, torch.isfinite(lse))
    assert (lse[finite] - ref_lse[finite]).abs().max().item() <= 2e-2
    public_out, public_lse = attention_fwd(q, k, v, seqlens_k=seqlens_k, return_lse=True, backend=backend)
    assert public_out.shape == q.shape and public_out.dtype == q.dtype
    assert public_lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and public_lse.dtype == torch.float32
    assert torch.equal(public_out, out) and torch.equal(public_lse, lse)
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


def test_forced_cuda_on_cpu_says_why_and_which_would():
    q, k, v = _qkv(1, 5, 6, 2, 64, torch.bfloat16, "cpu")
    expected = r"backend='cuda' cannot run this call: q is on cpu.*\(backend='torch' would\)"
    with pytest.raises(ValueError, match=expected) as err:
        attention_fwd(q, k, v, backend="cuda")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="not one of"):
        attention_fwd(q, k, v, backend="flash")
    with pytest.raises(ValueError, match=r"backend='triton' cannot run.*head dim 300 exceeds 256.*'torch' would"):
        attention_fwd(*_qkv(1, 5, 6, 1, 300, torch.float32, "cpu"), backend="triton")


class _LibraryWithoutAttention:
    """A loaded kernel library built without CUTLASS: every other export, no fastdit_attention_fwd."""

    def fastdit_rms_norm(self, *args):
        raise AssertionError("not called")


def test_library_built_without_cutlass_is_reported_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(_library, "library", lambda: _LibraryWithoutAttention())
    assert attention_op._library() is None
    assert attention_op.library_reason() == attention_op.NO_CUTLASS
    assert "built without CUTLASS" in attention_op.NO_CUTLASS and "nvidia-cutlass" in attention_op.NO_CUTLASS
    q, k, v = _qkv(1, 5, 6, 2, 64, torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match="the kernel library was built without CUTLASS headers") as err:
        attention_fwd(q, k, v, backend="cuda")
    assert "\n" not in str(err.value) and "backend='torch' would" in str(err.value)
    torch.testing.assert_close(attention_fwd(q, k, v), attention_ref(q, k, v)[0])  # auto: another backend


def test_library_not_loaded_is_reported(monkeypatch):
    monkeypatch.setattr(_library, "library", lambda: None)
    assert attention_op.library_reason().startswith("the kernel library is not loaded (looked at ")


def test_auto_on_cpu_is_reference():
    q, k, v = _qkv(1, 5, 6, 2, 16, torch.float32, "cpu")
    torch.testing.assert_close(attention_fwd(q, k, v), attention_ref(q, k, v)[0])


# The sm90 kernel's split tail plan (a host program built with nvcc over the scheduler header) ---------------

# Walks every CTA's work items for many (query blocks, heads, batch, key blocks, SMs) and checks what the
# kernel relies on: each tile's key blocks are covered exactly once; exactly one item per tile stores (a
# whole tile, or the owner of a split one), and the owner's peer range is exactly the CTAs that contribute
# to its tile; a CTA contributes at most once and does so before anything it owns (no owner waits on a
# waiting CTA); the split shortens the longest CTA. Prints the failing plans, exits 1 on any.
_TAIL_PLAN_CHECK_CU = r"""
#include <cstdio>
#include <vector>
#include "attention/attention_fwd_sm90_tile_scheduler.cuh"
using namespace fastdit::attention::sm90;
int check(int mb, int heads, int batch, int nb, int sms, int* splits) {
  auto p = StaticPersistentTileScheduler::make_params(mb, heads, batch, nb, sms, true);
  const int tiles = mb * heads * batch;
  std::vector<int> covered(size_t(tiles) * nb, 0), stores(tiles, 0), peer_first(tiles, -1), peer_last(tiles, -2);
  std::vector<std::vector<int>> contributors(tiles);
  int longest = 0;
  for (int cta = 0; cta < p.grid; ++cta) {
    WorkItem w;
    int contributions = 0, blocks = 0;
    for (int i = 0; StaticPersistentTileScheduler::get(p, cta, i, w); ++i) {
      const int t = (w.tile.batch * heads + w.tile.head) * mb + w.tile.m_block;
      const int end = w.n_end < 0 ? nb : w.n_end;
      if (t < 0 || t >= tiles || w.n_begin < 0 || end > nb || w.n_begin >= end) return 1;
      for (int n = w.n_begin; n < end; ++n) ++covered[size_t(t) * nb + n];
      blocks += end - w.n_begin;
      if (w.role == WorkItem::kContribute) {
        if (++contributions > 1 || i != p.whole_per_cta) return 1;  // once, first of the tail
        contributors[t].push_back(cta);
      } else {
        ++stores[t];
        if (w.role == WorkItem::kOwnMerge) peer_first[t] = w.peer_first, peer_last[t] = w.peer_last;
      }
    }
    longest = blocks > longest ? blocks : longest;
  }
  for (size_t u = 0; u < covered.size(); ++u) if (covered[u] != 1) return 1;
  for (int t = 0; t < tiles; ++t) {
    if (stores[t] != 1) return 1;
    const auto& c = contributors[t];
    if (c.empty() != (peer_first[t] == -1)) return 1;
    if (!c.empty() && (c.front() != peer_first[t] || c.back() != peer_last[t] ||
                       int(c.size()) != peer_last[t] - peer_first[t] + 1)) return 1;
  }
  const int waves = (tiles + sms - 1) / sms;
  if (StaticPersistentTileScheduler::split(p)) {
    ++*splits;
    if (longest >= waves * nb) return 1;
  }
  return 0;
}
int main() {
  int bad = 0, splits = 0, plans = 0;
  const int cases[][5] = {{36, 24, 1, 24, 132}, {256, 12, 1, 171, 132}, {591, 40, 1, 394, 132}, {132, 24, 1, 88, 132},
                          {36, 24, 2, 24, 132}, {8, 1, 1, 11, 132}, {1, 1, 1, 5, 132}, {36, 24, 1, 24, 114}};
  for (const auto& c : cases) {
    ++plans;
    if (check(c[0], c[1], c[2], c[3], c[4], &splits)) {
      printf("plan %d %d %d %d %d\n", c[0], c[1], c[2], c[3], c[4]);
      ++bad;
    }
  }
  for (int sms : {7, 66, 132})
    for (int mb = 1; mb <= 40; mb += 3)
      for (int heads = 1; heads <= 9; heads += 4)
        for (int nb = 1; nb <= 60; nb += 7) {
          ++plans;
          if (check(mb, heads, 1 + mb % 2, nb, sms, &splits)) {
            printf("plan %d %d %d %d %d\n", mb, heads, 1 + mb % 2, nb, sms);
            ++bad;
          }
        }
  printf("%d plans, %d split\n", plans, splits);
  return bad != 0 || splits < plans / 4;
}
"""


def test_tail_split_plan_covers_every_key_block_once(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found: the plan check is a host program built with it")
    cutlass_library = pytest.importorskip("cutlass_library", reason="the scheduler header needs CUTLASS's")
    cutlass_include = Path(cutlass_library.__file__).parent / "source" / "include"
    csrc = Path(__file__).resolve().parents[2] / "csrc"
    source, binary = tmp_path / "plan_check.cu", tmp_path / "plan_check"
    source.write_text(_TAIL_PLAN_CHECK_CU)
    subprocess.run([nvcc, "-std=c++17", f"-I{csrc}", f"-I{cutlass_include}", "-o", str(binary), str(source)],
                   check=True, timeout=300)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"bad split-tail plans:\n{result.stdout}"


# GPU: our sm90 kernel ----------------------------------------------------------------------------------------

def _needs_sm90():
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs an sm90 GPU")
    if attention_op.library_reason() is not None:
        pytest.skip(attention_op.library_reason())


def _captured(call):
    """call() warmed up once on a side stream (lazy init and allocations outside the capture), then captured:
    (the graph, call's outputs as the graph writes them)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = call()
    return graph, outputs


def _assert_replay_equals_eager(graph, inputs, outputs, call) -> None:
    """New random values in `inputs`, `outputs` poisoned with NaN, one replay: they equal an eager call()."""
    for t in inputs:
        t.copy_(torch.randn_like(t))
    for t in outputs:
        t.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(outputs, call()):
        assert torch.equal(got, want)


@pytest.mark.gpu
def test_sm90_kernel_is_in_the_library_on_hopper():
    """On a Hopper GPU the installed library must carry the kernel (a wheel built without CUTLASS fails here,
    where every other sm90 test would only skip)."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("needs an sm90 GPU")
    assert attention_op.library_reason() is None, attention_op.library_reason()


SM90_SHAPES = [  # (B, Sq, Sk, H, D)
    (1, 1, 1, 2, 128), (2, 1, 1, 2, 64),                          # S = 1
    (1, 77, 77, 3, 128), (2, 77, 77, 3, 64),                      # a text encoder's length
    (1, 512, 512, 4, 128), (1, 512, 512, 4, 64),
    (1, 4096 + 512, 4096 + 512, 4, 128), (2, 4608, 4608, 2, 64),  # FLUX-1024: 4096 image + 512 text tokens
    (1, 32760, 32760, 1, 128), (1, 32760, 32760, 1, 64),          # Wan-1.3B 480p
    (1, 32760, 512, 3, 128), (2, 32760, 512, 2, 64),              # Wan cross attention (512 text keys)
    (3, 200, 201, 2, 128), (1, 1000, 193, 2, 128),                # not multiples of kBlockM 128 / kBlockN 192
    (1, 129, 4097, 2, 64), (2, 300, 1000, 3, 64),                 # ... and of kBlockN 128 (D = 64)
]


@pytest.mark.gpu
@pytest.mark.parametrize("b,sq,sk,h,d", SM90_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sm90_kernel_matches_reference(b, sq, sk, h, d, dtype):
    _needs_sm90()
    q, k, v = _qkv(b, sq, sk, h, d, dtype, "cuda", seed=sq + sk + d)
    _check_against_ref(q, k, v, None, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("sq,sk,d,fused", [(700, 700, 128, True), (4608, 512, 64, False), (333, 4097, 128, False)])
def test_sm90_kernel_varlen(sq, sk, d, fused):
    """Per-batch key lengths (one batch with none), on fused-QKV strided views or separate tensors."""
    _needs_sm90()
    if fused:
        q, k, v = torch.randn(3, sq, 3, 4, d, device="cuda", dtype=torch.bfloat16).unbind(2)
    else:
        q, k, v = _qkv(3, sq, sk, 4, d, torch.bfloat16, "cuda", seed=sk)
    seqlens = torch.tensor([sk, 129, 0], dtype=torch.int32, device="cuda")
    out, lse = _check_against_ref(q, k, v, seqlens, "cuda")
    assert torch.all(out[2] == 0) and torch.all(lse[2] == float("-inf"))
    # keys past the length do not change the result (they must be finite: P = 0 there, and 0 * NaN = NaN)
    k2, v2 = k.clone(), v.clone()
    k2[1, 129:], v2[1, 129:] = 1e4, -1e4
    torch.testing.assert_close(attention_fwd(q, k2, v2, seqlens_k=seqlens, backend="cuda"), out, atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
def test_sm90_kernel_under_cuda_graph(d):
    """Captured once, replayed on new inputs: out and LSE equal an eager call on those inputs."""
    _needs_sm90()
    q, k, v = _qkv(2, 1000, 777, 4, d, torch.bfloat16, "cuda")
    seqlens = torch.tensor([777, 300], dtype=torch.int32, device="cuda")
    call = lambda: attention_fwd(q, k, v, seqlens_k=seqlens, return_lse=True, backend="cuda")
    graph, (out, lse) = _captured(call)
    _assert_replay_equals_eager(graph, (q, k, v), (out, lse), call)
    ref, _ = _reference(q, k, v, seqlens)
    assert _rel(out, ref) <= 3 * _rel(ref.to(q.dtype), ref) + 2e-3


@pytest.mark.gpu
@pytest.mark.parametrize("b,sq,sk,h,d,dtype", [
    (1, 4608, 4608, 24, 128, torch.bfloat16),  # FLUX-1024: 864 tiles, 7 waves on 132 SMs for 6.55 of work
    (1, 1000, 2000, 1, 128, torch.bfloat16),   # 8 tiles: short runs, a tile merged from several CTAs
    (2, 4608, 4608, 2, 64, torch.float16),
    (1, 3001, 2999, 3, 64, torch.bfloat16),    # partial last query and key blocks inside the split tail
    (1, 2900, 6000, 7, 128, torch.bfloat16),   # an odd count of query blocks (23) per head, 161 tiles
])
def test_sm90_split_tail_matches_reference_and_unsplit(b, sq, sk, h, d, dtype):
    """Shapes whose last wave the kernel splits (the library plans a workspace for them): the result, LSE
    included, against the fp32 reference, and against the same kernel with the split off."""
    _needs_sm90()
    q, k, v = _qkv(b, sq, sk, h, d, dtype, "cuda", seed=sq + h)
    a = attention_op._FwdArgs(0, 0, 0, 0, None, None, _library.DTYPE_CODES[dtype], b, sq, sk, h, d)
    assert attention_op._workspace(a, q.device)[0] is not None, "this shape was meant to take the split tail"
    out, lse = _check_against_ref(q, k, v, None, "cuda")
    with attention_op.tail_split(False):
        assert attention_op._workspace(a, q.device)[0] is None
        whole_out, whole_lse = _poisoned_run(q, k, v, None, "cuda")
    torch.testing.assert_close(out.float(), whole_out.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse, whole_lse, atol=1e-4, rtol=1e-5)


@pytest.mark.gpu
def test_sm90_split_tail_under_cuda_graph():
    """The device's split scratch, made by the warm-up, serves the capture: replays on new inputs equal eager."""
    _needs_sm90()
    q, k, v = _qkv(1, 4608, 4608, 24, 128, torch.bfloat16, "cuda")
    call = lambda: attention_fwd(q, k, v, return_lse=True, backend="cuda")
    graph, (out, lse) = _captured(call)
    for _ in range(2):  # a second replay finds the flags the first one raised zeroed again
        _assert_replay_equals_eager(graph, (q, k, v), (out, lse), call)


@pytest.mark.gpu
def test_sm90_split_tail_captured_before_any_eager_call(monkeypatch):
    """A capture that finds no workspace yet takes its own (zeroed by a memset the graph records) and leaves
    the device's buffer alone; the eager call after it creates that buffer: both equal the unsplit kernel."""
    _needs_sm90()
    monkeypatch.setattr(attention_op, "_workspaces", {})
    q, k, v = _qkv(1, 4608, 4608, 24, 128, torch.bfloat16, "cuda", seed=7)
    with attention_op.tail_split(False):
        whole = attention_fwd(q, k, v, backend="cuda")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention_fwd(q, k, v, backend="cuda")
    assert attention_op._workspaces == {}
    for _ in range(2):
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out.float(), whole.float(), atol=2e-2, rtol=2e-2)
    eager = attention_fwd(q, k, v, backend="cuda")
    assert list(attention_op._workspaces) == [q.device.index]
    assert torch.equal(eager, out)


# GPU: the Triton FA2-class path (sm80: A100, L40, RTX 4090; run here on whatever GPU there is) ---------------

@pytest.mark.gpu
@pytest.mark.parametrize("b,sq,sk,h,d,dtype", [
    (1, 1, 1, 2, 128, torch.bfloat16), (1, 77, 77, 2, 128, torch.bfloat16), (2, 300, 1000, 3, 64, torch.bfloat16),
    (1, 1000, 257, 2, 128, torch.float16), (1, 4608, 4608, 2, 128, torch.bfloat16),
    (1, 32760, 512, 2, 64, torch.float16), (1, 32760, 32760, 1, 128, torch.bfloat16),
])
def test_triton_on_gpu_matches_reference(b, sq, sk, h, d, dtype):
    q, k, v = _qkv(b, sq, sk, h, d, dtype, "cuda", seed=sq)
    seqlens = torch.full((b,), sk, dtype=torch.int32, device="cuda")
    seqlens[-1] = max(1, sk // 3)
    _check_against_ref(q, k, v, seqlens, "triton")
    _check_against_ref(q, k, v, None, "triton")


def test_custom_op_under_torch_compile_matches_eager():
    q, k, v = _qkv(1, 9, 11, 2, 16, torch.float32, "cpu")
    compiled = torch.compile(lambda q, k, v: attention_fwd(q, k, v, backend="torch"), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), attention_fwd(q, k, v, backend="torch"))


@pytest.mark.parametrize("return_lse", [False, True])
def test_custom_op_fake_matches_real(return_lse):
    q, k, v = _qkv(2, 5, 7, 2, 16, torch.float32, "cpu")
    torch.library.opcheck(attention_op._attention_fwd_op, (q, k, v, None, 0.25, return_lse, "torch"),
                          test_utils=("test_schema", "test_faketensor"))
