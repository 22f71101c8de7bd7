"""Request bodies of the HTTP API, validated once, into the frozen `GenerationSpec` the worker runs.

    spec = parse_image_generation(json_body, limits)          # POST /v1/images/generations
    spec = parse_video_creation(fields, files, limits)         # POST /v1/videos (multipart or JSON)
    check_image_edit(fields, files, limits)                    # POST /v1/images/edits

Every rule failure raises `APIError` 400 with one line naming the parameter, the value, and what is allowed,
and `param` set to the parameter's name. Allowed values (beyond OpenAI's own names):
    prompt                 a non-empty string of at most MAX_PROMPT_CHARS characters
    n                      an integer in [1, --max-batch-size]
    size                   "WIDTHxHEIGHT", both multiples of 16, width*height <= --max-pixels; "auto" or absent
                           for the model's default
    response_format        "b64_json" (default) or "url"
    output_format          "png" (default), "jpeg" or "webp"; output_compression 0..100 for jpeg/webp quality
    seed                   an integer in [0, 2**63); absent for a random one
    num_inference_steps    an integer in [1, 1000];  guidance_scale a finite number >= 0;
    true_cfg_scale         a finite number >= 1;     negative_prompt a string (same length limit as prompt)
    fastdit_test_fault     only when the server runs with --enable-test-faults: "raise", "oom", "sleep:S"
This module is torch-free: it runs in the HTTP process. The pipeline validates the request once more in the worker.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from typing import Any

from fastdit.server.errors import APIError, bad_request

MAX_PROMPT_CHARS = 4000
SIZE_MULTIPLE = 16
MAX_STEPS = 1000
MAX_SEED = 2**63
MAX_FRAMES = 1024
RESPONSE_FORMATS = ("b64_json", "url")
IMAGE_FORMATS = ("png", "jpeg", "webp")
TEST_FAULTS = ("raise", "oom")
MAX_TEST_SLEEP_S = 60.0
# OpenAI parameters that steer models we do not serve (DALL-E styles, moderation): accepted and ignored so
# that clients written for OpenAI work unchanged.
IGNORED_PARAMS = frozenset({"quality", "style", "user", "moderation", "safety_identifier", "background", "partial_images"})
IMAGE_PARAMS = frozenset({
    "model", "prompt", "n", "size", "response_format", "output_format", "output_compression", "seed",
    "num_inference_steps", "guidance_scale", "true_cfg_scale", "negative_prompt", "stream", "fastdit_test_fault",
})
VIDEO_PARAMS = frozenset({
    "model", "prompt", "seconds", "size", "input_reference", "seed", "num_inference_steps", "guidance_scale",
    "negative_prompt", "num_frames", "fps", "fastdit_test_fault",
})
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class Limits:
    """The server's request limits (from ServerConfig) and the one model it serves."""

    model_name: str
    max_batch_size: int
    max_pixels: int
    enable_test_faults: bool = False
    video_fps: int | None = None  # a video model's default frame rate, to turn `seconds` into frames


@dataclass(frozen=True)
class GenerationSpec:
    """One validated generation request, as the worker receives it (picklable, torch-free).

    kind "image": n images of height x width; kind "video": one clip of num_frames frames at fps, encoded as MP4.
    None fields are filled from the model's sampling defaults by the pipeline.
    """

    kind: str
    prompt: str
    n: int = 1
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float = 1.0
    negative_prompt: str | None = None
    seed: int | None = None
    output_format: str = "png"
    output_compression: int | None = None
    num_frames: int | None = None
    fps: int | None = None
    image: bytes | None = None
    test_fault: str | None = None


class _Reader:
    """Reads typed parameters from a JSON object (typed values) or a multipart form (every value a string)."""

    def __init__(self, values: dict[str, Any], from_form: bool):
        self.values = values
        self.from_form = from_form

    def get(self, name: str) -> Any:
        value = self.values.get(name)
        return None if (self.from_form and value == "") else value

    def integer(self, name: str, low: int, high: int, default: int | None = None, allow_str: bool = False) -> int | None:
        value = self.get(name)
        if value is None:
            return default
        if (self.from_form or allow_str) and isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise bad_request(f"{name}={_show(value)} is not allowed: {name} must be an integer in [{low}, {high}]", name)
        return value

    def number(self, name: str, low: float, rule: str) -> float | None:
        value = self.get(name)
        if value is None:
            return None
        if self.from_form and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low
        if not ok:
            raise bad_request(f"{name}={_show(value)} is not allowed: {name} must be {rule}", name)
        return float(value)

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.get(name)
        if value is None:
            return default
        if value not in allowed:
            raise bad_request(f"{name}={_show(value)} is not allowed: use one of {', '.join(allowed)}", name)
        return value

    def text(self, name: str, required: bool) -> str | None:
        value = self.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise bad_request(f"{name}={_show(value)} is not allowed: {name} must be a non-empty string", name)
        if len(value) > MAX_PROMPT_CHARS:
            raise bad_request(
                f"{name} has {len(value)} characters: at most {MAX_PROMPT_CHARS} are allowed", name, "string_above_max_length"
            )
        return value


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def parse_size(value: Any, max_pixels: int) -> tuple[int | None, int | None]:
    """ "WIDTHxHEIGHT" -> (width, height); None or "auto" -> (None, None) for the model's default."""
    if value is None or value == "auto":
        return None, None
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise bad_request(f"size={_show(value)} is not allowed: size must be \"WIDTHxHEIGHT\" (e.g. \"1024x1024\") or \"auto\"", "size")
    width, height = int(match.group(1)), int(match.group(2))
    if width < SIZE_MULTIPLE or height < SIZE_MULTIPLE or width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise bad_request(f"size={value!r} is not allowed: width and height must be positive multiples of {SIZE_MULTIPLE}", "size")
    if width * height > max_pixels:
        raise bad_request(
            f"size={value!r} is not allowed: {width * height} pixels is above this server's --max-pixels {max_pixels}", "size"
        )
    return width, height


def check_params(values: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(values) - allowed - IGNORED_PARAMS)
    if unknown:
        raise bad_request(
            f"unknown parameter(s) {', '.join(unknown)}: allowed are {', '.join(sorted(allowed))}", unknown[0], "unknown_parameter"
        )


def check_model(reader: _Reader, limits: Limits) -> None:
    model = reader.get("model")
    if model is not None and model != limits.model_name:
        raise bad_request(
            f"model={_show(model)} is not served here: this server serves {limits.model_name!r}", "model", "model_not_found"
        )


def parse_test_fault(reader: _Reader, limits: Limits) -> str | None:
    value = reader.get("fastdit_test_fault")
    if value is None:
        return None
    if not limits.enable_test_faults:
        raise bad_request("fastdit_test_fault is only accepted when the server runs with --enable-test-faults", "fastdit_test_fault")
    if value in TEST_FAULTS:
        return value
    match = re.fullmatch(r"sleep:(\d+(\.\d+)?)", value) if isinstance(value, str) else None
    if match is None or not 0 < float(match.group(1)) <= MAX_TEST_SLEEP_S:
        raise bad_request(
            f"fastdit_test_fault={_show(value)} is not allowed: use one of {', '.join(TEST_FAULTS)} or "
            f"\"sleep:S\" with 0 < S <= {MAX_TEST_SLEEP_S:g}", "fastdit_test_fault",
        )
    return value


def _sampling(reader: _Reader) -> dict[str, Any]:
    """The sampling parameters shared by images and videos."""
    return {
        "seed": reader.integer("seed", 0, MAX_SEED - 1),
        "num_inference_steps": reader.integer("num_inference_steps", 1, MAX_STEPS),
        "guidance_scale": reader.number("guidance_scale", 0.0, "a finite number >= 0"),
        "negative_prompt": reader.text("negative_prompt", required=False),
    }


def parse_image_generation(body: Any, limits: Limits) -> tuple[GenerationSpec, str]:
    """JSON body of POST /v1/images/generations -> (spec, response_format)."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}", None, "invalid_json")
    check_params(body, IMAGE_PARAMS)
    reader = _Reader(body, from_form=False)
    check_model(reader, limits)
    if reader.get("stream"):
        raise bad_request("stream=true is not supported: images are returned whole", "stream")
    width, height = parse_size(reader.get("size"), limits.max_pixels)
    true_cfg = reader.number("true_cfg_scale", 1.0, "a finite number >= 1 (1 = off)")
    spec = GenerationSpec(
        kind="image",
        prompt=reader.text("prompt", required=True),
        n=reader.integer("n", 1, limits.max_batch_size, default=1),
        width=width,
        height=height,
        true_cfg_scale=1.0 if true_cfg is None else true_cfg,
        output_format=reader.choice("output_format", IMAGE_FORMATS, "png"),
        output_compression=reader.integer("output_compression", 0, 100),
        test_fault=parse_test_fault(reader, limits),
        **_sampling(reader),
    )
    return spec, reader.choice("response_format", RESPONSE_FORMATS, "b64_json")


def _check_image_file(name: str, data: bytes) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise bad_request(f"{name} is not a readable image ({type(exc).__name__}): send a PNG, JPEG or WEBP file", name) from exc


def check_image_edit(fields: dict[str, Any], files: dict[str, list[bytes]], limits: Limits) -> str:
    """Validate a multipart POST /v1/images/edits; returns the response_format. Images are decoded to check them."""
    check_params({**fields, **files}, IMAGE_PARAMS | {"image", "image[]", "mask"})
    reader = _Reader(fields, from_form=True)
    check_model(reader, limits)
    images = files.get("image", []) + files.get("image[]", [])
    if not images:
        raise bad_request("image is required: send one or more image files as `image` or `image[]`", "image")
    for i, data in enumerate(images):
        _check_image_file(f"image[{i}]", data)
    for data in files.get("mask", []):
        _check_image_file("mask", data)
    reader.text("prompt", required=True)
    reader.integer("n", 1, limits.max_batch_size, default=1)
    parse_size(reader.get("size"), limits.max_pixels)
    reader.choice("output_format", IMAGE_FORMATS, "png")
    return reader.choice("response_format", RESPONSE_FORMATS, "b64_json")


def parse_video_creation(fields: dict[str, Any], files: dict[str, list[bytes]], limits: Limits, from_form: bool) -> GenerationSpec:
    """POST /v1/videos (multipart as OpenAI's client sends it, or JSON) -> spec of kind "video".

    `seconds` sets num_frames = seconds * fps + 1 (fps: the request's, else the model's) when num_frames is not
    given; with neither, the model's default clip length is used. The pipeline checks the model's own frame-count
    rule (Wan: 4k + 1, which seconds * 16 fps + 1 always meets).
    """
    check_params({**fields, **files}, VIDEO_PARAMS)
    reader = _Reader(fields, from_form=from_form)
    check_model(reader, limits)
    width, height = parse_size(reader.get("size"), limits.max_pixels)
    seconds = reader.integer("seconds", 1, 60, allow_str=True)  # OpenAI sends "4", "8", "12"
    fps = reader.integer("fps", 1, 120)
    num_frames = reader.integer("num_frames", 1, MAX_FRAMES)
    if num_frames is None and seconds is not None and (fps or limits.video_fps):
        num_frames = seconds * (fps or limits.video_fps) + 1
    references = files.get("input_reference", [])
    if len(references) > 1:
        raise bad_request(f"input_reference: {len(references)} files sent, at most one is allowed", "input_reference")
    for data in references:
        _check_image_file("input_reference", data)
    return GenerationSpec(
        kind="video",
        prompt=reader.text("prompt", required=True),
        width=width,
        height=height,
        output_format="mp4",
        num_frames=num_frames,
        fps=fps,
        image=references[0] if references else None,
        test_fault=parse_test_fault(reader, limits),
        **_sampling(reader),
    )


def images_response(created: int, items: list[dict[str, str]], spec: GenerationSpec, size: str | None) -> dict[str, Any]:
    """OpenAI's ImagesResponse: {"created", "data": [{"b64_json"} | {"url"}], "output_format", "size"}."""
    return {"created": created, "data": items, "output_format": spec.output_format, "size": size}
