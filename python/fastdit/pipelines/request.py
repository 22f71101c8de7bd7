"""What a caller asks for (GenerationRequest), what one run carries (RunState), what it gets back (GenerationResult).

The request is frozen and validated once, at the edge, with one-line ValueErrors that name the value, the rule
and what is allowed; the CLI, the HTTP server and the Python API all build one and hand it to `Pipeline.run`.
Fields left None are filled from the model's sampling defaults (`with_defaults`) before the run starts.

Allowed values:
    prompt                 a str, or a non-empty list/tuple of str (a batch)
    negative_prompt        None, a str, or a list/tuple of str with one entry per prompt (used by true CFG)
    height, width          multiples of 16 in [16, 4096] (16 = 2 x the VAE's 8x downscale: FLUX packs 2x2 latents)
    num_inference_steps    an int in [1, 1000]
    guidance_scale         a finite float >= 0 (FLUX.1-dev: the distilled guidance embedding)
    true_cfg_scale         a finite float >= 1 (1 = off; > 1 runs a negative pass like diffusers' true_cfg_scale)
    seed                   None (a random seed is drawn and reported) or an int in [0, 2**63)
    latents                None or a tensor: the initial noise in the model's own layout (FLUX: packed [B, S, C*4])
    output_type            "pil" (PIL images) or "latent" (the final latents, packed as diffusers returns them)
    num_images_per_prompt  an int in [1, 16]
    num_frames, fps, image video models only; image models require them to be None
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

MIN_SIZE = 16
MAX_SIZE = 4096
SIZE_MULTIPLE = 16
MAX_STEPS = 1000
MAX_IMAGES_PER_PROMPT = 16
MAX_SEED = 2**63
OUTPUT_TYPES = ("pil", "latent")


def _invalid(name: str, value: Any, rule: str) -> ValueError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ValueError(f"{name}={shown} is not allowed: {rule}")


def _is_int(value: Any) -> bool:
    # bool is an int subclass; True as a height is a bug in the caller, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_prompts(name: str, value: Any, optional: bool) -> tuple[str, ...] | str | None:
    if value is None and optional:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(p, str) for p in value):
        return tuple(value)
    allowed = "None, a string or a non-empty list of strings" if optional else "a string or a non-empty list of strings"
    raise _invalid(name, value, f"{name} must be {allowed}")


def check_size(name: str, value: Any) -> None:
    if not _is_int(value) or value % SIZE_MULTIPLE or not MIN_SIZE <= value <= MAX_SIZE:
        raise _invalid(name, value, f"{name} must be an integer multiple of {SIZE_MULTIPLE} in [{MIN_SIZE}, {MAX_SIZE}]")


def check_steps(value: Any) -> None:
    if not _is_int(value) or not 1 <= value <= MAX_STEPS:
        raise _invalid("num_inference_steps", value, f"num_inference_steps must be an integer in [1, {MAX_STEPS}]")


@dataclass(frozen=True, eq=False)  # eq=False: `latents` is a tensor, whose == is elementwise
class GenerationRequest:
    """One generation job. Validated on construction; see the module docstring for the allowed values."""

    prompt: str | tuple[str, ...]
    negative_prompt: str | tuple[str, ...] | None = None
    height: int | None = None
    width: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float = 1.0
    seed: int | None = None
    latents: torch.Tensor | None = None
    output_type: str = "pil"
    num_images_per_prompt: int = 1
    num_frames: int | None = None
    fps: int | None = None
    image: Any = None

    def __post_init__(self) -> None:
        # Lists become tuples so that the frozen request is also immutable inside.
        object.__setattr__(self, "prompt", _check_prompts("prompt", self.prompt, optional=False))
        object.__setattr__(self, "negative_prompt", _check_prompts("negative_prompt", self.negative_prompt, True))
        if isinstance(self.negative_prompt, tuple) and len(self.negative_prompt) != len(self.prompts):
            raise _invalid(
                "negative_prompt", self.negative_prompt,
                f"a list of negative prompts needs one entry per prompt ({len(self.prompts)})",
            )
        for name in ("height", "width"):
            if getattr(self, name) is not None:
                check_size(name, getattr(self, name))
        if self.num_inference_steps is not None:
            check_steps(self.num_inference_steps)
        if self.guidance_scale is not None and not (_is_real(self.guidance_scale) and self.guidance_scale >= 0):
            raise _invalid("guidance_scale", self.guidance_scale, "guidance_scale must be a finite number >= 0")
        if not (_is_real(self.true_cfg_scale) and self.true_cfg_scale >= 1):
            raise _invalid("true_cfg_scale", self.true_cfg_scale, "true_cfg_scale must be a finite number >= 1 (1 = off)")
        if self.seed is not None and not (_is_int(self.seed) and 0 <= self.seed < MAX_SEED):
            raise _invalid("seed", self.seed, "seed must be None or an integer in [0, 2**63)")
        if self.latents is not None and not isinstance(self.latents, torch.Tensor):
            raise _invalid("latents", type(self.latents).__name__, "latents must be None or a torch.Tensor")
        if self.output_type not in OUTPUT_TYPES:
            raise _invalid("output_type", self.output_type, f"output_type must be one of {', '.join(OUTPUT_TYPES)}")
        if not (_is_int(self.num_images_per_prompt) and 1 <= self.num_images_per_prompt <= MAX_IMAGES_PER_PROMPT):
            raise _invalid(
                "num_images_per_prompt", self.num_images_per_prompt,
                f"num_images_per_prompt must be an integer in [1, {MAX_IMAGES_PER_PROMPT}]",
            )
        for name in ("num_frames", "fps"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value > 0):
                raise _invalid(name, value, f"{name} must be None or a positive integer")

    @property
    def prompts(self) -> list[str]:
        """The prompt(s) as a list: one entry per batch item before num_images_per_prompt."""
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def negative_prompts(self) -> list[str] | None:
        if self.negative_prompt is None:
            return None
        if isinstance(self.negative_prompt, str):
            return [self.negative_prompt] * len(self.prompts)
        return list(self.negative_prompt)

    @property
    def batch_size(self) -> int:
        """Number of samples generated: prompts x num_images_per_prompt."""
        return len(self.prompts) * self.num_images_per_prompt

    def with_defaults(self, defaults: SamplingDefaults) -> GenerationRequest:
        """A copy with every None sampling field taken from the model's defaults."""
        filled = {
            name: getattr(defaults, name)
            for name in ("height", "width", "num_inference_steps", "guidance_scale")
            if getattr(self, name) is None
        }
        return dataclasses.replace(self, **filled) if filled else self

    def require_image_fields(self, model_id: str) -> None:
        """Image models take no video fields: reject them here rather than ignore them."""
        for name in ("num_frames", "fps", "image"):
            if getattr(self, name) is not None:
                raise _invalid(name, getattr(self, name), f"{model_id} is a text-to-image model: {name} must be None")


@dataclass(frozen=True)
class SamplingDefaults:
    """A model's defaults for the fields a request may leave None."""

    height: int
    width: int
    num_inference_steps: int
    guidance_scale: float


@dataclass
class RunState:
    """Per-run values the stages pass along; a recipe subclasses it with its own tensors.

    `stages_ms` and `denoise_steps_ms` are filled by the runner (runner.py), never by a stage.
    """

    seed: int = 0
    show_progress: bool = True
    stages_ms: dict[str, float] = field(default_factory=dict)
    denoise_steps_ms: list[dict[str, float]] = field(default_factory=list)
    latents: torch.Tensor | None = None
    images: list | None = None
    frames: list | None = None
    paths: list[str] = field(default_factory=list)


@dataclass
class GenerationResult:
    """What `Pipeline.run` returns.

    images: list of PIL images (output_type="pil", image models), frames: list of frame lists (video models),
    latents: the final latents (always set; packed [B, S, C*4] for FLUX), seed: the seed used,
    paths: files written by the save stage, timings: {"stages_ms": {stage: ms}, "denoise_steps_ms":
    [{"step": i, "duration_ms": ms}], "total_ms": ms}.
    """

    images: list | None
    frames: list | None
    latents: torch.Tensor | None
    seed: int
    paths: list[str]
    timings: dict[str, Any]
