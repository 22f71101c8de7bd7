"""FlowMatchEulerScheduler against diffusers' FlowMatchEulerDiscreteScheduler driven as FluxPipeline drives it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from fastdit.configs.scheduler import scheduler_preset
from fastdit.schedulers.flow_match_euler import FlowMatchEulerScheduler, FlowMatchEulerSchedulerConfig

FLUX_DEV = "black-forest-labs/FLUX.1-dev"


def _diffusers_flux_schedule(config: FlowMatchEulerSchedulerConfig, steps: int, image_seq_len: int):
    """FluxPipeline.__call__'s "prepare timesteps" section, verbatim in effect."""
    ref = FlowMatchEulerDiscreteScheduler.from_config(config.to_dict())
    sigmas = np.linspace(1.0, 1 / steps, steps)
    mu = calculate_shift(
        image_seq_len,
        ref.config.get("base_image_seq_len", 256),
        ref.config.get("max_image_seq_len", 4096),
        ref.config.get("base_shift", 0.5),
        ref.config.get("max_shift", 1.15),
    )
    retrieve_timesteps(ref, steps, "cpu", sigmas=sigmas, mu=mu)
    return ref


def _seq_len(height: int, width: int) -> int:
    return (height // 16) * (width // 16)  # FLUX packs 2x2 latent patches of an 8x-downsampled image


@pytest.mark.parametrize("steps", [1, 4, 28, 50])
@pytest.mark.parametrize("size", [(1024, 1024), (768, 1360), (256, 256), (2048, 1024)])
def test_flux_timesteps_and_sigmas_match_diffusers(steps, size):
    config = scheduler_preset(FLUX_DEV)
    ours = FlowMatchEulerScheduler(config)
    ours.set_timesteps(steps, image_seq_len=_seq_len(*size))
    ref = _diffusers_flux_schedule(config, steps, _seq_len(*size))
    assert ours.timesteps.shape == (steps,) and ours.sigmas.shape == (steps + 1,)
    assert ours.timesteps.dtype == torch.float32 and ours.sigmas.dtype == torch.float32
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)


def test_shift_depends_on_resolution():
    small, large = FlowMatchEulerScheduler(scheduler_preset(FLUX_DEV)), FlowMatchEulerScheduler(scheduler_preset(FLUX_DEV))
    small.set_timesteps(10, image_seq_len=256)
    large.set_timesteps(10, image_seq_len=4096)
    # More tokens -> larger mu -> sigmas stay high longer.
    assert bool((large.sigmas[1:-1] > small.sigmas[1:-1]).all())
    assert small.mu(256) == pytest.approx(0.5) and large.mu(4096) == pytest.approx(1.15)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(use_dynamic_shifting=False, shift=3.0),
        dict(use_dynamic_shifting=True, time_shift_type="linear"),
        dict(use_dynamic_shifting=True, shift_terminal=0.1),
        dict(use_dynamic_shifting=False, shift=1.0, invert_sigmas=True),
    ],
)
def test_other_config_paths_match_diffusers(overrides):
    config = FlowMatchEulerSchedulerConfig(**{**scheduler_preset(FLUX_DEV).to_dict(), **overrides})
    ours = FlowMatchEulerScheduler(config)
    ours.set_timesteps(13, image_seq_len=_seq_len(512, 768))
    ref = _diffusers_flux_schedule(config, 13, _seq_len(512, 768))
    torch.testing.assert_close(ours.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)


def test_custom_sigmas_match_diffusers():
    config = scheduler_preset(FLUX_DEV)
    custom = [1.0, 0.8, 0.5, 0.3, 0.05]
    ours = FlowMatchEulerScheduler(config)
    ours.set_timesteps(len(custom), image_seq_len=1024, sigmas=custom)
    ref = FlowMatchEulerDiscreteScheduler.from_config(config.to_dict())
    ref.set_timesteps(sigmas=custom, mu=ours.mu(1024))
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_matches_diffusers_over_a_whole_loop(dtype):
    steps, seq_len = 7, _seq_len(512, 256)
    config = scheduler_preset(FLUX_DEV)
    ours = FlowMatchEulerScheduler(config)
    ours.set_timesteps(steps, image_seq_len=seq_len)
    ref = _diffusers_flux_schedule(config, steps, seq_len)
    gen = torch.Generator().manual_seed(0)
    x_ours = x_ref = torch.randn(2, seq_len, 64, generator=gen).to(dtype)
    for i, t in enumerate(ref.timesteps):
        v = torch.randn(2, seq_len, 64, generator=gen).to(dtype)
        x_ours = ours.step(v, x_ours, i)
        x_ref = ref.step(v, t, x_ref, return_dict=False)[0]
        assert x_ours.dtype == dtype
    rel = ((x_ours.float() - x_ref.float()).norm() / x_ref.float().norm()).item()
    # fp32: identical math. bf16: diffusers rounds dt*v to bf16 before adding, we keep it in fp32.
    assert rel <= (1e-6 if dtype == torch.float32 else 2e-2)


def test_step_is_x_plus_dt_v():
    ours = FlowMatchEulerScheduler(scheduler_preset(FLUX_DEV))
    ours.set_timesteps(3, image_seq_len=256)
    x, v = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    out = ours.step(v, x, 2)
    torch.testing.assert_close(out, x + (0.0 - ours.sigmas[2]) * v)


def test_bad_input_errors():
    ours = FlowMatchEulerScheduler(scheduler_preset(FLUX_DEV))
    with pytest.raises(ValueError, match="before set_timesteps"):
        ours.step(torch.randn(2), torch.randn(2), 0)
    with pytest.raises(ValueError, match="image_seq_len is required"):
        ours.set_timesteps(4)
    with pytest.raises(ValueError, match="num_inference_steps=0 must be a positive integer"):
        ours.set_timesteps(0, image_seq_len=256)
    ours.set_timesteps(4, image_seq_len=256)
    with pytest.raises(ValueError, match=r"step_index=4 out of range; allowed: 0..3"):
        ours.step(torch.randn(2), torch.randn(2), 4)


def test_config_from_dict():
    shipped = {  # black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.30.0.dev0",
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
    }
    assert FlowMatchEulerSchedulerConfig.from_dict(shipped) == scheduler_preset(FLUX_DEV)
    written = FlowMatchEulerDiscreteScheduler.from_config(shipped).config  # every key diffusers writes
    assert FlowMatchEulerSchedulerConfig.from_dict(dict(written)) == scheduler_preset(FLUX_DEV)
    with pytest.raises(ValueError, match=r"unknown FlowMatchEulerDiscreteScheduler config keys \['sigma_schedule'\]"):
        FlowMatchEulerSchedulerConfig.from_dict({**shipped, "sigma_schedule": "x"})
    with pytest.raises(ValueError, match=r"\['use_karras_sigmas'\] are not supported"):
        FlowMatchEulerSchedulerConfig.from_dict({**shipped, "use_karras_sigmas": True})
    with pytest.raises(ValueError, match="time_shift_type='cubic'"):
        FlowMatchEulerSchedulerConfig(time_shift_type="cubic")
    with pytest.raises(ValueError, match="unknown scheduler preset 'nope'"):
        scheduler_preset("nope")
