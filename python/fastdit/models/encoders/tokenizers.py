"""Built-in stand-in tokenizers for `--load-format dummy` (no download), and prompt tokenization as FLUX does it.

A stand-in is a byte-level tokenizer built locally with the `tokenizers` library: every UTF-8 byte of the
prompt is one token, so any string is covered and decodes back exactly. It carries the special tokens
of the tokenizer it stands in for, at the same ids, and adds them the same way:

    CLIP (CLIP-L's tokenizer/):  bytes -> ids 0..255 (as CLIP's own vocabulary starts), <|startoftext|> at
                                 vocab_size-2, <|endoftext|> (also the pad) at vocab_size-1 = 49407 for CLIP-L;
                                 "<|startoftext|> ... <|endoftext|>", padded with <|endoftext|>, 77 long.
                                 EOS being the largest id matters: FLUX's CLIP config pools at argmax(ids).
    T5   (T5-XXL's tokenizer_2/): <pad>=0, </s>=1, <unk>=2, bytes -> ids 3..258; "... </s>", padded with <pad>.

They are transformers tokenizer objects (PreTrainedTokenizerFast), so callers use them exactly like the
checkpoint's CLIPTokenizer / T5TokenizerFast. Numbers made with them are not the real model's (the ids differ);
they exist so full-size runs and benchmarks need nothing from the network.
"""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from fastdit.log import get_logger

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"
_NUM_BYTES = 256
_T5_FIRST_BYTE_ID = 3  # after <pad>, </s>, <unk>


@functools.cache
def _byte_symbols() -> tuple[str, ...]:
    """The printable character GPT-2/CLIP byte-level BPE uses for each byte value 0..255 (bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(_NUM_BYTES):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(_NUM_BYTES + extra)
            extra += 1
    return tuple(symbols[b] for b in range(_NUM_BYTES))


def _byte_level_tokenizer(vocab: dict[str, int], specials: list[str], template: str) -> Tokenizer:
    """BPE without merges over the 256 byte symbols: one token per byte; `template` adds the specials."""
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(s, vocab[s]) for s in specials if s in template]
    )
    return tok


def _check_vocab_size(vocab_size: int, needed: int, what: str) -> None:
    if vocab_size < needed:
        raise ValueError(f"{what} stand-in tokenizer needs vocab_size >= {needed} (256 bytes + specials), got {vocab_size}")


def clip_standin_tokenizer(vocab_size: int = 49408, model_max_length: int = 77) -> PreTrainedTokenizerFast:
    """A byte-level CLIP stand-in: ids < `vocab_size`, BOS vocab_size-2, EOS = pad vocab_size-1."""
    _check_vocab_size(vocab_size, _NUM_BYTES + 2, "CLIP")
    vocab = {symbol: b for b, symbol in enumerate(_byte_symbols())}
    vocab[CLIP_BOS], vocab[CLIP_EOS] = vocab_size - 2, vocab_size - 1
    tok = _byte_level_tokenizer(vocab, [CLIP_BOS, CLIP_EOS], f"{CLIP_BOS} $A {CLIP_EOS}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=CLIP_BOS, eos_token=CLIP_EOS, pad_token=CLIP_EOS, unk_token=CLIP_EOS,
        model_max_length=model_max_length,
    )


def t5_standin_tokenizer(vocab_size: int = 32128, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level T5 stand-in: <pad>=0, </s>=1, <unk>=2, byte b -> 3 + b."""
    _check_vocab_size(vocab_size, _T5_FIRST_BYTE_ID + _NUM_BYTES, "T5")
    vocab = {T5_PAD: 0, T5_EOS: 1, T5_UNK: 2}
    vocab.update({symbol: _T5_FIRST_BYTE_ID + b for b, symbol in enumerate(_byte_symbols())})
    tok = _byte_level_tokenizer(vocab, [T5_PAD, T5_EOS, T5_UNK], f"$A {T5_EOS}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=T5_PAD, eos_token=T5_EOS, unk_token=T5_UNK, model_max_length=model_max_length
    )


def check_prompts(prompts: str | list[str]) -> list[str]:
    """A prompt or a list of prompts as a non-empty list of str; anything else is a one-line ValueError."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {type(prompts).__name__}")
    return list(prompts)


def check_max_sequence_length(max_sequence_length: int, limit: int) -> int:
    """max_sequence_length if it is an integer in 1..limit; anything else is a one-line ValueError."""
    n = max_sequence_length
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= limit:
        raise ValueError(f"max_sequence_length={max_sequence_length!r} must be an integer in 1..{limit}")
    return max_sequence_length


def tokenize_to_length(tokenizer, prompts: list[str], max_length: int, what: str) -> torch.Tensor:
    """input_ids [B, max_length]: padded to max_length and truncated to it (special tokens kept), as
    FluxPipeline tokenizes for both encoders. Logs a warning naming how much of a prompt was cut."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True,
        return_overflowing_tokens=False, return_length=False, return_tensors="pt",
    ).input_ids
    lengths = [len(x) for x in tokenizer(prompts, padding=False, truncation=False).input_ids]
    if max(lengths) > max_length:
        get_logger().warning(
            "%s: a prompt of %d tokens was truncated to %d tokens", what, max(lengths), max_length
        )
    return ids
