"""Prometheus metrics of one server, in a private registry (two servers in one process never share counters).

    fastdit_requests_total{route, status}          every HTTP answer, route as its template (/v1/images/{image_id}/content)
    fastdit_request_latency_seconds{route}         HTTP time from the first byte received to the last byte sent
    fastdit_queue_depth                            requests waiting for the worker (not counting the running batch)
    fastdit_queue_wait_seconds                     time from admission to the start of the request's batch
    fastdit_batch_images                           images per worker batch
    fastdit_stage_seconds{stage}                   per pipeline stage (encode = the prompt, denoise, decode, ...) and
                                                   the worker's "encode_output" (PNG/JPEG/WEBP/MP4 bytes), per batch
    fastdit_images_generated_total / fastdit_videos_generated_total
    fastdit_worker_restarts_total
    fastdit_gpu_memory_bytes{kind}                 allocated / reserved / peak (max allocated) / peak_reserved (max
                                                   reserved: CUDA graph pools included) on the worker's GPU after the
                                                   latest batch; absent on CPU
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: from a fast CPU tiny model (tens of ms) to a long video job (many minutes).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("fastdit_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency = Histogram(
            "fastdit_request_latency_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("fastdit_queue_depth", "requests waiting for the worker", registry=r)
        self.queue_wait = Histogram(
            "fastdit_queue_wait_seconds", "time from admission to batch start", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_images = Histogram(
            "fastdit_batch_images", "images per worker batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.stage = Histogram(
            "fastdit_stage_seconds", "pipeline stage time per batch", ["stage"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.images = Counter("fastdit_images_generated", "images generated", registry=r)
        self.videos = Counter("fastdit_videos_generated", "videos generated", registry=r)
        self.worker_restarts = Counter("fastdit_worker_restarts", "worker processes restarted", registry=r)
        self.gpu_memory = Gauge("fastdit_gpu_memory_bytes", "worker GPU memory after the latest batch", ["kind"], registry=r)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def observe_batch(self, outcomes: list[dict[str, Any]], stats: dict[str, Any]) -> None:
        """Record one finished worker batch: its stage times (once per batch), outputs, and GPU memory."""
        done = [outcome for outcome in outcomes if outcome["ok"]]
        if done:
            for stage, ms in done[0]["timings"].get("stages_ms", {}).items():
                self.stage.labels(stage=stage).observe(ms / 1e3)
        for outcome in done:
            counter = self.videos if outcome["media_type"].startswith("video/") else self.images
            counter.inc(len(outcome["items"]))
        for kind, value in (stats.get("memory") or {}).items():
            self.gpu_memory.labels(kind=kind).set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
