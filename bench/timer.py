"""The one shared GPU timer of fastdit's benchmarks: CUDA events around each call, warmup first, the
median reported, and a cold L2 (a buffer twice the L2 size is overwritten before every timed call, so
a memory-bound kernel is not timed on data the previous call left in cache). A spin kernel runs before
each start event so that the CPU has queued the call before the GPU reaches it: the times are GPU time.

    from timer import time_cuda, copy_bandwidth_gbs     # in bench/<name>.py, run as `python bench/<name>.py`
    t = time_cuda(lambda: op(x), warmup=5, iters=30)   # -> Timing(median_ms, min_ms, max_ms, iters)
    ts = time_interleaved({"ours": f, "peer": g})       # the same, round-robin: ratios under one GPU state
    s = time_sustained(graph, calls=12, hold_s=1.2)     # replays back to back: ms per call at the power cap
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float
    iters: int

    def gbs(self, bytes_moved: int) -> float:
        """Achieved bandwidth in GB/s (1e9 bytes) for `bytes_moved` per call, at the median time."""
        return bytes_moved / (self.median_ms * 1e-3) / 1e9


_SLEEP_CYCLES = 1_000_000  # ~0.5 ms at H100 clocks: more than any op's CPU-side dispatch
_flush_buffers: dict[torch.device, torch.Tensor] = {}


def _flush_buffer(device: torch.device) -> torch.Tensor:
    if device not in _flush_buffers:
        l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 << 20)
        _flush_buffers[device] = torch.empty(2 * max(l2_bytes, 16 << 20), dtype=torch.uint8, device=device)
    return _flush_buffers[device]


def _resolve(device: torch.device | str | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    return torch.device(device or "cuda", torch.cuda.current_device())


def _timed_call(fn: Callable[[], object], flush: torch.Tensor | None) -> tuple[torch.cuda.Event, torch.cuda.Event]:
    """Queues one timed call: the L2 flush (when asked), a spin, then fn() between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    if flush is not None:
        flush.fill_(1)
    # Keep the GPU busy while the CPU queues the call, so the events time the GPU work, not the
    # Python dispatch in front of it (measured separately: bench/ops.py's dispatch overhead).
    torch.cuda._sleep(_SLEEP_CYCLES)
    start.record()
    fn()
    end.record()
    return start, end


def _timing(calls: list[tuple[torch.cuda.Event, torch.cuda.Event]]) -> Timing:
    times = [s.elapsed_time(e) for s, e in calls]
    return Timing(statistics.median(times), min(times), max(times), len(times))


def time_cuda(fn: Callable[[], object], warmup: int = 5, iters: int = 30, cold_l2: bool = True,
              device: torch.device | str | None = None) -> Timing:
    """Times fn() on the current CUDA stream: `warmup` untimed calls, then `iters` calls each between two
    CUDA events (the L2 flush, when asked, runs before the start event). Returns the per-call times."""
    device = _resolve(device)
    flush = _flush_buffer(device) if cold_l2 else None
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    calls = [_timed_call(fn, flush) for _ in range(iters)]
    torch.cuda.synchronize(device)
    return _timing(calls)


def time_interleaved(fns: dict[str, Callable[[], object]], warmup: int = 3, rounds: int = 15, cold_l2: bool = True,
                     device: torch.device | str | None = None) -> dict[str, Timing]:
    """Times several ways of doing the same work side by side: each round calls every fn once (as time_cuda
    does one call: cold L2, spin, events), the order rotating from round to round, so that clock and power
    drift over the run reach every candidate alike and their ratios are taken under the same conditions
    (timing one candidate after another lets the first one run on a cooler, faster-clocked GPU)."""
    device = _resolve(device)
    flush = _flush_buffer(device) if cold_l2 else None
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    torch.cuda.synchronize(device)
    calls: dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            calls[name].append(_timed_call(fns[name], flush))
        torch.cuda.synchronize(device)  # bounds the queue; between rounds, outside every timed span
    return {name: _timing(calls[name]) for name in names}


def copy_bandwidth_gbs(nbytes: int = 1 << 30, device: torch.device | str = "cuda") -> float:
    """The device-to-device copy bandwidth (bytes read + bytes written per second, in GB/s) that the
    kernels' GB/s are compared against: dst.copy_(src) of `nbytes`, cold L2, median of 20."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(3)
    dst = torch.empty_like(src)
    timing = time_cuda(lambda: dst.copy_(src), warmup=3, iters=20, device=torch.device(device))
    return timing.gbs(2 * nbytes)


class _PowerSampler:
    """Board power (W) and SM clock (MHz) read through NVML every 20 ms on a thread, start() to stop()."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:  # no NVML (or no pynvml): times only, power and clock NaN
            self._nvml = None
        self._samples: list[tuple[float, float]] = []
        self._running = False

    def start(self) -> None:
        self._samples, self._running = [], True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        n = self._nvml
        while self._running and n is not None:
            self._samples.append((n.nvmlDeviceGetPowerUsage(self._handle) / 1000.0,
                                  n.nvmlDeviceGetClockInfo(self._handle, n.NVML_CLOCK_SM)))
            time.sleep(0.02)

    def stop(self) -> tuple[float, float]:
        """-> (mean power W, median SM clock MHz) since start(); NaN without NVML."""
        self._running = False
        self._thread.join()
        if not self._samples:
            return math.nan, math.nan
        return statistics.fmean(p for p, _ in self._samples), statistics.median(c for _, c in self._samples)


_power_sampler: _PowerSampler | None = None


@dataclass(frozen=True)
class Sustained:
    burst_ms: float      # per call, over 3 replays after a 0.5 s idle pause (boost clock)
    sustained_ms: float  # per call, replays back to back for hold_s, timed over the last third
    power_w: float       # mean board power over the timed third (NaN without NVML)
    sm_mhz: float        # median SM clock over it

    @property
    def mj_per_call(self) -> float:
        return self.power_w * self.sustained_ms


def time_sustained(graph: torch.cuda.CUDAGraph, calls: int, hold_s: float = 1.2) -> Sustained:
    """Times a captured graph of `calls` calls as a long run of work meets it: replayed back to back for
    hold_s seconds, so that the board reaches its power cap and the clock its sustained value (a FLUX step
    runs there: RESULTS.md, issue 5), timed over the last third with NVML's power and clock meanwhile. The
    burst time (a few replays after an idle pause) is returned beside it."""
    global _power_sampler
    if _power_sampler is None:
        _power_sampler = _PowerSampler()
    graph.replay()
    torch.cuda.synchronize()
    time.sleep(0.5)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        graph.replay()
    end.record()
    end.synchronize()
    burst_ms = start.elapsed_time(end) / (3 * calls)
    replays = max(6, math.ceil(hold_s * 1e3 / (burst_ms * calls)))
    first_timed = replays - replays // 3
    for r in range(replays):
        if r == first_timed:
            start.record()
        graph.replay()
    end.record()
    start.synchronize()  # the CPU queued ahead: sample from when the GPU reaches the timed third
    _power_sampler.start()
    end.synchronize()
    power_w, sm_mhz = _power_sampler.stop()
    return Sustained(burst_ms, start.elapsed_time(end) / ((replays - first_timed) * calls), power_w, sm_mhz)


def capture(call: Callable[[int], object], calls: int, sets: int) -> torch.cuda.CUDAGraph:
    """A CUDA graph of `calls` calls call(0), call(1), ... call(sets - 1), call(0), ... (each set its own
    operands, so that a graph of weight-streaming calls reads its weights from DRAM as a model step does).
    Each set is called once outside the capture first (warm-up, and any library's lazy allocation)."""
    for s in range(sets):
        call(s)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for c in range(calls):
            call(c % sets)
    return graph
