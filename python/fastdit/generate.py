"""`python -m fastdit.generate`: generate images from a prompt and write them as PNG files.

    python -m fastdit.generate --model-path flux-tiny --load-format dummy --prompt "a red fox in the snow"
    python -m fastdit.generate --model-path black-forest-labs/FLUX.1-dev --prompt "..." --seed 0 \\
        --perf-dump-path perf.json

Options may also come from --config FILE (JSON or YAML, keys named as the flags, with - or _); flags given on
the command line win. Prints the path of each image written. Every bad input ends the process with exit
status 2 and one line on stderr naming the problem and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# (flag, type, default, help): the one list that --help, --config and the defaults are built from.
_OPTIONS: list[tuple[str, type, Any, str]] = [
    ("model-path", str, None, "built-in id (flux-tiny, black-forest-labs/FLUX.1-dev), diffusers folder or hub id"),
    ("prompt", str, None, "the text prompt (a list of prompts in --config makes a batch)"),
    ("negative-prompt", str, None, "negative prompt; used when --true-cfg-scale > 1"),
    ("height", int, None, "image height in pixels, a multiple of 16 in [16, 4096] (default: the model's)"),
    ("width", int, None, "image width in pixels, a multiple of 16 in [16, 4096] (default: the model's)"),
    ("num-inference-steps", int, None, "denoising steps in [1, 1000] (default: the model's, 28 for FLUX.1-dev)"),
    ("guidance-scale", float, None, "distilled guidance scale >= 0 (default: the model's, 3.5 for FLUX.1-dev)"),
    ("true-cfg-scale", float, 1.0, "true classifier-free guidance scale >= 1 with --negative-prompt (1 = off)"),
    ("seed", int, None, "random seed in [0, 2**63) (default: drawn at random and printed in the perf dump)"),
    ("num-images-per-prompt", int, 1, "images per prompt, in [1, 16]"),
    ("num-frames", int, None, "video models: frames, 4k+1 (default: the model's, 81 for Wan2.1)"),
    ("fps", int, None, "video models: frames per second of the MP4 (default: the model's, 16 for Wan2.1)"),
    ("image-path", str, None, "image-to-video models: the input image (the first frame)"),
    ("output-path", str, "outputs", "folder the PNG files are written to"),
    ("output-file-name", str, None, "file name of the PNG (default: <prompt>_<seed>.png; _<i> added for several)"),
    ("load-format", str, "auto", "auto (checkpoint weights) or dummy (random weights of the built-in architecture)"),
    ("device", str, None, "cpu, cuda or cuda:N (default: cuda when available, else cpu)"),
    ("dtype", str, "auto", "auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16 or float32"),
    ("attention-backend", str, None, "attention backend (default: FASTDIT_ATTENTION_BACKEND, else auto)"),
    ("kernel-backend", str, None, "fused-op backend: auto, cuda, triton, torch (default: FASTDIT_KERNEL_BACKEND)"),
    ("disable-cuda-graph", bool, False, "run the denoising steps eagerly (default: one CUDA graph per shape on GPU)"),
    ("enable-torch-compile", bool, False, "torch.compile the DiT (the first step of a new shape compiles, ~1-2 min)"),
    ("perf-dump-path", str, None, "write per-stage times and denoise_steps_ms to this JSON file"),
    ("num-gpus", int, 1, "GPUs for one generation, one process each (with --device cpu: gloo processes)"),
    ("ulysses-degree", int, None, "Ulysses sequence-parallel degree (default: the GPUs the other degrees leave)"),
    ("ring-degree", int, None, "ring-attention degree (default 1); ulysses x ring x (2 with CFG-parallel) = GPUs"),
    ("enable-cfg-parallel", bool, False, "run the two CFG branches on two halves of the GPUs (Wan; guidance > 1)"),
    ("tp-size", int, 1, "T5/UMT5 text encoder tensor-parallel over groups of T consecutive GPUs (T divides --num-gpus and the heads)"),
]
_DEST = {flag.replace("-", "_"): (flag, kind, default) for flag, kind, default, _ in _OPTIONS}


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage + error (two lines) and exits on a bad flag; we raise, and main prints one line."""

    def error(self, message: str) -> None:
        raise ValueError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m fastdit.generate",
        description="Generate images with a diffusion transformer and write them as PNG files.",
    )
    parser.add_argument("--config", default=None, help="JSON or YAML file of options named as these flags")
    for flag, kind, default, help_text in _OPTIONS:
        # default None here: a flag the user did not give must not override the --config file
        if kind is bool:  # a switch: given means True
            parser.add_argument(f"--{flag}", action="store_true", default=None, help=help_text)
            continue
        shown = "" if default is None else f" (default: {default})"
        parser.add_argument(f"--{flag}", type=kind, default=None, help=help_text + shown)
    return parser


def read_config_file(path: str) -> dict[str, Any]:
    """Options from a JSON or YAML mapping; keys are flag names (- or _). Unknown keys are an error."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        # YAML is a superset of JSON, but JSON gets its own parser for exact JSON error messages.
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as e:
        reason = " ".join(str(e).split())
        raise ValueError(f"cannot read config file {path!r}: {reason}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of option names to values, not {type(data).__name__}")
    options = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in _DEST:
            raise ValueError(f"unknown key {key!r} in config file {path!r}; allowed: {', '.join(sorted(_DEST))}")
        options[dest] = value
    return options


def resolve_options(argv: list[str] | None) -> dict[str, Any]:
    """Defaults, overridden by --config, overridden by the flags given."""
    args = build_parser().parse_args(argv)
    options = {dest: default for dest, (_, _, default) in _DEST.items()}
    if args.config is not None:
        options.update(read_config_file(args.config))
    options.update({dest: value for dest, value in vars(args).items() if dest in _DEST and value is not None})
    for dest in ("model_path", "prompt"):
        if options[dest] is None:
            raise ValueError(f"--{_DEST[dest][0]} is required (on the command line or in --config)")
    for dest, (flag, kind, _) in _DEST.items():
        if kind is bool and not isinstance(options[dest], bool):
            raise ValueError(f"{flag}={options[dest]!r} is not allowed: {flag} must be true or false")
    return options


def run(options: dict[str, Any]) -> list[str]:
    """Load the model, generate, save; returns the paths written."""
    from fastdit.distributed import ParallelConfig, PipelineWorkers
    from fastdit.pipelines.request import GenerationRequest
    from fastdit.pipelines.runner import perf_dump, write_perf_dump
    from fastdit.pipelines.save import SaveTarget

    prompt = options["prompt"]
    if isinstance(prompt, list):  # JSON/YAML lists become a batch; GenerationRequest checks the entries
        prompt = tuple(prompt)
    # Built before loading so that a bad size or step count fails in milliseconds, not after the load.
    request = GenerationRequest(
        prompt=prompt, negative_prompt=options["negative_prompt"], height=options["height"],
        width=options["width"], num_inference_steps=options["num_inference_steps"],
        guidance_scale=options["guidance_scale"], true_cfg_scale=options["true_cfg_scale"], seed=options["seed"],
        num_images_per_prompt=options["num_images_per_prompt"], num_frames=options["num_frames"],
        fps=options["fps"], image=options["image_path"],
    )
    for dest in ("output_path", "output_file_name", "perf_dump_path"):
        if options[dest] is not None and not isinstance(options[dest], str):
            raise ValueError(f"{dest}={options[dest]!r} is not allowed: {dest} must be a string path")
    parallel = ParallelConfig.from_flags(options["num_gpus"], options["ulysses_degree"], options["ring_degree"],
                                         options["enable_cfg_parallel"], options["tp_size"])
    # One process per GPU (rank 0 saves); with one GPU the pipeline runs in this process, as before.
    pipe = PipelineWorkers(
        parallel, options["model_path"], device=options["device"], dtype=options["dtype"],
        load_format=options["load_format"], attention_backend=options["attention_backend"],
        kernel_backend=options["kernel_backend"], cuda_graph=False if options["disable_cuda_graph"] else None,
        torch_compile=options["enable_torch_compile"],
    )
    target = SaveTarget(options["output_path"], options["output_file_name"])
    try:
        result = pipe.run(request, save=target)
    finally:
        pipe.close()
    if options["perf_dump_path"]:
        meta = {"model": pipe.model_id, "device": str(pipe.device), "dtype": str(pipe.dtype).removeprefix("torch."),
                "attention_backend": pipe.info.attention_backend, "cuda_graph": pipe.info.cuda_graph,
                "torch_compile": options["enable_torch_compile"], "num_gpus": parallel.num_gpus,
                "ulysses_degree": parallel.ulysses_degree, "ring_degree": parallel.ring_degree,
                "cfg_parallel": parallel.cfg_parallel}
        write_perf_dump(options["perf_dump_path"], perf_dump(result, request.with_defaults(pipe.defaults), meta))
    return result.paths


def main(argv: list[str] | None = None) -> int:
    try:
        paths = run(resolve_options(argv))
    except (ValueError, OSError) as e:
        # Bad input (and unwritable paths) end in one line; anything else is a bug and keeps its traceback.
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"fastdit.generate: error: {message}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
