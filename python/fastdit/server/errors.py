"""OpenAI-style errors: every non-2xx answer of the server is

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

with the HTTP status that goes with it. Route code raises `APIError`; app.py turns it (and FastAPI's own
errors) into that body. `type` follows OpenAI's names: invalid_request_error (400, 404, 413), authentication_error
(401), rate_limit_error (429), server_error (500, 503).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class APIError(Exception):
    """An error answered to the client as-is. `headers` carries e.g. Retry-After for a 429."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] | None = None

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, "invalid_request_error", param, code)


def not_found(message: str, param: str | None = None) -> APIError:
    return APIError(404, message, "invalid_request_error", param, "not_found")


def unauthorized(message: str) -> APIError:
    return APIError(401, message, "authentication_error", None, "invalid_api_key")


def body_too_large(limit_bytes: int) -> APIError:
    return APIError(
        413, f"request body is larger than the server's limit of {limit_bytes} bytes", "invalid_request_error",
        None, "request_too_large",
    )


def queue_full(max_queue: int, retry_after_s: int) -> APIError:
    return APIError(
        429, f"the request queue is full ({max_queue} waiting requests); retry after {retry_after_s} s",
        "rate_limit_error", None, "queue_full", {"Retry-After": str(retry_after_s)},
    )


def server_error(message: str, code: str | None = "generation_failed") -> APIError:
    return APIError(500, message, "server_error", None, code)


def unavailable(message: str) -> APIError:
    return APIError(503, message, "server_error", None, "unavailable", {"Retry-After": "5"})


# Status -> OpenAI error type, for errors raised by FastAPI/Starlette itself (404 route, 405 method).
STATUS_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
    405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
}


def type_for_status(status: int) -> str:
    return STATUS_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
