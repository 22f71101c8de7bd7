"""Building a transformers encoder (from a checkpoint folder, or from a config with random weights), and
`HFEncoder`, the base of the encoder wrappers (clip.py, t5.py, umt5.py: `EncoderWithTokenizer`; clip_vision.py).

Both loading paths put the weights straight on the target device: the
folder path through transformers' own loader (`device_map`), the dummy path through fastdit's meta-device
`build_module`, so a full-size T5-XXL is never materialized on the CPU first.
"""

from __future__ import annotations

import os

import torch
from transformers import PretrainedConfig, PreTrainedModel

from fastdit.loader.weights import build_module, init_dummy_weights

_SHOW_KEYS = 5


def load_pretrained_encoder(
    model_cls: type[PreTrainedModel], folder: str, dtype: torch.dtype, device: str | torch.device, component: str
) -> PreTrainedModel:
    """`model_cls.from_pretrained(folder)` in `dtype` on `device`, eval mode; missing, unexpected or
    mis-shaped weights are one ValueError naming `component` and the keys."""
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"{component}: no config.json in {folder!r}: expected a transformers model folder")
    model, info = model_cls.from_pretrained(
        folder, dtype=dtype, device_map=str(torch.device(device)), output_loading_info=True
    )
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind, ()))
        if keys:
            more = f" (and {len(keys) - _SHOW_KEYS} more)" if len(keys) > _SHOW_KEYS else ""
            problems.append(f"{len(keys)} {kind.replace('_', ' ')}: {', '.join(keys[:_SHOW_KEYS])}{more}")
    if problems:
        raise ValueError(f"{component}: checkpoint in {folder!r} does not match {model_cls.__name__}: " + "; ".join(problems))
    return model.eval().requires_grad_(False)


def dummy_encoder(
    model_cls: type[PreTrainedModel], config: PretrainedConfig, dtype: torch.dtype, device: str | torch.device,
    seed: int = 0,
) -> PreTrainedModel:
    """`model_cls(config)` with random weights (N(0, 1/fan_in) matrices, unit norms), allocated on `device`."""
    model = build_module(lambda: model_cls(config), dtype, device)
    init_dummy_weights(model, seed=seed)
    return model


class HFEncoder:
    """A transformers encoder model: the part every encoder wrapper shares.

    Subclasses add their preprocessor, `from_pretrained`, `dummy` and `encode`; the runner moves `.model`
    with `to()` for CPU offload and reads `device` / `dtype` to place inputs and outputs.
    """

    def __init__(self, model: PreTrainedModel):
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def to(self, device: str | torch.device):
        """Moves the weights (CPU offload and back); returns self."""
        self.model.to(device)
        return self


class EncoderWithTokenizer(HFEncoder):
    """A transformers text encoder and its tokenizer (CLIP text, T5, UMT5)."""

    def __init__(self, model: PreTrainedModel, tokenizer):
        super().__init__(model)
        self.tokenizer = tokenizer
