"""What every recipe shares: loading its components, the stage list, `run`, and seeded noise.

A model's recipe (pipelines/flux.py, pipelines/wan.py) subclasses `Recipe` and supplies what differs:

    state_class                      its RunState subclass (the tensors its stages pass along)
    head_dim(source)                 the DiT's attention head size, read before any weight is
    dummy_components(preset, ...)    a built-in preset with random weights
    folder_components(folder, ...)   every component from a diffusers folder
    finish_load(components, ...)     checks that the components fit together, per-device settings
    folder_defaults(components)      sampling defaults of a folder outside the built-ins
    validate, encode, prepare_timesteps, prepare_latents, denoise, decode, save   the stages

so `load` and `run` read the same for every model, and a model's special steps stay in its own file.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import torch

from fastdit.layers.attention import make_attention_op
from fastdit.pipelines.registry import ModelSource
from fastdit.pipelines.request import GenerationRequest, GenerationResult, RunState, SamplingDefaults
from fastdit.pipelines.runner import Stage, make_result, run_stages
from fastdit.pipelines.save import SaveTarget


class Recipe:
    """Components plus stage functions over one `state_class` record; subclasses supply the hooks above."""

    task: str
    state_class: type[RunState] = RunState

    def __init__(self, components: Any, defaults: SamplingDefaults, model_id: str,
                 device: torch.device, dtype: torch.dtype, attention_backend: str):
        self.components = components
        self.defaults = defaults
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.attention_backend = attention_backend

    @property
    def transformer(self) -> torch.nn.Module:
        return self.components.transformer

    @property
    def vae(self) -> torch.nn.Module:
        return self.components.vae

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    # load

    @classmethod
    def load(cls, source: ModelSource, device: torch.device, dtype: torch.dtype, load_format: str,
             attention_backend: str, kernel_backend: str) -> Recipe:
        """Components from a diffusers folder (load_format "auto"), or a built-in preset with random weights."""
        if source.folder is not None and load_format == "dummy":
            raise ValueError(
                f"load_format='dummy' takes a built-in model id, not the folder {source.folder!r}: use load_format auto"
            )
        # Resolved once for this device, dtype and head size (logged once), before any weight is read, so a
        # forced backend that cannot run fails in a second.
        attn_op = make_attention_op(attention_backend, device, dtype, cls.head_dim(source))
        if source.folder is None:
            components = cls.dummy_components(source.spec.preset, device, dtype, attn_op, kernel_backend)
        else:
            components = cls.folder_components(source.folder, device, dtype, attn_op, kernel_backend)
        cls.finish_load(components, source, device)
        defaults = source.spec.defaults if source.spec is not None else cls.folder_defaults(components)
        return cls(components, defaults, source.model_id, device, dtype, attn_op.backend)

    @classmethod
    def finish_load(cls, components: Any, source: ModelSource, device: torch.device) -> None:
        """Checks and per-device settings after the components are built; none by default."""

    # run

    def stages(self, request: GenerationRequest, save: SaveTarget | None) -> list[Stage]:
        stages: list[Stage] = [
            ("validate", self.validate),
            ("encode", self.encode),
            ("timesteps", self.prepare_timesteps),
            ("latents", self.prepare_latents),
            ("denoise", self.denoise),
        ]
        if request.output_type == "pil":
            stages.append(("decode", self.decode))
            if save is not None:
                stages.append(("save", lambda req, state: self.save(req, state, save)))
        return stages

    def with_defaults(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its None fields filled from the model's sampling defaults."""
        return request.with_defaults(self.defaults)

    def run(self, request: GenerationRequest, save: SaveTarget | None = None, show_progress: bool = True) -> GenerationResult:
        request = self.with_defaults(request)
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        state = self.state_class(seed=seed, show_progress=show_progress)
        with torch.inference_mode():
            run_stages(self.stages(request, save), request, state, self.device)
        return make_result(state)


# helpers the recipes' stages and loaders share


def seeded_noise(shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise of `shape` in `dtype`, drawn on the CPU from `seed`, as diffusers' randn_tensor
    draws it with a CPU generator: one seed gives the same noise on every device. Returned on the CPU."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)


def repeat_per_prompt(embeds: torch.Tensor, n: int) -> torch.Tensor:
    """[P, ...] -> [P*n, ...], each prompt's row repeated n times in a row (num_images_per_prompt)."""
    # diffusers' repeat(1, n).view(P * n, ...) is repeat_interleave over the batch
    return embeds.repeat_interleave(n, dim=0)


def read_scheduler_json(folder: str) -> tuple[dict[str, Any], str]:
    """(the parsed scheduler/scheduler_config.json of a diffusers folder, its path); unreadable: one-line ValueError."""
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), path
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read the scheduler config {path!r}: {e}") from None
