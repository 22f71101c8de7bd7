"""Building a transformers text encoder: from a checkpoint folder, or from a config with random weights.

Shared by the CLIP and T5 wrappers. Both paths put the weights straight on the target device: the folder
path through transformers' own loader (`device_map`), the dummy path through fastdit's meta-device
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
