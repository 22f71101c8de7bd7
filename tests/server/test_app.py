"""The HTTP API end to end against a real server (flux-tiny, dummy weights, CPU): the `openai` client, every bad
input, auth, and 48 concurrent requests against --max-queue 8 with /metrics agreeing with what was answered."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import pytest
from PIL import Image

from tests.server.conftest import AUTH, KEY, MAX_BATCH, MAX_BODY, MAX_QUEUE, metric

openai = pytest.importorskip("openai")  # absent on the GPU machine (which collects every test file); CI has them

SMALL = {"size": "32x32", "num_inference_steps": 1}
GENERATIONS = "/v1/images/generations"


@pytest.fixture(scope="module")
def server(flux_server):
    return flux_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def post(server, path=GENERATIONS, headers=AUTH, **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, headers=headers, timeout=60, **kwargs)


def assert_error(response: httpx.Response, status: int, param=None, match: str = "", type="invalid_request_error"):
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type and error["param"] == param and match in error["message"], error


# ------------------------------------------------------------------------------------------------ the openai client
def test_openai_client_b64_json(client):
    result = client.images.generate(model="flux-tiny", prompt="a red fox", n=2, size="64x64", response_format="b64_json",
                                    extra_body={"num_inference_steps": 1})
    assert len(result.data) == 2 and result.size == "64x64" and result.output_format == "png"
    for item in result.data:
        image = decode(base64.b64decode(item.b64_json))
        assert image.format == "PNG" and image.size == (64, 64)


def test_openai_client_url_then_content(client, server):
    result = client.images.generate(prompt="a blue fox", size="96x64", response_format="url",
                                    extra_body={"num_inference_steps": 1, "output_format": "webp"})
    (item,) = result.data
    assert item.url.startswith(server.url + "/v1/images/img_") and item.url.endswith("/content")
    response = httpx.get(item.url, headers=AUTH, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    image = decode(response.content)
    assert image.format == "WEBP" and image.size == (96, 64)
    assert_error(httpx.get(item.url, timeout=10), 401, match="missing API key", type="authentication_error")
    assert_error(httpx.get(server.url + "/v1/images/img_nope/content", headers=AUTH), 404, "image_id", "does not exist")


def test_jpeg_and_seed_reproducibility(server):
    body = {"prompt": "a fox", "output_format": "jpeg", "seed": 11, **SMALL}
    first, second = post(server, json=body), post(server, json=body)
    assert first.status_code == second.status_code == 200
    a, b = (base64.b64decode(r.json()["data"][0]["b64_json"]) for r in (first, second))
    assert decode(a).format == "JPEG" and a == b


def test_models(client, server):
    assert [m.id for m in client.models.list().data] == ["flux-tiny"]
    info = httpx.get(server.url + "/models", headers=AUTH).json()
    assert (info["model_path"], info["task"], info["precision"], info["device"]) == ("flux-tiny", "text-to-image", "float32", "cpu")
    assert info["defaults"]["num_inference_steps"] == 4


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("body, param, match", [
    ({"prompt": "p", "size": "64by64"}, "size", "WIDTHxHEIGHT"),
    ({"prompt": "p", "size": "72x64"}, "size", "multiples of 16"),
    ({"prompt": "p", "size": "272x272"}, "size", "--max-pixels 70000"),
    ({"prompt": "p", "n": 0}, "n", "[1, 4]"),
    ({"prompt": "p", "n": MAX_BATCH + 1}, "n", "[1, 4]"),
    ({"prompt": ""}, "prompt", "non-empty"),
    ({"prompt": "x" * 4001}, "prompt", "at most 4000"),
    ({"size": "64x64"}, "prompt", "non-empty"),
    ({"prompt": ["a", "b"]}, "prompt", "prompt=['a', 'b'] is not allowed"),
    ({"prompt": "p", "n": "2"}, "n", "n='2' is not allowed"),
    ({"prompt": "p", "n": True}, "n", "n=True is not allowed"),
    ({"prompt": "p", "seed": 2**64}, "seed", "[0, 9223372036854775807]"),
    ({"prompt": "p", "num_inference_steps": 1.5}, "num_inference_steps", "an integer in [1, 1000]"),
    ({"prompt": "p", "response_format": "png"}, "response_format", "use one of b64_json, url"),
    ({"prompt": "p", "size": 64}, "size", "WIDTHxHEIGHT"),
    ({"prompt": "p", "colour": "red"}, "colour", "unknown parameter(s) colour"),
    ({"prompt": "p", "model": "dall-e-3"}, "model", "serves 'flux-tiny'"),
])
def test_bad_parameters_are_400(server, body, param, match):
    response = post(server, json=body)
    assert_error(response, 400, param, match)
    assert "\n" not in response.json()["error"]["message"]


@pytest.mark.parametrize("raw, param, match", [
    (b'{"prompt": "a fox",', None, "not valid JSON"),
    (b"", None, "not valid JSON"),
    (b"\xff\xfe", None, "not valid JSON"),
    (b"[" * 100_000, None, "nests too deeply"),  # Python's JSON parser recurses per level
    (b'{"prompt": "p"} {}', None, "Extra data"),
    (b"[1, 2]", None, "must be a JSON object, got list"),
    (b'{"prompt": "p", "guidance_scale": NaN}', "guidance_scale", "guidance_scale=nan is not allowed"),
    (b'{"prompt": "p", "num_inference_steps": 1e400}', "num_inference_steps", "num_inference_steps=inf"),
])
def test_malformed_json_is_400(server, raw, param, match):
    assert_error(post(server, content=raw, headers={**AUTH, "content-type": "application/json"}), 400, param, match)


def test_openai_client_sees_400_as_bad_request(client):
    with pytest.raises(openai.BadRequestError, match="multiples of 16"):
        client.images.generate(prompt="p", size="100x100")


def test_auth(server, client):
    assert_error(post(server, json={"prompt": "p", **SMALL}, headers={}), 401, match="missing API key", type="authentication_error")
    wrong = {"Authorization": "Bearer test-key-124"}
    assert_error(post(server, json={"prompt": "p", **SMALL}, headers=wrong), 401, match="incorrect API key", type="authentication_error")
    assert_error(httpx.get(server.url + "/v1/models", headers=wrong), 401, match="incorrect", type="authentication_error")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert httpx.get(server.url + "/health").status_code == 200  # open for load balancers
    assert httpx.get(server.url + "/metrics").status_code == 200


def test_body_too_large_is_413_by_length_and_by_stream(server):
    big = b'{"prompt": "' + b"x" * MAX_BODY + b'"}'
    assert_error(post(server, content=big, headers={**AUTH, "content-type": "application/json"}), 413, None, str(MAX_BODY))

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(8):
            yield b"x" * (MAX_BODY // 4)

    assert_error(post(server, content=chunks(), headers={**AUTH, "content-type": "application/json"}), 413, None, "larger")


def test_unknown_route_and_method_are_openai_errors(server):
    assert_error(httpx.get(server.url + "/v1/nothing", headers=AUTH), 404, None, "Not Found")
    assert_error(httpx.get(server.url + GENERATIONS, headers=AUTH), 405, None, "Method Not Allowed")


def test_edits_validate_the_form_then_refuse_a_text_to_image_model(server):
    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, format="PNG")
    form = {"prompt": "make it blue", "size": "64x64"}
    assert_error(post(server, "/v1/images/edits", data=form), 400, "image", "image is required")
    assert_error(post(server, "/v1/images/edits", content=b"junk", headers={**AUTH, "content-type": "multipart/form-data; boundary=b"}),
                 400, None, "not a valid multipart form")
    assert_error(post(server, "/v1/images/edits", data=form, files={"image": ("a.png", b"junk", "image/png")}),
                 400, "image[0]", "not a readable image")
    assert_error(post(server, "/v1/images/edits", data={**form, "size": "7x7"}, files={"image": ("a.png", png.getvalue(), "image/png")}),
                 400, "size", "multiples of 16")
    assert_error(post(server, "/v1/images/edits", data=form, files={"image[]": ("a.png", png.getvalue(), "image/png")}),
                 400, "model", "does not support edits")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks its Sora API deprecated
def test_video_routes_refuse_an_image_model(server, client):
    with pytest.raises(openai.BadRequestError, match="does not support videos"):
        client.videos.create(prompt="waves", seconds="4", size="720x1280")
    for method, path in [("GET", "/v1/videos"), ("GET", "/v1/videos/video_x"), ("DELETE", "/v1/videos/video_x"),
                         ("GET", "/v1/videos/video_x/content")]:
        assert_error(httpx.request(method, server.url + path, headers=AUTH), 400, "model", "does not support videos")
    assert_error(post(server, "/v1/videos", json={"prompt": "waves"}), 400, "model", "does not support videos")
    assert_error(post(server, "/v1/videos", content=b"{", headers={**AUTH, "content-type": "application/json"}), 400, None, "not valid JSON")


# ------------------------------------------------------------------------------------------------ load
async def _fire(server, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(headers=AUTH, timeout=120) as http:
        bodies = [{"prompt": f"fox {i}", **SMALL} for i in range(count)]
        return await asyncio.gather(*(http.post(server.url + GENERATIONS, json=body) for body in bodies))


def test_48_concurrent_requests_against_a_queue_of_8(server):
    before = httpx.get(server.url + "/metrics").text
    # Hold the worker for a few seconds so that the 48 requests meet a full queue, not a draining one.
    async def run():
        async with httpx.AsyncClient(headers=AUTH, timeout=120) as http:
            holder = asyncio.create_task(http.post(server.url + GENERATIONS, json={"prompt": "hold", "fastdit_test_fault": "sleep:4", **SMALL}))
            while (await http.get(server.url + "/health")).json()["running"] == 0:
                await asyncio.sleep(0.05)
            responses = await _fire(server, 48)
            return await holder, responses

    holder, responses = asyncio.run(asyncio.wait_for(run(), 150))
    assert holder.status_code == 200
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(limited) == 48, sorted({r.status_code for r in responses})
    assert len(ok) >= MAX_QUEUE and limited, (len(ok), len(limited))
    for response in ok:
        image = decode(base64.b64decode(response.json()["data"][0]["b64_json"]))
        assert image.size == (32, 32)
    for response in limited:
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"]["type"] == "rate_limit_error"
    after = httpx.get(server.url + "/metrics").text
    for status, count in (("200", len(ok) + 1), ("429", len(limited))):
        delta = metric(after, "fastdit_requests_total", route=GENERATIONS, status=status) - \
            metric(before, "fastdit_requests_total", route=GENERATIONS, status=status)
        assert delta == count, (status, delta, count)
    images = metric(after, "fastdit_images_generated_total") - metric(before, "fastdit_images_generated_total")
    batches = metric(after, "fastdit_batch_images_count") - metric(before, "fastdit_batch_images_count")
    assert images == len(ok) + 1
    # The held request ran alone; the queued ones ran in batches of up to MAX_BATCH images.
    assert 1 + len(ok) / MAX_BATCH <= batches < 1 + len(ok), batches
    assert metric(after, "fastdit_queue_depth") == 0
