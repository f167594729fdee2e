"""Run the gateway on an existing data directory in its own process, so a benchmark's client and server do
not share a core; yields its base URL, a `read` token and its pid (for reading its CPU time)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import multiprocessing as mp
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

UNLIMITED = "1000000000/minute"  # one token makes every request: the limiter stays on the path, unbinding


@dataclass(frozen=True)
class GatewayProcess:
    url: str
    token: str
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the gateway's threads have run so far, in nanoseconds' resolution (Linux schedstat;
        /proc/PID/stat counts in 10 ms ticks, too coarse for a few calls of a millisecond)."""
        total = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that ended just now
                total += int((task / "schedstat").read_text().split()[0])
        return total / 1e9


def _serve(data_dir: str, extra: str | None, ready: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    from aiohttp import web

    from gateway.app import create_app
    from gateway.auth import TOKENS
    from tests.conftest import make_config

    async def main() -> None:
        app = create_app(make_config(Path(data_dir), ratelimit_api=UNLIMITED), scheduler=False)
        if extra is not None:  # "module:function", called with the app before it starts
            module, _, function = extra.partition(":")
            getattr(importlib.import_module(module), function)(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        token = (await app[TOKENS].create("bench", ["read"], None)).token
        ready.put((runner.addresses[0][1], token, os.getpid()))
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    asyncio.run(main())


@contextmanager
def gateway_process(data_dir: Path, extra: str | None = None) -> Iterator[GatewayProcess]:
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(str(data_dir), extra, ready, stop), daemon=True)
    proc.start()
    try:
        port, token, pid = ready.get(timeout=120)
        yield GatewayProcess(f"http://127.0.0.1:{port}", token, pid)
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
