"""Running the gateway: start the app on its socket, wait for SIGINT/SIGTERM, shut down gracefully.

`serve` and `demo` share this, so both stop the same way: sites close first,
SSE streams are ended by their on_shutdown hook, a running sync is cancelled
and recorded as interrupted, then the database closes.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from gateway import logs

SHUTDOWN_TIMEOUT = 10.0


class ListenError(Exception):
    """The socket could not be bound (port in use, no permission, bad address)."""


def configure_logging(level: str) -> None:
    """Structured JSON lines on stderr at `level` (gateway.log_level); see gateway.logs."""
    logs.configure(level)


@asynccontextmanager
async def running(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve `app` until the block exits; yields the base URL (port 0 picks a free one)."""
    # handler_cancellation: a closed SSE client is noticed at once, not at the next ping.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        bound = runner.addresses[0]
        yield f"http://{host}:{bound[1]}"
    finally:
        await runner.cleanup()


async def wait_for_stop_signal() -> None:
    """Return on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
