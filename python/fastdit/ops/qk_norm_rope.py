"""qk_norm_rope: RMSNorm of q and k (per head or across heads), then rotary embedding, in place.

q, k: [B, S, H, D]. cos, sin: [S, D/2] fp32, one angle per rotated pair.
style "interleaved" rotates pairs (2i, 2i+1) (FLUX and Wan, as diffusers computes them);
style "half" rotates pairs (i, i + D/2) (NeoX-style models).
norm "per_head": weight [D], statistics over D (FLUX); "across_heads": weight [H*D], statistics over
H*D (Wan); "none": no norm. Math in fp32.
Backends: cuda (csrc/rope/qk_norm_rope.cuh through fastdit_qk_norm_rope: bf16/fp16, head_dim 64/128/256,
heads packed, H*D <= 8192), triton (triton_kernels/qk_norm_rope.py: any strides), torch (`_ref`).
"""

from __future__ import annotations

import ctypes

import torch

from fastdit.ops import _library as lib

STYLES = ("interleaved", "half")
NORMS = ("per_head", "across_heads", "none")
HEAD_DIMS_CUDA = (64, 128, 256)

# csrc/api/rope.cu: FastditRopeStyle, FastditQkNorm
STYLE_CODES = {"interleaved": 0, "half": 1}
NORM_CODES = {"per_head": 0, "across_heads": 1, "none": 2}


def _norm_ref(x: torch.Tensor, weight: torch.Tensor | None, norm: str, eps: float) -> torch.Tensor:
    xf = x.float()
    if norm == "none":
        return xf
    B, S, H, D = x.shape
    if norm == "across_heads":
        flat = xf.reshape(B, S, H * D)
        flat = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + eps)
        if weight is not None:
            flat = flat * weight.float()
        return flat.reshape(B, S, H, D)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf * weight.float() if weight is not None else xf


def _rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, style: str) -> torch.Tensor:
    cos = cos[None, :, None, :].float()  # [1, S, 1, D/2]
    sin = sin[None, :, None, :].float()
    if style == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def qk_norm_rope_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    style: str = "interleaved",
    norm: str = "per_head",
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Writes the result into q and k (in place) and returns them."""
    for t, w in ((q, q_weight), (k, k_weight)):
        t.copy_(_rope_ref(_norm_ref(t, w, norm, eps), cos, sin, style))
    return q, k


class QkNormRopeParams(ctypes.Structure):
    """Mirror of fastdit_qk_norm_rope_params (csrc/api/rope.cu)."""

    _fields_ = [
        ("q", ctypes.c_void_p),
        ("k", ctypes.c_void_p),
        ("q_weight", ctypes.c_void_p),
        ("k_weight", ctypes.c_void_p),
        ("cos", ctypes.c_void_p),
        ("sin", ctypes.c_void_p),
        ("q_token_stride", ctypes.c_int64),
        ("k_token_stride", ctypes.c_int64),
        ("tokens", ctypes.c_int64),
        ("seq", ctypes.c_int64),
        ("heads", ctypes.c_int32),
        ("head_dim", ctypes.c_int32),
        ("eps", ctypes.c_float),
        ("style", ctypes.c_int32),
        ("norm", ctypes.c_int32),
    ]


_EXPORT_ARGTYPES = (ctypes.POINTER(QkNormRopeParams), ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _token_stride(t: torch.Tensor) -> int:
    # [B, S, H, D] with uniform token stride (checked by _cuda_reason): tokens b*S+s are stride(1) apart.
    return t.stride(1) if t.shape[1] > 1 else (t.stride(0) if t.shape[0] > 1 else t.shape[2] * t.shape[3])


def _qk_norm_rope_cuda_impl(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
    cos: torch.Tensor, sin: torch.Tensor, style: str, norm: str, eps: float,
) -> None:
    # A q/k whose storage starts off a 16-byte boundary is rotated in an aligned copy, then copied back.
    q_run = q if lib.aligned16(q) else q.clone(memory_format=torch.contiguous_format)
    k_run = k if lib.aligned16(k) else k.clone(memory_format=torch.contiguous_format)
    # Locals keep any converted copy alive until the launch is queued.
    cos = lib.fresh_if_misaligned(cos.float().contiguous())
    sin = lib.fresh_if_misaligned(sin.float().contiguous())
    q_weight = lib.fresh_if_misaligned(q_weight)
    k_weight = lib.fresh_if_misaligned(k_weight)
    batch, seq, heads, head_dim = q.shape
    params = QkNormRopeParams(
        q_run.data_ptr(), k_run.data_ptr(), lib.ptr(q_weight).value, lib.ptr(k_weight).value,
        cos.data_ptr(), sin.data_ptr(),
        _token_stride(q_run), _token_stride(k_run), batch * seq, seq, heads, head_dim, eps,
        STYLE_CODES[style], NORM_CODES[norm],
    )
    fn = lib.export("fastdit_qk_norm_rope", _EXPORT_ARGTYPES)
    lib.check("qk_norm_rope", fn(ctypes.byref(params), lib.DTYPE_CODES[q.dtype], q.device.index, lib.stream_of(q)))
    if q_run is not q:
        q.copy_(q_run)
    if k_run is not k:
        k.copy_(k_run)


_qk_norm_rope_cuda = torch.library.custom_op("fastdit::qk_norm_rope_cuda", mutates_args=("q", "k"))(
    _qk_norm_rope_cuda_impl
)


@_qk_norm_rope_cuda.register_fake
def _(q, k, q_weight, k_weight, cos, sin, style, norm, eps) -> None:
    return None


def _qk_norm_rope_triton_impl(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
    cos: torch.Tensor, sin: torch.Tensor, style: str, norm: str, eps: float,
) -> None:
    from fastdit.triton_kernels.qk_norm_rope import qk_norm_rope as triton_qk_norm_rope

    triton_qk_norm_rope(
        q, k, q_weight, k_weight, cos.float().contiguous(), sin.float().contiguous(), style == "interleaved", norm, eps
    )


_qk_norm_rope_triton = torch.library.custom_op("fastdit::qk_norm_rope_triton", mutates_args=("q", "k"))(
    _qk_norm_rope_triton_impl
)


@_qk_norm_rope_triton.register_fake
def _(q, k, q_weight, k_weight, cos, sin, style, norm, eps) -> None:
    return None


def _check(q, k, q_weight, k_weight, cos, sin, style, norm) -> None:
    op = "qk_norm_rope"
    if style not in STYLES:
        raise ValueError(f"{op}: style={style!r} is not one of {', '.join(STYLES)}")
    if norm not in NORMS:
        raise ValueError(f"{op}: norm={norm!r} is not one of {', '.join(NORMS)}")
    if q.dim() != 4:
        raise ValueError(f"{op}: q must be [B, S, H, D]; got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"{op}: k shape {tuple(k.shape)} must equal q's {tuple(q.shape)}")
    batch, seq, heads, head_dim = q.shape
    if head_dim % 2:
        raise ValueError(f"{op}: head dim {head_dim} must be even (rotated pairs)")
    for name, t in (("k", k), ("cos", cos), ("sin", sin), ("q_weight", q_weight), ("k_weight", k_weight)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device}, q on {q.device}; they must share a device")
    if k.dtype != q.dtype:
        raise ValueError(f"{op}: k dtype {k.dtype} must equal q's {q.dtype}")
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError(f"{op}: q and k need a contiguous last dim; got strides {q.stride()}, {k.stride()}")
    for name, t in (("cos", cos), ("sin", sin)):
        if tuple(t.shape) != (seq, head_dim // 2):
            raise ValueError(f"{op}: {name} shape {tuple(t.shape)} must be [S, D/2] = {(seq, head_dim // 2)}")
    want = (heads * head_dim,) if norm == "across_heads" else (head_dim,)
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w is not None and norm != "none" and tuple(w.shape) != want:
            raise ValueError(f"{op}: {name} shape {tuple(w.shape)} must be {list(want)} for norm={norm!r}")


def _cuda_reason(q, k, q_weight, k_weight) -> str | None:
    reason = lib.cuda_common_reason(q)
    if reason is not None:
        return reason
    batch, seq, heads, head_dim = q.shape
    if head_dim not in HEAD_DIMS_CUDA or heads * head_dim > 8192:
        return f"head dim {head_dim} is not one of {HEAD_DIMS_CUDA} or heads * head dim exceeds 8192"
    if batch * seq >= 2**31:  # the kernel indexes tokens with 32-bit arithmetic (csrc/api/rope.cu checks)
        return f"B * S = {batch * seq} tokens exceeds the kernel's 2^31 - 1"
    for name, t in (("q", q), ("k", k)):
        packed = t.stride(2) == head_dim and (batch == 1 or seq == 1 or t.stride(0) == seq * t.stride(1))
        if not packed or t.stride(1) % 8 or t.stride(0) % 8 or not lib.offset_aligned16(t):
            return f"{name} strides {t.stride()} are not [B, S, H, D] with packed heads and a uniform token stride"
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w is not None and (w.dtype != q.dtype or not w.is_contiguous()):
            return f"{name} ({w.dtype}) must be contiguous and of q's dtype {q.dtype}"
    return None


def supports_cuda(q: torch.Tensor, k: torch.Tensor, q_weight=None, k_weight=None) -> bool:
    return _cuda_reason(q, k, q_weight, k_weight) is None


def supports_triton(q: torch.Tensor, k: torch.Tensor | None = None) -> bool:
    return lib.triton_common_reason(q) is None and q.shape[-1] in (16, 32, 64, 128, 256)


def qk_norm_rope(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    style: str = "interleaved",
    norm: str = "per_head",
    eps: float = 1e-6,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalizes and rotates q and k [B, S, H, D] IN PLACE and returns them (formulas: module docstring)."""
    _check(q, k, q_weight, k_weight, cos, sin, style, norm)
    triton_reason = None if supports_triton(q, k) else "triton not runnable here or head dim not a power of 2 in [16, 256]"
    chosen = lib.resolve_backend("qk_norm_rope", backend, _cuda_reason(q, k, q_weight, k_weight), triton_reason)
    if chosen == "cuda":
        run = lib.eager_or_op(_qk_norm_rope_cuda, _qk_norm_rope_cuda_impl)
        run(q, k, q_weight, k_weight, cos, sin, style, norm, eps)
    elif chosen == "triton":
        run = lib.eager_or_op(_qk_norm_rope_triton, _qk_norm_rope_triton_impl)
        run(q, k, q_weight, k_weight, cos, sin, style, norm, eps)
    else:
        qk_norm_rope_ref(q, k, q_weight, k_weight, cos, sin, style, norm, eps)
    return q, k
