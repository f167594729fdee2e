"""JSON in and out, and the one error shape: {"error": {"code", "message"}}.

Handlers raise `ApiError`; the middleware (gateway.front) turns it, and aiohttp's
own HTTP errors (404, 405, 413), into that shape. Anything else is a bug: it is logged
with the request id and answered with a generic 500 that leaks nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("lore_gateway.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {
    400: "invalid_parameter",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
    503: "not_ready",
}


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def json_body(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=json_body(data), status=status, headers=headers, content_type="application/json")


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def bad_parameter(name: str, message: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"{name}: {message}")


def http_error_response(exc: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx/5xx (404, 405, 413) in our error shape, keeping the headers that matter."""
    code = _CODES.get(exc.status, "http_error")
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
    return error_response(exc.status, code, _message(exc), headers)


def _message(exc: web.HTTPException) -> str:
    if exc.status == 405:
        return f"method not allowed; allowed: {exc.headers.get('Allow', '')}"
    if exc.status == 413:
        return "request body too large"
    if exc.status == 404:
        return "no such resource"
    return exc.reason
