"""CLIP and T5 wrappers against diffusers' FluxPipeline.encode_prompt on tiny saved checkpoints, and the
built-in stand-in tokenizers."""

from __future__ import annotations

import logging
import resource
import string

import pytest
import torch
from diffusers import FluxPipeline
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from fastdit.configs.flux import flux_transformer_preset
from fastdit.loader.weights import build_module
from fastdit.models.encoders.clip import CLIP_PRESETS, CLIPTextEncoder, clip_preset
from fastdit.models.encoders.t5 import T5_PRESETS, T5TextEncoder, t5_preset
from fastdit.models.encoders.tokenizers import clip_standin_tokenizer, t5_standin_tokenizer

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
_LETTERS = string.ascii_lowercase + string.digits + ".,!?'-"
PROMPTS = [
    "a red fox in the snow",
    "Ünïcødé — 狐狸 🦊 and tabs\tand  spaces",
    "a very long prompt " * 12,  # > 77 CLIP tokens at character level: truncated, EOS kept
]


def _real_style_tokenizers():
    """Tokenizers of the classes a FLUX checkpoint names (CLIPTokenizer, T5TokenizerFast), tiny vocabularies."""
    vocab = {c: i for i, c in enumerate(_LETTERS)}
    vocab.update({c + "</w>": len(_LETTERS) + i for i, c in enumerate(_LETTERS)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    clip = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    t5_vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    t5_vocab += [("\u2581" + c, -1.0) for c in _LETTERS] + [(c, -2.0) for c in _LETTERS] + [("\u2581", -3.0)]
    return clip, T5TokenizerFast(vocab=t5_vocab, extra_ids=0, model_max_length=512)


@pytest.fixture(scope="module", params=["real-style", "stand-in"])
def checkpoint(request, tmp_path_factory):
    """A folder with text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/ (tiny, random, save_pretrained)."""
    if request.param == "real-style":
        clip_tok, t5_tok = _real_style_tokenizers()
        clip_ids = dict(bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id, pad_token_id=1)
        vocab = max(len(clip_tok), len(t5_tok))
    else:  # FLUX.1-dev's CLIP config has eos_token_id 2: pooling at argmax(ids), which the stand-in must serve
        clip_tok, t5_tok = clip_standin_tokenizer(vocab_size=300), t5_standin_tokenizer(vocab_size=300)
        clip_ids, vocab = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1), 300
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu", **clip_ids,
    )).eval()
    t5 = T5EncoderModel(T5Config(
        vocab_size=vocab, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    )).eval()
    folder = tmp_path_factory.mktemp(request.param)
    for name, obj in [("text_encoder", clip), ("tokenizer", clip_tok), ("text_encoder_2", t5), ("tokenizer_2", t5_tok)]:
        obj.save_pretrained(folder / name)
    return folder


def _diffusers_encode(folder, prompts, max_sequence_length):
    """(t5 embeds, pooled clip) from diffusers' FluxPipeline.encode_prompt over the same saved components,
    tokenizers loaded through the classes FLUX.1-dev's model_index.json names where they apply."""
    real_style = "CLIPTokenizer" in (folder / "tokenizer" / "tokenizer_config.json").read_text()
    clip_tok_cls, t5_tok_cls = (CLIPTokenizer, T5TokenizerFast) if real_style else (AutoTokenizer, AutoTokenizer)
    pipe = FluxPipeline(
        scheduler=None, vae=None, transformer=None,
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder"),
        tokenizer=clip_tok_cls.from_pretrained(folder / "tokenizer"),
        text_encoder_2=T5EncoderModel.from_pretrained(folder / "text_encoder_2"),
        tokenizer_2=t5_tok_cls.from_pretrained(folder / "tokenizer_2"),
    )
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompts, prompt_2=None, device="cpu", max_sequence_length=max_sequence_length
        )
    return embeds, pooled


def _rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("max_sequence_length", [512, 40])
def test_embeddings_match_diffusers_encode_prompt(checkpoint, max_sequence_length):
    clip = CLIPTextEncoder.from_pretrained(str(checkpoint), torch.float32, "cpu")
    t5 = T5TextEncoder.from_pretrained(str(checkpoint), torch.float32, "cpu")
    pooled = clip.encode(PROMPTS)
    embeds = t5.encode(PROMPTS, max_sequence_length=max_sequence_length)
    want_embeds, want_pooled = _diffusers_encode(checkpoint, PROMPTS, max_sequence_length)
    assert pooled.shape == (3, 32) and embeds.shape == (3, max_sequence_length, 32)
    assert _rel_l2(pooled, want_pooled) <= 1e-4
    assert _rel_l2(embeds, want_embeds) <= 1e-4
    # Each prompt's pooled vector differs: the EOS position is found per prompt.
    assert torch.cdist(pooled, pooled).fill_diagonal_(1.0).min() > 0


def test_loads_in_bf16_on_the_asked_device(checkpoint):
    clip = CLIPTextEncoder.from_pretrained(str(checkpoint), torch.bfloat16, "cpu")
    assert clip.dtype == torch.bfloat16 and clip.device.type == "cpu" and not clip.model.training
    assert clip.encode("a fox").dtype == torch.bfloat16


def test_checkpoint_mismatch_is_named(checkpoint, tmp_path):
    (tmp_path / "text_encoder_2").symlink_to(checkpoint / "text_encoder", target_is_directory=True)
    (tmp_path / "tokenizer_2").symlink_to(checkpoint / "tokenizer_2", target_is_directory=True)
    with pytest.raises(ValueError, match=r"text_encoder_2: checkpoint in .* does not match T5EncoderModel: \d+ missing"):
        T5TextEncoder.from_pretrained(str(tmp_path), torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"text_encoder: no config.json in"):
        CLIPTextEncoder.from_pretrained(str(tmp_path), torch.float32, "cpu")


def test_bad_prompts_and_lengths(checkpoint):
    t5 = T5TextEncoder.from_pretrained(str(checkpoint), torch.float32, "cpu")
    with pytest.raises(ValueError, match="prompt must be a string or a non-empty list of strings, got int"):
        t5.encode(3)
    with pytest.raises(ValueError, match="prompt must be a string or a non-empty list of strings, got list"):
        t5.encode([])
    with pytest.raises(ValueError, match=r"max_sequence_length=513 must be an integer in 1..512"):
        t5.encode("a", max_sequence_length=513)
    for bad in (0, True, 8.0):
        with pytest.raises(ValueError, match=rf"max_sequence_length={bad!r} must be an integer in 1..512"):
            t5.encode("a", max_sequence_length=bad)


def test_truncation_is_logged(checkpoint):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("fastdit")
    logger.addHandler(handler)
    try:
        T5TextEncoder.from_pretrained(str(checkpoint), torch.float32, "cpu").encode(PROMPTS, max_sequence_length=8)
    finally:
        logger.removeHandler(handler)
    assert any("T5: a prompt of" in r.getMessage() and "truncated to 8 tokens" in r.getMessage() for r in records)


# dummy (load_format dummy) encoders and their stand-in tokenizers


@pytest.mark.parametrize("text", ["", "plain ascii", "Ünïcødé — 狐狸 🦊\n\ttabs", "\x00\x7f\ufeff", "  lead"])
def test_standin_tokenizers_round_trip_any_text(text):
    for tok, vocab_size in [(clip_standin_tokenizer(), 49408), (t5_standin_tokenizer(), 32128)]:
        ids = tok(text).input_ids
        assert all(0 <= i < vocab_size for i in ids)
        assert len(ids) == len(text.encode("utf-8")) + tok.num_special_tokens_to_add()
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_standin_special_tokens_and_padding():
    clip = clip_standin_tokenizer()  # CLIP-L's ids: BOS 49406, EOS = pad 49407
    ids = clip(["ab", "x" * 200], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert ids.shape == (2, 77)
    assert ids[0, :4].tolist() == [49406, 97, 98, 49407] and bool((ids[0, 3:] == 49407).all())
    assert ids[1, 0] == 49406 and ids[1, -1] == 49407 and bool((ids[1, 1:-1] == ord("x")).all())
    assert ids.argmax(dim=1).tolist() == [3, 76]  # FLUX's CLIP pools at argmax(ids): the first EOS
    t5 = t5_standin_tokenizer()  # T5's ids: pad 0, </s> 1, byte b -> 3 + b
    ids = t5(["ab"], padding="max_length", max_length=6, truncation=True, return_tensors="pt").input_ids
    assert ids.tolist() == [[3 + 97, 3 + 98, 1, 0, 0, 0]]
    assert t5.pad_token_id == 0 and t5.eos_token_id == 1 and t5.model_max_length == 512


def test_standin_tokenizers_are_deterministic_and_save(tmp_path):
    clip_standin_tokenizer(1000).save_pretrained(tmp_path / "a")
    clip_standin_tokenizer(1000).save_pretrained(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert reloaded("fox 🦊").input_ids == clip_standin_tokenizer(1000)("fox 🦊").input_ids
    with pytest.raises(ValueError, match=r"T5 stand-in tokenizer needs vocab_size >= 259"):
        t5_standin_tokenizer(100)


def test_dummy_flux_tiny_encoders():
    clip = CLIPTextEncoder.dummy("flux-tiny", torch.float32, "cpu", seed=0)
    t5 = T5TextEncoder.dummy("flux-tiny", torch.float32, "cpu", seed=0)
    pooled, embeds = clip.encode(["a fox", "狐狸"]), t5.encode(["a fox", "狐狸"], max_sequence_length=16)
    assert pooled.shape == (2, 32) and embeds.shape == (2, 16, 64)
    assert bool(torch.isfinite(pooled).all() and torch.isfinite(embeds).all())
    assert not torch.equal(pooled[0], pooled[1])
    again = CLIPTextEncoder.dummy("flux-tiny", torch.float32, "cpu", seed=0).encode(["a fox", "狐狸"])
    torch.testing.assert_close(again, pooled, rtol=0, atol=0)


def test_full_size_presets_are_clip_l_and_t5_xxl():
    """Built on the meta device only: parameter counts of CLIP-L's text tower and T5-XXL's encoder."""
    with torch.device("meta"):
        clip = CLIPTextModel(clip_preset(FLUX_DEV))
        t5 = T5EncoderModel(t5_preset(FLUX_DEV))
    assert sum(p.numel() for p in clip.parameters()) == 123_060_480
    assert sum(p.numel() for p in t5.parameters()) == 4_762_310_656
    assert clip_preset(FLUX_DEV).eos_token_id == 2 and t5_preset(FLUX_DEV).d_model == 4096
    assert set(CLIP_PRESETS) == set(T5_PRESETS) == {"flux-tiny", FLUX_DEV}
    with pytest.raises(ValueError, match="unknown T5 text encoder preset 'xl'"):
        t5_preset("xl")


@pytest.mark.parametrize("preset", ["flux-tiny", FLUX_DEV])
def test_presets_fit_the_flux_transformer_preset(preset):
    """The transformer projects pooled CLIP (hidden_size) and T5 (d_model) widths: they must agree."""
    transformer = flux_transformer_preset(preset)
    assert clip_preset(preset).hidden_size == transformer.pooled_projection_dim
    assert t5_preset(preset).d_model == transformer.joint_attention_dim


def test_full_size_t5_is_built_without_cpu_memory():
    """dummy() builds through build_module: the 4.8B-parameter T5-XXL never lands in CPU memory (19 GB fp32)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t5 = build_module(lambda: T5EncoderModel(t5_preset(FLUX_DEV)), torch.bfloat16, "meta")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in t5.parameters())
    assert grown_mib < 512
