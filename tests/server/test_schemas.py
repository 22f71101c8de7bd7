"""Request validation of the HTTP API: every rule answers a 400 APIError naming the parameter."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from fastdit.server.errors import APIError
from fastdit.server.schemas import (
    MAX_PROMPT_CHARS, Limits, check_image_edit, parse_image_generation, parse_size, parse_video_creation,
)

LIMITS = Limits(model_name="flux-tiny", max_batch_size=4, max_pixels=512 * 512)
FAULTS = Limits(model_name="flux-tiny", max_batch_size=4, max_pixels=512 * 512, enable_test_faults=True)


def png_bytes(size=(8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def rejects(fn, *args, param, match):
    with pytest.raises(APIError) as info:
        fn(*args)
    assert info.value.status == 400
    assert info.value.param == param
    assert match in info.value.message
    body = info.value.body()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"


def test_a_full_request_becomes_its_spec():
    body = {"model": "flux-tiny", "prompt": "a fox", "n": 2, "size": "320x192", "response_format": "url",
            "output_format": "webp", "output_compression": 80, "seed": 7, "num_inference_steps": 3,
            "guidance_scale": 3.5, "negative_prompt": "blur", "true_cfg_scale": 2.0, "quality": "hd", "user": "u"}
    spec, response_format = parse_image_generation(body, LIMITS)
    assert response_format == "url"
    assert (spec.kind, spec.prompt, spec.n, spec.width, spec.height) == ("image", "a fox", 2, 320, 192)
    assert (spec.output_format, spec.output_compression, spec.seed, spec.num_inference_steps) == ("webp", 80, 7, 3)
    assert (spec.guidance_scale, spec.negative_prompt, spec.true_cfg_scale) == (3.5, "blur", 2.0)


def test_defaults_leave_sampling_to_the_model():
    spec, response_format = parse_image_generation({"prompt": "p"}, LIMITS)
    assert response_format == "b64_json"
    assert (spec.n, spec.width, spec.height, spec.seed, spec.num_inference_steps, spec.output_format) == (1, None, None, None, None, "png")


@pytest.mark.parametrize("size, match", [
    ("64", "WIDTHxHEIGHT"), ("64x", "WIDTHxHEIGHT"), ("-64x64", "WIDTHxHEIGHT"), (64, "WIDTHxHEIGHT"),
    ("100x64", "multiples of 16"), ("0x64", "multiples of 16"), ("528x512", "--max-pixels 262144"),
])
def test_bad_sizes(size, match):
    rejects(parse_image_generation, {"prompt": "p", "size": size}, LIMITS, param="size", match=match)


def test_size_auto_and_the_pixel_bound_itself():
    assert parse_size("auto", 100) == (None, None)
    assert parse_size("512x512", 512 * 512) == (512, 512)


@pytest.mark.parametrize("body, param, match", [
    ({"prompt": "p", "n": 0}, "n", "[1, 4]"),
    ({"prompt": "p", "n": 5}, "n", "[1, 4]"),
    ({"prompt": "p", "n": 2.0}, "n", "integer"),
    ({"prompt": "p", "n": True}, "n", "integer"),
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": "   "}, "prompt", "non-empty"),
    ({}, "prompt", "non-empty"),
    ({"prompt": ["a"]}, "prompt", "non-empty string"),
    ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "prompt", f"at most {MAX_PROMPT_CHARS}"),
    ({"prompt": "p", "negative_prompt": "x" * (MAX_PROMPT_CHARS + 1)}, "negative_prompt", "at most"),
    ({"prompt": "p", "response_format": "png"}, "response_format", "b64_json, url"),
    ({"prompt": "p", "output_format": "gif"}, "output_format", "png, jpeg, webp"),
    ({"prompt": "p", "seed": -1}, "seed", "[0, 9223372036854775807]"),
    ({"prompt": "p", "num_inference_steps": 0}, "num_inference_steps", "[1, 1000]"),
    ({"prompt": "p", "guidance_scale": float("nan")}, "guidance_scale", ">= 0"),
    ({"prompt": "p", "guidance_scale": -1}, "guidance_scale", ">= 0"),
    ({"prompt": "p", "true_cfg_scale": 0.5}, "true_cfg_scale", ">= 1"),
    ({"prompt": "p", "output_compression": 101}, "output_compression", "[0, 100]"),
    ({"prompt": "p", "model": "dall-e-3"}, "model", "serves 'flux-tiny'"),
    ({"prompt": "p", "stream": True}, "stream", "not supported"),
    ({"prompt": "p", "num_inference_step": 3}, "num_inference_step", "unknown parameter"),
    ({"prompt": "p", "fastdit_test_fault": "raise"}, "fastdit_test_fault", "--enable-test-faults"),
])
def test_bad_image_parameters(body, param, match):
    rejects(parse_image_generation, body, LIMITS, param=param, match=match)


def test_body_must_be_an_object():
    rejects(parse_image_generation, ["prompt"], LIMITS, param=None, match="JSON object")


def test_test_faults_only_with_the_flag_and_only_known_ones():
    spec, _ = parse_image_generation({"prompt": "p", "fastdit_test_fault": "sleep:1.5"}, FAULTS)
    assert spec.test_fault == "sleep:1.5"
    for bad in ("sleep:0", "sleep:61", "segfault", 3):
        rejects(parse_image_generation, {"prompt": "p", "fastdit_test_fault": bad}, FAULTS, param="fastdit_test_fault", match="not allowed")


def test_image_edit_form_is_validated_before_the_model_check():
    fields = {"prompt": "make it blue", "size": "64x64", "n": "2"}
    assert check_image_edit(fields, {"image[]": [png_bytes(), png_bytes()]}, LIMITS) == "b64_json"
    rejects(check_image_edit, fields, {}, LIMITS, param="image", match="image is required")
    rejects(check_image_edit, fields, {"image": [b"not an image"]}, LIMITS, param="image[0]", match="not a readable image")
    rejects(check_image_edit, fields, {"image": [png_bytes()], "mask": [b"x"]}, LIMITS, param="mask", match="not a readable")
    rejects(check_image_edit, {**fields, "n": "x"}, {"image": [png_bytes()]}, LIMITS, param="n", match="integer")
    rejects(check_image_edit, {**fields, "size": "65x64"}, {"image": [png_bytes()]}, LIMITS, param="size", match="multiples")
    rejects(check_image_edit, {"size": "64x64"}, {"image": [png_bytes()]}, LIMITS, param="prompt", match="non-empty")


def test_video_form_values_are_strings_and_seconds_sets_frames():
    spec = parse_video_creation(
        {"prompt": "waves", "seconds": "4", "fps": "16", "size": "480x272", "seed": "3"},
        {"input_reference": [png_bytes()]}, LIMITS, from_form=True,
    )
    assert (spec.kind, spec.num_frames, spec.fps, spec.width, spec.height, spec.seed) == ("video", 65, 16, 480, 272, 3)
    assert spec.image == png_bytes() and spec.output_format == "mp4"
    json_spec = parse_video_creation({"prompt": "waves", "seconds": "8", "num_frames": 33}, {}, LIMITS, from_form=False)
    assert (json_spec.num_frames, json_spec.fps) == (33, None)
    rejects(parse_video_creation, {"prompt": "w", "seconds": "four"}, {}, LIMITS, True, param="seconds", match="integer")
    rejects(parse_video_creation, {"prompt": "w"}, {"input_reference": [png_bytes(), png_bytes()]}, LIMITS, True,
            param="input_reference", match="at most one")
