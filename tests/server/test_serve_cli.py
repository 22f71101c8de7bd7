"""python -m fastdit.serve as a command: a bad flag, an address it cannot listen on, or a model that cannot load
ends with one line and a non-zero status; SIGTERM while loading ends it with 130 and no worker left behind;
Ctrl-C while serving (SIGINT to the whole process group, as a terminal sends it) is a graceful stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from fastdit.serve import build_parser, config_from_args
from tests.server.conftest import HOST, TINY, free_port, running_server


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastdit.serve", *args], capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, returncode: int, match: str) -> None:
    assert result.returncode == returncode, result.stderr
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("fastdit.serve: error: ") and match in result.stderr, result.stderr


def spawned_workers(pid: int) -> list[int]:
    """Live processes that `pid` started with multiprocessing's spawn (Linux /proc): the worker, not the
    resource tracker that spawn also starts."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("args, match", [
    (["--port", "30000"], "the following arguments are required: --model-path"),
    (["--model-path", "flux-tiny", "--max-queue", "0"], "max_queue=0 is not allowed"),
    (["--model-path", "flux-tiny", "--max-batch-size", "x"], "invalid int value: 'x'"),
    (["--model-path", "flux-tiny", "--port", "70000"], "port=70000 is not allowed"),
    (["--model-path", "flux-tiny", "--result-ttl-s", "0"], "result_ttl_s=0.0 is not allowed"),
    (["--model-path", "flux-tiny", "--shutdown-timeout-s", "-1"], "shutdown_timeout_s=-1.0 is not allowed"),
    (["--model-path", "flux-tiny", "--api-key", ""], "api_key='' is not allowed"),
    (["--model-path", "flux-tiny", "--max-stored-mb", "0"], "max_stored_mb=0 is not allowed"),
    (["--model-path", "flux-tiny", "--batch-wait-ms", "-5"], "batch_wait_ms=-5.0 is not allowed"),
    (["--model-path", "flux-tiny", "--load-format", "pt"], "invalid choice: 'pt'"),
    (["--model-path", "flux-tiny", "--dtype", "int8"], "invalid choice: 'int8'"),
])
def test_bad_flags_are_one_line(args, match):
    assert_one_line_error(serve(*args), 2, match)


def test_an_address_in_use_fails_before_loading():
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        result = serve("--model-path", "flux-tiny", *TINY, "--host", HOST, "--port", str(port))
    assert_one_line_error(result, 1, f"cannot listen on {HOST}:{port}: Address already in use")
    assert time.monotonic() - start < 30  # no worker was started: loading alone takes longer under CI load


def test_a_host_that_does_not_resolve_is_one_line():
    assert_one_line_error(serve("--model-path", "flux-tiny", "--host", "no-such-host.invalid"), 1,
                          "cannot listen on no-such-host.invalid:30000")


def test_a_model_that_cannot_load_is_one_line_and_exit_1():
    result = serve("--model-path", "no-such-model-xyz", *TINY, "--host", HOST, "--port", str(free_port()))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("fastdit.serve: error: loading 'no-such-model-xyz' failed: ValueError: unknown model"), last


def test_sigterm_while_loading_exits_130_and_leaves_no_worker():
    command = [sys.executable, "-m", "fastdit.serve", "--model-path", "flux-tiny", *TINY, "--host", HOST, "--port", str(free_port())]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (workers := spawned_workers(process.pid)):  # the worker exists once the server is past its own setup
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert stderr == "fastdit.serve: interrupted (SIGTERM) while loading 'flux-tiny'\n"
    assert not any(alive(pid) for pid in workers)


def test_ctrl_c_answers_the_requests_in_flight_then_exits_0(tmp_path):
    post = {"prompt": "a fox", "size": "32x32", "num_inference_steps": 1}
    with running_server("--enable-test-faults", tmp_dir=tmp_path, new_session=True) as server:
        worker = server.health().json()["worker_pid"]
        answers: dict[str, httpx.Response] = {}

        def send(name: str, body: dict) -> None:
            answers[name] = httpx.post(server.url + "/v1/images/generations", json=body, timeout=60)

        threads = [threading.Thread(target=send, args=("running", {**post, "fastdit_test_fault": "sleep:2"}))]
        threads[0].start()
        server.wait_for(lambda health: health["running"] == 1)
        threads.append(threading.Thread(target=send, args=("queued", post)))
        threads[1].start()
        server.wait_for(lambda health: health["queue_depth"] == 1)
        os.killpg(server.process.pid, signal.SIGINT)  # the terminal's Ctrl-C: the server AND its worker get it
        for thread in threads:
            thread.join(timeout=60)
        assert server.process.wait(timeout=60) == 0, server.log_tail()
    assert {name: r.status_code for name, r in answers.items()} == {"running": 200, "queued": 200}
    assert not alive(worker)
    with pytest.raises(httpx.TransportError):
        server.health()
    assert "Traceback" not in server.log_tail() and "leaked" not in server.log_tail()


def test_flags_become_the_config():
    args = build_parser().parse_args(["--model-path", "flux-tiny", "--max-queue", "8", "--max-pixels", "4096",
                                      "--api-key", "k", "--load-format", "dummy", "--dtype", "float32",
                                      "--disable-cuda-graph", "--enable-torch-compile", "--shutdown-timeout-s", "5",
                                      "--max-stored-mb", "64", "--batch-wait-ms", "0"])
    config = config_from_args(args)
    assert (config.host, config.port, config.max_queue, config.max_pixels, config.api_key) == ("127.0.0.1", 30000, 8, 4096, "k")
    assert (config.worker.model_path, config.worker.load_format, config.worker.dtype) == ("flux-tiny", "dummy", "float32")
    assert (config.worker.cuda_graph, config.worker.torch_compile, config.shutdown_timeout_s) == (False, True, 5.0)
    assert (config.max_stored_mb, config.batch_wait_ms) == (64, 0.0)
    defaults = config_from_args(build_parser().parse_args(["--model-path", "m"]))
    assert (defaults.worker.dtype, defaults.worker.cuda_graph, defaults.worker.torch_compile) == ("auto", None, False)
