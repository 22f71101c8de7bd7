"""comm_pack (out[n, q, p, :] = x[n, p, q, :]) against torch: odd shapes, strided and broadcast views,
every dtype; Triton on the CPU interpreter (TRITON_INTERPRET=1 only inside its fixture), CUDA on a GPU."""

from __future__ import annotations

import importlib

import pytest
import torch

from fastdit.ops.comm_pack import comm_pack, comm_pack_ref

# (N, P, Q, R): odd sizes, a single row, a single unit, a long row
SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (1, 19, 4, 111), (3, 2, 7, 500), (1, 4, 2, 989), (2, 1, 3, 8)]


def _poisoned(shape, dtype, device) -> torch.Tensor:
    fill = float("nan") if dtype.is_floating_point else 123
    return torch.full(shape, fill, dtype=dtype, device=device)


def _views(shape, dtype, device, gen):
    """(x, out) pairs: contiguous; x a strided slice of a wider tensor; out a slice of a wider buffer;
    x broadcast along Q (stride 0), as gather_heads sends replicated text rows."""
    n, p, q, r = shape
    yield torch.randn(shape, generator=gen).to(dtype).to(device), _poisoned((n, q, p, r), dtype, device)
    wide = torch.randn(n, p, q + 2, r + 3, generator=gen).to(dtype).to(device)
    yield wide[:, :, 1 : q + 1, 2 : r + 2], _poisoned((n, q, p, r), dtype, device)
    buf = _poisoned((n, q, p + 1, r + 5), dtype, device)
    yield torch.randn(shape, generator=gen).to(dtype).to(device), buf[:, :, 1:, :r]
    row = torch.randn(n, p, 1, r, generator=gen).to(dtype).to(device)
    yield row.expand(n, p, q, r), _poisoned((n, q, p, r), dtype, device)


def _check_backend(backend: str, device: str, dtypes) -> None:
    gen = torch.Generator().manual_seed(0)
    for dtype in dtypes:
        for shape in SHAPES:
            for x, out in _views(shape, dtype, device, gen):
                got = comm_pack(x, out, backend=backend)
                assert got is out
                want = comm_pack_ref(x, torch.empty_like(out))
                assert torch.equal(out, want), (backend, dtype, shape, x.stride(), out.stride())


def test_torch_backend_writes_into_strided_out():
    _check_backend("torch", "cpu", (torch.float32, torch.bfloat16))


@pytest.fixture
def triton_interpreted(monkeypatch):
    """The Triton module re-decorated under TRITON_INTERPRET=1, restored afterwards."""
    pytest.importorskip("triton")
    import fastdit.triton_kernels.comm as triton_comm

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield importlib.reload(triton_comm)
    monkeypatch.delenv("TRITON_INTERPRET")
    importlib.reload(triton_comm)


def test_triton_matches_torch_on_cpu_interpreter(triton_interpreted):
    _check_backend("triton", "cpu", (torch.float32, torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backends_match_torch(backend):
    _check_backend(backend, "cuda", (torch.bfloat16, torch.float32, torch.float16, torch.uint8))


@pytest.mark.gpu
def test_cuda_unaligned_offsets_fall_back_to_narrow_units():
    x = torch.randn(2, 3, 5, 9, device="cuda", dtype=torch.bfloat16)[..., 1:]  # 2-byte aligned start
    out = torch.full((2, 5, 3, 8), float("nan"), device="cuda", dtype=torch.bfloat16)
    assert torch.equal(comm_pack(x, out, backend="cuda"), x.transpose(1, 2))


@pytest.mark.parametrize(
    "x_shape, out_shape, match",
    [
        ((2, 3, 4), (2, 4, 3), "must be 4-D"),
        ((2, 3, 4, 5), (2, 3, 4, 5), r"must be \(N, Q, P, R\) = \(2, 4, 3, 5\)"),
    ],
)
def test_bad_shapes_are_named(x_shape, out_shape, match):
    with pytest.raises(ValueError, match=match):
        comm_pack(torch.randn(x_shape), torch.empty(out_shape))


def test_bad_dtype_and_layout_are_named():
    with pytest.raises(ValueError, match="must share dtype"):
        comm_pack(torch.randn(1, 2, 3, 4), torch.empty(1, 3, 2, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="last dim must be contiguous"):
        comm_pack(torch.randn(1, 2, 3, 8)[..., ::2], torch.empty(1, 3, 2, 4))
    with pytest.raises(ValueError, match="backend='cuda' cannot run this call"):
        comm_pack(torch.randn(1, 2, 3, 4), torch.empty(1, 3, 2, 4), backend="cuda")
