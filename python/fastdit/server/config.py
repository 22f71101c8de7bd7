"""The server's settings: one frozen record built from the command line (serve.py) and read everywhere else.

Limits are validated here once, with one-line errors; the HTTP layer and the worker only read them.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastdit.distributed.config import ParallelConfig

LOAD_FORMATS = ("auto", "dummy")
DTYPES = ("auto", "bfloat16", "float16", "float32")  # auto: bfloat16 on a GPU, float32 on a CPU


@dataclass(frozen=True)
class WorkerOptions:
    """What the worker process needs to build the pipeline: the arguments of `Pipeline.from_pretrained`."""

    model_path: str
    load_format: str = "auto"
    device: str | None = None
    dtype: str = "auto"
    attention_backend: str = "auto"
    kernel_backend: str = "auto"
    cuda_graph: bool | None = None  # None: on for a CUDA device (one graph per batch shape), off elsewhere
    torch_compile: bool = False
    enable_test_faults: bool = False
    parallel: ParallelConfig = ParallelConfig()  # --num-gpus N: the worker runs N ranks (PipelineWorkers)

    def __post_init__(self) -> None:
        if not self.model_path:
            raise ValueError("model_path='' is not allowed: give a built-in model id or a diffusers folder")
        if self.load_format not in LOAD_FORMATS:
            raise ValueError(f"load_format={self.load_format!r} is not allowed: use one of {', '.join(LOAD_FORMATS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is not allowed: use one of {', '.join(DTYPES)}")


@dataclass(frozen=True)
class ServerConfig:
    """HTTP-side limits. Pixel, body and time limits are in the units their names say."""

    worker: WorkerOptions
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    max_queue: int = 64
    max_batch_size: int = 4
    batch_wait_ms: float = 50.0
    max_pixels: int = 2048 * 2048
    max_body_bytes: int = 64 * 1024 * 1024
    result_ttl_s: float = 3600.0
    max_stored_mb: int = 4096
    shutdown_timeout_s: float = 60.0
    worker_load_timeout_s: float = 1800.0

    def __post_init__(self) -> None:
        _check_int("port", self.port, 1, 65535)
        _check_int("max_queue", self.max_queue, 1, 1_000_000)
        _check_int("max_batch_size", self.max_batch_size, 1, 64)
        _check_int("max_pixels", self.max_pixels, 16 * 16, 1 << 40)
        _check_int("max_body_bytes", self.max_body_bytes, 1024, 1 << 40)
        _check_int("max_stored_mb", self.max_stored_mb, 1, 1 << 30)
        if not self.result_ttl_s > 0:
            raise ValueError(f"result_ttl_s={self.result_ttl_s} is not allowed: it must be a number of seconds > 0")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise ValueError(f"batch_wait_ms={self.batch_wait_ms} is not allowed: it must be milliseconds in [0, 10000]")
        if not 0 <= self.shutdown_timeout_s <= 86400:
            raise ValueError(f"shutdown_timeout_s={self.shutdown_timeout_s} is not allowed: it must be seconds in [0, 86400]")
        if self.api_key is not None and not self.api_key:
            raise ValueError("api_key='' is not allowed: leave it unset to serve without a key, or give a non-empty key")

    @property
    def model_name(self) -> str:
        """The name clients pass as `model` and see in /v1/models: the model path as given."""
        return self.worker.model_path


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an integer in [{low}, {high}]")
