"""Built-in model ids: which pipeline recipe runs them, where their weights live, and their sampling defaults.

A built-in id works with `load_format="dummy"` (the full architecture from the family's preset table,
configs/<family>.py, random weights, a stand-in tokenizer): no download. With `load_format="auto"`, an id
that has a `hub_id` resolves through huggingface_hub; one without (the tiny ones) falls back to dummy.

Sampling defaults follow the model's reference pipeline: FLUX.1-dev as diffusers' FluxPipeline
(1024x1024, 28 steps, guidance 3.5); flux-tiny small enough for a CPU (256x256, 4 steps).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastdit.pipelines.request import SamplingDefaults


@dataclass(frozen=True)
class ModelSpec:
    """One built-in model id.

    pipeline_class: the diffusers pipeline class name, the key of pipelines/registry.py.
    preset: the key of the family's component presets (configs/flux.py, configs/wan.py).
    hub_id: the Hugging Face repository holding its diffusers-format weights, or None (no real weights).
    """

    model_id: str
    pipeline_class: str
    preset: str
    hub_id: str | None
    defaults: SamplingDefaults


BUILTIN_MODELS: dict[str, ModelSpec] = {
    spec.model_id: spec
    for spec in (
        ModelSpec(
            model_id="flux-tiny",
            pipeline_class="FluxPipeline",
            preset="flux-tiny",
            hub_id=None,
            defaults=SamplingDefaults(height=256, width=256, num_inference_steps=4, guidance_scale=3.5),
        ),
        ModelSpec(
            model_id="black-forest-labs/FLUX.1-dev",
            pipeline_class="FluxPipeline",
            preset="black-forest-labs/FLUX.1-dev",
            hub_id="black-forest-labs/FLUX.1-dev",
            defaults=SamplingDefaults(height=1024, width=1024, num_inference_steps=28, guidance_scale=3.5),
        ),
        # Wan2.1 (configs/wan.py): diffusers' WanPipeline defaults, 720x1280 for the 720P model; the tiny
        # ones are CPU-sized (64x64, 9 frames in configs/wan.py's VIDEO_DEFAULTS).
        ModelSpec("wan-tiny", "WanPipeline", "wan-tiny", None, SamplingDefaults(64, 64, 4, 5.0)),
        ModelSpec("wan-tiny-i2v", "WanImageToVideoPipeline", "wan-tiny-i2v", None, SamplingDefaults(64, 64, 4, 5.0)),
        *(
            ModelSpec(model_id, pipeline_class, model_id, model_id, SamplingDefaults(height, width, 50, 5.0))
            for model_id, pipeline_class, height, width in (
                ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "WanPipeline", 480, 832),
                ("Wan-AI/Wan2.1-T2V-14B-Diffusers", "WanPipeline", 480, 832),
                ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "WanImageToVideoPipeline", 480, 832),
                ("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", "WanImageToVideoPipeline", 720, 1280),
            )
        ),
    )
}


def builtin_model(model_id: str) -> ModelSpec | None:
    """The spec of a built-in id, or None when `model_id` is not one (a folder or another hub id)."""
    return BUILTIN_MODELS.get(model_id)
