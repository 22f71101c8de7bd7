"""layers/embeddings.py: FLUX conditioning embeddings against diffusers with the same weights."""

from __future__ import annotations

import pytest
import torch

from fastdit.layers.embeddings import CombinedTimestepGuidanceTextProjEmbeddings
from fastdit.loader.weights import load_weights

embeddings = pytest.importorskip("diffusers.models.embeddings")


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_equal_diffusers(guidance_embeds):
    torch.manual_seed(0)
    cls = (embeddings.CombinedTimestepGuidanceTextProjEmbeddings if guidance_embeds
           else embeddings.CombinedTimestepTextProjEmbeddings)
    ref = cls(embedding_dim=48, pooled_projection_dim=20)
    ours = CombinedTimestepGuidanceTextProjEmbeddings(48, 20, guidance_embeds)
    load_weights(ours, ref.state_dict(), "time_text_embed")  # strict: names equal diffusers'
    t = torch.tensor([0.0, 1.0, 999.0, 437.5])
    g = torch.tensor([1000.0, 3500.0, 0.0, 4000.0])
    pooled = torch.randn(4, 20)
    with torch.no_grad():
        expected = ref(t, g, pooled) if guidance_embeds else ref(t, pooled)
        got = ours(t, g if guidance_embeds else None, pooled)
    assert got.shape == (4, 48)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_guidance_presence_must_match():
    with pytest.raises(ValueError, match="guidance=a tensor but the model has no guidance embedder"):
        CombinedTimestepGuidanceTextProjEmbeddings(8, 4, False)(torch.ones(1), torch.ones(1), torch.ones(1, 4))
