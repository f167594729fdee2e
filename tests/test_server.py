"""Running the gateway: the keep-alive timer closes idle and slow-header connections, failed accept()s are
counted and logged at most once an interval, and the descriptor limit is raised to what the system allows."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.server import AcceptErrors, running
from tests.conftest import make_config

GUARD = 10.0  # seconds: a guard against a connection that is never closed, never a timing assumption


def accept_failure(listening: socket.socket) -> dict[str, Any]:
    """What asyncio's accept loop hands the exception handler."""
    return {"message": "socket.accept() out of system resource",
            "exception": OSError(errno.EMFILE, "Too many open files"), "socket": listening}


class Loop:
    """The two exception-handler methods AcceptErrors uses, recording what reaches the default."""

    def __init__(self) -> None:
        self.handler: Any = None
        self.defaults: list[dict[str, Any]] = []

    def get_exception_handler(self) -> Any:
        return self.handler

    def set_exception_handler(self, handler: Any) -> None:
        self.handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        self.defaults.append(context)


def test_failed_accepts_are_all_counted_and_logged_once_an_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    guard, loop = AcceptErrors(interval=5.0, monotonic=lambda: now[0]), Loop()
    guard.install(loop)  # type: ignore[arg-type]
    caplog.set_level(logging.ERROR, logger="lore_gateway.server")
    with socket.socket() as listening:
        failures = [accept_failure(listening) for _ in range(300)]

    for context in failures[:128]:
        loop.handler(loop, context)
    now[0] += 4.9
    for context in failures[128:256]:
        loop.handler(loop, context)
    now[0] += 0.2
    for context in failures[256:]:
        loop.handler(loop, context)

    assert guard.count == 300 and loop.defaults == []
    assert len(caplog.records) == 2
    assert "256 failed accept() calls" in caplog.records[1].getMessage()  # every one since the first line


def test_every_other_report_goes_to_the_handler_that_was_there_before() -> None:
    guard, loop = AcceptErrors(), Loop()
    guard.install(loop)  # type: ignore[arg-type]
    other = {"message": "Task exception was never retrieved", "exception": ValueError("x")}
    refused = {"message": "socket.accept() failed", "exception": OSError(errno.EPERM, "no"), "socket": None}

    loop.handler(loop, other)
    loop.handler(loop, refused)

    assert loop.defaults == [other, refused] and guard.count == 0
    guard.uninstall(loop)  # type: ignore[arg-type]
    assert loop.handler is None


async def test_a_request_head_sent_byte_by_byte_is_cut_off_at_the_keepalive_timeout(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path / "data", gateway_keepalive_timeout="500ms"), scheduler=False)
    async with running(app, "127.0.0.1", 0) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        started = time.monotonic()
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        closed = False
        while not closed and time.monotonic() - started < GUARD:
            writer.write(b"X")  # one more byte of a header that never ends
            await writer.drain()
            try:
                closed = await asyncio.wait_for(reader.read(1), 0.1) == b""
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
        writer.close()

    assert closed and 0.5 <= time.monotonic() - started < GUARD


async def test_an_idle_keep_alive_connection_is_closed_at_the_keepalive_timeout(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path / "data", gateway_keepalive_timeout="500ms"), scheduler=False)
    async with running(app, "127.0.0.1", 0) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.readuntil(b'{"status":"ok"}'), GUARD)

        rest = await asyncio.wait_for(reader.read(), GUARD)  # then nothing, until the server closes
        writer.close()

    assert answer.startswith(b"HTTP/1.1 200") and rest == b""


def test_serving_raises_the_soft_descriptor_limit_to_the_hard_one() -> None:
    program = (
        "import resource, json\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from gateway.server import raise_descriptor_limit\n"
        "print(json.dumps([raise_descriptor_limit(), resource.getrlimit(resource.RLIMIT_NOFILE), hard]))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)

    returned, (soft, hard), original_hard = json.loads(done.stdout)
    assert returned == soft == hard == original_hard


_GC_PROBE = """
import asyncio, gc, json
from aiohttp import web
from gateway.server import running

async def main():
    before = (gc.get_threshold()[0], gc.get_freeze_count())
    async with running(web.Application(), "127.0.0.1", 0):
        during = (gc.get_threshold()[0], gc.get_freeze_count())
    print(json.dumps({"before": before, "during": during}))

asyncio.run(main())
"""


def test_a_started_server_freezes_its_start_up_heap_and_collects_young_objects_less_often() -> None:
    """In a process of its own: the collector's settings are the whole process's."""
    from gateway.server import GC_YOUNG_THRESHOLD

    done = subprocess.run([sys.executable, "-c", _GC_PROBE], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["before"] == [700, 0]  # CPython's defaults, untouched until the server is set up
    threshold, frozen = seen["during"]
    assert threshold == GC_YOUNG_THRESHOLD
    assert frozen > 1000  # the modules and the app: everything alive at start-up
