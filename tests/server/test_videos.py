"""The asynchronous video API end to end against a real server running wan-tiny (dummy weights, CPU): create with
the `openai` client, poll to completed, download a decodable MP4 of the asked size, frame count and rate; list,
delete, failed jobs, content before completion; image routes answer 400 on a video model."""

from __future__ import annotations

import io
import time

import httpx
import pytest

from tests.server.conftest import running_server

av = pytest.importorskip("av")
openai = pytest.importorskip("openai")  # absent on the GPU machine (which collects every test file); CI has them

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks its Sora API deprecated
FAST = {"num_inference_steps": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server("--enable-test-faults", "--result-ttl-s", "600", "--max-queue", "1", model="wan-tiny",
                        tmp_dir=tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def wait_for(client, video_id: str, statuses=("completed", "failed"), timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while True:
        video = client.videos.retrieve(video_id)
        if video.status in statuses:
            return video
        assert time.monotonic() < deadline, f"video {video_id} still {video.status}"
        time.sleep(0.2)


def poll_http(server, video_id: str, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while (video := httpx.get(f"{server.url}/v1/videos/{video_id}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, video
        time.sleep(0.2)
    return video


def test_create_poll_download(client):
    created = client.videos.create(model="wan-tiny", prompt="waves at dusk", seconds="1", size="48x32", extra_body=FAST)
    assert (created.object, created.status, created.model, created.size, created.seconds) == ("video", "queued", "wan-tiny", "48x32", "1")
    video = wait_for(client, created.id)
    assert video.status == "completed" and video.progress == 100 and video.expires_at >= video.completed_at + 599
    data = client.videos.download_content(created.id).read()
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        assert stream.average_rate == 8  # wan-tiny's default frame rate
    assert len(frames) == 1 * 8 + 1 and (frames[0].width, frames[0].height) == (48, 32)
    assert created.id in [v.id for v in client.videos.list().data]
    assert client.videos.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(created.id)


def test_json_body_and_explicit_frames(server):
    body = {"prompt": "rain", "num_frames": 5, "fps": 4, "size": "32x32", "seed": 3, **FAST}
    created = httpx.post(server.url + "/v1/videos", json=body, timeout=30).json()
    assert created["seconds"] == "1"
    assert poll_http(server, created["id"])["status"] == "completed"
    content = httpx.get(f"{server.url}/v1/videos/{created['id']}/content")
    assert content.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(content.content)) as container:
        assert len(list(container.decode(video=0))) == 5


def test_failed_job_and_content_before_completion(client, server):
    failing = client.videos.create(prompt="x", extra_body={**FAST, "size": "32x32", "fastdit_test_fault": "raise"})
    video = wait_for(client, failing.id)
    assert video.status == "failed" and video.error.code == "generation_failed" and "injected" in video.error.message
    held = client.videos.create(prompt="y", extra_body={**FAST, "size": "32x32", "fastdit_test_fault": "sleep:3"})
    queued = client.videos.create(prompt="z", extra_body={**FAST, "size": "32x32"})
    assert wait_for(client, held.id, statuses=("in_progress",)).status == "in_progress"
    response = httpx.get(f"{server.url}/v1/videos/{queued.id}/content")
    assert response.status_code == 400 and response.json()["error"]["code"] == "not_ready"
    with pytest.raises(openai.RateLimitError):  # --max-queue 1: a second waiting job is refused...
        client.videos.create(prompt="w", extra_body={**FAST, "size": "32x32"})
    assert [v.id for v in client.videos.list().data][:2] == [queued.id, held.id]  # ...and leaves no record behind
    client.videos.delete(queued.id)  # still queued: it leaves the queue and never runs
    assert httpx.get(server.url + "/health").json()["queue_depth"] == 0
    assert wait_for(client, held.id).status == "completed"


def test_bad_video_requests_and_image_routes(server):
    response = httpx.post(server.url + "/v1/videos", json={"prompt": "p", "num_frames": 6, **FAST, "size": "32x32"})
    video = poll_http(server, response.json()["id"])
    assert video["status"] == "failed" and "4k+1 frames" in video["error"]["message"]  # the pipeline's own rule
    for body, param in [({"prompt": "p", "size": "33x32"}, "size"), ({"prompt": ""}, "prompt"), ({"prompt": "p", "seconds": "x"}, "seconds")]:
        response = httpx.post(server.url + "/v1/videos", json=body)
        assert response.status_code == 400 and response.json()["error"]["param"] == param
    response = httpx.post(server.url + "/v1/images/generations", json={"prompt": "p"})
    assert response.status_code == 400 and "does not support image generation" in response.json()["error"]["message"]
    assert httpx.get(server.url + "/v1/videos/video_nope").status_code == 404
    response = httpx.get(server.url + "/v1/videos", params={"limit": "abc"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"
    assert response.json()["error"]["message"].startswith("limit='abc' is not allowed: Input should be a valid integer")
