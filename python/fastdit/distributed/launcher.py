"""One process per rank: `launch(fn, config, *args)` runs `fn(groups, *args)` on every rank, returns rank 0's result.

Used by the CLI and the server for `--num-gpus N`: the parent spawns N workers (start method "spawn", as
CUDA requires), each joins the process groups (NCCL on cuda:rank, gloo on CPU) and runs `fn`. Rank 0 owns
the output; its return value comes back to the parent through a queue (tensors should be on the CPU).
A failing rank's traceback is raised in the parent as a RuntimeError naming the rank. With one process
nothing is spawned and torch.distributed is never initialised: the plain single-GPU path.
"""

from __future__ import annotations

import io
import os
import queue as queue_mod
import socket
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastdit.distributed.config import ParallelConfig
from fastdit.distributed.groups import (
    ParallelGroups,
    destroy_parallel_groups,
    init_parallel_groups,
    single_process_groups,
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_device(device_type: str, rank: int) -> torch.device:
    return torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")


def _worker(rank: int, fn: Callable, config: ParallelConfig, init_method: str, device_type: str, args, results,
            collective_timeout_s: float) -> None:
    try:
        if device_type == "cpu":
            # N ranks share the host's cores: N x (all cores) intra-op threads would oversubscribe them.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.world_size))
        groups = init_parallel_groups(config, rank, init_method, _rank_device(device_type, rank), collective_timeout_s)
        try:
            out = fn(groups, *args)
        finally:
            destroy_parallel_groups()
        # Serialised here: a tensor shared through the queue would die with this process.
        buf = io.BytesIO()
        torch.save(out if rank == 0 else None, buf)
        results.put((rank, "ok", buf.getvalue()))
    except BaseException:  # report every failure, including KeyboardInterrupt, to the parent
        results.put((rank, "error", traceback.format_exc()))


def check_devices(config: ParallelConfig, device_type: str) -> None:
    if device_type == "cuda":
        have = torch.cuda.device_count()
        if config.num_gpus > have:
            raise ValueError(f"launch: num_gpus={config.num_gpus} but {have} CUDA devices are visible; allowed: 1..{have}")
    elif device_type != "cpu":
        raise ValueError(f"launch: device_type={device_type!r}; allowed: 'cuda', 'cpu'")


class RankProcesses:
    """The spawned ranks of one `start` call; `wait()` returns rank 0's result (or raises a rank's error)."""

    def __init__(self, ctx, fn: Callable, config: ParallelConfig, args: tuple, device_type: str,
                 collective_timeout_s: float = 600.0):
        self.results = ctx.Queue()
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        self.procs = [
            ctx.Process(target=_worker, args=(rank, fn, config, init_method, device_type, args, self.results,
                                              collective_timeout_s), daemon=True)
            for rank in range(config.world_size)
        ]
        for p in self.procs:
            p.start()

    def wait(self, timeout_s: float = 3600.0):
        try:
            return _collect(self.results, self.procs, timeout_s)
        finally:
            self.stop()

    def stop(self) -> None:
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def start(fn: Callable[..., Any], config: ParallelConfig, *args, device_type: str | None = None,
          collective_timeout_s: float = 600.0) -> RankProcesses:
    """Spawns config.world_size ranks running fn(groups, *args) and returns at once (config.world_size > 1).

    `fn` must be a module-level function; `args` picklable (multiprocessing queues of `spawn_context()`
    included, for talking to long-lived ranks). A collective that waits longer than `collective_timeout_s`
    fails (NCCL's watchdog aborts the rank).
    """
    device_type = device_type or default_device_type()
    check_devices(config, device_type)
    return RankProcesses(spawn_context(), fn, config, args, device_type, collective_timeout_s)


def spawn_context():
    return mp.get_context("spawn")  # CUDA cannot be used in forked children


def default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def launch(fn: Callable[..., Any], config: ParallelConfig, *args, device_type: str | None = None, timeout_s: float = 3600.0):
    """Runs fn(groups: ParallelGroups, *args) on config.world_size ranks and returns rank 0's result.

    device_type: "cuda" or "cpu" (default: cuda when available). With one rank, fn runs in this process.
    """
    device_type = device_type or default_device_type()
    check_devices(config, device_type)
    if config.world_size == 1:
        return fn(single_process_groups(_rank_device(device_type, 0)), *args)
    return start(fn, config, *args, device_type=device_type).wait(timeout_s)


def _collect(results, procs, timeout_s: float):
    output, pending, deadline = None, len(procs), time.monotonic() + timeout_s
    while pending:
        try:
            rank, status, payload = results.get(timeout=1.0)
        except queue_mod.Empty:
            dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:  # killed without a word (segfault, out of memory): nothing more will come
                raise RuntimeError(f"launch: rank {dead[0]} exited with code {procs[dead[0]].exitcode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"launch: no result from {pending} of {len(procs)} ranks within {timeout_s:.0f} s") from None
            continue
        if status == "error":
            raise RuntimeError(f"launch: rank {rank} failed:\n{payload}")
        if rank == 0:
            output = torch.load(io.BytesIO(payload), weights_only=False)
        pending -= 1
    return output


def broadcast_from_output_rank(obj: Any, groups: ParallelGroups) -> Any:
    """Rank 0's `obj` on every rank (picklable objects: a request, a seed). A no-op on a single process."""
    if groups.config.world_size == 1:
        return obj
    box = [obj if groups.is_output_rank else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
