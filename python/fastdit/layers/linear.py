"""Linear layers with fused epilogues.

    linear_gelu_tanh(x, weight, bias) = gelu_tanh(x @ weight^T + bias)     x [..., K], weight [N, K], bias [N]

On a CUDA device (backend "auto" or "cuda") this is ONE GEMM: torch._addmm_activation(bias, x, weight^T,
use_gelu=True) runs cuBLASLt with the GELU_BIAS epilogue, which adds the bias and applies the tanh-approximated
GELU to the fp32 accumulator before the single rounding to x's dtype. The [.., N] pre-activation is never
written and read back (FLUX's MLP: N = 4D = 12288; at 1024^2 that is 2 x 113 MB per GEMM, 76 GEMMs a step).
CUDA's _addmm_activation is the tanh approximation on every path: cuBLASLt's epilogue, and torch's fallback
(a plain GEMM + gelu_(approximate="tanh")) where cuBLASLt does not apply (a single row, say); its
decomposition under torch.compile is addmm + gelu(approximate="tanh") on CUDA too.
On the CPU _addmm_activation applies the EXACT (erf) GELU instead, so every other device and backend runs
F.linear and then fastdit.ops.gelu_tanh with the given backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdit.ops import gelu_tanh

_EPILOGUE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_BACKENDS = ("auto", "cuda", "triton", "torch")


def uses_gelu_epilogue(x: torch.Tensor, backend: str = "auto") -> bool:
    """Whether linear_gelu_tanh(x, ...) runs as one GEMM with cuBLASLt's GELU epilogue."""
    return x.device.type == "cuda" and backend in ("auto", "cuda") and x.dtype in _EPILOGUE_DTYPES


def linear_gelu_tanh(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """gelu_tanh(x @ weight^T + bias): x [..., K], weight [N, K], bias [N] -> [..., N] in x's dtype.

    backend: "auto" | "cuda" use the GEMM epilogue on a CUDA device (module docstring); otherwise, and for
    "triton" | "torch", F.linear and then fastdit.ops.gelu_tanh with that backend."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed: use one of {', '.join(_BACKENDS)}")
    if weight.dim() != 2 or bias is None or bias.shape != (weight.shape[0],) or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear_gelu_tanh shapes x {tuple(x.shape)}, weight {tuple(weight.shape)}, bias "
            f"{None if bias is None else tuple(bias.shape)} are not allowed: need x [..., K], weight [N, K], bias [N]"
        )
    if not uses_gelu_epilogue(x, backend):
        return gelu_tanh(F.linear(x, weight, bias), backend=backend)
    out = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])
