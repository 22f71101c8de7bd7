"""`auto` attention: the measured winner per class of GPU, and the checks behind a forced backend.

The table below is what bench/attention.py measured (TFLOP/s = 4*B*H*Sq*Sk*D / time, bf16, D = 128,
shapes (1,24,4608) FLUX-1024, (1,24,16896) FLUX-2048, (1,12,32760) Wan-1.3B-480p). A rule names a
backend only where it won in the same run; classes nobody measured fall back to torch's own SDPA choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastdit.layers.attention.backends import BACKENDS, DeviceInfo, why_not


@dataclass(frozen=True)
class AutoRule:
    kind: str                        # "cuda" | "rocm" | "cpu"
    capability_major: int | None     # None: any
    dtypes: tuple[torch.dtype, ...]
    head_dims: tuple[int, ...]       # () : any
    backends: tuple[str, ...]        # tried in order; the first that can run wins
    measured: str                    # the numbers, device and date behind the rule


_HALF = (torch.bfloat16, torch.float16)

AUTO_TABLE: tuple[AutoRule, ...] = (
    AutoRule("cuda", 9, _HALF, (64, 128), ("sdpa-cudnn", "sdpa"),
             "H100 SXM, 2026-11-24: cuDNN 614 / 654 / 556 TFLOP/s, SDPA flash (FA2) 325 / 372 / 367 "
             "(issue 4); fastdit sm90 not yet measured faster than cuDNN, so cuDNN."),
    AutoRule("cuda", 9, _HALF, (), ("sdpa-cudnn", "sdpa"),
             "H100, 2026-11-24: torch SDPA already picks cuDNN for these shapes (FACTS.md)."),
    AutoRule("rocm", None, _HALF, (), ("aiter", "sdpa"), "not measured here: aiter is AMD's FA for MI300."),
    AutoRule("cuda", None, (), (), ("sdpa",), "not measured on this class of GPU: torch's own choice."),
    AutoRule("cpu", None, (), (), ("sdpa",), "CPU: torch SDPA (math)."),
    AutoRule("rocm", None, (), (), ("sdpa",), "ROCm, other dtypes: torch SDPA."),
)


def _matches(rule: AutoRule, info: DeviceInfo) -> bool:
    return (rule.kind == info.kind
            and (rule.capability_major is None or rule.capability_major == info.capability[0])
            and (not rule.dtypes or info.dtype in rule.dtypes)
            and (not rule.head_dims or info.head_dim in rule.head_dims))


def choose(backend: str, info: DeviceInfo) -> tuple[str, str]:
    """Resolve `backend` ("auto" or one of BACKENDS) for `info`; returns (backend, reason).

    A forced backend that cannot run raises ValueError saying why and which backend would.
    """
    if backend == "auto":
        for rule in AUTO_TABLE:
            if _matches(rule, info):
                for name in rule.backends:
                    if why_not(name, info) is None:
                        return name, f"auto ({rule.measured})"
        return "sdpa", "auto (no rule matched: torch's own choice)"
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {('auto',) + BACKENDS}")
    reason = why_not(backend, info)
    if reason is not None:
        fallback, _ = choose("auto", info)
        raise ValueError(f"attention backend {backend!r} cannot run here: {reason}; {fallback!r} would")
    return backend, "forced"


def device_info(device: torch.device | str | None, dtype: torch.dtype | None, head_dim: int | None) -> DeviceInfo:
    """DeviceInfo for `device` (default: the current CUDA device if any, else CPU), dtype (default bf16 on a
    GPU, fp32 on CPU) and head_dim (default 128)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        kind = "rocm" if torch.version.hip is not None else "cuda"
        capability = tuple(torch.cuda.get_device_capability(device))
        default_dtype = torch.bfloat16
    else:
        kind, capability, default_dtype = "cpu", (0, 0), torch.float32
    return DeviceInfo(kind, capability, dtype or default_dtype, head_dim or 128)
