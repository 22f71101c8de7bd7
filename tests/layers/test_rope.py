"""layers/rope.py against diffusers' FluxPosEmbed and apply_rotary_emb."""

from __future__ import annotations

import pytest
import torch

from fastdit.layers.rope import rope_cos_sin
from fastdit.ops.qk_norm_rope import qk_norm_rope_ref

embeddings = pytest.importorskip("diffusers.models.embeddings")
transformer_flux = pytest.importorskip("diffusers.models.transformers.transformer_flux")


def _ids(seed: int, s: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # FLUX: axis 0 is 0 (or an image index), rows and columns up to 128 at 2048 px; large values test precision
    return torch.stack([torch.randint(0, 3, (s,), generator=g), torch.randint(0, 4096, (s,), generator=g),
                        torch.randint(0, 4096, (s,), generator=g)], dim=1).float()


@pytest.mark.parametrize("axes_dim", [(16, 56, 56), (4, 6, 6)])
def test_cos_sin_equal_diffusers(axes_dim):
    ids = _ids(0, 37)
    cos, sin = rope_cos_sin(ids, axes_dim)
    ref_cos, ref_sin = transformer_flux.FluxPosEmbed(theta=10000, axes_dim=list(axes_dim))(ids)
    assert cos.shape == sin.shape == (37, sum(axes_dim) // 2) and cos.dtype == torch.float32
    # diffusers repeats each pair's angle twice (interleaved): [S, D]
    torch.testing.assert_close(cos, ref_cos[:, ::2], rtol=0, atol=0)
    torch.testing.assert_close(sin, ref_sin[:, 1::2], rtol=0, atol=0)


def test_rotation_with_our_angles_equals_apply_rotary_emb():
    ids = _ids(1, 19)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 19, 3, 32, generator=g)  # [B, S, H, D]
    cos, sin = rope_cos_sin(ids, (8, 12, 12))
    q, k = x.clone(), x.clone()
    qk_norm_rope_ref(q, k, None, None, cos, sin, style="interleaved", norm="none")
    ref = embeddings.apply_rotary_emb(x, transformer_flux.FluxPosEmbed(10000, [8, 12, 12])(ids), sequence_dim=1)
    torch.testing.assert_close(q, ref, rtol=1e-6, atol=1e-6)


def test_bad_ids_and_axes():
    with pytest.raises(ValueError, match=r"rope ids of shape \(5, 2\): must be \[S, 3\]"):
        rope_cos_sin(torch.zeros(5, 2), (4, 6, 6))
    with pytest.raises(ValueError, match=r"axes_dim=\[4, 5, 6\]: every axis width must be even"):
        rope_cos_sin(torch.zeros(5, 3), (4, 5, 6))
