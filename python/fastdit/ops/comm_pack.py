"""comm_pack: out[n, q, p, :] = x[n, p, q, :] — the pack/unpack copy on both sides of a Ulysses all-to-all.

x [N, P, Q, R] and out [N, Q, P, R] are strided views (any strides, even 0 for a broadcast input; the
last dim contiguous) of one dtype. Each all-to-all in fastdit/distributed/ulysses.py moves one contiguous
buffer; this op fills it from the activations and scatters the received buffer back, in one pass each.
Pure data movement: every backend is bit-exact.
"""

from __future__ import annotations

import torch

_BACKENDS = ("auto", "cuda", "triton", "torch")


def comm_pack_ref(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Reference: out <- x.transpose(1, 2). Returns out."""
    out.copy_(x.transpose(1, 2))
    return out


def _check(x: torch.Tensor, out: torch.Tensor) -> None:
    if x.dim() != 4 or out.dim() != 4:
        raise ValueError(f"comm_pack: x and out must be 4-D [N, P, Q, R] and [N, Q, P, R]; got {tuple(x.shape)}, {tuple(out.shape)}")
    n, p, q, r = x.shape
    if tuple(out.shape) != (n, q, p, r):
        raise ValueError(f"comm_pack: out shape {tuple(out.shape)} must be (N, Q, P, R) = {(n, q, p, r)} for x {tuple(x.shape)}")
    if x.dtype != out.dtype or x.device != out.device:
        raise ValueError(f"comm_pack: x ({x.dtype}, {x.device}) and out ({out.dtype}, {out.device}) must share dtype and device")
    if r > 1 and (x.stride(3) != 1 or out.stride(3) != 1):
        raise ValueError(f"comm_pack: the last dim must be contiguous; strides x {x.stride()}, out {out.stride()}")


def supports_triton(x: torch.Tensor) -> bool:
    if not x.is_cuda:
        return False
    try:
        import triton  # noqa: F401  (an optional dependency)
    except ImportError:
        return False
    return True


def supports_cuda(x: torch.Tensor) -> bool:
    return False


def _resolve(x: torch.Tensor, backend: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"comm_pack: backend={backend!r}; allowed: {', '.join(_BACKENDS)}")
    if backend != "auto":
        if backend == "cuda" and not supports_cuda(x):
            raise ValueError(f"comm_pack: backend='cuda' needs a CUDA tensor and the kernel library (x on {x.device})")
        if backend == "triton" and not (supports_triton(x) or x.device.type == "cpu"):
            raise ValueError(f"comm_pack: backend='triton' needs triton and a CUDA tensor (or TRITON_INTERPRET=1 on CPU)")
        return backend
    if supports_cuda(x):
        return "cuda"
    if supports_triton(x):
        return "triton"
    return "torch"


@torch.library.custom_op("fastdit::comm_pack", mutates_args=("out",))
def _comm_pack_op(x: torch.Tensor, out: torch.Tensor, backend: str) -> None:
    if backend == "triton":
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
    _comm_pack_op(x, out, _resolve(x, backend))
    return out
