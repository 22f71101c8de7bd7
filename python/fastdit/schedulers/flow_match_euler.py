"""Flow-matching Euler sampler with FLUX's resolution-dependent time shift.

The same numbers as diffusers' FlowMatchEulerDiscreteScheduler driven the way FluxPipeline drives it:

    sigmas_N  = linspace(1, 1/N, N)                          (N = num_inference_steps)
    mu        = base_shift + (max_shift - base_shift) * (image_seq_len - base_image_seq_len)
                                                        / (max_image_seq_len - base_image_seq_len)
    sigma'    = e^mu / (e^mu + (1/sigma - 1))               (time_shift_type "exponential")
              = mu   / (mu   + (1/sigma - 1))               (time_shift_type "linear")
              = shift*sigma / (1 + (shift-1)*sigma)          (use_dynamic_shifting False)
    timesteps = sigma' * num_train_timesteps                 [N]
    sigmas    = [sigma', 0]                                  [N+1]
    step:  x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i     (fp32)

The schedule is computed in numpy float32 exactly as diffusers does, so the timesteps match it bit for bit.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from fastdit.configs.base import DiffusersConfig

_TIME_SHIFT_TYPES = ("exponential", "linear")
# diffusers config keys that select samplers we do not implement; accepted only at their off value.
_UNSUPPORTED_WHEN_TRUE = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling")


@dataclasses.dataclass(frozen=True)
class FlowMatchEulerSchedulerConfig(DiffusersConfig):
    """diffusers FlowMatchEulerDiscreteScheduler scheduler_config.json, field for field."""

    _diffusers_class = "FlowMatchEulerDiscreteScheduler"

    num_train_timesteps: int = 1000
    shift: float = 1.0
    use_dynamic_shifting: bool = False
    base_shift: float = 0.5
    max_shift: float = 1.15
    base_image_seq_len: int = 256
    max_image_seq_len: int = 4096
    invert_sigmas: bool = False
    shift_terminal: float | None = None
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    time_shift_type: str = "exponential"
    stochastic_sampling: bool = False

    def __post_init__(self):
        if self.num_train_timesteps <= 0:
            raise ValueError(f"num_train_timesteps={self.num_train_timesteps} must be > 0")
        if self.time_shift_type not in _TIME_SHIFT_TYPES:
            raise ValueError(f"time_shift_type={self.time_shift_type!r}; allowed: {list(_TIME_SHIFT_TYPES)}")
        if self.max_image_seq_len == self.base_image_seq_len:
            raise ValueError(
                f"max_image_seq_len={self.max_image_seq_len} must differ from base_image_seq_len "
                f"(the shift interpolates between them)"
            )
        if self.shift_terminal is not None and not 0.0 <= self.shift_terminal < 1.0:
            raise ValueError(f"shift_terminal={self.shift_terminal} must be in [0, 1) or None")
        on = [name for name in _UNSUPPORTED_WHEN_TRUE if getattr(self, name)]
        if on:
            raise ValueError(f"scheduler options {on} are not supported by fastdit's flow-match Euler; set them false")


def calculate_shift(image_seq_len: int, base_seq_len: int, max_seq_len: int, base_shift: float, max_shift: float):
    """FLUX's mu: linear in the number of image tokens, base_shift at base_seq_len, max_shift at max_seq_len."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


class FlowMatchEulerScheduler:
    """Holds one request's schedule: `set_timesteps` fills `.timesteps` [N] and `.sigmas` [N+1] (fp32).

    Stateless between steps: `step` takes the step index, so the runner (and CFG-parallel ranks) need no
    hidden counter.
    """

    order = 1

    def __init__(self, config: FlowMatchEulerSchedulerConfig):
        self.config = config
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None

    def mu(self, image_seq_len: int) -> float:
        c = self.config
        return calculate_shift(
            image_seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift
        )

    def set_timesteps(
        self,
        num_inference_steps: int,
        image_seq_len: int | None = None,
        sigmas=None,
        device: torch.device | str | None = None,
    ) -> None:
        """Builds the schedule for `num_inference_steps` steps.

        `image_seq_len` (packed image tokens, (H/16)*(W/16) for FLUX) is required when the config uses
        dynamic shifting. `sigmas` overrides FluxPipeline's default linspace(1, 1/N, N); the shift still applies.
        """
        c = self.config
        if sigmas is None:
            if not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
                raise ValueError(f"num_inference_steps={num_inference_steps!r} must be a positive integer")
            sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        sigmas = np.asarray(sigmas, dtype=np.float32)
        if sigmas.ndim != 1 or sigmas.size == 0:
            raise ValueError(f"sigmas must be a non-empty 1-D sequence, got shape {tuple(sigmas.shape)}")
        if c.use_dynamic_shifting:
            if image_seq_len is None:
                raise ValueError("image_seq_len is required: the scheduler config uses dynamic shifting")
            mu = self.mu(image_seq_len)
            # Python-float mu with a float32 array, as diffusers' _time_shift_* evaluate it (float32 result).
            if c.time_shift_type == "exponential":
                sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
            else:
                sigmas = mu / (mu + (1 / sigmas - 1))
        else:
            sigmas = c.shift * sigmas / (1 + (c.shift - 1) * sigmas)
        if c.shift_terminal:
            # Stretch so the last sigma lands on shift_terminal (LTX-Video's rf.py), as diffusers does.
            one_minus = 1 - sigmas
            sigmas = 1 - one_minus / (one_minus[-1] / (1 - c.shift_terminal))
        sigmas = torch.from_numpy(np.asarray(sigmas)).to(dtype=torch.float32, device=device)
        if c.invert_sigmas:
            sigmas = 1.0 - sigmas
        timesteps = sigmas * c.num_train_timesteps
        final = torch.ones(1, device=sigmas.device) if c.invert_sigmas else torch.zeros(1, device=sigmas.device)
        self.timesteps = timesteps  # [N]
        self.sigmas = torch.cat([sigmas, final])  # [N+1]

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, step_index: int) -> torch.Tensor:
        """prev_sample = sample + (sigmas[i+1] - sigmas[i]) * model_output, in fp32, cast to model_output's dtype.

        diffusers multiplies dt by model_output in model_output's dtype (a 0-dim fp32 tensor does not promote a
        bf16 one); we keep the whole update in fp32. Both agree exactly in fp32.
        """
        if self.sigmas is None:
            raise ValueError("step() called before set_timesteps()")
        n = self.sigmas.numel() - 1
        if not 0 <= step_index < n:
            raise ValueError(f"step_index={step_index} out of range; allowed: 0..{n - 1}")
        sigma = self.sigmas[step_index].to(sample.device)
        sigma_next = self.sigmas[step_index + 1].to(sample.device)
        prev = sample.to(torch.float32) + (sigma_next - sigma) * model_output.to(torch.float32)
        return prev.to(model_output.dtype)
