"""Faults against a real server: a failing request answers 500 alone, a dead worker is restarted (the request it
held answers 500, the ones waiting behind it still succeed), and a client that leaves does not disturb the rest.
Faults are injected through the request field fastdit_test_fault, which the server honours only because it
was started with --enable-test-faults."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import os
import signal
import time

import httpx
import pytest
from PIL import Image

from tests.server.conftest import AUTH, metric

GENERATIONS = "/v1/images/generations"
SMALL = {"size": "32x32", "num_inference_steps": 1}


@pytest.fixture(scope="module")
def server(flux_server):
    return flux_server


def generate(server, fault: str | None = None, timeout: float = 120, **extra) -> httpx.Response:
    body = {"prompt": "a fox", **SMALL, **extra}
    if fault is not None:
        body["fastdit_test_fault"] = fault
    return httpx.post(server.url + GENERATIONS, json=body, headers=AUTH, timeout=timeout)


def assert_image(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text[:300]
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["data"][0]["b64_json"])))
    assert image.size == (32, 32)


def wait_until(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def health(server) -> dict:
    return httpx.get(server.url + "/health", timeout=10).json()


@pytest.mark.parametrize("fault, code, match", [
    ("raise", "generation_failed", "RuntimeError: injected test fault (fastdit_test_fault=raise)"),  # its 2 lines as 1
    ("oom", "out_of_memory", "ran out of memory"),
])
def test_a_failing_request_is_500_and_the_next_succeeds(server, fault, code, match):
    pid = health(server)["worker_pid"]
    response = generate(server, fault)
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", code) and match in error["message"]
    assert_image(generate(server))
    assert health(server)["worker_pid"] == pid  # handled inside the worker: no restart


def test_a_killed_worker_is_restarted_and_only_its_request_fails(server):
    before = health(server)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = pool.submit(generate, server, "sleep:30")
        wait_until(lambda: health(server)["running"] == 1)
        queued = pool.submit(generate, server)  # waits in the queue behind the held request
        wait_until(lambda: health(server)["queue_depth"] == 1)
        os.kill(before["worker_pid"], signal.SIGKILL)
        held_response = held.result(timeout=60)
        assert held_response.status_code == 500
        error = held_response.json()["error"]
        assert error["code"] == "worker_died" and "exit code -9" in error["message"]
        assert_image(queued.result(timeout=120))  # ran on the new worker: accepted, so not lost
    after = server.wait_healthy(not_pid=before["worker_pid"])
    assert after["worker_restarts"] == before["worker_restarts"] + 1
    assert_image(generate(server))
    assert metric(httpx.get(server.url + "/metrics").text, "fastdit_worker_restarts_total") == after["worker_restarts"]
    assert httpx.get(server.url + "/models", headers=AUTH).json()["task"] == "text-to-image"  # the new worker's info


def test_a_client_that_leaves_does_not_disturb_the_others(server):
    before = httpx.get(server.url + "/metrics").text
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = pool.submit(generate, server, "sleep:3")
        wait_until(lambda: health(server)["running"] == 1)
        with pytest.raises(httpx.ReadTimeout):  # this client gives up while its request waits in the queue
            generate(server, timeout=0.5)
        wait_until(lambda: health(server)["queue_depth"] == 0, timeout_s=10)  # ...and its request left the queue
        assert_image(held.result(timeout=60))
    assert_image(generate(server))
    after = httpx.get(server.url + "/metrics").text
    gone = metric(after, "fastdit_requests_total", route=GENERATIONS, status="499") - \
        metric(before, "fastdit_requests_total", route=GENERATIONS, status="499")
    images = metric(after, "fastdit_images_generated_total") - metric(before, "fastdit_images_generated_total")
    assert (gone, images) == (1, 2)  # the departed request was never generated


def test_a_rule_only_the_pipeline_knows_is_400_from_the_worker(server):
    # 16x4112 passes the HTTP checks (multiples of 16, under --max-pixels) but not the pipeline's height <= 4096.
    response = generate(server, size="16x4112")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "height=4112 is not allowed" in error["message"]
