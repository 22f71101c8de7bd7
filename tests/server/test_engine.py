"""Engine dispatch with a stand-in worker (no process, no model): closed-loop clients meet in full batches thanks to
the --batch-wait-ms window, a lone client never waits, a client that leaves while its batch lingers never runs."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from fastdit.server.config import ServerConfig, WorkerOptions
from fastdit.server.engine import Engine
from fastdit.server.metrics import Metrics
from fastdit.server.schemas import GenerationSpec

SPEC = GenerationSpec(kind="image", prompt="p", width=64, height=64, num_inference_steps=2)


class FakeWorker:
    """WorkerHandle's interface; each batch takes `batch_s` and answers one fake PNG per image."""

    pid, process, info = 1, None, {}

    def __init__(self, batch_s: float):
        self.batch_s = batch_s
        self.batches: list[list[str]] = []

    def is_alive(self) -> bool:
        return True

    def run(self, batch_id, specs):
        self.batches.append([spec.prompt for spec in specs])
        time.sleep(self.batch_s)
        outcomes = [{"ok": True, "items": [b"png"] * spec.n, "media_type": "image/png", "size": "64x64", "seed": 0,
                     "timings": {"stages_ms": {"denoise": 1.0}}} for spec in specs]
        return outcomes, {"batch_ms": self.batch_s * 1e3, "memory": None}

    def stop(self) -> None:
        pass


def engine_for(worker: FakeWorker, batch_wait_ms: float, max_batch_size: int = 4) -> Engine:
    config = ServerConfig(worker=WorkerOptions("fake"), max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms)
    return Engine(config, Metrics(), worker)


async def closed_loop(engine: Engine, clients: int, rounds: int, seed: int = 0) -> None:
    """Each client sends its next request 2-12 ms after its answer, as an HTTP client does (spread wider than a
    loaded CI machine's timer slack, so that arrivals really are apart)."""
    rng = random.Random(seed)

    async def client(i: int) -> None:
        for r in range(rounds):
            await asyncio.sleep(rng.uniform(0.002, 0.012))
            outcome = await engine.submit(GenerationSpec(**{**SPEC.__dict__, "prompt": f"c{i} r{r}"})).future
            assert outcome["items"] == [b"png"]

    await engine.start()
    try:
        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), 30)
    finally:
        await engine.stop()


@pytest.mark.parametrize("batch_wait_ms", [0.0, 100.0])
def test_closed_loop_clients_meet_in_full_batches_only_with_a_wait(batch_wait_ms):
    worker = FakeWorker(batch_s=0.03)
    asyncio.run(closed_loop(engine_for(worker, batch_wait_ms), clients=4, rounds=5))
    sizes = [len(batch) for batch in worker.batches]
    assert sorted(p for batch in worker.batches for p in batch) == sorted(
        f"c{i} r{r}" for i in range(4) for r in range(5))  # every request ran exactly once
    if batch_wait_ms:
        assert sizes[1:-1] == [4] * (len(sizes) - 2), sizes  # the first may split (a fresh burst does not wait)
    else:
        assert len(sizes) >= 8, sizes  # 20 requests: [2, 2, ...] or [1, 3, ...], never settling at 4


@pytest.mark.parametrize("batch_wait_ms, first", [(0.0, 1), (100.0, 4)])
def test_a_burst_to_an_idle_worker_runs_as_one_batch(batch_wait_ms, first):
    worker = FakeWorker(batch_s=0.0)
    engine = engine_for(worker, batch_wait_ms)

    async def run() -> None:
        await engine.start()
        jobs = []
        for i in range(4):
            jobs.append(engine.submit(GenerationSpec(**{**SPEC.__dict__, "prompt": f"b{i}"})))
            await asyncio.sleep(0)  # the dispatcher runs between arrivals, as it does between HTTP requests
        await asyncio.gather(*(job.future for job in jobs))
        await engine.stop()

    asyncio.run(run())
    assert len(worker.batches[0]) == first  # without a wait the first arrival leaves alone


def test_a_lone_client_never_waits():
    worker = FakeWorker(batch_s=0.0)
    start = time.perf_counter()
    asyncio.run(closed_loop(engine_for(worker, batch_wait_ms=500), clients=1, rounds=5))
    assert time.perf_counter() - start < 1.5  # waiting after each answer would take 5 x 0.5 s
    assert [len(batch) for batch in worker.batches] == [1] * 5


def test_a_request_that_leaves_while_its_batch_lingers_never_runs():
    worker = FakeWorker(batch_s=0.0)
    engine = engine_for(worker, batch_wait_ms=300)

    def submit(prompt: str):
        return engine.submit(GenerationSpec(**{**SPEC.__dict__, "prompt": prompt}))

    async def run() -> None:
        await engine.start()
        await asyncio.gather(submit("a").future, submit("b").future)  # one batch of 2: the next waits for 2
        leaving = submit("leaves")
        await asyncio.sleep(0.05)
        engine.cancel(leaving)
        assert (await submit("stays").future)["items"] == [b"png"]
        await engine.stop()
        assert leaving.future.cancelled()

    asyncio.run(run())
    assert worker.batches == [["a", "b"], ["stays"]]


def test_bad_batch_wait_is_one_line():
    with pytest.raises(ValueError, match=r"batch_wait_ms=-1 is not allowed: it must be milliseconds in \[0, 10000\]"):
        ServerConfig(worker=WorkerOptions("fake"), batch_wait_ms=-1)
