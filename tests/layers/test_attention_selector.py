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
        monkeypatch.setattr(backends.attention_op, "_library", lambda: object() if library else None)
    return set_installed


def test_auto_on_hopper_follows_the_measured_table(installed):
    installed("triton", "flash_attn.cute")
    name, reason = selector.choose("auto", H100)
    rule = next(r for r in selector.AUTO_TABLE if selector._matches(r, H100))
    assert name == rule.backends[0] and "H100" in reason and "2026-11-24" in reason


def test_auto_elsewhere(installed):
    installed("triton", "aiter")
    assert selector.choose("auto", A100)[0] == "sdpa"
    assert selector.choose("auto", MI300)[0] == "aiter"
    assert selector.choose("auto", CPU)[0] == "sdpa"
    installed("triton")
    assert selector.choose("auto", MI300)[0] == "sdpa"  # aiter not installed


def test_auto_skips_unsupported_head_dim_and_dtype(installed):
    installed("triton")
    assert selector.choose("auto", DeviceInfo("cuda", (9, 0), torch.float32, 128))[0] == "sdpa"
    assert selector.choose("auto", DeviceInfo("cuda", (9, 0), torch.bfloat16, 96))[0] == "sdpa-cudnn"


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
    with pytest.raises(ValueError, match="kernel library .* not built"):
        selector.choose("fastdit", H100)
    installed("triton", library=True)
    assert selector.choose("fastdit", H100) == ("fastdit", "forced")
    assert selector.choose("fastdit", A100) == ("fastdit", "forced")  # the Triton FA2-class path


def test_fa4_only_on_sm90_sm100(installed):
    installed("flash_attn.cute")
    assert selector.choose("fa4", H100)[0] == "fa4"
    assert selector.choose("fa4", DeviceInfo("cuda", (10, 0), torch.bfloat16, 128))[0] == "fa4"
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
