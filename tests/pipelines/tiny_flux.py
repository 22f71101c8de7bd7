"""Builds a tiny random FLUX checkpoint in diffusers format, with diffusers itself (the numerical truth).

    pipe = make_tiny_flux_pipeline(seed=0)           # a diffusers FluxPipeline, float32, CPU
    pipe.save_pretrained(folder)                     # model_index.json + 7 component folders

Every component is the real class at a tiny size: FluxTransformer2DModel (2 heads x 16, one double and one
single block, RoPE axes (4, 6, 6)), AutoencoderKL (2 blocks: 2x downscale, 4 latent channels), CLIPTextModel
and T5EncoderModel (hidden 32), CLIP and T5 tokenizers built here from a small vocabulary (no download),
FlowMatchEulerDiscreteScheduler with FLUX.1-dev's scheduler config.
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast

TEXT_DIM = 32
CLIP_MAX_LENGTH = 77
_LETTERS = string.ascii_lowercase + string.digits + ".,!?'-"


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """Character-level CLIP BPE: each letter, each letter ending a word ("x</w>"), then BOS and EOS last."""
    vocab = {c: i for i, c in enumerate(_LETTERS)}
    vocab.update({c + "</w>": len(_LETTERS) + i for i, c in enumerate(_LETTERS)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def tiny_t5_tokenizer() -> T5TokenizerFast:
    """Unigram T5 tokenizer over word-initial and inner letters; pad=0, eos=1, unk=2 as in T5."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + c, -1.0) for c in _LETTERS] + [(c, -2.0) for c in _LETTERS] + [("\u2581", -3.0)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def make_tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """A random tiny FluxPipeline in float32 on the CPU; the same seed gives the same weights."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=TEXT_DIM,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, scaling_factor=0.3611, shift_factor=0.1159,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    clip_tokenizer = tiny_clip_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tokenizer), hidden_size=TEXT_DIM, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=TEXT_DIM,
        bos_token_id=clip_tokenizer.bos_token_id, eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id,
    ))
    t5_tokenizer = tiny_t5_tokenizer()
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=TEXT_DIM, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer, text_encoder_2=t5,
        tokenizer_2=t5_tokenizer, transformer=transformer,
    )
    # Freshly built modules are in training mode: T5's dropout would make every call random.
    for module in (transformer, vae, clip, t5):
        module.eval()
    return pipe.to(torch.float32)


def save_tiny_flux(folder, seed: int = 0) -> FluxPipeline:
    """Write the tiny checkpoint to `folder` (safetensors); return the diffusers pipeline it came from."""
    pipe = make_tiny_flux_pipeline(seed)
    pipe.save_pretrained(folder, safe_serialization=True)
    return pipe
