"""The FastAPI app: OpenAI-compatible routes over one Engine (queue + worker process).

    app = create_app(config, handle)            # handle: a started WorkerHandle; serve.py runs it with uvicorn

Routes (OpenAI request/response shapes where OpenAI has them):
    POST /v1/images/generations      JSON -> {"created", "data": [{"b64_json"} | {"url"}], ...}
    GET  /v1/images/{image_id}/content   an image stored for response_format="url" (expires after --result-ttl-s)
    POST /v1/images/edits            multipart, validated; models that do not edit answer 400
    POST /v1/videos, GET /v1/videos, GET|DELETE /v1/videos/{video_id}, GET /v1/videos/{video_id}/content
                                     asynchronous video jobs for video models; image models answer 400
    GET  /v1/models, /models, /health, /metrics
Errors are OpenAI-style JSON (errors.py) for every failure, including FastAPI's own (404, 405, 422 -> 400).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fastdit.server import errors
from fastdit.server.config import ServerConfig
from fastdit.server.engine import Engine, Job
from fastdit.server.metrics import CONTENT_TYPE, Metrics
from fastdit.server.middleware import CLIENT_CLOSED, ServerMiddleware
from fastdit.server.schemas import Limits, check_image_edit, images_response, parse_image_generation, parse_video_creation
from fastdit.server.storage import ResultStore
from fastdit.server.videos import VideoJobs
from fastdit.server.worker import WorkerHandle

IMAGE_TASKS = ("text-to-image",)
VIDEO_TASKS = ("text-to-video", "image-to-video")


class ClientGone(Exception):
    """The client disconnected before its job finished."""


def b64_images_body(created: int, items: list[bytes], spec: Any, size: str | None) -> bytes:
    """The JSON bytes of images_response(...) with {"b64_json": base64(item)} items, written directly.

    Base64's alphabet needs no JSON escaping, so the encoded bytes go into the body as they are: json.dumps of a
    ~4 MB string (one 1024x1024 PNG) scans every character again, 5-16 ms per answer, and the str round trip
    (decode to str, encode back to bytes) copies it twice more.
    """
    head = json.dumps({"created": created}, separators=(",", ":"))[:-1].encode()
    tail = json.dumps({"output_format": spec.output_format, "size": size}, separators=(",", ":"))[1:].encode()
    parts = [head, b',"data":[']
    for i, item in enumerate(items):
        parts += [b',{"b64_json":"' if i else b'{"b64_json":"', base64.b64encode(item), b'"}']
    return b"".join([*parts, b"],", tail])


async def wait_for_job(request: Request, engine: Engine, job: Job) -> dict[str, Any]:
    """The job's outcome, or ClientGone when the client leaves first (a queued job then leaves the queue)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.create_task(disconnected())
    try:
        await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not job.future.done():
        engine.cancel(job)
        raise ClientGone
    return job.future.result()  # raises the job's APIError


async def read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"the request body is not valid JSON: {exc}", None, "invalid_json") from None
    except RecursionError:  # e.g. 100k nested arrays: Python's parser recurses once per level
        raise errors.bad_request("the request body is not valid JSON: it nests too deeply", None, "invalid_json") from None


async def read_form(request: Request) -> tuple[dict[str, str], dict[str, list[bytes]]]:
    """A multipart form -> (text fields, {name: [file bytes]}); repeated file fields (image[]) keep every file."""
    try:
        form = await request.form()
    except StarletteHTTPException as exc:  # Starlette's "Invalid multipart data." names no cause; ours says what to send
        raise errors.bad_request(
            f"the request body is not a valid multipart form ({exc.detail}): send multipart/form-data fields and files",
            None, "invalid_form",
        ) from None
    fields: dict[str, str] = {}
    files: dict[str, list[bytes]] = {}
    for name, value in form.multi_items():
        if isinstance(value, str):
            fields[name] = value
        else:
            files.setdefault(name, []).append(await value.read())
    return fields, files


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.APIError)
    async def api_error(_: Request, exc: errors.APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = errors.error_body(str(exc.detail), errors.type_for_status(exc.status_code), None, None)
        return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers with this, then re-raises: uvicorn logs the traceback, the client gets OpenAI's shape.
        return JSONResponse(errors.error_body(f"internal server error ({type(exc).__name__})", "server_error", None, "internal_error"), 500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        message = f"{param}={first.get('input')!r} is not allowed: {first['msg']}"
        return JSONResponse(errors.error_body(message, "invalid_request_error", param, "invalid_value"), 400)


class Server:
    """The app's state: config, engine, stores; the routes are its methods' closures in `create_app`."""

    def __init__(self, config: ServerConfig, handle: WorkerHandle):
        self.config = config
        self.metrics = Metrics()
        self.engine = Engine(config, self.metrics, handle)
        self.store = ResultStore(config.result_ttl_s, max_bytes=config.max_stored_mb << 20)
        self.videos = VideoJobs(self.store)
        self.started_at = int(time.time())
        video = handle.info.get("video_defaults") or {}
        self.limits = Limits(
            config.model_name, config.max_batch_size, config.max_pixels, config.worker.enable_test_faults, video.get("fps")
        )

    @property
    def info(self) -> dict[str, Any]:
        return self.engine.handle.info

    def require_task(self, tasks: tuple[str, ...], what: str) -> None:
        if self.info.get("task") not in tasks:
            raise errors.bad_request(
                f"model {self.config.model_name!r} ({self.info.get('task')}) does not support {what}", "model", "unsupported_model"
            )


def _image_routes(app: FastAPI, server: Server) -> None:
    @app.post("/v1/images/generations")
    async def generate_images(request: Request) -> Any:
        spec, response_format = parse_image_generation(await read_json(request), server.limits)
        server.require_task(IMAGE_TASKS, "image generation")
        job = server.engine.submit(spec)
        try:
            outcome = await wait_for_job(request, server.engine, job)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        if response_format == "b64_json":
            return Response(b64_images_body(int(time.time()), outcome["items"], spec, outcome["size"]), media_type="application/json")
        base = str(request.base_url).rstrip("/")
        items = [{"url": f"{base}/v1/images/{server.store.put(data, outcome['media_type'])}/content"} for data in outcome["items"]]
        return images_response(int(time.time()), items, spec, outcome["size"])

    @app.get("/v1/images/{image_id}/content")
    async def image_content(image_id: str) -> Response:
        item = server.store.get(image_id)
        if item is None or not image_id.startswith("img_"):
            raise errors.not_found(f"image {image_id!r} does not exist or has expired (results are kept {server.config.result_ttl_s:g} s, "
                                   f"at most --max-stored-mb {server.config.max_stored_mb} MB of them)", "image_id")
        return Response(item.data, media_type=item.media_type)

    @app.post("/v1/images/edits")
    async def edit_images(request: Request) -> Any:
        fields, files = await read_form(request)
        check_image_edit(fields, files, server.limits)
        # No fastdit recipe edits images yet (FLUX here is text-to-image): a valid edit request still gets a 400.
        raise errors.bad_request(
            f"model {server.config.model_name!r} ({server.info.get('task')}) does not support edits", "model", "unsupported_model"
        )


def _video_routes(app: FastAPI, server: Server) -> None:
    def get_record(video_id: str):
        server.require_task(VIDEO_TASKS, "videos")
        record = server.videos.get(video_id)
        if record is None:
            raise errors.not_found(f"video {video_id!r} does not exist or has expired", "video_id")
        return record

    @app.post("/v1/videos")
    async def create_video(request: Request) -> Any:
        from_form = not request.headers.get("content-type", "").startswith("application/json")
        fields, files = await read_form(request) if from_form else (await read_json(request), {})
        if not isinstance(fields, dict):
            raise errors.bad_request(f"the request body must be a JSON object, got {type(fields).__name__}", None, "invalid_json")
        server.require_task(VIDEO_TASKS, "videos")  # after reading the body: a malformed one is still a 400 of its own
        spec = parse_video_creation(fields, files, server.limits, from_form=from_form)
        if server.info["task"] == "image-to-video" and spec.image is None:
            raise errors.bad_request(f"model {server.config.model_name!r} is image-to-video: input_reference is required", "input_reference")
        defaults, video = server.info.get("defaults") or {}, server.info.get("video_defaults") or {}
        size = f"{spec.width or defaults.get('width')}x{spec.height or defaults.get('height')}"
        frames, fps = spec.num_frames or video.get("num_frames"), spec.fps or video.get("fps")
        seconds = f"{(frames - 1) / fps:g}" if frames and fps else "auto"
        record = server.videos.create(server.config.model_name, spec.prompt, size, seconds)

        def started() -> None:
            record.status = "in_progress"

        try:
            record.job = server.engine.submit(spec, on_start=started)
        except errors.APIError:  # 429 queue full / 503: no job, so no record either
            server.videos.delete(record.id)
            raise

        async def finish() -> None:
            try:
                outcome: Any = await record.job.future
            except errors.APIError as exc:
                outcome = exc
            except asyncio.CancelledError:
                outcome = errors.server_error("the job was cancelled", "cancelled")
            server.videos.finish(record, outcome)

        asyncio.create_task(finish())
        return record.to_json()

    @app.get("/v1/videos")
    async def list_videos(after: str | None = None, limit: int = 20, order: str = "desc") -> Any:
        server.require_task(VIDEO_TASKS, "videos")
        if not 1 <= limit <= 100 or order not in ("asc", "desc"):
            raise errors.bad_request(f"limit={limit}, order={order!r} is not allowed: limit in [1, 100], order asc or desc", "limit")
        records = server.videos.list(after, limit + 1, order)
        data = [r.to_json() for r in records[:limit]]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": len(records) > limit}

    @app.get("/v1/videos/{video_id}")
    async def get_video(video_id: str) -> Any:
        return get_record(video_id).to_json()

    @app.delete("/v1/videos/{video_id}")
    async def delete_video(video_id: str) -> Any:
        record = get_record(video_id)
        if record.job is not None:
            server.engine.cancel(record.job)
        server.videos.delete(video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @app.get("/v1/videos/{video_id}/content")
    async def video_content(video_id: str) -> Response:
        record = get_record(video_id)
        item = server.store.get(video_id)
        if record.status != "completed":
            raise errors.bad_request(f"video {video_id!r} is {record.status}: its content exists once it is completed", "video_id", "not_ready")
        if item is None:
            raise errors.not_found(f"the content of video {video_id!r} was dropped: this server keeps at most "
                                   f"--max-stored-mb {server.config.max_stored_mb} MB of results, oldest dropped first", "video_id")
        return Response(item.data, media_type=item.media_type)


def _info_routes(app: FastAPI, server: Server) -> None:
    @app.get("/health")
    async def health() -> JSONResponse:
        engine = server.engine
        body = {
            "status": "ok" if engine.ready else "starting", "worker_pid": engine.handle.pid,
            "worker_restarts": engine.restarts, "queue_depth": len(engine.queue), "running": len(engine.running),
        }
        return JSONResponse(body, status_code=200 if engine.ready else 503)

    @app.get("/v1/models")
    async def list_models() -> Any:
        model = {"id": server.config.model_name, "object": "model", "created": server.started_at, "owned_by": "fastdit"}
        return {"object": "list", "data": [model]}

    @app.get("/models")
    async def models() -> Any:
        info = server.info
        return {
            "model_path": server.config.model_name, "model_id": info.get("model_id"), "task": info.get("task"),
            "pipeline": info.get("pipeline"), "precision": info.get("dtype"), "device": info.get("device"),
            "defaults": info.get("defaults"),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)


def create_app(config: ServerConfig, handle: WorkerHandle) -> ServerMiddleware:
    """The ASGI app: FastAPI routes wrapped in the auth / body-limit / metrics middleware."""
    server = Server(config, handle)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await server.engine.start()
        yield
        await server.engine.stop()

    app = FastAPI(title="fastdit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    _install_error_handlers(app)
    _image_routes(app, server)
    _video_routes(app, server)
    _info_routes(app, server)
    return ServerMiddleware(app, config, server.metrics)
