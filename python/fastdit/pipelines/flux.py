"""The FLUX.1 text-to-image recipe: validate -> encode -> timesteps -> latents -> denoise -> decode (-> save).

Each stage reads like BFL's sampling.py and computes what diffusers' FluxPipeline computes, so that from the
same initial latents the final latents agree with `FluxPipeline(..., output_type="latent")`:

    encode     CLIP-L pooled [B, 768] (77 tokens) + T5-XXL sequence [B, 512, 4096]; text_ids = 0 [512, 3]
    timesteps  sigmas linspace(1, 1/N, N), shifted by mu(image_seq_len) (flow-match Euler, schedulers/)
    latents    noise [B, C, 2*(H/2f), 2*(W/2f)] packed 2x2 -> [B, (H/2f)(W/2f), 4C]; f = VAE scale factor
    denoise    v = DiT(x, t/1000, guidance); true CFG: v = v_neg + s * (v - v_neg); x += (sigma' - sigma) v
    decode     unpack -> z / scaling_factor + shift_factor -> VAE decode -> [0, 1] -> uint8 PIL

Seeds: the noise is drawn by a CPU torch.Generator seeded with the request's seed, in the pipeline dtype, in
the unpacked shape, then packed and moved to the device, exactly as diffusers' `randn_tensor` does with a
CPU generator; so one seed gives the same noise on every device, and the same image as
`FluxPipeline(generator=torch.Generator("cpu").manual_seed(seed))`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from fastdit.configs.flux import flux_transformer_preset
from fastdit.configs.scheduler import scheduler_preset
from fastdit.configs.vae import vae_preset
from fastdit.loader.weights import read_config
from fastdit.models.dits.flux import FluxTransformer2DModel, load_flux_transformer
from fastdit.models.encoders.clip import CLIPTextEncoder
from fastdit.models.encoders.t5 import T5TextEncoder
from fastdit.models.vaes.autoencoder_kl import AutoencoderKL, dummy_autoencoder_kl, load_autoencoder_kl
from fastdit.pipelines.cuda_graph import GraphedDenoiser
from fastdit.pipelines.recipe import Recipe, read_scheduler_json, repeat_per_prompt, seeded_noise
from fastdit.pipelines.registry import ModelSource
from fastdit.pipelines.request import GenerationRequest, RunState, SamplingDefaults
from fastdit.pipelines.runner import timed_steps
from fastdit.pipelines.save import SaveTarget, save_images
from fastdit.schedulers.flow_match_euler import FlowMatchEulerScheduler, FlowMatchEulerSchedulerConfig

# Rows (steps x batch) of one modulation GEMM computed ahead (StepModulations): FLUX.1-dev's modulation weights
# (6.5 GB, a 2.2 ms memory-bound GEMM on an H100 at any row count up to this) are then read once for 8 image-
# steps instead of once per step, and the table holds 8 x 1.06M bf16 values (17 MB) whatever the batch.
MODULATION_ROWS = 8
T5_MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's max_sequence_length default (FLUX.1-dev was trained with 512)
# diffusers' FluxPipeline: default_sample_size 128 latent pixels -> 1024 px with the 8x VAE.
DEFAULT_SAMPLE_SIZE = 128


class StepModulations:
    """Each denoising step's `modulation` argument for the transformer (FluxTransformer2DModel.modulation_table),
    computed `chunk` = max(1, MODULATION_ROWS // B) steps at a time as the loop reaches them: step i's row is
    [B, sum n_i]. (From batch 8 on that is one step at a time, as the step itself would compute it.)

    timesteps [T, B] are the steps' forward timesteps (t / 1000 in the latents' dtype, as the loop passes
    them); guidance [B] | None and pooled [B, pool_dim] are the same every step. Nothing here reads a GPU value
    on the host."""

    def __init__(self, model: FluxTransformer2DModel, timesteps: torch.Tensor, guidance: torch.Tensor | None,
                 pooled: torch.Tensor) -> None:
        self.model, self.timesteps, self.guidance, self.pooled = model, timesteps, guidance, pooled
        self.chunk = max(1, MODULATION_ROWS // timesteps.shape[1])
        self._start, self._table = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        start = step - step % self.chunk
        if start != self._start:
            self._table = None  # the last chunk's table is free before the next one is allocated
            self._table = self.model.modulation_table(self.timesteps[start : start + self.chunk], self.guidance,
                                                      self.pooled)
            self._start = start
        return self._table[step - start]


# latent layout (diffusers FluxPipeline's static methods, same names)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: each 2x2 latent patch becomes one token, channels (C, dy, dx)."""
    b, c, h, w = latents.shape
    latents = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return latents.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(latents: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """[B, (h/2)(w/2), 4C] -> [B, C, h, w], the inverse of pack_latents."""
    b, _, packed_channels = latents.shape
    c = packed_channels // 4
    latents = latents.view(b, latent_height // 2, latent_width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(b, c, latent_height, latent_width)


def latent_image_ids(packed_height: int, packed_width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[(h/2)(w/2), 3] positions (0, row, column) of the packed image tokens, row-major."""
    ids = torch.zeros(packed_height, packed_width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(packed_height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(packed_width)[None, :]
    return ids.reshape(packed_height * packed_width, 3).to(device=device, dtype=dtype)


@dataclass
class FluxComponents:
    """The loaded modules of one FLUX checkpoint (diffusers' component names)."""

    transformer: FluxTransformer2DModel
    vae: AutoencoderKL
    text_encoder: CLIPTextEncoder  # CLIP-L + tokenizer/: pooled [B, pooled_projection_dim]
    text_encoder_2: T5TextEncoder  # T5-XXL + tokenizer_2/: sequence [B, 512, joint_attention_dim]
    scheduler_config: FlowMatchEulerSchedulerConfig

    def check_compatible(self, model_id: str) -> None:
        """The encoders' widths must be what the transformer projects from; else a one-line error."""
        config = self.transformer.config
        pairs = [
            ("text_encoder hidden_size", self.text_encoder.model.config.hidden_size,
             "pooled_projection_dim", config.pooled_projection_dim),
            ("text_encoder_2 d_model", self.text_encoder_2.model.config.d_model,
             "joint_attention_dim", config.joint_attention_dim),
            ("vae latent_channels * 4", self.vae.config.latent_channels * 4, "in_channels", config.in_channels),
        ]
        for name, value, expected_name, expected in pairs:
            if value != expected:
                raise ValueError(
                    f"{model_id}: {name}={value} does not match the transformer's {expected_name}={expected}"
                )


@dataclass
class FluxState(RunState):
    """One FLUX run's tensors, each set by the stage named in its comment."""

    prompt_embeds: torch.Tensor | None = None  # encode: [B, S_txt, joint_dim]
    pooled_prompt_embeds: torch.Tensor | None = None  # encode: [B, pooled_dim]
    negative_prompt_embeds: torch.Tensor | None = None  # encode (true CFG only)
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    text_ids: torch.Tensor | None = None  # encode: [S_txt, 3] zeros
    scheduler: FlowMatchEulerScheduler | None = None  # timesteps
    img_ids: torch.Tensor | None = None  # latents: [S_img, 3]
    latent_height: int = 0  # latents: unpacked latent sides (2 * packed sides)
    latent_width: int = 0


class FluxRecipe(Recipe):
    """FLUX.1 (dev, schnell-shaped configs, flux-tiny): components plus the stage functions over FluxState."""

    task = "text-to-image"
    state_class = FluxState
    supports_cuda_graph = True  # the denoising step can run as a captured CUDA graph (set_cuda_graph)

    def __init__(self, components: FluxComponents, defaults: SamplingDefaults, model_id: str,
                 device: torch.device, dtype: torch.dtype, attention_backend: str):
        super().__init__(components, defaults, model_id, device, dtype, attention_backend)
        self.vae_scale_factor = components.vae.config.scale_factor  # 2^(levels - 1): 8 for FLUX.1
        self.cuda_graph = False
        self._graphed: GraphedDenoiser | None = None

    def set_cuda_graph(self, enabled: bool) -> None:
        """Run each denoising step's DiT call as a CUDA graph (captured per shape on first use) or eagerly."""
        self.cuda_graph = enabled
        self._graphed = None

    @property
    def denoiser(self):
        """What a denoising step calls: the transformer, through a GraphedDenoiser when CUDA graphs are on.
        Only the plain single-GPU model is graphed: a parallel plan that replaced it (distributed/) runs
        collectives between its layers and stays eager. Rebuilt when the transformer is replaced."""
        model = self.transformer
        if not self.cuda_graph or not isinstance(model, FluxTransformer2DModel):
            return model
        if self._graphed is None or self._graphed.model is not model:
            self._graphed = GraphedDenoiser(model)
        return self._graphed

    # load (Recipe.load calls these)

    @staticmethod
    def head_dim(source: ModelSource) -> int:
        if source.folder is None:
            return flux_transformer_preset(source.spec.preset).attention_head_dim
        return read_config(os.path.join(source.folder, "transformer")).get("attention_head_dim", 128)

    @classmethod
    def finish_load(cls, components: FluxComponents, source: ModelSource, device: torch.device) -> None:
        components.check_compatible(source.model_id)

    @staticmethod
    def folder_defaults(components: FluxComponents) -> SamplingDefaults:
        # diffusers FluxPipeline: default_sample_size (128) latent pixels, 28 steps, guidance 3.5
        side = DEFAULT_SAMPLE_SIZE * components.vae.config.scale_factor
        return SamplingDefaults(height=side, width=side, num_inference_steps=28, guidance_scale=3.5)

    @staticmethod
    def dummy_components(preset: str, device, dtype, attn_op, kernel_backend: str) -> FluxComponents:
        """The built-in architecture `preset` with random weights and stand-in tokenizers: nothing downloaded."""
        return FluxComponents(
            transformer=load_flux_transformer(preset=preset, dtype=dtype, device=device, attn_op=attn_op,
                                              kernel_backend=kernel_backend, load_format="dummy"),
            vae=dummy_autoencoder_kl(vae_preset(preset), dtype, device),
            text_encoder=CLIPTextEncoder.dummy(preset, dtype, device),
            text_encoder_2=T5TextEncoder.dummy(preset, dtype, device),
            scheduler_config=scheduler_preset(preset),
        )

    @staticmethod
    def folder_components(folder: str, device, dtype, attn_op, kernel_backend: str) -> FluxComponents:
        """Every component from its subfolder of a diffusers FluxPipeline folder, weights strictly checked."""
        scheduler_config = FlowMatchEulerSchedulerConfig.from_dict(read_scheduler_json(folder)[0])
        return FluxComponents(
            transformer=load_flux_transformer(folder=os.path.join(folder, "transformer"), dtype=dtype, device=device,
                                              attn_op=attn_op, kernel_backend=kernel_backend),
            vae=load_autoencoder_kl(os.path.join(folder, "vae"), dtype, device),
            text_encoder=CLIPTextEncoder.from_pretrained(folder, dtype, device),
            text_encoder_2=T5TextEncoder.from_pretrained(folder, dtype, device),
            scheduler_config=scheduler_config,
        )

    # stages

    def validate(self, request: GenerationRequest, state: FluxState) -> None:
        """Model-specific rules on top of the request's own: sizes divide by 2f, latents have the packed shape."""
        request.require_image_fields(self.model_id)
        multiple = 2 * self.vae_scale_factor
        for name in ("height", "width"):
            value = getattr(request, name)
            if value % multiple:
                raise ValueError(f"{name}={value} is not allowed: {self.model_id} needs a multiple of {multiple}")
        if request.latents is not None:
            expected = (request.batch_size, self._image_seq_len(request), self.transformer.config.in_channels)
            if tuple(request.latents.shape) != expected:
                raise ValueError(
                    f"latents of shape {tuple(request.latents.shape)} is not allowed: {self.model_id} at "
                    f"{request.height}x{request.width} needs packed latents of shape {expected}"
                )

    def encode(self, request: GenerationRequest, state: FluxState) -> None:
        """Prompts -> T5 sequence embeddings and CLIP pooled embeddings, repeated num_images_per_prompt times."""
        n = request.num_images_per_prompt
        state.prompt_embeds, state.pooled_prompt_embeds = self.encode_prompts(request.prompts, n)
        if self._true_cfg(request):
            state.negative_prompt_embeds, state.negative_pooled_prompt_embeds = self.encode_prompts(
                request.negative_prompts, n
            )
        state.text_ids = torch.zeros(state.prompt_embeds.shape[1], 3, device=self.device, dtype=self.dtype)

    def prepare_timesteps(self, request: GenerationRequest, state: FluxState) -> None:
        state.scheduler = FlowMatchEulerScheduler(self.components.scheduler_config)
        state.scheduler.set_timesteps(
            request.num_inference_steps, image_seq_len=self._image_seq_len(request), device=self.device
        )

    def prepare_latents(self, request: GenerationRequest, state: FluxState) -> None:
        """Initial packed noise [B, S_img, 4C] (the caller's, or drawn from the seed) and the image ids."""
        f2 = 2 * self.vae_scale_factor
        state.latent_height, state.latent_width = 2 * (request.height // f2), 2 * (request.width // f2)
        state.img_ids = latent_image_ids(state.latent_height // 2, state.latent_width // 2, self.device, self.dtype)
        if request.latents is not None:
            state.latents = request.latents.to(device=self.device, dtype=self.dtype)
            return
        channels = self.transformer.config.in_channels // 4
        shape = (request.batch_size, channels, state.latent_height, state.latent_width)
        state.latents = pack_latents(seeded_noise(shape, state.seed, self.dtype)).to(self.device)

    def denoise(self, request: GenerationRequest, state: FluxState) -> None:
        """The Euler loop over the schedule; RoPE and the guidance vector are built once, outside it."""
        latents = state.latents
        batch = latents.shape[0]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([batch], request.guidance_scale, device=self.device, dtype=torch.float32)
        rope = self.transformer.rope(state.img_ids, state.text_ids)
        true_cfg = self._true_cfg(request)
        # as diffusers: t in the latents' dtype, then / 1000 (the DiT embeds t * 1000 again); [T, B]
        timesteps = state.scheduler.timesteps[:, None].expand(-1, batch).to(latents.dtype) / 1000
        modulations = self.step_modulations(timesteps, guidance, state.pooled_prompt_embeds)
        negative_modulations = (self.step_modulations(timesteps, guidance, state.negative_pooled_prompt_embeds)
                                if true_cfg else None)
        # Nothing in this loop reads a GPU value on the host: the timestep is sliced on the device, the
        # scheduler indexes its device sigmas, timed_steps times with CUDA events.
        for i, _ in timed_steps(state, state.scheduler.timesteps, self.device):
            modulation = None if modulations is None else modulations(i)
            velocity = self._velocity(latents, timesteps[i], guidance, state.prompt_embeds,
                                      state.pooled_prompt_embeds, state, rope, modulation)
            if true_cfg:
                modulation = None if negative_modulations is None else negative_modulations(i)
                negative = self._velocity(latents, timesteps[i], guidance, state.negative_prompt_embeds,
                                          state.negative_pooled_prompt_embeds, state, rope, modulation)
                velocity = negative + request.true_cfg_scale * (velocity - negative)
            latents = state.scheduler.step(velocity, latents, i)
        state.latents = latents

    def step_modulations(self, timesteps: torch.Tensor, guidance: torch.Tensor | None,
                         pooled: torch.Tensor) -> StepModulations | None:
        """The steps' adaLN vectors computed ahead, for the plain fused transformer; None where the steps
        compute their own (an unfused model, or a parallel plan that replaced the transformer)."""
        model = self.transformer
        if not isinstance(model, FluxTransformer2DModel) or not model.fuse_projections:
            return None
        return StepModulations(model, timesteps, guidance, pooled)

    def decode(self, request: GenerationRequest, state: FluxState) -> None:
        """Packed latents -> PIL images, through the VAE, as diffusers' VaeImageProcessor.postprocess.
        With CUDA graphs on, the VAE runs in the graphs' memory pool (GraphedDenoiser.pool_memory: no replay
        happens during the decode, and only host copies leave it), so the process does not hold the step's
        activations and the decoder's at once: the peak stays an eager run's."""
        config = self.vae.config
        graphed = self._graphed if self.cuda_graph else None
        with graphed.pool_memory() if graphed is not None else contextlib.nullcontext():
            latents = unpack_latents(state.latents, state.latent_height, state.latent_width)
            latents = latents / config.scaling_factor + (config.shift_factor or 0.0)
            image = self.vae.decode(latents.to(self.vae_dtype))  # [B, 3, H, W] in about [-1, 1]
            if image is None:  # a follower rank of the split decode (distributed/vae.py): rank 0 owns the output
                return
            image = (image / 2 + 0.5).clamp(0, 1)
            pixels = (image.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype(np.uint8)
            del latents, image  # pool memory: nothing on the GPU outlives the block
        state.images = [Image.fromarray(p) for p in pixels]

    def save(self, request: GenerationRequest, state: FluxState, target: SaveTarget) -> None:
        state.paths = save_images(state.images, target, request.prompts[0], state.seed)

    # helpers

    def _image_seq_len(self, request: GenerationRequest) -> int:
        f2 = 2 * self.vae_scale_factor
        return (request.height // f2) * (request.width // f2)

    @staticmethod
    def _true_cfg(request: GenerationRequest) -> bool:
        # as diffusers: true CFG runs only with a negative prompt and a scale above 1
        return request.true_cfg_scale > 1 and request.negative_prompt is not None

    def encode_prompts(self, prompts: list[str], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 sequence [P*n, 512, D], CLIP pooled [P*n, pooled]); each prompt's rows repeated n times in a row."""
        pooled = self.components.text_encoder.encode(prompts)  # [P, pooled]
        embeds = self.components.text_encoder_2.encode(prompts, T5_MAX_SEQUENCE_LENGTH)  # [P, 512, D]
        return repeat_per_prompt(embeds, n).to(self.device), repeat_per_prompt(pooled, n).to(self.device)

    def _velocity(self, latents, timestep, guidance, prompt_embeds, pooled, state: FluxState, rope,
                  modulation: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if modulation is None else {"modulation": modulation}  # a parallel plan takes none
        return self.denoiser(
            hidden_states=latents, encoder_hidden_states=prompt_embeds, pooled_projections=pooled,
            timestep=timestep, img_ids=state.img_ids, txt_ids=state.text_ids, guidance=guidance, rope=rope,
            **extra,
        )

