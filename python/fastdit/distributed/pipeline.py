"""Multi-GPU generation with the same Pipeline, request and result as on one GPU.

    workers = PipelineWorkers(ParallelConfig.from_flags(num_gpus=4), "flux-tiny", dtype=torch.float32)
    result = workers.run(request)            # GenerationResult from rank 0, as Pipeline.run returns it
    workers.close()

One process per rank, each loading the pipeline onto its own GPU and applying the parallel plans
(`parallelize_pipeline`: the DiT's sequence parallel, CFG-parallel for recipes that batch their CFG
branches, and with --tp-size T the T5/UMT5 text encoder sharded over T consecutive ranks, tp.py).
Every request goes to every rank (one queue each); every rank runs the same sampling loop on the same
(gathered) latents and decodes its strip of them (vae.py; rank 0 alone where the split does not apply);
rank 0 saves and replies. A request without a seed gets one here, so every rank draws the same noise.
With one GPU nothing is spawned: the pipeline runs in this process.
The CLI uses one `run`; the server keeps the workers for its lifetime.
"""

from __future__ import annotations

import dataclasses
import io
import os
import queue
import secrets
import traceback

import torch

from fastdit.distributed.config import ParallelConfig
from fastdit.distributed.groups import ParallelGroups
from fastdit.distributed.launcher import check_devices, default_device_type, spawn_context, start
from fastdit.distributed.plans import CfgParallel, SequenceParallelFlux, SequenceParallelWan, _Plan
from fastdit.distributed.tp import parallelize_text_encoders
from fastdit.distributed.vae import SPLIT_VAES, SpatialSplitVAE
from fastdit.layers.attention import AttentionOp

# DiT class -> its sequence-parallel plan
SEQUENCE_PARALLEL_PLANS = {"FluxTransformer2DModel": SequenceParallelFlux, "WanTransformer3DModel": SequenceParallelWan}
# DiTs whose recipe runs true CFG as one batch [uncond; cond], which CfgParallel splits over two ranks
CFG_BATCHED_DITS = ("WanTransformer3DModel",)


def _loaded_attn_op(dit, backend: str) -> AttentionOp:
    """The AttentionOp the recipe gave the DiT at load (its short-sequence rule included), else one of the
    recipe's resolved backend: USPAttention runs it locally and merges its `with_lse` blocks in the ring."""
    blocks = getattr(dit, "transformer_blocks", None)
    op = getattr(blocks[0], "attn_op", None) if blocks else getattr(dit, "attn_op", None)
    return op if isinstance(op, AttentionOp) else AttentionOp(backend)


def parallelize_pipeline(pipe, groups: ParallelGroups, attn_op=None, attn_with_lse=None) -> None:
    """Replaces pipe's DiT by its parallel plan for `groups`, shards its T5/UMT5 text encoder over
    groups.tp_group and splits its VAE decode over the ranks (vae.py; nothing to do on a single process)."""
    config = groups.config
    if config.world_size == 1:
        return
    components = pipe.recipe.components
    name = type(components.transformer).__name__
    if name not in SEQUENCE_PARALLEL_PLANS:
        raise ValueError(
            f"{pipe.model_id}: {name} has no multi-GPU plan; plans exist for {', '.join(SEQUENCE_PARALLEL_PLANS)}"
        )
    if config.cfg_parallel and name not in CFG_BATCHED_DITS:
        raise ValueError(
            f"{pipe.model_id}: --enable-cfg-parallel needs a model whose pipeline batches true CFG "
            f"({', '.join(CFG_BATCHED_DITS)}); drop the flag for {name}"
        )
    op = attn_op or _loaded_attn_op(components.transformer, pipe.recipe.attention_backend)
    dit = SEQUENCE_PARALLEL_PLANS[name](components.transformer, groups, op, attn_with_lse)
    components.transformer = CfgParallel(dit, groups) if config.cfg_parallel else dit
    parallelize_text_encoders(components, groups)
    if isinstance(components.vae, SPLIT_VAES):
        components.vae = SpatialSplitVAE(components.vae, groups)


@dataclasses.dataclass(frozen=True)
class PipelineInfo:
    """What callers read off a Pipeline besides `run` (the CLI's perf dump, the server's /v1/models)."""

    model_id: str
    task: str
    dtype: torch.dtype
    device: torch.device  # rank 0's
    defaults: object  # SamplingDefaults
    video_defaults: object | None  # VideoDefaults of video recipes
    pipeline_class: str  # the recipe class name
    attention_backend: str
    cuda_graph: bool  # denoising steps as CUDA graphs (plain single-GPU DiTs only; parallel plans stay eager)

    @classmethod
    def of(cls, pipe) -> "PipelineInfo":
        recipe = pipe.recipe
        video = getattr(getattr(recipe, "components", None), "video_defaults", None)
        graphed = getattr(recipe, "cuda_graph", False) and not isinstance(recipe.transformer, _Plan)
        return cls(str(pipe.model_id), pipe.task, pipe.dtype, pipe.device, pipe.defaults, video,
                   type(recipe).__name__, recipe.attention_backend, bool(graphed))


def _serialize(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _failure(err: BaseException) -> tuple[str, str]:
    """("value", message) for a refused input (the server answers 400), else ("internal", traceback)."""
    if isinstance(err, ValueError):
        return "value", str(err)
    return "internal", "".join(traceback.format_exception(err))


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory(device: torch.device) -> int | None:
    """Bytes allocated at the peak since the last reset (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _next_request(requests, parent: int):
    """The next request from the parent; None (stop every rank) once the parent is gone: a killed server
    worker must not leave ranks holding the GPUs its restarted successor needs."""
    while True:
        try:
            return requests.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return None


def _serve_rank(groups: ParallelGroups, model: str, load_kwargs: dict, requests: list, replies) -> None:
    """A rank's life: load, plan, then run every request until None arrives.

    Each rank reads its own queue (requests[rank]; the parent puts every request into all of them) rather
    than waiting in a broadcast: an idle server would otherwise leave the followers inside a collective
    past its timeout (NCCL's watchdog then kills them)."""
    import torch.distributed as dist

    from fastdit.pipelines.api import Pipeline

    leader = groups.is_output_rank
    failure = None
    try:
        pipe = Pipeline.from_pretrained(model, device=groups.device, **load_kwargs)
        parallelize_pipeline(pipe, groups)
    except Exception as err:
        failure = _failure(err)
    failures = [None] * groups.config.world_size
    dist.all_gather_object(failures, failure)  # one rank failing to load stops them all
    failure = next((f for f in failures if f is not None), None)
    if leader:
        replies.put(_serialize(("error", *failure) if failure else ("ok", PipelineInfo.of(pipe))))
    if failure:
        return
    parent = os.getppid()
    while True:
        item = _next_request(requests[groups.rank], parent)
        if item is None:
            return
        request, save, show_progress = item
        if not leader:  # followers skip save (rank 0 owns the output), and decode unless they decode a strip
            save = None
            if not isinstance(pipe.recipe.vae, SpatialSplitVAE):
                request = dataclasses.replace(request, output_type="latent")
        _reset_peak_memory(groups.device)
        try:
            reply = ("ok", pipe.run(request, save=save, show_progress=show_progress and leader))
        except Exception as err:  # every rank refuses the same request the same way: keep serving
            reply = ("error", *_failure(err))
        peaks = [None] * groups.config.world_size
        dist.all_gather_object(peaks, _peak_memory(groups.device))
        if leader:
            replies.put(_serialize((*reply, peaks) if reply[0] == "ok" else reply))


def _device_type(device, config: ParallelConfig) -> str:
    """'cuda' or 'cpu' for the ranks: rank r runs on cuda:r, so an explicit index only fits one process."""
    if device is None:
        return default_device_type()
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"device={str(device)!r} is not allowed for PipelineWorkers; allowed: cpu, cuda, cuda:N")
    if device.index is not None and config.world_size > 1:
        raise ValueError(
            f"device={str(device)!r} with num_gpus={config.world_size}: rank r runs on cuda:r "
            f"(CUDA_VISIBLE_DEVICES picks the GPUs); pass device 'cuda' or none"
        )
    return device.type


class PipelineWorkers:
    """`config.world_size` ranks holding one pipeline; `run(request)` as Pipeline.run, one request at a time.

    Also reads like a Pipeline: `model_id`, `task`, `dtype`, `device`, `defaults` (and `info`, a PipelineInfo
    with the recipe class, video defaults and resolved attention backend), from rank 0. After each run,
    `peak_memory[r]` is rank r's peak allocated CUDA bytes during it (None on CPU).
    """

    def __init__(self, config: ParallelConfig, model: str, device: str | torch.device | None = None,
                 collective_timeout_s: float = 600.0, **load_kwargs):
        self.config = config
        self.peak_memory: list[int | None] = []
        device_type = _device_type(device, config)
        check_devices(config, device_type)
        if config.world_size == 1:
            from fastdit.pipelines.api import Pipeline

            self.pipe, self.ranks = Pipeline.from_pretrained(model, device=device or device_type, **load_kwargs), None
            self.info = PipelineInfo.of(self.pipe)
            return
        ctx = spawn_context()
        self.requests, self.replies = [ctx.Queue() for _ in range(config.world_size)], ctx.Queue()
        self.pipe = None
        self.ranks = start(_serve_rank, config, model, load_kwargs, self.requests, self.replies, device_type=device_type,
                           collective_timeout_s=collective_timeout_s)
        try:
            self.info = self._reply()
        except Exception:  # loading failed: the ranks have returned
            self.ranks.wait(timeout_s=120)
            self.ranks = None
            raise

    def _reply(self):
        while True:
            try:
                raw = self.replies.get(timeout=1.0)
                break
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self.ranks.procs) if p.exitcode is not None]
                if dead:  # a rank died (killed, out of memory): no reply will come
                    self.ranks.stop()
                    self.ranks = None
                    raise RuntimeError(f"PipelineWorkers: rank {dead[0][0]} exited with code {dead[0][1]}") from None
        status, *payload = torch.load(io.BytesIO(raw), weights_only=False)
        if status == "error":
            kind, message = payload
            raise ValueError(message) if kind == "value" else RuntimeError(f"a rank failed:\n{message}")
        if len(payload) > 1:  # a run's reply carries every rank's peak memory
            self.peak_memory = payload[1]
        return payload[0]

    model_id = property(lambda self: self.info.model_id)
    task = property(lambda self: self.info.task)
    dtype = property(lambda self: self.info.dtype)
    device = property(lambda self: self.info.device)
    defaults = property(lambda self: self.info.defaults)

    def run(self, request, save=None, show_progress: bool = True):
        if request.seed is None:  # drawn once, here: every rank must draw the same noise
            request = dataclasses.replace(request, seed=secrets.randbits(63))
        if self.ranks is None:
            _reset_peak_memory(self.pipe.device)
            result = self.pipe.run(request, save=save, show_progress=show_progress)
            self.peak_memory = [_peak_memory(self.pipe.device)]
            return result
        for q in self.requests:
            q.put((request, save, show_progress))
        return self._reply()

    def close(self) -> None:
        """Stops the ranks (or drops the in-process pipeline), freeing their GPU memory."""
        self.pipe = None
        if self.ranks is not None:
            for q in self.requests:
                q.put(None)
            self.ranks.wait(timeout_s=120)
            self.ranks = None
