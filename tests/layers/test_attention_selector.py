"""The attention backend selector: `auto` decisions per (GPU, dtype, head dim, importability), the one-line
errors of forced backends, and the AttentionOp contract. Capabilities and importability are mocked."""

from __future__ import annotations

import pytest
import torch

import fastdit.layers.attention as attn
from fastdit.layers.attention import backends, selector
from fastdit.layers.attention.backends import DeviceInfo

H100 = DeviceInfo("cuda", (9, 0), torch.bfloat16, 128)
A100 = DeviceInfo("cuda", (8, 0), torch.bfloat16, 128)
MI300 = DeviceInfo("rocm", (9, 4), torch.bfloat16, 128)
CPU = DeviceInfo("cpu", (0, 0), torch.float32, 128)


@pytest.fixture
def installed(monkeypatch):
    """Pretend exactly the named modules are importable and our kernel library is built."""
    def set_installed(*modules, library=True):
        monkeypatch.setattr(backends, "importable", lambda m: m in modules)
        reason = None if library else "the kernel library is not loaded (looked at /nowhere)"
        monkeypatch.setattr(backends.attention_op, "library_reason", lambda: reason)
    return set_installed


def test_auto_on_hopper_follows_the_measured_table(installed):
    installed("triton", "flash_attn.cute")
    choice = selector.choose("auto", H100)
    rule = next(r for r in selector.AUTO_TABLE if selector._matches(r, H100))
    assert choice.backend == rule.backends[0] == "fastdit"
    assert (choice.short_backend, choice.min_keys) == ("sdpa-cudnn", 4096)
    assert "H100" in choice.reason and "2026-11-24" in choice.reason
    op = attn.AttentionOp(choice.backend, choice.short_backend, choice.min_keys)
    assert op.backend_for(512) == "sdpa-cudnn" and op.backend_for(4608) == op.backend_for(16896) == "fastdit"


def test_auto_on_hopper_without_our_library_is_cudnn(installed):
    installed("triton", library=False)
    choice = selector.choose("auto", H100)
    assert (choice.backend, choice.short_backend) == ("sdpa-cudnn", None)
    assert attn.AttentionOp(choice.backend).backend_for(100000) == "sdpa-cudnn"


def test_auto_elsewhere(installed):
    installed("triton", "aiter")
    assert selector.choose("auto", A100).backend == "sdpa"
    assert selector.choose("auto", MI300).backend == "aiter"
    assert selector.choose("auto", CPU).backend == "sdpa"
    installed("triton")
    assert selector.choose("auto", MI300).backend == "sdpa"  # aiter not installed


def test_auto_skips_unsupported_head_dim_and_dtype(installed):
    installed("triton")
    assert selector.choose("auto", DeviceInfo("cuda", (9, 0), torch.float32, 128)).backend == "sdpa"
    assert selector.choose("auto", DeviceInfo("cuda", (9, 0), torch.bfloat16, 96)).backend == "sdpa-cudnn"
    d64 = selector.choose("auto", DeviceInfo("cuda", (9, 0), torch.bfloat16, 64))  # measured: ours from 4096 keys
    assert (d64.backend, d64.min_keys, d64.short_backend) == ("fastdit", 4096, "sdpa-cudnn")
    # cuDNN has no kernel for head dims that are not multiples of 8 (wan-tiny's 12 failed on the H100)
    assert selector.choose("auto", DeviceInfo("cuda", (9, 0), torch.bfloat16, 12)).backend == "sdpa"
    with pytest.raises(ValueError, match="multiple of 8.*have 12.*'sdpa' would"):
        selector.choose("sdpa-cudnn", DeviceInfo("cuda", (9, 0), torch.bfloat16, 12))


@pytest.mark.parametrize("backend,info,why", [
    ("fastdit", DeviceInfo("cuda", (7, 5), torch.float16, 128), "needs an NVIDIA sm80\\+ GPU"),
    ("fastdit", DeviceInfo("cuda", (9, 0), torch.bfloat16, 256), "needs bf16/fp16 and head dim 64 or 128"),
    ("fa4", H100, "flash-attn-4 .* is not installed"),
    ("aiter", H100, "aiter runs on ROCm"),
    ("sdpa-cudnn", CPU, "needs an NVIDIA sm80\\+ GPU"),
    ("triton", CPU, "needs Triton and a GPU"),
])
def test_forced_backend_that_cannot_run_says_why_and_which_would(installed, backend, info, why):
    installed("triton")
    with pytest.raises(ValueError, match=f"cannot run here: {why}.*; '[a-z-]+' would") as err:
        selector.choose(backend, info)
    assert "\n" not in str(err.value)


def test_fastdit_needs_the_library_on_hopper(installed):
    installed("triton", library=False)
    with pytest.raises(ValueError, match="kernel library is not loaded .*; 'sdpa-cudnn' would"):
        selector.choose("fastdit", H100)
    installed("triton", library=True)
    assert selector.choose("fastdit", H100) == selector.Choice("fastdit", "forced")
    assert selector.choose("fastdit", A100).backend == "fastdit"  # the Triton FA2-class path


def test_library_built_without_cutlass(monkeypatch):
    """pip's isolated build (CI) has no CUTLASS headers: the library loads without fastdit_attention_fwd.
    Forcing fastdit says so in one line and names cuDNN; auto picks cuDNN at every length."""
    class LibraryWithoutAttention:
        pass

    monkeypatch.setattr(backends, "importable", lambda m: m == "triton")
    monkeypatch.setattr(backends.attention_op._lib, "library", lambda: LibraryWithoutAttention())
    assert backends.why_not("fastdit", H100) == backends.attention_op.NO_CUTLASS
    with pytest.raises(ValueError, match="cannot run here: the kernel library was built without CUTLASS headers.*"
                                         "pip install nvidia-cutlass.*; 'sdpa-cudnn' would") as err:
        selector.choose("fastdit", H100)
    assert "\n" not in str(err.value)
    choice = selector.choose("auto", H100)
    assert (choice.backend, choice.short_backend, choice.min_keys) == ("sdpa-cudnn", None, 0)
    assert "fastdit cannot run: the kernel library was built without CUTLASS" in choice.reason  # the logged line
    assert selector.choose("fastdit", A100).backend == "fastdit"  # off Hopper ours is Triton: no library needed


def test_fa4_only_on_sm90_sm100(installed):
    installed("flash_attn.cute")
    assert selector.choose("fa4", H100).backend == "fa4"
    assert selector.choose("fa4", DeviceInfo("cuda", (10, 0), torch.bfloat16, 128)).backend == "fa4"
    with pytest.raises(ValueError, match="sm90/sm100"):
        selector.choose("fa4", A100)


def test_unknown_backend():
    with pytest.raises(ValueError, match="'flash' is not one of"):
        selector.choose("flash", CPU)


def test_make_attention_op_logs_once_and_runs(monkeypatch, caplog):
    monkeypatch.delenv("FASTDIT_ATTENTION_BACKEND", raising=False)
    messages = []
    monkeypatch.setattr(attn, "log_once", lambda m: messages.append(m))
    op = attn.make_attention_op("auto", device="cpu", dtype=torch.float32, head_dim=16)
    assert op.backend == "sdpa" and "sdpa" in messages[0] and "cpu" in messages[0]
    q = torch.randn(2, 7, 3, 16)
    k = torch.randn(2, 9, 3, 16)
    out = op(q, k, k, joint_txt_len=3)
    torch.testing.assert_close(out, attn.attention(q, k, k), rtol=1e-5, atol=1e-5)
    assert out.shape == (2, 7, 3, 16)


def test_env_var_applies_only_to_auto(monkeypatch):
    monkeypatch.setenv("FASTDIT_ATTENTION_BACKEND", "sdpa-cudnn")
    with pytest.raises(ValueError, match="'sdpa-cudnn' cannot run here"):
        attn.make_attention_op("auto", device="cpu")
    assert attn.make_attention_op("sdpa", device="cpu").backend == "sdpa"


def test_attention_with_lse_on_cpu():
    q, k, v = torch.randn(1, 5, 2, 8), torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8)
    out, lse = attn.attention_with_lse(q, k, v, "sdpa")
    s = torch.einsum("bihd,bjhd->bhij", q, k) / 8 ** 0.5
    torch.testing.assert_close(lse, s.logsumexp(-1))
    torch.testing.assert_close(out, attn.attention(q, k, v), rtol=1e-5, atol=1e-5)


def _reference(q, k, v):
    s = torch.einsum("bihd,bjhd->bhij", q.float(), k.float()) / q.shape[-1] ** 0.5
    return torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v.float()), s.logsumexp(-1)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", backends.BACKENDS)
@pytest.mark.parametrize("d", [64, 128])
def test_backends_agree_on_gpu(backend, d):
    """Every backend that can run here gives the same out and lse (lse layout [B, H, Sq]) as the reference."""
    info = selector.device_info("cuda", torch.bfloat16, d)
    if backends.why_not(backend, info) is not None:
        pytest.skip(backends.why_not(backend, info))
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(2, s, 3, d, generator=g).to("cuda", torch.bfloat16) for s in (300, 517, 517))
    op = attn.make_attention_op(backend, "cuda", torch.bfloat16, d)
    out, lse = op.with_lse(q, k, v)
    ref, ref_lse = _reference(q, k, v)
    assert out.shape == q.shape and lse.shape == (2, 3, 300) and lse.dtype == torch.float32
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
    assert (lse - ref_lse).abs().max().item() < 2e-2
    # the plain call is the same attention; with_lse may take another kernel of the library (torch SDPA's
    # math path returns the LSE, its flash path does not): equal within bf16 rounding
    assert ((op(q, k, v).float() - out.float()).norm() / out.float().norm()).item() < 4e-3


@pytest.mark.gpu
@pytest.mark.parametrize("num_keys", [4608, 16896])
def test_auto_op_under_cuda_graph(num_keys):
    """The auto op on both sides of the table's key-length rule, captured once and replayed on new inputs."""
    op = attn.make_attention_op("auto", "cuda", torch.bfloat16, 128)
    q = torch.randn(1, 512, 2, 128, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, num_keys, 2, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        op(q, k, v)  # warm up outside the capture (cuDNN plans, lazy loads)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(q, k, v)
    q.copy_(torch.randn_like(q))
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    ref, _ = _reference(q, k, v)
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
    torch.testing.assert_close(out, op(q, k, v), atol=0, rtol=0)
