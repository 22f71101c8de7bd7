"""Starting a real `python -m fastdit.serve` subprocess on 127.0.0.1 (a free port) for the HTTP tests.

    with running_server("--api-key", "k", tmp_dir=path) as server:      # flux-tiny, dummy weights, CPU, float32
        httpx.get(server.url + "/health")

The server's output goes to a file whose tail is shown when a test fails to start it. Startup (the worker
importing torch and building flux-tiny) takes seconds, so test_app.py and test_faults.py share one flux-tiny
server (`flux_server`, the whole session); they compare /metrics before and after rather than absolute counts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0
TINY = ["--load-format", "dummy", "--device", "cpu", "--dtype", "float32"]
KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_QUEUE = 8
MAX_BATCH = 4
MAX_PIXELS = 70_000  # 256x256 fits, 272x272 does not; 16x4112 fits (and only the pipeline refuses it)
MAX_BODY = 256 * 1024
FLUX_FLAGS = ["--api-key", KEY, "--max-queue", str(MAX_QUEUE), "--max-batch-size", str(MAX_BATCH),
              "--max-pixels", str(MAX_PIXELS), "--max-body-bytes", str(MAX_BODY), "--enable-test-faults"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def health(self) -> httpx.Response:
        return httpx.get(self.url + "/health", timeout=5)

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S, not_pid: int | None = None) -> dict:
        """Poll /health until it is 200 (and, with not_pid, served by a worker other than that pid)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                response = self.health()
                if response.status_code == 200 and response.json()["worker_pid"] != not_pid:
                    return response.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not healthy within {timeout_s} s:\n{self.log_tail()}")

    def wait_for(self, predicate, timeout_s: float = 60.0) -> dict:
        """Poll /health until predicate(its JSON) holds; returns that JSON."""
        deadline = time.monotonic() + timeout_s
        while not predicate(health := self.health().json()):
            assert time.monotonic() < deadline, f"/health never reached the condition: {health}"
            time.sleep(0.05)
        return health


@contextlib.contextmanager
def running_server(*flags: str, tmp_dir: Path, model: str = "flux-tiny", new_session: bool = False):
    """new_session: the server leads its own process group, so a test can signal the group as a terminal does."""
    port = free_port()
    log_path = tmp_dir / f"server-{port}.log"
    command = [sys.executable, "-m", "fastdit.serve", "--model-path", model, *TINY, "--host", HOST, "--port", str(port), *flags]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = ServerProcess(process, f"http://{HOST}:{port}", log_path)
    try:
        server.wait_healthy()
        yield server
    finally:
        process.send_signal(signal.SIGINT)  # uvicorn's graceful stop; the lifespan stops the worker
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def flux_server(tmp_path_factory):
    with running_server(*FLUX_FLAGS, tmp_dir=tmp_path_factory.mktemp("flux-server")) as server:
        yield server


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in /metrics text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0
