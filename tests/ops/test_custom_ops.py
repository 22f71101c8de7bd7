"""The custom ops torch.compile traces (fastdit::<op>_cuda and fastdit::<op>_triton for every fused op):
each is registered with a fake implementation whose outputs have the real op's shapes, dtypes and device,
and the in-place qk_norm_rope declares that it writes q and k. Runs on the CPU with fake CUDA tensors
(FakeTensorMode), so a wrong fake is caught before a GPU sees it."""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fastdit.ops  # noqa: F401  (registers the custom ops)

B, S, D, H, HD = 2, 19, 64, 3, 64


def _t(*shape, dtype=torch.bfloat16):
    return torch.empty(*shape, dtype=dtype, device="cuda")


def _expect_like(x):
    return [(tuple(x.shape), x.dtype)]


CASES = {  # op: (arguments, expected [(shape, dtype)] of the outputs)
    "rms_norm": (lambda: (_t(B, S, D), _t(D), 1e-6), lambda a: _expect_like(a[0])),
    "layer_norm_modulate": (
        lambda: (_t(B, S, D), _t(B, 6 * D).chunk(6, dim=1)[0], _t(B, S, D), 1e-6), lambda a: _expect_like(a[0])
    ),
    "gated_residual_norm_modulate": (
        lambda: (_t(B, S, D), _t(B, S, D), _t(B, D), _t(B, D), _t(B, D), 1e-6), lambda a: 2 * _expect_like(a[1])
    ),
    "gelu_tanh": (lambda: (_t(B, S, 4 * D),), lambda a: _expect_like(a[0])),
    "timestep_embedding": (
        lambda: (_t(B, dtype=torch.float32), 33, True, 0.0, 1.0, 10000.0), lambda a: [((B, 33), torch.float32)]
    ),
}


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("op", list(CASES))
def test_fake_outputs_match_the_op(op, backend):
    make_args, expected = CASES[op]
    with FakeTensorMode():
        args = make_args()
        out = getattr(torch.ops.fastdit, f"{op}_{backend}")(*args)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        assert [(tuple(o.shape), o.dtype) for o in outs] == expected(args)
        assert all(o.device.type == "cuda" for o in outs)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_qk_norm_rope_fake_is_in_place_and_declares_its_writes(backend):
    op = getattr(torch.ops.fastdit, f"qk_norm_rope_{backend}")
    written = [a.name for a in op.default._schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    assert written == ["q", "k"]
    with FakeTensorMode():
        q, k = _t(B, S, H, HD), _t(B, S, H, HD)
        cos, sin = _t(S, HD // 2, dtype=torch.float32), _t(S, HD // 2, dtype=torch.float32)
        assert op(q, k, _t(HD), _t(HD), cos, sin, "interleaved", "per_head", 1e-6) is None
