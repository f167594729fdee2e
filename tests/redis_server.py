"""A private redis-server for tests: started on a free port, stopped and restarted at will.

Tests that stop Redis must never stop the shared one on 6379, and tests that count (rate limits, ids)
must not see another run's keys, so each test gets its own throw-away server (no persistence). Where
redis-server is not installed the shared one on 6379 is used if it answers, else the test is skipped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                                 else None)
SHARED = ("127.0.0.1", 6379)
SKIP_REASON = ("needs Redis: install redis-server (Debian: apt-get install redis-server) so the tests can start "
               "their own, or run one on 127.0.0.1:6379")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """`url`, `stop()`, `start()`: the same port across a restart, and an empty data set after one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self._proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _answers("127.0.0.1", self.port):
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private server this test may stop and restart."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON + " (this test stops Redis, so it needs redis-server installed)")
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis no other test writes to: a private one where possible, else the shared one."""
    if REDIS_SERVER is not None:
        server = RedisServer(free_port())
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
    elif _answers(*SHARED):
        yield "redis://127.0.0.1:6379/0"
    else:
        pytest.skip(SKIP_REASON)
