"""`auto` attention: the measured winner per class of GPU, and the checks behind a forced backend.

The table below is what bench/attention.py measured (TFLOP/s = 4*B*H*Sq*Sk*D / time, bf16, D = 128,
(B, H, S) = (1,24,4608) FLUX-1024, (1,24,16896) FLUX-2048, (1,12,32760) Wan-1.3B-480p, (1,40,75600)
Wan-14B-720p; at D = 64 three lengths from 4250 to 32760). A rule names a backend only where it won in the
same run -- ours from 4096 keys on (it won at every measured length, 4250 the shortest), cuDNN below (short
text and cross attention: not measured for ours); classes nobody measured fall back to torch's own SDPA choice.
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
    min_keys: int = 0                # `backends` only from this many keys (Sk) on ...
    short_backends: tuple[str, ...] = ()  # ... and these below it


@dataclass(frozen=True)
class Choice:
    """A resolved backend; calls with fewer than `min_keys` keys go to `short_backend` when it is set."""

    backend: str
    reason: str
    short_backend: str | None = None
    min_keys: int = 0


_HALF = (torch.bfloat16, torch.float16)

AUTO_TABLE: tuple[AutoRule, ...] = (
    AutoRule("cuda", 9, _HALF, (128,), ("fastdit",),
             "H100 SXM, 2026-11-24 23:40 UTC (kernel of d8b9636, backends timed round-robin), bf16 D=128, "
             "TFLOP/s fastdit vs cuDNN, median of 10 runs: S=4608 675.7 vs 638.5, S=16896 749.6 vs 695.1, "
             "S=32760 746.8 vs 607.6, S=75600 677.2 vs 567.5 (fp16, 2026-11-25 00:20 UTC: 670.8 vs 633.9, 738.3 vs "
             "682.1, 739.4 vs 599.5, 668.4 vs 548.8); flash-attn-4 4.0.0b36 ties ours (22:13 UTC: 679.8, "
             "717.4, 706.4, 679.6); so ours from 4096 keys",
             min_keys=4096, short_backends=("sdpa-cudnn", "sdpa")),
    AutoRule("cuda", 9, _HALF, (64,), ("fastdit",),
             "H100 SXM, 2026-11-25 00:21 UTC (one run, backends timed round-robin), bf16 D=64, TFLOP/s "
             "fastdit vs cuDNN: (1,24,4250) 398.6 vs 359.9, (1,24,16538) 466.8 vs 433.7, (1,12,32760) 464.4 "
             "vs 424.0; so ours from 4096 keys (shorter: not measured for ours)",
             min_keys=4096, short_backends=("sdpa-cudnn", "sdpa")),
    AutoRule("cuda", 9, _HALF, (), ("sdpa-cudnn", "sdpa"),
             "H100, 2026-11-24: cuDNN 614-654 TFLOP/s vs SDPA flash 325-372 at D=128; other head dims "
             "not measured for fastdit, torch picks cuDNN for them too (FACTS.md)."),
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


def _first_runnable(names: tuple[str, ...], info: DeviceInfo) -> str | None:
    return next((name for name in names if why_not(name, info) is None), None)


def _auto(info: DeviceInfo) -> Choice:
    for rule in AUTO_TABLE:
        if not _matches(rule, info):
            continue
        main, short = _first_runnable(rule.backends, info), _first_runnable(rule.short_backends, info)
        if main is not None and short is not None and rule.min_keys > 0:
            return Choice(main, f"auto, {short} below {rule.min_keys} keys ({rule.measured})", short, rule.min_keys)
        if main is None and short is not None:  # the rule's winner cannot run here: say why in the log line
            return Choice(short, f"auto, {rule.backends[0]} cannot run: {why_not(rule.backends[0], info)} "
                                 f"({rule.measured})")
        if main is not None:
            return Choice(main, f"auto ({rule.measured})")
    return Choice("sdpa", "auto (no rule matched: torch's own choice)")


def choose(backend: str, info: DeviceInfo) -> Choice:
    """Resolve `backend` ("auto" or one of BACKENDS) for `info`.

    A forced backend that cannot run raises ValueError saying why and which backend would.
    """
    if backend == "auto":
        return _auto(info)
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {('auto',) + BACKENDS}")
    reason = why_not(backend, info)
    if reason is not None:
        raise ValueError(f"attention backend {backend!r} cannot run here: {reason}; {_auto(info).backend!r} would")
    return Choice(backend, "forced")


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
