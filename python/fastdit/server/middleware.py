"""The ASGI layer in front of the routes: API key, body-size limit, and per-request metrics.

    app = ServerMiddleware(fastapi_app, config, metrics)

In order, for every HTTP request:
  1. metrics: the answer's status and latency are recorded under the route's template (unmatched paths as
     "unmatched"), including the 401/413 answered here; a client that left before any answer counts as 499.
  2. --api-key: /v1/* and /models need "Authorization: Bearer KEY" (hmac.compare_digest: constant time);
     /health and /metrics stay open for load balancers and scrapers. Missing or wrong -> 401.
  3. body limit: a Content-Length above --max-body-bytes -> 413 before anything is read; a chunked body is
     counted as it streams and cut off at the limit with the same 413 (the route then sees a disconnect).
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from starlette.routing import Match

from fastdit.log import get_logger
from fastdit.server import errors
from fastdit.server.config import ServerConfig
from fastdit.server.metrics import Metrics

logger = get_logger("fastdit.server")
CLIENT_CLOSED = 499  # nginx's status for "the client closed the connection before the answer"


def route_label(app: Any, scope: dict) -> str:
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            return route.path
    return "unmatched"


def needs_key(path: str) -> bool:
    return path.startswith("/v1/") or path == "/models"


async def send_error(send: Any, error: errors.APIError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (error.headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ServerMiddleware:
    def __init__(self, app: Any, config: ServerConfig, metrics: Metrics):
        self.app = app
        self.config = config
        self.metrics = metrics
        self._key = config.api_key.encode() if config.api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": CLIENT_CLOSED, "answered": False}

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                if status["answered"]:
                    return  # we already answered (413 mid-stream): the app's own answer is dropped
                status["code"] = message["status"]
            elif status["answered"] and status.get("ours"):
                return
            await send(message)
            if message["type"] == "http.response.start":
                status["answered"] = True

        try:
            error = self._check(scope)
            if error is not None:
                await send_error(tracked_send, error)
            else:
                await self.app(scope, self._limited(receive, tracked_send, status), tracked_send)
        except Exception:
            if not status["answered"]:
                logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
                await send_error(tracked_send, errors.server_error("internal server error", "internal_error"))
            elif not status.get("ours"):
                raise
        finally:
            self.metrics.observe_request(route_label(self.app, scope), status["code"], time.perf_counter() - start)

    def _check(self, scope: dict) -> errors.APIError | None:
        headers = dict(scope["headers"])
        if self._key is not None and needs_key(scope["path"]):
            given = headers.get(b"authorization", b"")
            if not given.startswith(b"Bearer "):
                return errors.unauthorized("missing API key: send the header \"Authorization: Bearer <key>\"")
            if not hmac.compare_digest(given[len(b"Bearer "):].strip(), self._key):
                return errors.unauthorized("incorrect API key")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.config.max_body_bytes):
            return errors.body_too_large(self.config.max_body_bytes)
        return None

    def _limited(self, receive: Any, send: Any, status: dict) -> Any:
        """receive() that answers 413 and reports a disconnect once the streamed body passes the limit."""
        limit, received = self.config.max_body_bytes, [0]

        async def limited_receive() -> dict:
            if status.get("ours"):
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    await send_error(send, errors.body_too_large(limit))
                    status["ours"] = True
                    return {"type": "http.disconnect"}
            return message

        return limited_receive
