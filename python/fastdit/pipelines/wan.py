"""The Wan2.1 recipes: text-to-video (WanPipeline) and image-to-video (WanImageToVideoPipeline).

    validate -> encode -> timesteps -> latents -> denoise -> decode (-> save as MP4)

Each stage computes what diffusers' Wan pipelines compute, so that from the same initial latents the final
latents agree with `WanPipeline(..., output_type="latent")`:

    encode     UMT5 [B, 512, 4096], zero past each prompt's length; the negative prompt (Wan's default, the
               Chinese string below, when none is given) in the same encoder call. I2V: CLIP ViT-H/14
               penultimate states of the input image [1, 257, 1280].
    timesteps  UniPC flow matching (flow_shift) or flow-match Euler, from scheduler/scheduler_config.json
    latents    noise [B, 16, 1 + (F-1)/4, H/8, W/8] fp32. I2V condition [B, 20, T, h, w]: a 4-channel mask
               (1 on the first latent frame) and the VAE latents of (image, zeros...), normalised by mean/std
    denoise    both CFG branches in ONE DiT pass of batch 2B: v = v_neg + g * (v_pos - v_neg); x = step(v, x)
    decode     z * std + mean -> VAE (chunked in time) -> [0, 1] -> uint8 frames

Noise comes from a CPU torch.Generator seeded with the request's seed, in fp32, as diffusers' randn_tensor
draws it with a CPU generator: the same seed gives the same video on every device.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from fastdit.configs import wan as presets
from fastdit.loader.weights import read_config
from fastdit.models.dits.wan import WanTransformerConfig, load_wan_transformer
from fastdit.models.encoders.clip_vision import CLIPVisionEncoder
from fastdit.models.encoders.umt5 import MAX_SEQUENCE_LENGTH, UMT5TextEncoder
from fastdit.models.vaes.autoencoder_kl_wan import WanVAEConfig, load_autoencoder_kl_wan
from fastdit.pipelines.recipe import Recipe, read_scheduler_json, repeat_per_prompt, seeded_noise
from fastdit.pipelines.registry import ModelSource
from fastdit.pipelines.request import GenerationRequest, RunState, SamplingDefaults
from fastdit.pipelines.runner import timed_steps
from fastdit.pipelines.save import SaveTarget
from fastdit.pipelines.video import save_videos
from fastdit.schedulers.flow_match_euler import FlowMatchEulerScheduler, FlowMatchEulerSchedulerConfig
from fastdit.schedulers.unipc import UniPCMultistepScheduler, UniPCSchedulerConfig

# The Wan authors' default negative prompt (Wan2.1 shared_config.sample_neg_prompt). diffusers uses "" instead.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)
# diffusers' Wan pipelines: 480x832, 81 frames, 50 steps, guidance 5.0, exported at 16 fps
FOLDER_DEFAULTS = SamplingDefaults(height=480, width=832, num_inference_steps=50, guidance_scale=5.0)
# Latent frames the VAE decodes per pass after the first: 1 keeps diffusers' peak memory.
VAE_DECODE_CHUNK_FRAMES = 1
# On a GPU the VAE runs channels-last (NDHWC convs, fused channel norms): bench/e2e_wan.py times both layouts.
VAE_CHANNELS_LAST_ON_GPU = True
# cuDNN benchmark mode inside the GPU VAE's encode/decode (bench/e2e_wan.py's cl1b vs cl1 decides it).
VAE_CUDNN_BENCHMARK_ON_GPU = False


def vae_channels_last(device: torch.device) -> bool:
    """Whether the recipe runs its VAE channels-last on `device`: on GPUs (VAE_CHANNELS_LAST_ON_GPU)."""
    return torch.device(device).type == "cuda" and VAE_CHANNELS_LAST_ON_GPU


def video_to_uint8(video: torch.Tensor) -> np.ndarray:
    """video [B, 3, F, H, W] in [-1, 1] -> uint8 frames [B, F, H, W, 3] = round(clamp(v / 2 + 0.5, 0, 1) * 255).

    diffusers' postprocess (the [0, 1] map in the video's dtype, then * 255 and round half to even in fp32), run
    on the video's device: only the uint8 frames cross to the host (a quarter of the fp32 bytes) and the host does
    no per-pixel work (81 frames at 480x832: ~100 M values, hundreds of ms of single-threaded numpy).
    """
    video = (video / 2 + 0.5).clamp(0, 1)
    pixels = (video.permute(0, 2, 3, 4, 1).float() * 255).round().to(torch.uint8)
    return pixels.contiguous().cpu().numpy()


_SCHEDULERS = {"UniPCMultistepScheduler": UniPCSchedulerConfig, "FlowMatchEulerDiscreteScheduler": FlowMatchEulerSchedulerConfig}


@dataclass
class WanComponents:
    transformer: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: UMT5TextEncoder
    image_encoder: CLIPVisionEncoder | None  # I2V only
    scheduler_config: UniPCSchedulerConfig | FlowMatchEulerSchedulerConfig
    video_defaults: presets.VideoDefaults


@dataclass
class WanState(RunState):
    """One Wan run's tensors, each set by the stage named in its comment."""

    image: Image.Image | None = None  # validate (I2V): the RGB input image
    prompt_embeds: torch.Tensor | None = None  # encode: [B or 2B (negatives first), 512, text_dim]
    image_embeds: torch.Tensor | None = None  # encode (I2V): [B or 2B, 257, image_dim]
    scheduler: object = None  # timesteps
    condition: torch.Tensor | None = None  # latents (I2V): [B, 20, T, h, w] mask + image latents


class WanRecipe(Recipe):
    """Wan2.1 text-to-video; WanImageToVideoRecipe adds the image stages."""

    task = "text-to-video"
    pipeline_class = "WanPipeline"
    state_class = WanState

    def __init__(self, components: WanComponents, defaults: SamplingDefaults, model_id: str,
                 device: torch.device, dtype: torch.dtype, attention_backend: str):
        super().__init__(components, defaults, model_id, device, dtype, attention_backend)
        self.vae_scale_spatial = components.vae.config.scale_factor_spatial
        self.vae_scale_temporal = components.vae.config.scale_factor_temporal

    # load (Recipe.load calls these)

    @staticmethod
    def head_dim(source: ModelSource) -> int:
        # Self-attention (tens of thousands of keys) and cross-attention (512 text keys) may get different
        # kernels from the one op: it picks by key count.
        if source.folder is None:
            return presets.transformer_preset(source.spec.preset).attention_head_dim
        config = read_config(os.path.join(source.folder, "transformer"))
        return WanTransformerConfig.from_dict(config).attention_head_dim

    @classmethod
    def finish_load(cls, components: WanComponents, source: ModelSource, device: torch.device) -> None:
        """The checkpoint's kind must be this recipe's (T2V or I2V); the VAE's layout is chosen for `device`."""
        i2v = components.transformer.config.image_dim is not None
        if i2v != (cls.task == "image-to-video") or (components.image_encoder is None) == i2v:
            raise ValueError(
                f"{source.model_id!r}: a {cls.pipeline_class} needs a transformer "
                f"{'with' if cls.task == 'image-to-video' else 'without'} image conditioning (image_dim) and "
                f"{'an' if cls.task == 'image-to-video' else 'no'} image encoder"
            )
        if vae_channels_last(device):
            components.vae.set_channels_last(True)
            components.vae.cudnn_benchmark = VAE_CUDNN_BENCHMARK_ON_GPU

    @staticmethod
    def folder_defaults(components: WanComponents) -> SamplingDefaults:
        return FOLDER_DEFAULTS

    @staticmethod
    def dummy_components(preset: str, device, dtype, attn_op, kernel_backend: str) -> WanComponents:
        """The built-in architecture `preset` with random weights and a stand-in tokenizer: nothing downloaded."""
        image_preset = presets.IMAGE_ENCODER_PRESETS.get(preset)
        return WanComponents(
            transformer=load_wan_transformer(presets.transformer_preset(preset), None, dtype, device, attn_op,
                                             kernel_backend),
            vae=load_autoencoder_kl_wan(presets.vae_preset(preset), None, dtype, device, kernel_backend),
            text_encoder=UMT5TextEncoder.dummy(presets.TEXT_ENCODER_PRESETS[preset], dtype, device),
            image_encoder=CLIPVisionEncoder.dummy(image_preset, dtype, device) if image_preset else None,
            scheduler_config=presets.scheduler_preset(preset),
            video_defaults=presets.VIDEO_DEFAULTS[preset],
        )

    @staticmethod
    def folder_components(folder: str, device, dtype, attn_op, kernel_backend: str) -> WanComponents:
        """Every component from its subfolder of a diffusers Wan pipeline folder, weights strictly checked."""
        sub = lambda name: os.path.join(folder, name)  # noqa: E731
        t_config = WanTransformerConfig.from_dict(read_config(sub("transformer")))
        has_image_encoder = os.path.isdir(sub("image_encoder"))
        return WanComponents(
            transformer=load_wan_transformer(t_config, sub("transformer"), dtype, device, attn_op, kernel_backend),
            vae=load_autoencoder_kl_wan(
                WanVAEConfig.from_dict(read_config(sub("vae"))), sub("vae"), dtype, device, kernel_backend
            ),
            text_encoder=UMT5TextEncoder.from_pretrained(folder, dtype, device),
            image_encoder=CLIPVisionEncoder.from_pretrained(folder, dtype, device) if has_image_encoder else None,
            scheduler_config=_scheduler_config(folder),
            video_defaults=presets.WAN_VIDEO_DEFAULTS,
        )

    # run

    def with_defaults(self, request: GenerationRequest) -> GenerationRequest:
        video = self.components.video_defaults
        request = request.with_defaults(self.defaults)
        return dataclasses.replace(
            request, num_frames=request.num_frames or video.num_frames, fps=request.fps or video.fps
        )

    # stages

    def validate(self, request: GenerationRequest, state: WanState) -> None:
        """Wan's rules on top of the request's own: 4k+1 frames, no FLUX-only fields, latents' shape."""
        t = self.vae_scale_temporal
        if (request.num_frames - 1) % t:
            raise ValueError(
                f"num_frames={request.num_frames} is not allowed: {self.model_id} needs {t}k+1 frames (1, 5, 9, ..., 81)"
            )
        if request.true_cfg_scale != 1:
            raise ValueError(
                f"true_cfg_scale={request.true_cfg_scale} is not allowed: {self.model_id} takes its classifier-free "
                "guidance scale as guidance_scale"
            )
        self.validate_image(request, state)
        if request.latents is not None and tuple(request.latents.shape) != self._latent_shape(request):
            raise ValueError(
                f"latents of shape {tuple(request.latents.shape)} is not allowed: {self.model_id} at "
                f"{request.num_frames}x{request.height}x{request.width} needs shape {self._latent_shape(request)}"
            )

    def validate_image(self, request: GenerationRequest, state: WanState) -> None:
        if request.image is not None:
            raise ValueError(
                f"image is not allowed: {self.model_id} is a text-to-video model; an input image needs an "
                "image-to-video model (Wan2.1-I2V)"
            )

    def encode(self, request: GenerationRequest, state: WanState) -> None:
        """Prompts (and negatives, for CFG) -> UMT5 embeddings, negatives first: [2B or B, 512, D]."""
        prompts = request.prompts
        if self._cfg(request):
            negatives = request.negative_prompts or [WAN_NEGATIVE_PROMPT] * len(prompts)
            prompts = negatives + prompts
        embeds = self.components.text_encoder.encode(prompts, MAX_SEQUENCE_LENGTH)
        state.prompt_embeds = repeat_per_prompt(embeds, request.num_images_per_prompt).to(self.device, self.dtype)

    def prepare_timesteps(self, request: GenerationRequest, state: WanState) -> None:
        config, n = self.components.scheduler_config, request.num_inference_steps
        if isinstance(config, UniPCSchedulerConfig):
            state.scheduler = UniPCMultistepScheduler(config)
            state.scheduler.set_timesteps(n, device=self.device)
        else:
            state.scheduler = FlowMatchEulerScheduler(config)
            state.scheduler.set_timesteps(n, sigmas=euler_default_sigmas(config, n), device=self.device)

    def prepare_latents(self, request: GenerationRequest, state: WanState) -> None:
        """Initial noise [B, 16, T, h, w] fp32: the caller's, or drawn on the CPU from the seed."""
        if request.latents is not None:
            state.latents = request.latents.to(device=self.device, dtype=torch.float32)
            return
        state.latents = seeded_noise(self._latent_shape(request), state.seed, torch.float32).to(self.device)

    def denoise(self, request: GenerationRequest, state: WanState) -> None:
        """The sampling loop; RoPE and the projected text/image tokens are computed once, outside it."""
        latents = state.latents
        cfg = self._cfg(request)
        rope = self.transformer.rope(latents.shape, device=self.device)
        context = self.transformer.encode_context(state.prompt_embeds, state.image_embeds)
        for i, t in timed_steps(state, state.scheduler.timesteps, self.device):
            x = latents if state.condition is None else torch.cat([latents, state.condition], dim=1)
            x = x.to(self.dtype)
            if cfg:
                x = torch.cat([x, x])
            timestep = t.expand(x.shape[0])
            velocity = self.transformer(x, timestep, rope=rope, context=context)
            if cfg:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + request.guidance_scale * (cond - uncond)
            latents = state.scheduler.step(velocity, latents, i)
        state.latents = latents

    def decode(self, request: GenerationRequest, state: WanState) -> None:
        """Latents -> frames: z * std + mean (as diffusers: z / (1 / std) + mean), VAE, [-1, 1] -> uint8."""
        latents = state.latents.to(self.vae_dtype)
        mean, std = self.vae.latents_mean_std(latents.device, latents.dtype)
        latents = latents / (1.0 / std) + mean
        video = self.vae.decode(latents, chunk_frames=VAE_DECODE_CHUNK_FRAMES)  # [B, 3, F, H, W]
        if video is None:  # a follower rank of the split decode (distributed/vae.py): rank 0 owns the output
            return
        state.frames = [[Image.fromarray(frame) for frame in clip] for clip in video_to_uint8(video)]

    def save(self, request: GenerationRequest, state: WanState, target: SaveTarget) -> None:
        state.paths = save_videos(state.frames, target, request.prompts[0], state.seed, request.fps)

    # helpers

    def _latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        s = self.vae_scale_spatial
        frames = (request.num_frames - 1) // self.vae_scale_temporal + 1
        return (request.batch_size, self.vae.config.z_dim, frames, request.height // s, request.width // s)

    @staticmethod
    def _cfg(request: GenerationRequest) -> bool:
        return request.guidance_scale > 1.0  # as diffusers' do_classifier_free_guidance


class WanImageToVideoRecipe(WanRecipe):
    """Wan2.1 I2V: the first frame is given; the DiT sees it as 20 extra latent channels and CLIP tokens."""

    task = "image-to-video"
    pipeline_class = "WanImageToVideoPipeline"

    def validate_image(self, request: GenerationRequest, state: WanState) -> None:
        if request.image is None:
            raise ValueError(f"image is required: {self.model_id} is an image-to-video model; give an input image (--image-path)")
        state.image = load_image(request.image)

    def encode(self, request: GenerationRequest, state: WanState) -> None:
        super().encode(request, state)
        tokens = self.components.image_encoder.encode(state.image)  # [1, 257, image_dim]
        state.image_embeds = tokens.to(self.device, self.dtype).expand(state.prompt_embeds.shape[0], -1, -1)

    def prepare_latents(self, request: GenerationRequest, state: WanState) -> None:
        """Noise as T2V, plus the condition: mask [B, 4, T, h, w] (1 on latent frame 0) and the normalised VAE
        latents of the image followed by num_frames - 1 black frames."""
        super().prepare_latents(request, state)
        B, _, T, h, w = state.latents.shape
        pixels = _image_to_tensor(state.image, request.height, request.width).to(self.device)  # [1, 3, H, W]
        video = torch.cat([pixels[:, :, None], pixels.new_zeros(1, 3, request.num_frames - 1, *pixels.shape[-2:])], dim=2)
        latent = self.vae.encode(video.to(self.vae_dtype)).to(torch.float32)  # [1, 16, T, h, w]
        mean, std = self.vae.latents_mean_std(self.device, torch.float32)
        latent = ((latent - mean) * (1.0 / std)).repeat(B, 1, 1, 1, 1)
        mask = torch.zeros(B, self.vae_scale_temporal, T, h, w, device=self.device)
        mask[:, :, 0] = 1
        state.condition = torch.cat([mask, latent], dim=1)


def euler_default_sigmas(config: FlowMatchEulerSchedulerConfig, n: int) -> np.ndarray:
    """The sigmas diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps(n) makes when given none (as
    WanPipeline calls it), before its shift: linspace between the first and last SHIFTED training sigmas.
    (The last one is thus shifted twice; FluxPipeline avoids this by passing linspace(1, 1/n, n).)"""
    T = config.num_train_timesteps
    train = torch.from_numpy(np.linspace(1, T, T, dtype=np.float32)[::-1].copy()) / T
    train = config.shift * train / (1 + (config.shift - 1) * train)
    return np.linspace(train[0].item() * T, train[-1].item() * T, n) / T


def load_image(image) -> Image.Image:
    """A PIL image, or the path of one, as RGB; anything unreadable is a one-line ValueError."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, os.PathLike)):
        raise ValueError(f"image of type {type(image).__name__} is not allowed: give a PIL image or an image file path")
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"image={os.fspath(image)!r} is not allowed: cannot read it as an image ({reason})") from None


def _image_to_tensor(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """diffusers' VaeImageProcessor.preprocess: Lanczos resize to (width, height), [0, 255] -> [-1, 1], [1, 3, H, W]."""
    resized = np.asarray(image.resize((width, height), resample=Image.LANCZOS), dtype=np.float32) / 255.0
    return torch.from_numpy(resized).permute(2, 0, 1)[None] * 2.0 - 1.0


# loading


def _scheduler_config(folder: str):
    data, path = read_scheduler_json(folder)
    name = data.get("_class_name")
    if name not in _SCHEDULERS:
        raise ValueError(f"scheduler {name!r} in {path!r} is not supported; supported: {', '.join(sorted(_SCHEDULERS))}")
    config = _SCHEDULERS[name].from_dict(data)
    if getattr(config, "use_dynamic_shifting", False):
        raise ValueError(f"{path!r}: use_dynamic_shifting needs a resolution-dependent mu, which Wan pipelines do not pass")
    return config
