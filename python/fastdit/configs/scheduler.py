"""Built-in scheduler configs: the scheduler/scheduler_config.json of each supported checkpoint."""

from __future__ import annotations

from fastdit.configs.base import lookup_preset
from fastdit.schedulers.flow_match_euler import FlowMatchEulerSchedulerConfig

# black-forest-labs/FLUX.1-dev scheduler/scheduler_config.json; flux-tiny samples the same way.
_FLUX_DEV = FlowMatchEulerSchedulerConfig(
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=1.15,
    base_image_seq_len=256,
    max_image_seq_len=4096,
)

SCHEDULER_PRESETS: dict[str, FlowMatchEulerSchedulerConfig] = {
    "flux-tiny": _FLUX_DEV,
    "black-forest-labs/FLUX.1-dev": _FLUX_DEV,
}


def scheduler_preset(name: str) -> FlowMatchEulerSchedulerConfig:
    return lookup_preset(SCHEDULER_PRESETS, name, "scheduler")
