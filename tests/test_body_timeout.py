"""webhook.body_timeout: a request body sent slowly, or never finished, gets 408 and its connection closed,
on a real socket; the next client is served as usual. aiohttp has no timer of its own for a body."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway import webhooks
from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.metrics import METRICS
from gateway.server import running
from tests.conftest import make_config

GUARD = 10.0  # seconds: a guard against a connection that is never closed, never a timing assumption
SECRET = "s" * 32
HOOK = orjson.dumps({"object_kind": "issue", "project": {"id": 1001}, "object_attributes": {"iid": 7}})


def head(path: str, length: int, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}\r\n").encode()


async def stall(url: str, request_head: bytes, part: bytes) -> tuple[bytes, bytes]:
    """Send a head and part of its body, then nothing: returns the answer's head and what followed it
    until the server closed (b'' when it closed right after the answer)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request_head + part)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
    rest = await asyncio.wait_for(reader.read(), GUARD)  # returns only once the server has closed
    writer.close()
    return answer, rest


def app_for(tmp_path: Path, **settings: str):
    return create_app(make_config(tmp_path / "data", webhook_secrets=SECRET, webhook_body_timeout="200ms",
                                  **settings), scheduler=False)


async def test_a_stalled_webhook_body_gets_408_and_a_closed_connection_then_the_next_hook_is_accepted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = app_for(tmp_path)
    caplog.set_level(logging.INFO)
    async with running(app, "127.0.0.1", 0) as url:
        answer, rest = await stall(url, head(webhooks.PATH, len(HOOK),
                                             f"X-Gitlab-Token: {SECRET}\r\nX-Gitlab-Event: Issue Hook\r\n"),
                                   HOOK[:10])
        async with aiohttp.ClientSession() as session:
            async with session.post(url + webhooks.PATH, data=HOOK, headers={
                    "X-Gitlab-Token": SECRET, "X-Gitlab-Event": "Issue Hook",
                    "Content-Type": "application/json"}) as normal:
                normal_status = normal.status

    status_line, _, headers = answer.partition(b"\r\n")
    body = orjson.loads(rest)
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert b"Connection: close" in headers
    assert body["error"]["code"] == "body_timeout"
    assert normal_status == 202
    assert app[webhooks.STATS].rejected == 1 and app[webhooks.STATS].accepted == 1
    assert app[METRICS].requests.body_timeouts == {webhooks.PATH: 1}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize(("path", "scope"), [("/api/v1/sync", "sync"), ("/mcp", "read")])
async def test_every_endpoint_that_reads_a_body_keeps_the_same_deadline(tmp_path: Path, path: str,
                                                                        scope: str) -> None:
    app = app_for(tmp_path)
    async with running(app, "127.0.0.1", 0) as url:
        token = (await app[TOKENS].create("agent", [scope], None)).token
        answer, rest = await stall(url, head(path, 40, f"Authorization: Bearer {token}\r\n"
                                             "Accept: application/json, text/event-stream\r\n"), b'{"profile":')

    assert answer.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in answer
    assert orjson.loads(rest)["error"]["code"] == "body_timeout"
    assert app[METRICS].requests.body_timeouts == {path: 1}
