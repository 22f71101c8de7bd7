"""fastdit.ops: one module per op. Each has a torch reference (`<op>_ref`, the truth), and dispatches
cuda > triton > torch under `backend="auto"`; `backend=` forces one."""

from fastdit.ops.add_bias_residual import add_bias_residual
from fastdit.ops.gated_residual_norm_modulate import gated_residual_norm_modulate
from fastdit.ops.gelu_tanh import gelu_tanh
from fastdit.ops.layer_norm_modulate import layer_norm_modulate
from fastdit.ops.qk_norm_rope import qk_norm_rope
from fastdit.ops.rms_norm import rms_norm
from fastdit.ops.rms_norm_silu import rms_norm_silu
from fastdit.ops.timestep_embedding import timestep_embedding

__all__ = [
    "add_bias_residual",
    "gated_residual_norm_modulate",
    "gelu_tanh",
    "layer_norm_modulate",
    "qk_norm_rope",
    "rms_norm",
    "rms_norm_silu",
    "timestep_embedding",
]
