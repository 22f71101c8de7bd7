"""Engine dispatch with a stand-in worker (no process, no model): batches of closed-loop clients, the
--batch-wait-ms window, and a client that leaves while its batch lingers."""

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
    asyncio.run(closed_loop(engine_for(worker, batch_wait_ms), clients=4, rounds=4))
    sizes = [len(batch) for batch in worker.batches]
    assert sum(sizes) == 16 and sorted(p for batch in worker.batches for p in batch) == sorted(
        f"c{i} r{r}" for i in range(4) for r in range(4))  # every request ran exactly once
    if batch_wait_ms:
        assert sizes == [4, 4, 4, 4]
    else:
        assert len(sizes) > 4  # early arrivals leave without the others


def test_a_lone_request_waits_the_window_once_and_no_longer():
    worker = FakeWorker(batch_s=0.0)
    engine = engine_for(worker, batch_wait_ms=150)

    async def run() -> float:
        await engine.start()
        start = time.perf_counter()
        await engine.submit(SPEC).future
        elapsed = time.perf_counter() - start
        await engine.stop()
        return elapsed

    elapsed = asyncio.run(run())
    assert 0.15 <= elapsed < 1.0, elapsed


def test_a_request_that_leaves_while_its_batch_lingers_never_runs():
    worker = FakeWorker(batch_s=0.0)
    engine = engine_for(worker, batch_wait_ms=200)

    async def run() -> None:
        await engine.start()
        leaving = engine.submit(GenerationSpec(**{**SPEC.__dict__, "prompt": "leaves"}))
        await asyncio.sleep(0.05)
        engine.cancel(leaving)
        staying = engine.submit(GenerationSpec(**{**SPEC.__dict__, "prompt": "stays"}))
        assert (await staying.future)["items"] == [b"png"]
        await engine.stop()
        assert leaving.future.cancelled()

    asyncio.run(run())
    assert worker.batches == [["stays"]]


def test_bad_batch_wait_is_one_line():
    with pytest.raises(ValueError, match=r"batch_wait_ms=-1 is not allowed: it must be milliseconds in \[0, 10000\]"):
        ServerConfig(worker=WorkerOptions("fake"), batch_wait_ms=-1)
