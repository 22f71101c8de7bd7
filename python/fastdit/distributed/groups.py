"""torch.distributed process groups for one ParallelConfig: world, SP (Ulysses x ring), Ulysses, ring, CFG, TP.

NCCL on CUDA, gloo on CPU (tests). Every rank creates every group in the same order (torch.distributed
requires it) and keeps the handles of the groups it belongs to. A group of one rank is stored as None:
callers skip the collective instead of paying for a no-op.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import torch
import torch.distributed as dist

from fastdit.distributed.config import ParallelConfig


@dataclasses.dataclass(frozen=True)
class ParallelGroups:
    """This rank's place in the layout (see config.py) and the handles of its groups."""

    config: ParallelConfig
    rank: int
    device: torch.device
    cfg_rank: int
    ring_rank: int
    ulysses_rank: int
    sp_group: dist.ProcessGroup | None
    ulysses_group: dist.ProcessGroup | None
    ring_group: dist.ProcessGroup | None
    cfg_group: dist.ProcessGroup | None
    ring_ranks: tuple[int, ...] = ()  # global ranks of this rank's ring group, in ring order
    tp_group: dist.ProcessGroup | None = None  # the text encoders' TP group: tp_size consecutive ranks

    @property
    def sp_rank(self) -> int:
        return self.ring_rank * self.config.ulysses_degree + self.ulysses_rank

    @property
    def tp_rank(self) -> int:
        return self.rank % self.config.tp_size

    @property
    def is_output_rank(self) -> bool:
        """Rank 0 owns the output (saves files, answers requests); the others follow."""
        return self.rank == 0


def single_process_groups(device: torch.device | str = "cpu") -> ParallelGroups:
    """The layout of a plain single-GPU run: no torch.distributed at all."""
    return ParallelGroups(ParallelConfig(), 0, torch.device(device), 0, 0, 0, None, None, None, None, (0,))


def _new_groups(backend: str, members: list[list[int]], rank: int):
    """Creates one group per member list on every rank; returns (handle, ranks) of the list holding `rank`."""
    mine, mine_ranks = None, ()
    for ranks in members:
        group = dist.new_group(ranks, backend=backend) if len(ranks) > 1 else None
        if rank in ranks:
            mine, mine_ranks = group, tuple(ranks)
    return mine, mine_ranks


def init_parallel_groups(
    config: ParallelConfig, rank: int, init_method: str, device: torch.device | str, timeout_s: float = 600.0
) -> ParallelGroups:
    """Joins the world (`init_method` like "tcp://127.0.0.1:29500") and builds this rank's groups."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        _backend(device), init_method=init_method, rank=rank, world_size=config.world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    return make_groups(config, rank, device)


def _backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def make_groups(config: ParallelConfig, rank: int, device: torch.device | str) -> ParallelGroups:
    """Builds the groups of `config` inside an initialised world of config.world_size ranks.

    Collective: every rank calls it with the same config. Tests call it several times in one world to
    try several (U, R, CFG) layouts without a new spawn each.
    """
    device = torch.device(device)
    if dist.get_world_size() != config.world_size:
        raise ValueError(f"make_groups: the world has {dist.get_world_size()} ranks, the config {config.world_size}")
    backend = _backend(device)
    cfg_n, ring_n, uly_n = config.cfg_degree, config.ring_degree, config.ulysses_degree
    at = config.rank_of
    sp_members = [[at(c, r, u) for r in range(ring_n) for u in range(uly_n)] for c in range(cfg_n)]
    uly_members = [[at(c, r, u) for u in range(uly_n)] for c in range(cfg_n) for r in range(ring_n)]
    ring_members = [[at(c, r, u) for r in range(ring_n)] for c in range(cfg_n) for u in range(uly_n)]
    cfg_members = [[at(c, r, u) for c in range(cfg_n)] for r in range(ring_n) for u in range(uly_n)]
    tp_n = config.tp_size
    tp_members = [list(range(first, first + tp_n)) for first in range(0, config.world_size, tp_n)]
    sp_group, _ = _new_groups(backend, sp_members, rank)
    ulysses_group, _ = _new_groups(backend, uly_members, rank)
    ring_group, ring_ranks = _new_groups(backend, ring_members, rank)
    cfg_group, _ = _new_groups(backend, cfg_members, rank)
    tp_group, _ = _new_groups(backend, tp_members, rank)
    cfg_rank, ring_rank, ulysses_rank = config.rank_coords(rank)
    return ParallelGroups(
        config, rank, device, cfg_rank, ring_rank, ulysses_rank,
        sp_group, ulysses_group, ring_group, cfg_group, ring_ranks, tp_group,
    )


def destroy_parallel_groups() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
