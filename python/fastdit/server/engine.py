"""The HTTP process's side of the worker: a bounded FIFO queue, the dispatcher that batches it, worker restarts.

    engine = Engine(config, metrics, handle)        # handle: a started WorkerHandle (serve.py starts it first)
    await engine.start()                            # in the app's lifespan
    outcome = await engine.submit(spec)             # raises APIError 429 when --max-queue requests already wait

Life of a job: submit() admits it into `queue` (at most max_queue waiting, else 429 with Retry-After) -> the
dispatcher takes the oldest job plus compatible ones (batching.take_batch; right after a batch, a smaller one
waits up to --batch-wait-ms for returning clients) and hands the batch to the worker ->
each job's future gets its own outcome exactly once. If the worker process dies, every job of the batch it held
gets a 500, the worker is restarted, and jobs still waiting in the queue run on the new worker. A job whose
client went away (`cancel`) leaves the queue if it has not started; if it has, its result is dropped.
Everything here runs on the event loop except the blocking worker calls, which run in a thread.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastdit.log import get_logger
from fastdit.server import errors
from fastdit.server.batching import batch_is_full, plan_batch, take_batch
from fastdit.server.config import ServerConfig
from fastdit.server.metrics import Metrics
from fastdit.server.schemas import GenerationSpec
from fastdit.server.worker import WorkerDied, WorkerHandle

logger = get_logger("fastdit.server")
IDLE_CHECK_S = 0.5  # how often an idle dispatcher checks that the worker is alive
RESTART_RETRY_S = 5.0
BURST_MS = 5.0  # requests one client sends at once reach us within this (localhost/LAN): see Engine._linger


@dataclass
class Job:
    spec: GenerationSpec
    future: asyncio.Future
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: str = "queued"  # queued -> in_progress -> done
    enqueued_at: float = field(default_factory=time.perf_counter)
    on_start: Callable[[], None] | None = None


class Engine:
    def __init__(self, config: ServerConfig, metrics: Metrics, handle: WorkerHandle):
        self.config = config
        self.metrics = metrics
        self.handle = handle
        self.queue: deque[Job] = deque()
        self.running: list[Job] = []
        self.restarts = 0
        self.ready = handle.is_alive()
        self._wakeup = asyncio.Event()
        self._batch_ids = itertools.count()
        self._task: asyncio.Task | None = None
        self._mean_batch_s = 1.0  # running estimate, for Retry-After
        self._idle_since = 0.0  # perf_counter() when the worker last finished a batch
        self._expected_images = 0  # min(max batch, that batch's images + images then waiting): see _linger

    # ------------------------------------------------------------------------------------------------ admission
    def submit(self, spec: GenerationSpec, on_start: Callable[[], None] | None = None) -> Job:
        """Admit a job or raise APIError (429 queue full, 503 worker down). The caller awaits job.future."""
        if len(self.queue) >= self.config.max_queue:
            raise errors.queue_full(self.config.max_queue, self.retry_after_s())
        if self._task is None or self._task.done():
            raise errors.unavailable("the server is shutting down")
        job = Job(spec=spec, future=asyncio.get_running_loop().create_future(), on_start=on_start)
        self.queue.append(job)
        self.metrics.queue_depth.set(len(self.queue))
        self._wakeup.set()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it is still waiting (its future is cancelled)."""
        if job.state == "queued" and job in self.queue:
            self.queue.remove(job)
            self.metrics.queue_depth.set(len(self.queue))
            job.state = "done"
            job.future.cancel()

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained one batch's worth: at least 1."""
        batches_ahead = math.ceil(len(self.queue) / self.config.max_batch_size) + 1
        return max(1, math.ceil(batches_ahead * self._mean_batch_s))

    # ------------------------------------------------------------------------------------------------ dispatcher
    async def start(self) -> None:
        self._task = asyncio.create_task(self._dispatch_forever(), name="fastdit-dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in list(self.queue) + self.running:
            self._resolve(job, errors.unavailable("the server is shutting down"))
        self.queue.clear()
        await asyncio.to_thread(self.handle.stop)

    async def _dispatch_forever(self) -> None:
        while True:
            if not self.queue:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), IDLE_CHECK_S)
                except asyncio.TimeoutError:
                    pass
            if not self.handle.is_alive():
                await self._restart(f"the worker process (pid {self.handle.pid}) exited with code "
                                    f"{self.handle.process.exitcode if self.handle.process else None}")
                continue
            if self.queue:
                await self._linger()
            if self.queue:  # the head may have left (its client went away) while we lingered
                await self._run_one_batch()

    async def _linger(self) -> None:
        """Hold a batch that is not full for a few milliseconds, so that requests sent together run together.

        Right after a batch (the head arrived before batch end + --batch-wait-ms): wait until that deadline for the
        next batch to hold as many images as the batch just answered plus those that waited behind it (at most
        --max-batch-size). Closed-loop clients send their next request milliseconds after their answer (more for
        large responses: a 1024x1024 PNG is ~4 MB of base64); without this the batches split for good (at
        concurrency 4: [1], [3], [1], [3], ... or [2], [2], ...). A lone client never waits (1 answered, 0 waiting).
        Otherwise (a request to an idle worker): wait up to BURST_MS after its arrival for a full batch, so that a
        burst sent at once is not split into [1] + the rest (each new batch size also costs a CUDA graph capture).
        """
        budget, wait_s = self.config.max_batch_size, self.config.batch_wait_ms / 1e3
        if self.queue[0].enqueued_at <= self._idle_since + wait_s:
            wanted, deadline = self._expected_images, self._idle_since + wait_s
        else:
            wanted, deadline = budget, self.queue[0].enqueued_at + min(wait_s, BURST_MS / 1e3)
        while self.queue:
            batch = plan_batch(self.queue, budget)
            remaining = deadline - time.perf_counter()
            if batch_is_full(batch, budget) or sum(job.spec.n for job in batch) >= wanted or remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _run_one_batch(self) -> None:
        batch = take_batch(self.queue, self.config.max_batch_size)
        self.metrics.queue_depth.set(len(self.queue))
        now = time.perf_counter()
        for job in batch:
            job.state = "in_progress"
            self.metrics.queue_wait.observe(now - job.enqueued_at)
            if job.on_start is not None:
                job.on_start()
        self.running = batch
        images = sum(job.spec.n for job in batch)
        self.metrics.batch_images.observe(images)
        try:
            outcomes, stats = await asyncio.to_thread(self.handle.run, next(self._batch_ids), [job.spec for job in batch])
        except WorkerDied as exc:
            message = f"{exc} while running this request; it has been restarted"
            for job in batch:
                self._resolve(job, errors.server_error(message, "worker_died"))
            await self._restart(str(exc))
            return
        finally:
            self.running = []
            self._idle_since = time.perf_counter()
            waiting = sum(job.spec.n for job in self.queue)
            self._expected_images = min(self.config.max_batch_size, images + waiting)
        self._mean_batch_s = 0.8 * self._mean_batch_s + 0.2 * stats["batch_ms"] / 1e3
        self.metrics.observe_batch(outcomes, stats)
        for job, outcome in zip(batch, outcomes):
            self._resolve(job, outcome)

    def _resolve(self, job: Job, outcome: dict[str, Any] | errors.APIError) -> None:
        """Answer a job exactly once: its future takes the outcome dict or the APIError."""
        job.state = "done"
        if job.future.done():  # cancelled by a departed client, or already answered
            return
        if isinstance(outcome, errors.APIError):
            job.future.set_exception(outcome)
        elif not outcome["ok"]:
            status = outcome["status"]
            error = errors.bad_request(outcome["message"]) if status == 400 else errors.server_error(outcome["message"], outcome["code"])
            job.future.set_exception(error)
        else:
            job.future.set_result(outcome)

    async def _restart(self, reason: str) -> None:
        """Replace a dead worker. While it loads, queued jobs wait; if loading fails they get a 500."""
        self.ready = False
        self.restarts += 1
        self.metrics.worker_restarts.inc()
        logger.warning("%s; restarting the worker", reason)
        await asyncio.to_thread(self.handle.stop)
        try:
            info = await asyncio.to_thread(self.handle.start, self.config.worker_load_timeout_s)
        except RuntimeError as exc:
            logger.error("worker restart failed: %s", exc)
            for job in list(self.queue):
                self._resolve(job, errors.server_error(f"the worker could not be restarted: {exc}", "worker_down"))
            self.queue.clear()
            self.metrics.queue_depth.set(0)
            await asyncio.sleep(RESTART_RETRY_S)
            return
        self.ready = True
        logger.info("worker restarted: pid %s", info["pid"])
