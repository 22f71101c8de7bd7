"""Long-lived gloo worlds for the distributed tests: one spawn per world size for the whole directory.

Spawning N ranks costs N interpreter starts (torch + fastdit imports, ~5-10 s each on the shared 2-core CI
machine), far more than the tiny models the tests run; so each world size is spawned once and every test
sends it a module-level function `fn(groups, *args)` (run on every rank; rank 0's return value comes
back). A rank that raises breaks the world (its peers may be stuck in a collective): the pool is torn
down, the error is raised in the test, and the next test gets a fresh world.
"""

from __future__ import annotations

import io
import traceback

import torch

from fastdit.distributed import ParallelConfig, broadcast_from_output_rank
from fastdit.distributed.launcher import _collect, spawn_context, start

TASK_TIMEOUT_S = 300.0


def _task_loop(groups, tasks, replies) -> None:
    """A rank's life: run every broadcast (fn, args) until None arrives; every rank replies to each task."""
    while True:
        item = broadcast_from_output_rank(tasks.get() if groups.is_output_rank else None, groups)
        if item is None:
            return
        fn, args = item
        try:
            out = fn(groups, *args)
            buf = io.BytesIO()
            torch.save(out if groups.is_output_rank else None, buf)
            replies.put((groups.rank, "ok", buf.getvalue()))
        except BaseException:
            replies.put((groups.rank, "error", traceback.format_exc()))
            raise


class GlooWorld:
    """`world` CPU ranks waiting for tasks."""

    def __init__(self, world: int):
        ctx = spawn_context()
        self.tasks, self.replies = ctx.Queue(), ctx.Queue()
        self.ranks = start(_task_loop, ParallelConfig(world, world, 1), self.tasks, self.replies, device_type="cpu")

    def run(self, fn, *args):
        self.tasks.put((fn, args))
        try:
            return _collect(self.replies, self.ranks.procs, TASK_TIMEOUT_S)
        except BaseException:
            self.kill()
            raise

    def close(self) -> None:
        self.kill()  # at session end nothing is pending; a graceful group teardown would only cost time

    def kill(self) -> None:
        for p in self.ranks.procs:
            if p.is_alive():
                p.terminate()
        for p in self.ranks.procs:
            p.join(timeout=10)


class GlooPools:
    """One GlooWorld per world size, created on first use."""

    def __init__(self):
        self.worlds: dict[int, GlooWorld] = {}

    def run(self, world: int, fn, *args):
        pool = self.worlds.get(world)
        if pool is None:
            pool = self.worlds[world] = GlooWorld(world)
        try:
            return pool.run(fn, *args)
        except BaseException:
            del self.worlds[world]  # killed by run: the next call spawns a fresh world
            raise

    def close(self) -> None:
        for pool in self.worlds.values():
            pool.close()
        self.worlds.clear()
