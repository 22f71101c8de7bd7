"""attention_fwd: non-causal softmax attention over [B, S, H, D] tensors, with optional per-batch key
lengths and the log-sum-exp:

    out[b, i, h] = sum_j p_ij v[b, j, h],  p_ij = softmax_j(scale * q[b, i, h] . k[b, j, h]),  j < seqlens_k[b]
    lse[b, h, i] = log sum_j exp(scale * q[b, i, h] . k[b, j, h])      # fp32 [B, H, Sq]; -inf with no keys

q: [B, Sq, H, D]; k, v: [B, Sk, H, D] (Sq may differ from Sk); out: [B, Sq, H, D] in q's dtype.
Backends: "cuda" (our sm90 TMA/wgmma kernel, csrc/attention), "triton" (FA2-class, triton_kernels/attention.py),
"torch" (attention_ref, fp32 math). "auto" picks cuda > triton > torch by the supports_* predicates.
Layers choose among whole attention libraries in fastdit.layers.attention; this module is one op.
"""

from __future__ import annotations

import contextlib
import ctypes
import math

import torch

from fastdit.ops import _library as _lib

BACKENDS = _lib.BACKENDS


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens_k: torch.Tensor | None = None,
                  softmax_scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference in fp32 math. Returns (out [B, Sq, H, D] in q's dtype, lse [B, H, Sq] fp32)."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    s = torch.einsum("bihd,bjhd->bhij", q.float(), k.float()) * scale  # [B, H, Sq, Sk]
    if seqlens_k is not None:
        keep = torch.arange(k.shape[1], device=q.device)[None, :] < seqlens_k.to(q.device).long()[:, None]  # [B, Sk]
        s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [B, H, Sq]
    p = torch.exp(s - torch.where(torch.isinf(lse), 0.0, lse)[..., None])
    out = torch.einsum("bhij,bjhd->bihd", p, v.float())
    return out.to(q.dtype), lse


# The CUDA library ------------------------------------------------------------------------------------------

class _FwdArgs(ctypes.Structure):
    """Mirror of FastditAttentionFwdArgs (csrc/api/attention.cu); field order is the ABI."""

    _fields_ = [
        ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p), ("out", ctypes.c_void_p),
        ("lse", ctypes.c_void_p), ("seqlens_k", ctypes.c_void_p), ("dtype", ctypes.c_int32),
        ("batch", ctypes.c_int32), ("seqlen_q", ctypes.c_int32), ("seqlen_k", ctypes.c_int32),
        ("num_heads", ctypes.c_int32), ("head_dim", ctypes.c_int32),
        ("q_strides", ctypes.c_int64 * 3), ("k_strides", ctypes.c_int64 * 3),
        ("v_strides", ctypes.c_int64 * 3), ("o_strides", ctypes.c_int64 * 3),
        ("softmax_scale", ctypes.c_float),
        ("workspace", ctypes.c_void_p), ("workspace_flags", ctypes.c_void_p), ("workspace_floats", ctypes.c_int64),
    ]


def _library():
    """The kernel library when it is loaded and carries the attention export, else None."""
    lib = _lib.library()
    return lib if lib is not None and hasattr(lib, "fastdit_attention_fwd") else None


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return (t.stride(0), t.stride(1), t.stride(2))


# The sm90 kernel's split tail (csrc/attention/attention_fwd_sm90_tile_scheduler.cuh): when the last wave of
# query tiles would leave SMs idle, every SM takes an equal share of those tiles' key blocks and the partial
# results are merged by LSE. It needs fp32 scratch and int flags that are zero at launch; every launch leaves
# its flags zero again, so one buffer per device, allocated and zeroed eagerly once, serves every later call
# (no memset per call), CUDA-graph captures included. Calls on one device must therefore not run at the same
# time on two streams (fastdit's pipelines and server run one stream per device). A capture that finds no
# buffer yet allocates its own from the graph's pool, zeroed by a memset the graph records. The scratch a call
# shape needs comes from the library, cached per shape.
_tail_split_enabled = True
_workspace_sizes: dict[tuple, tuple[int, int]] = {}
_workspaces: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
_outgrown: list[tuple[torch.Tensor, torch.Tensor]] = []  # kept alive: graphs captured on them still use them


@contextlib.contextmanager
def tail_split(enabled: bool):
    """Within the block, the sm90 kernel splits its last wave (True, the default) or not (False): the same
    result up to fp32 rounding of the merge; bench/attention.py and the tests compare the two."""
    global _tail_split_enabled
    previous, _tail_split_enabled = _tail_split_enabled, bool(enabled)
    try:
        yield
    finally:
        _tail_split_enabled = previous


def _workspace_size(a: _FwdArgs, device: torch.device) -> tuple[int, int]:
    """(fp32 floats, int32 flags) the launch `a` describes needs for its split tail; (0, 0) for none."""
    key = (device.index, a.dtype, a.batch, a.seqlen_q, a.seqlen_k, a.num_heads, a.head_dim)
    sizes = _workspace_sizes.get(key)
    if sizes is None:
        lib = _library()
        if not hasattr(lib, "fastdit_attention_fwd_workspace"):
            return 0, 0
        floats, flags = ctypes.c_int64(0), ctypes.c_int32(0)
        argtypes = (ctypes.POINTER(_FwdArgs), ctypes.c_int, ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int32))
        fn = _lib.export("fastdit_attention_fwd_workspace", argtypes)
        status = fn(ctypes.byref(a), device.index, ctypes.byref(floats), ctypes.byref(flags))
        _lib.check("attention_fwd_workspace", status)
        sizes = _workspace_sizes[key] = (floats.value, flags.value)
    return sizes


def _workspace(a: _FwdArgs, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(fp32 scratch, int32 flags, zero between launches) for the split tail of the launch `a` describes, or
    (None, None) when it does not split. The device's buffer (see above), grown eagerly when a call needs more."""
    if not _tail_split_enabled or a.seqlens_k is not None:
        return None, None
    floats, flags = _workspace_size(a, device)
    if floats == 0:
        return None, None
    held = _workspaces.get(device.index)
    if held is not None and held[0].numel() >= floats and held[1].numel() >= flags:
        return held
    fresh = (torch.empty(floats, dtype=torch.float32, device=device),
             torch.zeros(flags, dtype=torch.int32, device=device))
    if not torch.cuda.is_current_stream_capturing():  # a capture's buffer stays its own
        if held is not None:
            _outgrown.append(held)
        _workspaces[device.index] = fresh
    return fresh


def _launch_cuda(q, k, v, out, lse, seqlens_k, scale: float) -> None:
    a = _FwdArgs(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
                 lse.data_ptr() if lse is not None else None,
                 seqlens_k.data_ptr() if seqlens_k is not None else None, _lib.DTYPE_CODES[q.dtype],
                 q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.shape[3],
                 (ctypes.c_int64 * 3)(*_strides(q)), (ctypes.c_int64 * 3)(*_strides(k)),
                 (ctypes.c_int64 * 3)(*_strides(v)), (ctypes.c_int64 * 3)(*_strides(out)), scale)
    workspace, flags = _workspace(a, q.device)
    if workspace is not None:
        a.workspace, a.workspace_flags, a.workspace_floats = workspace.data_ptr(), flags.data_ptr(), workspace.numel()
    fn = _lib.export("fastdit_attention_fwd", (ctypes.POINTER(_FwdArgs), ctypes.c_int, ctypes.c_void_p))
    _lib.check("attention_fwd", fn(ctypes.byref(a), q.device.index, _lib.stream_of(q)))


# Predicates -------------------------------------------------------------------------------------------------

# csrc/CMakeLists.txt leaves api/attention.cu and csrc/attention/ out when it finds no CUTLASS headers (pip's
# isolated build): the library then loads, with every other export, but without fastdit_attention_fwd.
NO_CUTLASS = ("the kernel library was built without CUTLASS headers, so it has no sm90 attention kernel "
              "(pip install nvidia-cutlass, then pip install --no-build-isolation .)")


def library_reason() -> str | None:
    """Why the kernel library cannot give the sm90 kernel (not loaded; built without CUTLASS), or None."""
    lib = _lib.library()
    if lib is None:
        return f"the kernel library is {_lib.library_status()}"
    return None if hasattr(lib, "fastdit_attention_fwd") else NO_CUTLASS


def supports_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Our sm90 kernel: a Hopper GPU, bf16/fp16, head dim 64 or 128, 16-byte aligned rows, the library built."""
    if not q.is_cuda or torch.version.hip is not None or torch.cuda.get_device_capability(q.device)[0] != 9:
        return False
    if q.dtype not in _lib.HALF_DTYPES or q.shape[-1] not in (64, 128):
        return False
    aligned = all(t.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in _strides(t)) for t in (q, k, v))
    return aligned and _library() is not None and _lib.cuda_ready(q.device.index)


def cuda_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """None when our sm90 kernel can take this call, else every reason it cannot, in one line."""
    if supports_cuda(q, k, v):
        return None
    reasons = []
    if not q.is_cuda or torch.version.hip is not None:
        reasons.append(f"q is on {q.device}, not an NVIDIA GPU")
    elif torch.cuda.get_device_capability(q.device)[0] != 9:
        major, minor = torch.cuda.get_device_capability(q.device)
        reasons.append(f"{torch.cuda.get_device_name(q.device)} is sm{major}{minor}, the kernel is sm90 only")
    if q.dtype not in _lib.HALF_DTYPES:
        reasons.append(f"dtype {q.dtype} is not bfloat16 or float16")
    if q.shape[-1] not in (64, 128):
        reasons.append(f"head dim {q.shape[-1]} is not 64 or 128")
    if not all(t.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in _strides(t)) for t in (q, k, v)):
        reasons.append("q, k, v must start 16-byte aligned with batch/row/head strides a multiple of 8 elements")
    missing = library_reason()
    if missing is not None:
        reasons.append(missing)
    elif q.is_cuda and not _lib.cuda_ready(q.device.index):
        reasons.append(f"the kernel library has no image for this GPU (built for {_lib.compiled_archs()})")
    return "; ".join(reasons)


def supports_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """The Triton kernel: a CUDA/ROCm GPU (or the CPU under TRITON_INTERPRET=1), fp16/bf16/fp32, D <= 256."""
    return triton_reason(q) is None


def triton_reason(q: torch.Tensor) -> str | None:
    """None when the Triton kernel can take q's call, else why not (one line)."""
    reasons = []
    if not _lib.triton_ready(q.device):
        reasons.append(f"triton is not importable or q is on {q.device} (the CPU needs TRITON_INTERPRET=1)")
    if q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        reasons.append(f"dtype {q.dtype} is not bfloat16, float16 or float32")
    if q.shape[-1] > 256:
        reasons.append(f"head dim {q.shape[-1]} exceeds 256")
    return "; ".join(reasons) if reasons else None


# The op -----------------------------------------------------------------------------------------------------

def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens_k: torch.Tensor | None, backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"attention_fwd: backend={backend!r} is not one of {BACKENDS}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention_fwd: q, k, v must be [B, S, H, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"attention_fwd: k {tuple(k.shape)} and v {tuple(v.shape)} must be [B, Sk, H, D] with "
                         f"B, H, D of q {tuple(q.shape)}")
    if q.shape[1] == 0 or k.shape[1] == 0:
        raise ValueError(f"attention_fwd: sequence lengths must be >= 1, got Sq={q.shape[1]}, Sk={k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"attention_fwd: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention_fwd: q, k, v devices differ ({q.device}, {k.device}, {v.device})")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("attention_fwd: q, k, v need a contiguous last dim (stride(-1) == 1)")
    if seqlens_k is not None and (seqlens_k.shape != (q.shape[0],) or seqlens_k.dtype != torch.int32
                                  or seqlens_k.device != q.device):
        raise ValueError(f"attention_fwd: seqlens_k must be int32 [B={q.shape[0]}] on {q.device}, got "
                         f"{seqlens_k.dtype} {tuple(seqlens_k.shape)} on {seqlens_k.device}")


def _resolve(q, k, v, backend: str) -> str:
    """The backend to run: cuda > triton > torch for "auto"; a forced one that cannot run raises ValueError
    saying why and which backend would."""
    if backend == "torch":
        return backend
    if backend in ("auto", "cuda") and supports_cuda(q, k, v):
        return "cuda"
    fallback = "triton" if supports_triton(q, k, v) else "torch"
    if backend == "auto":
        return fallback
    if backend == "cuda":
        raise ValueError(f"attention_fwd: backend='cuda' cannot run this call: {cuda_reason(q, k, v)} "
                         f"(backend={fallback!r} would)")
    if backend == "triton" and fallback != "triton":
        raise ValueError(f"attention_fwd: backend='triton' cannot run this call: {triton_reason(q)} "
                         "(backend='torch' would)")
    return backend


def _run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens_k: torch.Tensor | None, softmax_scale: float,
         return_lse: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate out (and lse) and run the resolved backend; lse is an empty tensor unless return_lse."""
    if backend == "torch":
        out, lse = attention_ref(q, k, v, seqlens_k, softmax_scale)
        return out.contiguous(), lse.contiguous() if return_lse else lse.new_empty(0)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((q.shape[0], q.shape[2], q.shape[1]) if return_lse else (0,), dtype=torch.float32, device=q.device)
    if backend == "cuda":
        _launch_cuda(q, k, v, out, lse if return_lse else None, seqlens_k, softmax_scale)
    else:
        from fastdit.triton_kernels.attention import attention_fwd as triton_attention_fwd

        triton_attention_fwd(q, k, v, out, lse if return_lse else None, seqlens_k, softmax_scale)
    return out, lse


@torch.library.custom_op("fastdit::attention_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens_k: torch.Tensor | None,
                      softmax_scale: float, return_lse: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _run(q, k, v, seqlens_k, softmax_scale, return_lse, backend)


@_attention_fwd_op.register_fake
def _(q, k, v, seqlens_k, softmax_scale, return_lse, backend):
    lse_shape = (q.shape[0], q.shape[2], q.shape[1]) if return_lse else (0,)
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=torch.float32)


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens_k: torch.Tensor | None = None,
                  softmax_scale: float | None = None, return_lse: bool = False, backend: str = "auto"):
    """out = softmax(scale q k^T) v per (batch, head); returns out, or (out, lse) with return_lse.

    q: [B, Sq, H, D]; k, v: [B, Sk, H, D] (strided views are fine, last dim contiguous); seqlens_k: int32 [B]
    keys used per batch (values in [0, Sk]) or None -- keys past the length get zero weight but must hold
    finite values (the CUDA kernel multiplies them by 0); softmax_scale defaults to 1/sqrt(D).
    """
    _check(q, k, v, seqlens_k, backend)
    chosen = _resolve(q, k, v, backend)
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    # The custom op is what torch.compile sees; eager calls (CUDA graph capture included) skip its dispatcher:
    # on the H100 a call cost 80.7 us of host time through it vs 19.8 us for the bare launch
    # (bench/attention.py, 2026-11-24; torch SDPA cuDNN: 46.4 us).
    run = _attention_fwd_op if torch.compiler.is_compiling() else _run
    out, lse = run(q, k, v, seqlens_k, scale, return_lse, chosen)
    return (out, lse) if return_lse else out
