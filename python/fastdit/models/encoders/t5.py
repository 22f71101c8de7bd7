"""T5-XXL encoder as FLUX uses it: the per-token prompt embedding, from transformers' T5EncoderModel.

    enc = T5TextEncoder.from_pretrained(checkpoint, torch.bfloat16, "cuda")   # text_encoder_2/ + tokenizer_2/
    enc = T5TextEncoder.dummy("black-forest-labs/FLUX.1-dev", torch.bfloat16, "cuda")  # random, stand-in tokenizer
    embeds = enc.encode(["a red fox"], max_sequence_length=512)              # [B, 512, d_model]

encode() is diffusers FluxPipeline._get_t5_prompt_embeds: ids padded and truncated to max_sequence_length,
no attention mask (FLUX attends to the pad tokens too), last hidden state in the encoder's dtype.
"""

from __future__ import annotations

import os

import torch
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from fastdit.configs.base import lookup_preset
from fastdit.models.encoders.hf_loading import EncoderWithTokenizer, dummy_encoder, load_pretrained_encoder
from fastdit.models.encoders.tokenizers import (
    check_max_sequence_length, check_prompts, t5_standin_tokenizer, tokenize_to_length,
)

# T5Config keyword arguments of the built-in architectures. FLUX.1-dev's is google/t5-v1_1-xxl's encoder as
# shipped in its text_encoder_2/config.json.
T5_PRESETS: dict[str, dict] = {
    "flux-tiny": dict(
        vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, dropout_rate=0.1, is_encoder_decoder=False, use_cache=False,
        pad_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    ),
    "black-forest-labs/FLUX.1-dev": dict(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, dropout_rate=0.1, is_encoder_decoder=False, use_cache=False,
        pad_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    ),
}
DEFAULT_MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's max_sequence_length default (and its upper bound)


def t5_preset(name: str) -> T5Config:
    return T5Config(**lookup_preset(T5_PRESETS, name, "T5 text encoder"))


class T5TextEncoder(EncoderWithTokenizer):
    """A T5EncoderModel and its tokenizer; `encode` gives FLUX's per-token prompt embedding."""

    @classmethod
    def from_pretrained(
        cls, checkpoint: str, dtype: torch.dtype, device: str | torch.device,
        subfolder: str = "text_encoder_2", tokenizer_subfolder: str = "tokenizer_2",
    ) -> "T5TextEncoder":
        """From a diffusers checkpoint folder: weights from `subfolder`, tokenizer from `tokenizer_subfolder`."""
        model = load_pretrained_encoder(
            T5EncoderModel, os.path.join(checkpoint, subfolder), dtype, device, subfolder
        )
        return cls(model, AutoTokenizer.from_pretrained(os.path.join(checkpoint, tokenizer_subfolder)))

    @classmethod
    def dummy(cls, preset: str, dtype: torch.dtype, device: str | torch.device, seed: int = 0) -> "T5TextEncoder":
        """The preset's architecture with random weights on `device`, and the byte-level stand-in tokenizer."""
        config = t5_preset(preset)
        model = dummy_encoder(T5EncoderModel, config, dtype, device, seed)
        return cls(model, t5_standin_tokenizer(config.vocab_size, DEFAULT_MAX_SEQUENCE_LENGTH))

    @torch.no_grad()
    def encode(self, prompts: str | list[str], max_sequence_length: int = DEFAULT_MAX_SEQUENCE_LENGTH) -> torch.Tensor:
        """prompts (B strings) -> embeddings [B, max_sequence_length, d_model] in the model's dtype, on its device."""
        prompts = check_prompts(prompts)
        check_max_sequence_length(max_sequence_length, DEFAULT_MAX_SEQUENCE_LENGTH)
        ids = tokenize_to_length(self.tokenizer, prompts, max_sequence_length, "T5")  # [B, L]
        hidden = self.model(ids.to(self.device), output_hidden_states=False)[0]
        return hidden.to(self.dtype)
