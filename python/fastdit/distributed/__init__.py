"""Multi-GPU inference on one host: Ulysses x ring sequence parallel (USP) and CFG-parallel.

    config = ParallelConfig.from_flags(num_gpus=4, ring_degree=2)       # validated, one-line errors
    result = launch(run_rank, config, request)                          # one process per rank
    # inside run_rank(groups, request): dit = apply_sequence_parallel(dit, groups, attn_op)

Plans apply parallelism from outside the model (plans.py); models stay single-GPU definitions.
"""

from fastdit.distributed.config import ParallelConfig
from fastdit.distributed.groups import ParallelGroups, init_parallel_groups, make_groups, single_process_groups
from fastdit.distributed.launcher import broadcast_from_output_rank, launch
from fastdit.distributed.usp import USPAttention

__all__ = [
    "ParallelConfig",
    "ParallelGroups",
    "USPAttention",
    "broadcast_from_output_rank",
    "init_parallel_groups",
    "launch",
    "make_groups",
    "single_process_groups",
]
