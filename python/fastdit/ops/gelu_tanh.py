"""gelu_tanh: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), fp32 math."""

from __future__ import annotations

import torch


def gelu_tanh_ref(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x.float(), approximate="tanh").to(x.dtype)


def gelu_tanh(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    return gelu_tanh_ref(x)
