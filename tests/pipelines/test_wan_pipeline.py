"""The Wan recipes against diffusers' WanPipeline / WanImageToVideoPipeline on tiny random checkpoints saved
to disk: final latents from the same initial latents (fp32, rel L2 <= 1e-4), decoded frames, MP4 output and
one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fastdit.models.encoders.clip_vision import clip_vision_preset, default_image_processor
from fastdit.models.encoders.tokenizers import t5_standin_tokenizer
from fastdit.models.encoders.umt5 import umt5_preset
from fastdit.pipelines.registry import ModelSource, recipe_class
from fastdit.pipelines.request import GenerationRequest
from fastdit.pipelines.save import SaveTarget
from fastdit.pipelines.video import read_mp4
from fastdit.pipelines.wan import WAN_NEGATIVE_PROMPT

diffusers = pytest.importorskip("diffusers")
from transformers import CLIPVisionModel, UMT5EncoderModel  # noqa: E402

HEIGHT, WIDTH, FRAMES, STEPS = 32, 48, 5, 3
SCHEDULER = dict(
    prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000,
    solver_order=2, solver_type="bh2", predict_x0=True, lower_order_final=True,
)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _randomize(module: torch.nn.Module, scale: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _save_pipeline(folder, i2v: bool):
    torch.manual_seed(0)
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36 if i2v else 16,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=40, num_layers=2, cross_attn_norm=True,
        rope_max_seq_len=64, image_dim=32 if i2v else None, added_kv_proj_dim=24 if i2v else None,
    )
    _randomize(transformer, 0.1)
    vae = diffusers.AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
    _randomize(vae, 0.05)
    parts = dict(
        transformer=transformer.eval(), vae=vae.eval(),
        text_encoder=UMT5EncoderModel(umt5_preset("wan-tiny")).eval(),
        tokenizer=t5_standin_tokenizer(300, 512),
        scheduler=diffusers.UniPCMultistepScheduler(**SCHEDULER),
    )
    if i2v:
        parts["image_encoder"] = CLIPVisionModel(clip_vision_preset("wan-tiny")).eval()
        parts["image_processor"] = default_image_processor(56)
        pipe = diffusers.WanImageToVideoPipeline(**parts)
    else:
        pipe = diffusers.WanPipeline(**parts)
    pipe.save_pretrained(folder)
    return pipe


def _ours(folder, pipeline_class: str):
    source = ModelSource(str(folder), str(folder), None)
    return recipe_class(pipeline_class, str(folder)).load(
        source, torch.device("cpu"), torch.float32, "auto", "auto", "torch"
    )


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_t2v")
    return _save_pipeline(folder, i2v=False), _ours(folder, "WanPipeline")


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_i2v")
    return _save_pipeline(folder, i2v=True), _ours(folder, "WanImageToVideoPipeline")


def _latents(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 16, 2, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(5))


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8))


def _request(**kw) -> GenerationRequest:
    base = dict(prompt="a red fox", height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS,
                guidance_scale=5.0, seed=0)
    return GenerationRequest(**{**base, **kw})


def test_t2v_final_latents_match_diffusers_with_wan_default_negative_prompt(t2v):
    ref, ours = t2v
    latents = _latents()
    expected = ref(
        prompt="a red fox", negative_prompt=WAN_NEGATIVE_PROMPT, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
        num_inference_steps=STEPS, guidance_scale=5.0, latents=latents.clone(), output_type="latent",
    ).frames
    # negative_prompt None: ours uses Wan's default negative prompt (diffusers would use "")
    got = ours.run(_request(latents=latents.clone(), output_type="latent"), show_progress=False)
    assert got.latents.shape == expected.shape == (1, 16, 2, 4, 6)
    assert _rel(got.latents, expected) <= 1e-4
    assert [s["step"] for s in got.timings["denoise_steps_ms"]] == list(range(STEPS))


def test_t2v_frames_and_mp4(t2v, tmp_path):
    ref, ours = t2v
    latents = _latents(2)
    expected = ref(
        prompt=["a red fox", "a hen"], negative_prompt="", height=HEIGHT, width=WIDTH, num_frames=FRAMES,
        num_inference_steps=STEPS, guidance_scale=4.0, latents=latents.clone(), output_type="np",
    ).frames  # [2, F, H, W, 3] in [0, 1]
    got = ours.run(
        _request(prompt=["a red fox", "a hen"], negative_prompt="", guidance_scale=4.0, latents=latents.clone(), fps=7),
        save=SaveTarget(str(tmp_path)), show_progress=False,
    )
    frames = np.stack([np.stack([np.asarray(f) for f in clip]) for clip in got.frames])
    assert frames.shape == (2, FRAMES, HEIGHT, WIDTH, 3)
    assert np.abs(frames.astype(np.int32) - np.round(expected * 255).astype(np.int32)).max() <= 1
    assert len(got.paths) == 2 and got.paths[0].endswith("_0.mp4")
    video, fps = read_mp4(got.paths[1])
    assert video.shape == (FRAMES, HEIGHT, WIDTH, 3) and fps == 7


def test_video_to_uint8_equals_the_host_postprocess():
    """The on-device uint8 conversion gives the same bytes as diffusers' numpy postprocess, edges included."""
    from fastdit.pipelines.wan import video_to_uint8

    video = torch.randn(2, 3, 5, 7, 9, generator=torch.Generator().manual_seed(1)) * 1.5  # some outside [-1, 1]
    video[0, 0, 0, 0, :4] = torch.tensor([-1.0, 1.0, 1 / 255 - 1, 3 / 255 - 1])  # ends and .5 ties after * 255
    for v in (video, video.bfloat16()):
        expected = ((v / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).float().numpy() * 255).round().astype(np.uint8)
        got = video_to_uint8(v)
        assert got.dtype == np.uint8 and got.shape == (2, 5, 7, 9, 3)
        assert np.array_equal(got, expected)


def test_vae_channels_last_on_gpu_only_and_the_pipeline_takes_it(t2v, monkeypatch):
    """The recipe's load turns the VAE channels-last where vae_channels_last(device) says so (CUDA devices);
    forced on the CPU, a whole run takes that path and gives the frames of the NCDHW path."""
    import fastdit.pipelines.wan as wan

    assert wan.vae_channels_last(torch.device("cuda")) and wan.vae_channels_last("cuda:1")
    assert not wan.vae_channels_last(torch.device("cpu"))
    _, ours = t2v
    assert not ours.vae.channels_last
    monkeypatch.setattr(wan, "vae_channels_last", lambda device: True)
    forced = _ours(ours.model_id, "WanPipeline")
    assert forced.vae.channels_last
    conv = forced.vae.decoder.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    latents = _latents()
    got = forced.run(_request(latents=latents.clone()), show_progress=False).frames[0]
    expected = ours.run(_request(latents=latents.clone()), show_progress=False).frames[0]
    diff = max(np.abs(np.asarray(a, dtype=np.int32) - np.asarray(b, dtype=np.int32)).max() for a, b in zip(got, expected))
    assert len(got) == FRAMES and diff <= 1


def test_t2v_with_flow_match_euler_from_the_checkpoint(t2v, tmp_path):
    """Wan checkpoints may ship FlowMatchEulerDiscreteScheduler instead of UniPC: the folder's config picks it."""
    import copy
    import dataclasses

    from fastdit.pipelines.wan import _scheduler_config

    ref, ours = t2v
    ref = copy.copy(ref)  # the fixture's pipeline keeps its UniPC scheduler
    ref.scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.scheduler.save_pretrained(tmp_path / "scheduler")
    config = _scheduler_config(str(tmp_path))
    assert type(config).__name__ == "FlowMatchEulerSchedulerConfig" and config.shift == 3.0
    ours = type(ours)(dataclasses.replace(ours.components, scheduler_config=config), ours.defaults, ours.model_id,
                      ours.device, ours.dtype, ours.attention_backend)
    latents = _latents()
    expected = ref(
        prompt="a red fox", negative_prompt="", height=HEIGHT, width=WIDTH, num_frames=FRAMES,
        num_inference_steps=STEPS, guidance_scale=5.0, latents=latents.clone(), output_type="latent",
    ).frames
    got = ours.run(_request(negative_prompt="", latents=latents.clone(), output_type="latent"), show_progress=False)
    assert _rel(got.latents, expected) <= 1e-4


def test_i2v_final_latents_match_diffusers(i2v):
    ref, ours = i2v
    latents = _latents()
    expected = ref(
        image=_image(), prompt="a red fox", negative_prompt="blurry", height=HEIGHT, width=WIDTH,
        num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=5.0, latents=latents.clone(),
        output_type="latent",
    ).frames
    got = ours.run(_request(image=_image(), negative_prompt="blurry", latents=latents.clone(), output_type="latent"),
                   show_progress=False)
    assert _rel(got.latents, expected) <= 1e-4


def test_bad_inputs_are_one_line_errors(t2v, i2v, tmp_path):
    _, t2v_recipe = t2v
    _, i2v_recipe = i2v
    cases = [
        (t2v_recipe, _request(num_frames=8), "num_frames=8 is not allowed: .* needs 4k\\+1 frames"),
        (t2v_recipe, _request(image=_image()), "is a text-to-video model"),
        (t2v_recipe, _request(true_cfg_scale=2.0), "true_cfg_scale=2.0 is not allowed"),
        (t2v_recipe, _request(latents=torch.zeros(1, 16, 3, 4, 6)), "needs shape \\(1, 16, 2, 4, 6\\)"),
        (i2v_recipe, _request(), "image is required: .* \\(--image-path\\)"),
        (i2v_recipe, _request(image=str(tmp_path / "missing.png")), "cannot read it as an image"),
    ]
    (tmp_path / "junk.png").write_bytes(b"not a png")
    cases.append((i2v_recipe, _request(image=str(tmp_path / "junk.png")), "junk.png' is not allowed: cannot read"))
    for recipe, request, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            recipe.run(request, show_progress=False)
        assert "\n" not in str(info.value)


def test_attention_backend_resolved_once_at_load(t2v, tmp_path):
    pipe, recipe = t2v
    assert recipe.attention_backend == "sdpa"  # the selector's choice on a CPU
    folder = tmp_path / "t2v"
    pipe.save_pretrained(folder)
    source = ModelSource(str(folder), str(folder), None)
    with pytest.raises(ValueError, match="attention backend 'fastdit' cannot run here: .*'sdpa' would") as info:
        recipe_class("WanPipeline", str(folder)).load(source, torch.device("cpu"), torch.float32, "auto", "fastdit", "torch")
    assert "\n" not in str(info.value)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from fastdit.generate import main

    code = main(["--load-format", "dummy", "--device", "cpu", "--num-inference-steps", "1", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_writes_playable_mp4s(capsys, tmp_path):
    code, out, _ = _cli(capsys, "--model-path", "wan-tiny", "--prompt", "a fox", "--seed", "3", "--num-frames", "5",
                        "--output-path", str(tmp_path))
    assert code == 0 and out.strip().endswith("a-fox_3.mp4")
    video, fps = read_mp4(out.strip())
    assert video.shape == (5, 64, 64, 3) and fps == 8 and video.std() > 1  # wan-tiny's size and fps, not blank

    image = tmp_path / "first.png"
    _image().save(image)
    code, out, _ = _cli(capsys, "--model-path", "wan-tiny-i2v", "--prompt", "a fox", "--image-path", str(image),
                        "--num-frames", "5", "--fps", "4", "--height", "32", "--width", "48",
                        "--output-path", str(tmp_path), "--output-file-name", "clip")
    assert code == 0 and out.strip() == str(tmp_path / "clip.mp4")
    video, fps = read_mp4(out.strip())
    assert video.shape == (5, 32, 48, 3) and fps == 4


def test_cli_bad_inputs_exit_2_with_one_line(capsys, tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png")
    cases = [
        (["--model-path", "wan-tiny", "--num-frames", "6"], "num_frames=6 is not allowed"),
        (["--model-path", "wan-tiny-i2v"], "image is required"),
        (["--model-path", "wan-tiny-i2v", "--image-path", str(tmp_path / "junk.png")], "cannot read it as an image"),
    ]
    for args, message in cases:
        code, out, err = _cli(capsys, "--prompt", "a fox", "--output-path", str(tmp_path), *args)
        assert code == 2 and out == ""
        # (log lines may share stderr; the error itself is exactly one line)
        lines = [line for line in err.splitlines() if line.startswith("fastdit.generate: error:")]
        assert len(lines) == 1 and message in lines[0], err


@pytest.mark.gpu
def test_bf16_on_gpu_matches_diffusers(tmp_path):
    """The GPU path (fused kernels, auto attention, channels-last VAE) in bf16 against diffusers' WanPipeline in
    bf16 from the same checkpoint and initial latents: final latents and decoded frames within 2e-2."""
    from fastdit.pipelines.api import Pipeline

    peer = _save_pipeline(tmp_path, i2v=False).to("cuda", torch.bfloat16)
    peer.set_progress_bar_config(disable=True)
    ours = Pipeline.from_pretrained(str(tmp_path), device="cuda", dtype=torch.bfloat16)
    assert ours.recipe.vae.channels_last
    latents = _latents()
    kwargs = dict(prompt="a red fox", negative_prompt="", height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                  num_inference_steps=STEPS, guidance_scale=5.0)
    expected_latents = peer(latents=latents.to("cuda"), output_type="latent", **kwargs).frames
    expected_frames = peer(latents=latents.to("cuda"), output_type="np", **kwargs).frames[0]  # [F, H, W, 3] in [0, 1]
    got = ours.run(_request(negative_prompt="", latents=latents.clone()), show_progress=False)
    frames = np.stack([np.asarray(f) for f in got.frames[0]]).astype(np.float32) / 255
    assert frames.shape == expected_frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert _rel(got.latents, expected_latents) <= 2e-2
    assert _rel(torch.from_numpy(frames), torch.from_numpy(np.asarray(expected_frames, dtype=np.float32))) <= 2e-2


@pytest.mark.gpu
def test_full_size_t2v_1_3b_dummy_81_frames_on_gpu():
    """Wan2.1-T2V-1.3B's full architecture with random weights at its defaults (480x832, 81 frames), 2 steps:
    finite latents, 81 decoded frames of the asked size (the VAE's whole-video decode fits)."""
    from fastdit.pipelines.api import Pipeline

    pipe = Pipeline.from_pretrained("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", device="cuda", load_format="dummy")
    result = pipe.run(GenerationRequest(prompt="a red fox in the snow", num_inference_steps=2, seed=0),
                      show_progress=False)
    assert result.latents.shape == (1, 16, 21, 60, 104) and torch.isfinite(result.latents).all()
    assert len(result.frames[0]) == 81 and result.frames[0][0].size == (832, 480)


@pytest.mark.gpu
def test_full_size_i2v_14b_480p_dummy_on_gpu():
    """Wan2.1-I2V-14B-480P's full architecture (DiT, UMT5-XXL, CLIP ViT-H/14, VAE encode) with random weights."""
    from fastdit.pipelines.api import Pipeline

    pipe = Pipeline.from_pretrained("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", device="cuda", load_format="dummy")
    assert pipe.task == "image-to-video"
    result = pipe.run(GenerationRequest(prompt="the fox turns its head", image=_image(), num_frames=17,
                                        num_inference_steps=2, seed=0), show_progress=False)
    assert result.latents.shape == (1, 16, 5, 60, 104) and torch.isfinite(result.latents).all()
    assert len(result.frames[0]) == 17 and result.frames[0][0].size == (832, 480)
