"""fastdit.Pipeline: how a model argument resolves, and the one-line errors for each way it can be wrong."""

from __future__ import annotations

import json

import pytest
import torch

from fastdit import Pipeline
from fastdit.pipelines.api import parse_device, parse_dtype, resolve_model
from fastdit.pipelines.request import GenerationRequest


def test_builtin_ids_resolve_without_download():
    source, pipeline_class = resolve_model("flux-tiny", "auto")
    assert pipeline_class == "FluxPipeline" and source.folder is None and source.spec.preset == "flux-tiny"
    source, _ = resolve_model("black-forest-labs/FLUX.1-dev", "dummy")
    assert source.folder is None and source.spec.defaults.num_inference_steps == 28
    assert (source.spec.defaults.height, source.spec.defaults.guidance_scale) == (1024, 3.5)


def test_folder_needs_model_index_and_a_known_class(tmp_path):
    with pytest.raises(ValueError, match=r"is not a diffusers pipeline folder: it has no model_index.json$"):
        resolve_model(str(tmp_path), "auto")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match=r"is a 'StableDiffusionPipeline', which fastdit does not run; supported: .*FluxPipeline"):
        Pipeline.from_pretrained(str(tmp_path), device="cpu")
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"^cannot read the pipeline class from .*model_index.json"):
        resolve_model(str(tmp_path), "auto")


def test_dummy_needs_a_builtin_architecture(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match=r"^load_format='dummy' takes a built-in model id, not the folder"):
        Pipeline.from_pretrained(str(tmp_path), device="cpu", load_format="dummy")
    with pytest.raises(ValueError, match=r"^model='someone/flux-finetune' has no built-in architecture"):
        resolve_model("someone/flux-finetune", "dummy")


@pytest.mark.parametrize("model", ["", "no-such-model", "./no/such/dir", 42])
def test_unknown_models(model):
    with pytest.raises(ValueError, match=r"^(unknown model or folder|model=)"):
        resolve_model(model, "auto")


def test_device_and_dtype_parsing():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"^device='tpu' is not allowed: device must be cpu, cuda or cuda:N$"):
        parse_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"no CUDA GPU is visible; use --device cpu"):
            parse_device("cuda")
    cpu = torch.device("cpu")
    assert parse_dtype("bf16", cpu) is torch.bfloat16 and parse_dtype(torch.float16, cpu) is torch.float16
    assert parse_dtype("auto", cpu) is torch.float32 and parse_dtype("auto", torch.device("cuda")) is torch.bfloat16
    with pytest.raises(ValueError, match=r"^dtype=torch.int8 is not allowed"):
        parse_dtype(torch.int8, cpu)


def test_builtin_tiny_model_end_to_end():
    pipe = Pipeline.from_pretrained("flux-tiny", device="cpu", dtype=torch.float32, load_format="dummy")
    assert (pipe.task, pipe.model_id, pipe.dtype, pipe.device) == ("text-to-image", "flux-tiny", torch.float32,
                                                                     torch.device("cpu"))
    images = pipe(["a fox", "a cat"], height=32, width=48, num_inference_steps=1, seed=0, show_progress=False)
    assert [im.size for im in images] == [(48, 32), (48, 32)]
    latents = pipe("a fox", height=32, width=48, num_inference_steps=1, seed=0, output_type="latent",
                   show_progress=False)
    assert latents.shape == (1, 6, 64)  # (32/16) * (48/16) packed tokens of 4 x 16 channels
    again = pipe("a fox", height=32, width=48, num_inference_steps=1, seed=0, output_type="latent",
                 show_progress=False)
    assert torch.equal(latents, again)  # a seed fixes the result
    result = pipe.run(GenerationRequest(prompt="a fox", height=32, width=32, num_inference_steps=1),
                      show_progress=False)
    assert 0 <= result.seed < 2**63 and result.latents.shape == (1, 4, 64)  # the drawn seed is reported
