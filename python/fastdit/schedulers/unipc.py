"""UniPC multistep sampler for flow-matching models (Wan), the same numbers as diffusers'
UniPCMultistepScheduler with use_flow_sigmas=True, prediction_type="flow_prediction", predict_x0=True.

Flow matching: x_sigma = (1 - sigma) * x0 + sigma * noise, so alpha = 1 - sigma and lambda = log(alpha / sigma).
The model predicts v = noise - x0, hence x0_pred = x - sigma * v. Each step:
  1. corrector UniC (from the second step on): refines the sample that the last predictor produced,
     using the model output at that sample;
  2. predictor UniP of order p (1, then solver_order; 1 again at the last step with lower_order_final):
     x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) m0 - alpha_t B(h) sum_k rho_k D_k,
     h = lambda_t - lambda_s, D_k the divided differences of earlier x0 predictions, B(h) = e^{-h} - 1 (bh2).
Sigmas: linspace(1, 1/T, N), shifted sigma' = s * sigma / (1 + (s - 1) * sigma) (s = flow_shift), then a
final sigma of 0; timesteps = int(sigma' * T).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from fastdit.configs.base import DiffusersConfig


@dataclasses.dataclass(frozen=True)
class UniPCSchedulerConfig(DiffusersConfig):
    """diffusers' UniPCMultistepScheduler config keys (Wan2.1's scheduler_config.json values as defaults).

    Keys that only matter for variance-preserving (DDPM-beta) schedules are accepted and unused: with
    flow sigmas diffusers overwrites the timesteps they would produce.
    """

    _diffusers_class = "UniPCMultistepScheduler"

    num_train_timesteps: int = 1000
    solver_order: int = 2
    prediction_type: str = "flow_prediction"
    predict_x0: bool = True
    solver_type: str = "bh2"
    lower_order_final: bool = True
    disable_corrector: tuple[int, ...] = ()
    use_flow_sigmas: bool = True
    flow_shift: float = 3.0
    final_sigmas_type: str = "zero"
    thresholding: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_dynamic_shifting: bool = False
    solver_p: None = None
    shift_terminal: float | None = None
    # unused with flow sigmas (see the class docstring)
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: None = None
    dynamic_thresholding_ratio: float = 0.995
    sample_max_value: float = 1.0
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    rescale_betas_zero_snr: bool = False
    time_shift_type: str = "exponential"
    sigma_min: float | None = None
    sigma_max: float | None = None

    def __post_init__(self):
        required = dict(
            prediction_type="flow_prediction", use_flow_sigmas=True, predict_x0=True, thresholding=False,
            use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
            use_dynamic_shifting=False, solver_p=None, shift_terminal=None,
        )
        for key, want in required.items():
            if getattr(self, key) != want:
                raise ValueError(f"UniPCSchedulerConfig.{key}={getattr(self, key)!r}: only {want!r} is supported (flow-matching UniPC)")
        if self.solver_type not in ("bh1", "bh2"):
            raise ValueError(f"UniPCSchedulerConfig.solver_type={self.solver_type!r}: allowed 'bh1', 'bh2'")
        if self.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"UniPCSchedulerConfig.final_sigmas_type={self.final_sigmas_type!r}: allowed 'zero', 'sigma_min'")
        if self.solver_order < 1:
            raise ValueError(f"UniPCSchedulerConfig.solver_order={self.solver_order}: must be >= 1")


def _alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return 1 - sigma, sigma


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    alpha, sigma = _alpha_sigma(sigma)
    return torch.log(alpha) - torch.log(sigma)


class UniPCMultistepScheduler:
    """set_timesteps(N) fills .timesteps [N] int64 and .sigmas [N+1] fp32; step(model_output, sample, i)
    must then be called for i = 0, 1, ..., N-1 in order (the solver keeps the last x0 predictions)."""

    order = 1

    def __init__(self, config: UniPCSchedulerConfig | None = None):
        self.config = config or UniPCSchedulerConfig()
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self._reset()

    def _reset(self) -> None:
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self.last_sample: torch.Tensor | None = None
        self.this_order = 0
        self._next_index = 0

    def set_timesteps(self, num_inference_steps: int, device=None, sigmas=None) -> None:
        cfg = self.config
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps}: must be >= 1")
        T = cfg.num_train_timesteps
        if sigmas is None:
            sigmas = np.linspace(1, 1 / T, num_inference_steps + 1)[:-1]
        sigmas = np.asarray(sigmas, dtype=np.float64)
        sigmas = cfg.flow_shift * sigmas / (1 + (cfg.flow_shift - 1) * sigmas)
        if np.fabs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6  # keeps log(alpha) finite in the first updates (as diffusers)
        timesteps = (sigmas * T).copy()
        sigma_last = sigmas[-1] if cfg.final_sigmas_type == "sigma_min" else 0
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [sigma_last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset()

    # predictor / corrector coefficients

    def _coefficients(self, s_t: int, s_0: int, s_prev: list[int], device) -> tuple:
        """h-dependent terms of one update from sigma index s_0 to s_t; s_prev: older indices (orders > 1)."""
        sig = self.sigmas
        alpha_t, sigma_t = _alpha_sigma(sig[s_t].to(device))
        sigma_s0 = sig[s_0].to(device)
        lambda_s0 = _lambda(sigma_s0)
        h = _lambda(sig[s_t].to(device)) - lambda_s0
        rks = [(_lambda(sig[si].to(device)) - lambda_s0) / h for si in s_prev]
        rks = torch.stack(rks + [torch.ones((), device=device)])
        hh = -h  # predict_x0
        h_phi_1 = torch.expm1(hh)  # e^{-h} - 1
        h_phi_k = h_phi_1 / hh - 1
        B_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        R, b, factorial_i = [], [], 1
        for i in range(1, len(s_prev) + 2):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial_i / B_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        return alpha_t, sigma_t, sigma_s0, h_phi_1, B_h, rks, torch.stack(R), torch.stack(b)

    def _predict(self, x: torch.Tensor, order: int, step_index: int) -> torch.Tensor:
        """UniP: from sigma[step_index] to sigma[step_index + 1]."""
        m = self.model_outputs
        m0 = m[-1]
        s_prev = [step_index - i for i in range(1, order)]
        alpha_t, sigma_t, sigma_s0, h_phi_1, B_h, rks, R, b = self._coefficients(step_index + 1, step_index, s_prev, x.device)
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if order > 1:
            D1s = [(m[-(i + 1)] - m0) / rks[i - 1] for i in range(1, order)]
            if order == 2:
                rhos = torch.ones(1, dtype=x.dtype, device=x.device) * 0.5
            else:
                rhos = torch.linalg.solve(R[:-1, :-1], b[:-1]).to(x.dtype)
            x_t = x_t - alpha_t * B_h * sum(r * d for r, d in zip(rhos, D1s))
        return x_t.to(x.dtype)

    def _correct(self, model_t: torch.Tensor, last_sample: torch.Tensor, this_sample: torch.Tensor, order: int, step_index: int) -> torch.Tensor:
        """UniC: re-does the update sigma[step_index - 1] -> sigma[step_index] with the new x0 prediction."""
        m = self.model_outputs
        m0 = m[-1]
        x = last_sample
        s_prev = [step_index - (i + 1) for i in range(1, order)]
        alpha_t, sigma_t, sigma_s0, h_phi_1, B_h, rks, R, b = self._coefficients(step_index, step_index - 1, s_prev, x.device)
        if order == 1:
            rhos = torch.ones(1, dtype=x.dtype, device=x.device) * 0.5
        else:
            rhos = torch.linalg.solve(R, b).to(x.dtype)
        res = rhos[-1] * (model_t - m0)
        if order > 1:
            res = sum(r * (m[-(i + 1)] - m0) / rks[i - 1] for i, r in zip(range(1, order), rhos[:-1])) + res
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0 - alpha_t * B_h * res
        return x_t.to(x.dtype)

    def step(self, model_output: torch.Tensor, sample: torch.Tensor, step_index: int) -> torch.Tensor:
        """model_output (velocity) and sample at sigmas[step_index] -> sample at sigmas[step_index + 1]."""
        if self.sigmas is None:
            raise ValueError("UniPCMultistepScheduler.step: call set_timesteps first")
        if step_index != self._next_index:
            raise ValueError(f"UniPCMultistepScheduler.step: step_index={step_index}, expected {self._next_index} (steps run in order)")
        cfg = self.config
        x0_pred = sample - self.sigmas[step_index] * model_output
        if step_index > 0 and (step_index - 1) not in cfg.disable_corrector and self.last_sample is not None:
            sample = self._correct(x0_pred, self.last_sample, sample, self.this_order, step_index)
        self.model_outputs = self.model_outputs[1:] + [x0_pred]
        order = cfg.solver_order
        if cfg.lower_order_final:
            order = min(order, len(self.timesteps) - step_index)
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: order grows with history
        self.last_sample = sample
        prev_sample = self._predict(sample, self.this_order, step_index)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg.solver_order)
        self._next_index += 1
        return prev_sample
