"""comm_pack: out[n, q, p, :] = x[n, p, q, :] — the pack/unpack copy on both sides of a Ulysses all-to-all.

x [N, P, Q, R] and out [N, Q, P, R] are strided views (any strides, 0 allowed on x for a broadcast; the
last dim contiguous) of one dtype and device. Each all-to-all in fastdit/distributed/ulysses.py moves one
contiguous buffer; this op fills it from the activations and drains the received one, one pass each.
Pure data movement: every backend is bit-exact, for every dtype (the CUDA kernel copies opaque 16..1-byte
units, csrc/comm/comm_pack.cuh).
"""

from __future__ import annotations

import ctypes

import torch

from fastdit.ops import _library

_ARGTYPES = (  # a tuple: _library.export caches by its arguments
    ctypes.c_void_p, ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(ctypes.c_int64),
    ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
)


def comm_pack_ref(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Reference: out <- x.transpose(1, 2). Returns out."""
    out.copy_(x.transpose(1, 2))
    return out


def _check(x: torch.Tensor, out: torch.Tensor) -> None:
    if x.dim() != 4 or out.dim() != 4:
        raise ValueError(f"comm_pack: x and out must be 4-D [N, P, Q, R], [N, Q, P, R]; got {tuple(x.shape)}, {tuple(out.shape)}")
    n, p, q, r = x.shape
    if tuple(out.shape) != (n, q, p, r):
        raise ValueError(f"comm_pack: out shape {tuple(out.shape)} must be (N, Q, P, R) = {(n, q, p, r)} for x {tuple(x.shape)}")
    if x.dtype != out.dtype or x.device != out.device:
        raise ValueError(f"comm_pack: x ({x.dtype}, {x.device}) and out ({out.dtype}, {out.device}) must share dtype and device")
    if r > 1 and (x.stride(3) != 1 or out.stride(3) != 1):
        raise ValueError(f"comm_pack: the last dim must be contiguous; strides x {x.stride()}, out {out.stride()}")
    if min(x.stride()) < 0 or min(out.stride()) < 0:
        raise ValueError(f"comm_pack: negative strides are not supported; x {x.stride()}, out {out.stride()}")


def supports_cuda(x: torch.Tensor) -> str | None:
    """None when the CUDA kernel can run on x, else why not."""
    if x.device.type != "cuda":
        return f"x is on {x.device}, not a CUDA device"
    if x.element_size() not in (1, 2, 4, 8):
        return f"element size {x.element_size()} is not 1, 2, 4 or 8 bytes"
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if not _library.cuda_ready(index):
        return "the kernel library is not loaded or has no build for this GPU"
    return None


def supports_triton(x: torch.Tensor) -> str | None:
    """None when the Triton kernel can run on x (CUDA, or CPU under TRITON_INTERPRET=1), else why not."""
    if not _library.triton_ready(x.device):
        return f"triton is not importable or x is on {x.device} (CPU needs TRITON_INTERPRET=1)"
    return None


def _launch_cuda(x: torch.Tensor, out: torch.Tensor) -> None:
    fn = _library.export("fastdit_comm_pack", _ARGTYPES)
    shape = (ctypes.c_int64 * 4)(*x.shape)
    x_strides = (ctypes.c_int64 * 3)(*x.stride()[:3])
    out_strides = (ctypes.c_int64 * 3)(*out.stride()[:3])
    status = fn(
        _library.ptr(x), _library.ptr(out), shape, x_strides, out_strides,
        x.element_size(), x.device.index, _library.stream_of(x),
    )
    _library.check("comm_pack", status)


@torch.library.custom_op("fastdit::comm_pack", mutates_args=("out",))
def _comm_pack_op(x: torch.Tensor, out: torch.Tensor, backend: str) -> None:
    if backend == "cuda":
        _launch_cuda(x, out)
    elif backend == "triton":
        from fastdit.triton_kernels import comm as triton_comm

        triton_comm.comm_pack(x, out)
    else:
        comm_pack_ref(x, out)


@_comm_pack_op.register_fake
def _(x: torch.Tensor, out: torch.Tensor, backend: str) -> None:
    return None


def comm_pack(x: torch.Tensor, out: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """out[n, q, p, :] = x[n, p, q, :]; x [N, P, Q, R], out [N, Q, P, R]. Writes `out` and returns it."""
    _check(x, out)
    resolved = _library.resolve_backend("comm_pack", backend, supports_cuda(x), supports_triton(x))
    _comm_pack_op(x, out, resolved)
    return out
