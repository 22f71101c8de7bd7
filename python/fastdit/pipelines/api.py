"""`fastdit.Pipeline`: load a model once, then generate from prompts or from GenerationRequests.

    pipe = fastdit.Pipeline.from_pretrained("flux-tiny", load_format="dummy")          # CPU, seconds
    images = pipe("a red fox in the snow", height=256, width=256, seed=0)            # list of PIL images
    result = pipe.run(GenerationRequest(prompt="a fox", seed=0))                     # images + latents + timings

`model` is one of:
  - a built-in id (configs/models.py): "flux-tiny", "black-forest-labs/FLUX.1-dev";
  - a local diffusers-format folder (model_index.json + component subfolders);
  - a Hugging Face hub id "owner/name", downloaded with huggingface_hub (or taken from its cache).
The folder's model_index.json "_class_name" picks the recipe (pipelines/registry.py).
"""

from __future__ import annotations

import json
import os
import re

import torch

from fastdit import envs
from fastdit.configs.models import BUILTIN_MODELS, builtin_model
from fastdit.log import get_logger
from fastdit.pipelines.cuda_graph import compile_model
from fastdit.pipelines.registry import ModelSource, recipe_class
from fastdit.pipelines.request import GenerationRequest, GenerationResult
from fastdit.pipelines.save import SaveTarget

LOAD_FORMATS = ("auto", "dummy")
DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_INDEX = "model_index.json"


def parse_dtype(dtype: torch.dtype | str, device: torch.device) -> torch.dtype:
    """torch.bfloat16, a name ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32"), or "auto":
    bfloat16 on a GPU, float32 on a CPU (CPUs without bf16 matrix units run bf16 matmuls several times slower)."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype={dtype!r} is not allowed: dtype must be one of auto, bfloat16, float16, float32")


def parse_device(device: torch.device | str | None) -> torch.device:
    """None -> cuda when a GPU is visible, else cpu. A CUDA device without CUDA is an error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not allowed: device must be cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not allowed: device must be cpu, cuda or cuda:N")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} is not allowed: no CUDA GPU is visible; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} is not allowed: only {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def check_kernel_backend(backend: str, device: torch.device) -> None:
    """Fail before loading when the fused ops' backend is unknown, or "cuda" where the kernel library cannot run."""
    from fastdit.ops import _library

    if backend not in _library.BACKENDS:
        raise ValueError(f"kernel_backend={backend!r} is not allowed: kernel_backend must be one of "
                         f"{', '.join(_library.BACKENDS)}")
    if backend == "cuda" and (device.type != "cuda" or _library.library() is None):
        where = "on a CPU" if device.type != "cuda" else "without the kernel library (pip install built no .so)"
        raise ValueError(f"kernel_backend='cuda' is not allowed {where}: use auto, triton or torch")


def resolve_cuda_graph(cuda_graph: bool | None, device: torch.device, recipe_cls: type) -> bool:
    """Whether the denoising step runs as a CUDA graph: None -> on for a CUDA device when the recipe supports it.
    Checked before loading, so a bad value fails in milliseconds."""
    if cuda_graph is not None and not isinstance(cuda_graph, bool):
        raise ValueError(f"cuda_graph={cuda_graph!r} is not allowed: cuda_graph must be True, False or None (auto)")
    supported = getattr(recipe_cls, "supports_cuda_graph", False)
    if cuda_graph is None:
        return device.type == "cuda" and supported
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=True is not allowed on {device}: CUDA graphs need a CUDA device (use None or False)")
    if cuda_graph and not supported:
        raise ValueError(f"cuda_graph=True is not allowed for {recipe_cls.__name__}: its denoising step has no "
                         "graphed form (use None or False)")
    return cuda_graph


def read_pipeline_class(folder: str) -> str:
    """model_index.json's "_class_name" of a diffusers folder; one-line errors for a missing or bad file."""
    path = os.path.join(folder, MODEL_INDEX)
    if not os.path.isfile(path):
        raise ValueError(f"{folder!r} is not a diffusers pipeline folder: it has no {MODEL_INDEX}")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
        return str(index["_class_name"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read the pipeline class from {path!r}: {type(e).__name__}: {e}") from None


def download(repo_id: str) -> str:
    """The local snapshot folder of a hub repository: from the cache if there, else downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        # only the diffusers component subfolders: FLUX.1-dev also ships single-file BFL weights at its root
        return snapshot_download(repo_id, allow_patterns=[MODEL_INDEX, "*/*"])
    except LocalEntryNotFoundError:
        raise ValueError(
            f"cannot download {repo_id!r}: the Hugging Face hub is unreachable (offline?) and it is not in the local "
            "cache; pass a local diffusers folder, or a built-in id with --load-format dummy"
        ) from None
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot download {repo_id!r} from the Hugging Face hub: {first}") from None


def resolve_model(model: str, load_format: str) -> tuple[ModelSource, str]:
    """(where the components come from, diffusers pipeline class name) for a model argument."""
    builtin = ", ".join(sorted(BUILTIN_MODELS))
    if not isinstance(model, (str, os.PathLike)) or not os.fspath(model):
        raise ValueError(f"model={model!r} is not allowed: give a built-in id ({builtin}), a folder or a hub id")
    model = os.fspath(model)
    spec = builtin_model(model)
    if os.path.isdir(model):
        return ModelSource(model, model, spec), read_pipeline_class(model)
    if spec is not None:
        if load_format == "dummy" or spec.hub_id is None:
            return ModelSource(model, None, spec), spec.pipeline_class
        folder = download(spec.hub_id)
        return ModelSource(model, folder, spec), read_pipeline_class(folder)
    if _HUB_ID.match(model) and not model.startswith((".", "/")):
        if load_format == "dummy":
            raise ValueError(
                f"model={model!r} has no built-in architecture for --load-format dummy; built-in ids: {builtin}"
            )
        folder = download(model)
        return ModelSource(model, folder, None), read_pipeline_class(folder)
    raise ValueError(
        f"unknown model or folder {model!r}: not a built-in id ({builtin}), not an existing folder, not a hub id owner/name"
    )


class Pipeline:
    """A loaded model: its recipe (components + stages), device and dtype. Build it with `from_pretrained`."""

    def __init__(self, recipe, model_id: str):
        self._recipe = recipe
        self.model_id = model_id

    @property
    def task(self) -> str:
        return self._recipe.task

    @property
    def device(self) -> torch.device:
        return self._recipe.device

    @property
    def dtype(self) -> torch.dtype:
        return self._recipe.dtype

    @property
    def defaults(self):
        return self._recipe.defaults

    @property
    def recipe(self):
        """The model's recipe object (its components: transformer, vae, ...), for benchmarks and distributed plans."""
        return self._recipe

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str = torch.bfloat16,
        load_format: str = "auto",
        attention_backend: str | None = None,
        kernel_backend: str | None = None,
        cuda_graph: bool | None = None,
        torch_compile: bool = False,
    ) -> Pipeline:
        """Load `model` (built-in id, diffusers folder or hub id) onto `device` in `dtype`.

        dtype: a torch dtype or its name, or "auto" (bfloat16 on GPU, float32 on CPU).
        load_format: "auto" (the checkpoint's weights; built-ins without weights use dummy) or "dummy"
        (random weights of the built-in architecture, no download). attention_backend / kernel_backend:
        None reads FASTDIT_ATTENTION_BACKEND / FASTDIT_KERNEL_BACKEND (default "auto").
        cuda_graph: run each denoising step as a CUDA graph captured per shape (None: on for CUDA devices
        and recipes that support it, off otherwise). torch_compile: torch.compile the DiT (fullgraph, static
        shapes; the first step of each new shape compiles).
        """
        if load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format={load_format!r} is not allowed: load_format must be one of auto, dummy")
        device = parse_device(device)
        dtype = parse_dtype(dtype, device)
        attention_backend = attention_backend or envs.attention_backend()
        kernel_backend = kernel_backend or envs.kernel_backend()
        check_kernel_backend(kernel_backend, device)
        if not isinstance(torch_compile, bool):
            raise ValueError(f"torch_compile={torch_compile!r} is not allowed: torch_compile must be True or False")
        source, pipeline_class = resolve_model(model, load_format)
        cuda_graph = resolve_cuda_graph(cuda_graph, device, recipe_class(pipeline_class, source.model_id))
        if source.folder is None and load_format == "auto":
            get_logger().info("%s has no published weights: using random (dummy) weights", source.model_id)
        recipe = recipe_class(pipeline_class, source.model_id).load(
            source, device=device, dtype=dtype, load_format=load_format,
            attention_backend=attention_backend, kernel_backend=kernel_backend,
        )
        if torch_compile:
            compile_model(recipe.transformer)
        if cuda_graph:
            recipe.set_cuda_graph(True)
        get_logger().info(
            "%s (%s) on %s, %s, attention backend %s, kernel library %s, CUDA graph %s, torch.compile %s",
            source.model_id, pipeline_class, device, str(dtype).removeprefix("torch."),
            recipe.attention_backend, _kernel_library_status(), "on" if cuda_graph else "off",
            "on" if torch_compile else "off",
        )
        return cls(recipe, source.model_id)

    def run(
        self, request: GenerationRequest, save: SaveTarget | None = None, show_progress: bool = True
    ) -> GenerationResult:
        """Run one validated request; `save` writes the images as PNG (result.paths)."""
        if not isinstance(request, GenerationRequest):
            raise ValueError(f"request must be a GenerationRequest, got {type(request).__name__}")
        return self._recipe.run(request, save=save, show_progress=show_progress)

    def __call__(
        self,
        prompt,
        negative_prompt=None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
        true_cfg_scale: float = 1.0,
        show_progress: bool = True,
    ):
        """Generate; returns a list of PIL images, or the final (packed) latents with output_type="latent"."""
        request = GenerationRequest(
            prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
            num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, true_cfg_scale=true_cfg_scale,
            seed=seed, latents=latents, output_type=output_type, num_images_per_prompt=num_images_per_prompt,
        )
        result = self.run(request, show_progress=show_progress)
        return result.latents if output_type == "latent" else result.images


def _kernel_library_status() -> str:
    """'found (built for sm_...)' or 'not found', for the start log line."""
    from fastdit.ops import _library

    lib = _library.library()
    return f"found (built for {_library.compiled_archs(lib)})" if lib is not None else "not found (Triton/torch ops)"
