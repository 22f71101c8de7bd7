"""Pipeline recipes by diffusers pipeline class name (model_index.json's "_class_name").

A recipe is a class with this shape (pipelines/recipe.py's Recipe base implements it; pipelines/flux.py and
wan.py subclass it):

    class Recipe:
        task: str                      # "text-to-image" | "text-to-video" | "image-to-video"
        defaults: SamplingDefaults     # filled into a request's None fields
        device: torch.device; dtype: torch.dtype; attention_backend: str  (resolved names, for the start log)

        @classmethod
        def load(cls, source: ModelSource, device, dtype, load_format, attention_backend, kernel_backend) -> Recipe
        def run(self, request, save: SaveTarget | None, show_progress: bool) -> GenerationResult

Each entry imports its recipe module only when asked, so `import fastdit` does not import every model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastdit.configs.models import ModelSpec


@dataclass(frozen=True)
class ModelSource:
    """Where a recipe takes its components from.

    folder: a diffusers-format folder (model_index.json + component subfolders), or None for a built-in id
    loaded with dummy weights; spec: the built-in id's spec, or None for a folder outside the built-ins.
    """

    model_id: str
    folder: str | None
    spec: ModelSpec | None


def _flux() -> type:
    from fastdit.pipelines.flux import FluxRecipe

    return FluxRecipe


def _wan_t2v() -> type:
    from fastdit.pipelines.wan import WanRecipe

    return WanRecipe


def _wan_i2v() -> type:
    from fastdit.pipelines.wan import WanImageToVideoRecipe

    return WanImageToVideoRecipe


RECIPES: dict[str, Callable[[], type]] = {
    "FluxPipeline": _flux,
    "WanPipeline": _wan_t2v,
    "WanImageToVideoPipeline": _wan_i2v,
}


def recipe_class(pipeline_class: str, model_id: str) -> type:
    """The recipe for a diffusers pipeline class name; a one-line ValueError names the supported ones."""
    if pipeline_class not in RECIPES:
        raise ValueError(
            f"{model_id!r} is a {pipeline_class!r}, which fastdit does not run; supported: {', '.join(sorted(RECIPES))}"
        )
    return RECIPES[pipeline_class]()
