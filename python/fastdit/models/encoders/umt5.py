"""UMT5-XXL text encoder as Wan uses it, from transformers' UMT5EncoderModel.

    enc = UMT5TextEncoder.from_pretrained(checkpoint, torch.bfloat16, "cuda")      # text_encoder/ + tokenizer/
    enc = UMT5TextEncoder.dummy("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch.bfloat16, "cuda")  # random, stand-in tokenizer
    embeds = enc.encode(["a red fox"])                                              # [B, 512, d_model]

encode() is diffusers WanPipeline._get_t5_prompt_embeds: prompts cleaned (ftfy when installed, HTML
entities unescaped twice, whitespace collapsed), ids padded and truncated to max_sequence_length with the
attention mask passed to the encoder, then every position past a prompt's true length set to exactly 0.
"""

from __future__ import annotations

import html
import os
import re

import torch
from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

from fastdit.configs.base import lookup_preset
from fastdit.models.encoders.hf_loading import EncoderWithTokenizer, dummy_encoder, load_pretrained_encoder
from fastdit.models.encoders.tokenizers import check_max_sequence_length, check_prompts, t5_standin_tokenizer

try:  # diffusers' Wan pipelines clean prompts with ftfy when it is installed; so do we, to give the same ids
    import ftfy
except ImportError:  # pragma: no cover - depends on the environment
    ftfy = None

MAX_SEQUENCE_LENGTH = 512  # WanPipeline's max_sequence_length default; the DiT was trained on 512 tokens

# UMT5Config keyword arguments of the built-in architectures: google/umt5-xxl's encoder as shipped in the
# Wan2.1 checkpoints' text_encoder/config.json, and a CPU-sized one whose d_model is wan-tiny's text_dim.
_UMT5_COMMON = dict(
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6, dropout_rate=0.1, is_encoder_decoder=False, use_cache=False,
    pad_token_id=0, eos_token_id=1, tie_word_embeddings=False,
)
_UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, **_UMT5_COMMON)
UMT5_PRESETS: dict[str, dict] = {
    "wan-tiny": dict(vocab_size=300, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, **_UMT5_COMMON),
    "umt5-xxl": _UMT5_XXL,
}


def umt5_preset(name: str) -> UMT5Config:
    return UMT5Config(**lookup_preset(UMT5_PRESETS, name, "UMT5 text encoder"))


def prompt_clean(text: str) -> str:
    """diffusers' Wan prompt_clean: ftfy.fix_text (if installed), html.unescape twice, collapse whitespace."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5TextEncoder(EncoderWithTokenizer):
    """A UMT5EncoderModel and its tokenizer; `encode` gives Wan's zero-padded prompt embedding."""

    @classmethod
    def from_pretrained(
        cls, checkpoint: str, dtype: torch.dtype, device: str | torch.device,
        subfolder: str = "text_encoder", tokenizer_subfolder: str = "tokenizer",
    ) -> "UMT5TextEncoder":
        """From a diffusers checkpoint folder: weights from `subfolder`, tokenizer from `tokenizer_subfolder`."""
        model = load_pretrained_encoder(UMT5EncoderModel, os.path.join(checkpoint, subfolder), dtype, device, subfolder)
        return cls(model, AutoTokenizer.from_pretrained(os.path.join(checkpoint, tokenizer_subfolder)))

    @classmethod
    def dummy(cls, preset: str, dtype: torch.dtype, device: str | torch.device, seed: int = 0) -> "UMT5TextEncoder":
        """The preset's architecture with random weights on `device`, and the byte-level stand-in tokenizer."""
        config = umt5_preset(preset)
        model = dummy_encoder(UMT5EncoderModel, config, dtype, device, seed)
        return cls(model, t5_standin_tokenizer(config.vocab_size, MAX_SEQUENCE_LENGTH))

    @torch.no_grad()
    def encode(self, prompts: str | list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> torch.Tensor:
        """prompts (B strings) -> [B, max_sequence_length, d_model] in the model's dtype; rows past each
        prompt's token count (EOS included) are exactly zero."""
        prompts = [prompt_clean(p) for p in check_prompts(prompts)]
        check_max_sequence_length(max_sequence_length, MAX_SEQUENCE_LENGTH)
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        hidden = self.model(ids, mask).last_hidden_state  # [B, L, d_model]
        keep = mask.gt(0).unsqueeze(-1)
        return torch.where(keep, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).to(self.dtype)
