"""Serve one aiohttp request through an ASGI application (the MCP SDK's Streamable HTTP endpoint).

The gateway stays one aiohttp process with one auth stack, one rate limiter and one metrics middleware;
only the protocol work is handed to the SDK's ASGI app. The body is read (bounded) before the app runs,
and the app's response is streamed back as it is sent, so an SSE answer flows through unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web

from gateway.http import ApiError, BodyDeadline

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


async def read_body(request: web.Request, limit: int, deadline_seconds: float) -> bytes:
    """The whole body, or a 413 as soon as it passes `limit` bytes (whatever Content-Length claimed), or
    a 408 when it has not all come within `deadline_seconds` (gateway.http.BodyDeadline)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"request body over {limit} bytes")
    chunks, total = [], 0
    async with BodyDeadline(request, deadline_seconds):
        while chunk := await request.content.read(64 * 1024):
            total += len(chunk)
            if total > limit:
                raise ApiError(413, "payload_too_large", f"request body over {limit} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _scope(request: web.Request) -> Scope:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    host, _, port = (request.host or "").rpartition(":")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.raw_path.split("?", 1)[0].encode("latin-1"),
        "query_string": request.query_string.encode("latin-1"),
        "root_path": "",
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
        "server": (host, int(port)) if port.isdigit() else None,
    }


async def serve_asgi(app: ASGIApp, request: web.Request, body: bytes) -> web.StreamResponse:
    """Run `app` for this request and relay what it sends; the response is prepared at its first byte."""
    done = asyncio.Event()
    response: web.StreamResponse | None = None
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the client is gone or the response is complete: tell the app so
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal response
        if message["type"] == "http.response.start":
            response = web.StreamResponse(status=message["status"])
            for name, value in message.get("headers", ()):
                response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
            await response.prepare(request)
        elif message["type"] == "http.response.body" and response is not None:
            chunk = message.get("body", b"")
            if chunk:
                await response.write(chunk)
            if not message.get("more_body", False):
                await response.write_eof()
                done.set()

    try:
        await app(_scope(request), receive, send)
    finally:
        done.set()
    if response is None:
        raise ApiError(503, "not_ready", "the MCP endpoint sent no response")
    return response
