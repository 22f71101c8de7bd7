"""CLIP-L text encoder as FLUX uses it: the pooled prompt embedding, from transformers' CLIPTextModel.

    enc = CLIPTextEncoder.from_pretrained(checkpoint, torch.bfloat16, "cuda")   # text_encoder/ + tokenizer/
    enc = CLIPTextEncoder.dummy("black-forest-labs/FLUX.1-dev", torch.bfloat16, "cuda")  # random, stand-in tokenizer
    pooled = enc.encode(["a red fox"])                                          # [B, hidden_size]

encode() is diffusers FluxPipeline._get_clip_prompt_embeds: ids padded and truncated to 77 tokens, the
pooled output (the final-layer-normed hidden state at the EOS position), in the encoder's dtype.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

from fastdit.configs.base import lookup_preset
from fastdit.models.encoders.hf_loading import EncoderWithTokenizer, dummy_encoder, load_pretrained_encoder
from fastdit.models.encoders.tokenizers import check_prompts, clip_standin_tokenizer, tokenize_to_length

# CLIPTextConfig keyword arguments of the built-in architectures. FLUX.1-dev's is openai/clip-vit-large-patch14's
# text tower as shipped in its text_encoder/config.json (eos_token_id 2 there selects the argmax pooling).
CLIP_PRESETS: dict[str, dict] = {
    "flux-tiny": dict(
        vocab_size=1000, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ),
    "black-forest-labs/FLUX.1-dev": dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ),
}


def clip_preset(name: str) -> CLIPTextConfig:
    return CLIPTextConfig(**lookup_preset(CLIP_PRESETS, name, "CLIP text encoder"))


class CLIPTextEncoder(EncoderWithTokenizer):
    """A CLIPTextModel and its tokenizer; `encode` gives FLUX's pooled prompt embedding."""

    def __init__(self, model: CLIPTextModel, tokenizer, max_length: int = 77):
        if max_length > model.config.max_position_embeddings:
            raise ValueError(
                f"CLIP max_length={max_length} exceeds max_position_embeddings={model.config.max_position_embeddings}"
            )
        super().__init__(model, tokenizer)
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls, checkpoint: str, dtype: torch.dtype, device: str | torch.device,
        subfolder: str = "text_encoder", tokenizer_subfolder: str = "tokenizer",
    ) -> "CLIPTextEncoder":
        """From a diffusers checkpoint folder: weights from `subfolder`, tokenizer from `tokenizer_subfolder`."""
        model = load_pretrained_encoder(
            CLIPTextModel, os.path.join(checkpoint, subfolder), dtype, device, subfolder
        )
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(checkpoint, tokenizer_subfolder))
        # FluxPipeline: tokenizer_max_length = tokenizer.model_max_length (77 for CLIP-L)
        return cls(model, tokenizer, max_length=tokenizer.model_max_length)

    @classmethod
    def dummy(cls, preset: str, dtype: torch.dtype, device: str | torch.device, seed: int = 0) -> "CLIPTextEncoder":
        """The preset's architecture with random weights on `device`, and the byte-level stand-in tokenizer."""
        config = clip_preset(preset)
        model = dummy_encoder(CLIPTextModel, config, dtype, device, seed)
        tokenizer = clip_standin_tokenizer(config.vocab_size, config.max_position_embeddings)
        return cls(model, tokenizer, max_length=config.max_position_embeddings)

    @torch.no_grad()
    def encode(self, prompts: str | list[str]) -> torch.Tensor:
        """prompts (B strings) -> pooled embedding [B, hidden_size] in the model's dtype, on its device."""
        prompts = check_prompts(prompts)
        ids = tokenize_to_length(self.tokenizer, prompts, self.max_length, "CLIP")  # [B, 77]
        out = self.model(ids.to(self.device), output_hidden_states=False)
        return out.pooler_output.to(self.dtype)
