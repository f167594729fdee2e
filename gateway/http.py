"""JSON in and out, and the one error shape: {"error": {"code", "message"}}.

Handlers raise `ApiError`; the middleware (gateway.front) turns it, and aiohttp's
own HTTP errors (404, 405, 413), into that shape. Anything else is a bug: it is logged
with the request id and answered with a generic 500 that leaks nothing.
"""

from __future__ import annotations

import asyncio
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
    408: "body_timeout",
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


class BodyTimeout(ApiError):
    """The request body did not arrive in time (webhook.body_timeout); answered by `answer_and_close`."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, "body_timeout", f"the request body did not arrive within {seconds:g} s",
                         {"Connection": "close"})


class BodyDeadline:
    """`async with BodyDeadline(request, seconds):` around every read of one request body.

    aiohttp times out an idle connection and a slow request head (gateway.keepalive_timeout) but has no
    timer for a body sent slowly, so without this a client that stops half-way holds its connection, and
    the memory its body took so far, for ever (docs/operations.md). A body that has all arrived before
    the handler runs (GitLab's 2-20 KB hooks, nearly always) cannot stall, and gets no timer at all; the
    cost of the check is in bench/body_deadline_bench.py."""

    __slots__ = ("_seconds", "_timeout")

    def __init__(self, request: web.BaseRequest, seconds: float) -> None:
        self._seconds = seconds
        self._timeout = None if request.content.is_eof() else asyncio.timeout(seconds)

    async def __aenter__(self) -> None:
        if self._timeout is not None:
            await self._timeout.__aenter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: object) -> None:
        if self._timeout is None:
            return
        try:
            await self._timeout.__aexit__(exc_type, exc, traceback)  # type: ignore[arg-type]
        except TimeoutError:
            raise BodyTimeout(self._seconds) from None


async def answer_and_close(request: web.BaseRequest, exc: ApiError) -> web.Response:
    """Send the error now, then drop the connection. Returning it the usual way would keep the connection
    open: aiohttp then reads on for up to 10 s ("lingering") for the rest of a body that is not coming,
    and would parse whatever came after as a next request."""
    response = error_response(exc.status, exc.code, exc.message, exc.headers)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport sends what it buffered, then closes
    return response


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
