"""Multi-GPU inference on one host: Ulysses x ring sequence parallel (USP), CFG-parallel, TP text encoders,
and the VAE decode split spatially over the ranks.

    config = ParallelConfig.from_flags(num_gpus=4, ring_degree=2)      # validated, one-line errors
    workers = PipelineWorkers(config, "flux-tiny")                     # one process per GPU
    result = workers.run(request)                                      # as Pipeline.run, from rank 0

Lower level: `launch(fn, config, *args)` runs fn(groups, *args) on every rank; plans.py applies SP and
CFG-parallel to a DiT from outside the model; USPAttention is the sequence-parallel attention op; tp.py
shards the T5/UMT5 text encoder over groups of --tp-size ranks; vae.py's SpatialSplitVAE decodes one
horizontal strip of the latent per rank (exactly the one-process decode) and gathers it on rank 0.
"""

from fastdit.distributed.config import ParallelConfig, add_parallel_flags, config_from_flags
from fastdit.distributed.groups import ParallelGroups, init_parallel_groups, make_groups, single_process_groups
from fastdit.distributed.launcher import broadcast_from_output_rank, launch
from fastdit.distributed.pipeline import PipelineWorkers, parallelize_pipeline
from fastdit.distributed.plans import CfgParallel, SequenceParallelFlux, SequenceParallelWan
from fastdit.distributed.usp import USPAttention
from fastdit.distributed.vae import SpatialSplitVAE

__all__ = [
    "CfgParallel",
    "ParallelConfig",
    "ParallelGroups",
    "PipelineWorkers",
    "SequenceParallelFlux",
    "SequenceParallelWan",
    "SpatialSplitVAE",
    "USPAttention",
    "add_parallel_flags",
    "broadcast_from_output_rank",
    "config_from_flags",
    "init_parallel_groups",
    "launch",
    "make_groups",
    "parallelize_pipeline",
    "single_process_groups",
]
