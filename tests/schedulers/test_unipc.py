"""UniPC (flow) parity with diffusers' UniPCMultistepScheduler over whole sampling loops."""

from __future__ import annotations

import pytest
import torch

from fastdit.schedulers.unipc import UniPCMultistepScheduler, UniPCSchedulerConfig

diffusers = pytest.importorskip("diffusers")

# Wan2.1's scheduler_config.json (Wan-AI/Wan2.1-T2V-1.3B-Diffusers), flow_shift varied by the tests.
WAN_SCHEDULER_CONFIG = {
    "_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.33.0.dev0", "beta_end": 0.02,
    "beta_schedule": "linear", "beta_start": 0.0001, "disable_corrector": [], "dynamic_thresholding_ratio": 0.995,
    "final_sigmas_type": "zero", "flow_shift": 3.0, "lower_order_final": True, "num_train_timesteps": 1000,
    "predict_x0": True, "prediction_type": "flow_prediction", "rescale_betas_zero_snr": False,
    "sample_max_value": 1.0, "solver_order": 2, "solver_p": None, "solver_type": "bh2", "steps_offset": 0,
    "thresholding": False, "timestep_spacing": "linspace", "trained_betas": None, "use_beta_sigmas": False,
    "use_exponential_sigmas": False, "use_flow_sigmas": True, "use_karras_sigmas": False,
}


def _velocity(x: torch.Tensor, i: int) -> torch.Tensor:
    """A smooth stand-in for the DiT: depends on the sample and the step, fresh noise each step."""
    g = torch.Generator().manual_seed(100 + i)
    return 0.7 * x + torch.randn(x.shape, generator=g)


def _sample(scheduler_step, timesteps_len: int, x: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for i in range(timesteps_len):
        x = scheduler_step(_velocity(x, i), x, i)
        out.append(x)
    return out


@pytest.mark.parametrize(
    "steps,overrides",
    [
        (20, {}),
        (7, {"flow_shift": 5.0}),
        (1, {}),
        (9, {"solver_order": 3}),  # (bh1 with a zero final sigma is NaN in diffusers: -inf * 0)
        (6, {"final_sigmas_type": "sigma_min", "disable_corrector": [2], "lower_order_final": False}),
    ],
)
def test_sampling_loop_matches_diffusers(steps, overrides):
    cfg = {**WAN_SCHEDULER_CONFIG, **overrides}
    ref = diffusers.UniPCMultistepScheduler.from_config(cfg)
    ours = UniPCMultistepScheduler(UniPCSchedulerConfig.from_dict(cfg))
    ref.set_timesteps(steps)
    ours.set_timesteps(steps)
    assert torch.equal(ours.timesteps, ref.timesteps)
    torch.testing.assert_close(ours.sigmas, ref.sigmas, rtol=0, atol=0)

    x0 = torch.randn(2, 4, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    expected = _sample(lambda v, x, i: ref.step(v, ref.timesteps[i], x, return_dict=False)[0], steps, x0)
    got = _sample(ours.step, steps, x0)
    for i, (a, b) in enumerate(zip(got, expected)):
        rel = ((a - b).norm() / b.norm()).item()
        assert rel <= 1e-5, f"step {i}: rel err {rel}"


def test_steps_must_run_in_order():
    s = UniPCMultistepScheduler()
    with pytest.raises(ValueError, match="call set_timesteps first"):
        s.step(torch.ones(1), torch.ones(1), 0)
    s.set_timesteps(4)
    x = torch.randn(3)
    s.step(x, x, 0)
    with pytest.raises(ValueError, match="step_index=2, expected 1"):
        s.step(x, x, 2)


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="prediction_type='epsilon': only 'flow_prediction'"):
        UniPCSchedulerConfig.from_dict({"prediction_type": "epsilon"})
    with pytest.raises(ValueError, match="unknown UniPCMultistepScheduler config keys \\['nope'\\]"):
        UniPCSchedulerConfig.from_dict({"nope": 1})
