"""The attention backends: what each needs to run (`why_not`) and how it is called (`attend`).

All take q: [B, Sq, H, D], k, v: [B, Sk, H, D] and return out [B, Sq, H, D] (non-causal, scale 1/sqrt(D));
`attend_with_lse` also returns lse [B, H, Sq] fp32 (natural log).

  fastdit     ours: the sm90 TMA/wgmma kernel on Hopper, the Triton FA2-class kernel on sm80+
  fa4         flash-attn-4 (flash_attn.cute), sm90 / sm100, when importable
  triton      our Triton kernel on any GPU
  aiter       AMD's aiter flash attention on ROCm, when importable
  sdpa        torch scaled_dot_product_attention, torch's own choice of kernel
  sdpa-cudnn  torch SDPA forced to cuDNN (NVIDIA, sm80+)
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastdit.ops import attention as attention_op

BACKENDS = ("fastdit", "fa4", "triton", "aiter", "sdpa", "sdpa-cudnn")


@dataclass(frozen=True)
class DeviceInfo:
    """What a backend decision depends on. kind: "cuda" (NVIDIA), "rocm" or "cpu"; capability (major, minor)."""

    kind: str
    capability: tuple[int, int]
    dtype: torch.dtype
    head_dim: int


def importable(module: str) -> bool:
    """True when `module` can be imported (looked up, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def why_not(backend: str, info: DeviceInfo) -> str | None:
    """None when `backend` can run on `info`, else a short reason."""
    gpu = f"{info.kind} capability {info.capability[0]}.{info.capability[1]}"
    half = info.dtype in (torch.bfloat16, torch.float16)
    if backend == "sdpa":
        return None
    if backend == "sdpa-cudnn":
        if not (info.kind == "cuda" and info.capability >= (8, 0) and half):
            return f"needs an NVIDIA sm80+ GPU and bf16/fp16 (have {gpu}, {info.dtype})"
        if info.head_dim % 8 or info.head_dim > 256:  # else torch: "No available kernel" under sdpa_kernel(CUDNN)
            return f"needs a head dim that is a multiple of 8, at most 256 (have {info.head_dim})"
        return None
    if backend == "fastdit":
        if info.kind != "cuda" or info.capability < (8, 0):
            return f"needs an NVIDIA sm80+ GPU (have {gpu})"
        if not half or info.head_dim not in (64, 128):
            return f"needs bf16/fp16 and head dim 64 or 128 (have {info.dtype}, {info.head_dim})"
        if info.capability[0] == 9:
            return attention_op.library_reason()
        return None if importable("triton") else "needs Triton off Hopper (the sm80 path is our Triton kernel)"
    if backend == "triton":
        if info.kind == "cpu" or not importable("triton"):
            return f"needs Triton and a GPU (have {gpu}, triton importable: {importable('triton')})"
        return None if info.head_dim <= 256 else f"needs head dim <= 256 (have {info.head_dim})"
    if backend == "fa4":
        if not importable("flash_attn.cute"):
            return "flash-attn-4 (flash_attn.cute) is not installed"
        if info.kind != "cuda" or info.capability[0] not in (9, 10):
            return f"flash-attn-4 runs on sm90/sm100 (have {gpu})"
        if half and info.head_dim <= 256:
            return None
        return f"needs bf16/fp16, head dim <= 256 (have {info.dtype}, {info.head_dim})"
    if backend == "aiter":
        if info.kind != "rocm":
            return f"aiter runs on ROCm GPUs (have {gpu})"
        if not importable("aiter"):
            return "aiter is not installed"
        return None if half else f"aiter needs bf16/fp16 (have {info.dtype})"
    raise ValueError(f"attention backend {backend!r} is not one of {BACKENDS}")


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _sdpa_cudnn(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return _sdpa(q, k, v)


def _fastdit(q, k, v):
    backend = "cuda" if q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9 else "triton"
    return attention_op.attention_fwd(q, k, v, backend=backend)


def _fa4(q, k, v):
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(q, k, v, causal=False)
    return out[0] if isinstance(out, tuple) else out


def _aiter(q, k, v):
    import aiter

    out = aiter.flash_attn_func(q, k, v, causal=False)
    return out[0] if isinstance(out, (tuple, list)) else out  # some aiter versions return a 1-tuple


def attend(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    fn = {"fastdit": _fastdit, "fa4": _fa4, "triton": lambda q, k, v: attention_op.attention_fwd(q, k, v, backend="triton"),
          "aiter": _aiter, "sdpa": _sdpa, "sdpa-cudnn": _sdpa_cudnn}[backend]
    return fn(q, k, v)


def attend_with_lse(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Sq, H, D], lse [B, H, Sq] fp32). sdpa backends go through torch's LSE-returning aten ops."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    if backend in ("fastdit", "triton"):
        op_backend = "cuda" if backend == "fastdit" and torch.cuda.get_device_capability(q.device)[0] == 9 else "triton"
        return attention_op.attention_fwd(q, k, v, return_lse=True, backend=op_backend)
    if backend == "fa4":
        from flash_attn.cute import flash_attn_func

        out, lse = flash_attn_func(q, k, v, causal=False, return_lse=True)
        return out, lse.float()
    if backend == "aiter":
        import aiter

        out, lse = aiter.flash_attn_func(q, k, v, causal=False, return_lse=True)[:2]
        return out, lse.float()
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if backend == "sdpa-cudnn":
        res = torch.ops.aten._scaled_dot_product_cudnn_attention(qt, kt, vt, None, True, 0.0, False, False, scale=scale)
        return res[0].transpose(1, 2), res[1].float().reshape(q.shape[0], q.shape[2], q.shape[1])
    if backend == "sdpa" and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        res = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, False, False, scale=scale)
        return res[0].transpose(1, 2), res[1].float()
    if backend == "sdpa":
        return attention_op.attention_fwd(q, k, v, return_lse=True, backend="torch")
    raise ValueError(f"attention backend {backend!r} is not one of {BACKENDS}")
