"""Running the gateway: start the app on its socket, wait for SIGINT/SIGTERM, shut down gracefully.

`serve`, `serve --workers N` and `demo` share this, so all run with the same connection settings
(gateway.keepalive_timeout), the same guard against descriptor exhaustion, and stop the same way: sites
close first, SSE streams are ended by their on_shutdown hook, a running sync is cancelled and recorded as
interrupted, then the database closes.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import importlib.util
import logging
import resource
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiohttp import web

from gateway import logs
from gateway.keys import CONFIG
from sync import GatewayConfig

SHUTDOWN_TIMEOUT = 10.0
ACCEPT_LOG_INTERVAL = 5.0  # seconds between log lines about connections that could not be accepted
# What asyncio's accept loop reports when the process (EMFILE) or the system (ENFILE) has no descriptor
# left, or the kernel no buffer: it waits a second and tries again, and reports every failed accept().
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Net allocations of tracked objects between two collections of the youngest generation (CPython: 700).
GC_YOUNG_THRESHOLD = 10_000

log = logging.getLogger("lore_gateway.server")
T = TypeVar("T")


class ListenError(Exception):
    """The socket could not be bound (port in use, no permission, bad address)."""


def configure_logging(level: str) -> None:
    """Structured JSON lines on stderr at `level` (gateway.log_level); see gateway.logs."""
    logs.configure(level)


class AcceptErrors:
    """The loop's exception handler for failed accept()s: counted every time, logged once an interval.

    asyncio's accept loop does not stop at a failure: each wake-up of the listening socket tries accept()
    `backlog` (128) times, and hands every failure, with its traceback, to the loop's exception handler,
    whose default logs it: thousands of lines a second while descriptors are exhausted. Every other report
    goes on to the handler that was there before.
    """

    def __init__(self, interval: float = ACCEPT_LOG_INTERVAL,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.count = 0  # accept() failures seen (lore_gateway_accept_errors in /metrics)
        self._interval = interval
        self._monotonic = monotonic
        self._unreported = 0
        self._next_report = 0.0
        self._previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self.handle)

    def uninstall(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop.get_exception_handler() == self.handle:
            loop.set_exception_handler(self._previous)

    def handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        failure = context.get("exception")
        if "socket" not in context or not isinstance(failure, OSError) or failure.errno not in _OUT_OF_RESOURCES:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        self.count += 1
        self._unreported += 1
        now = self._monotonic()
        if now >= self._next_report:
            log.error("cannot accept connections: %s (%d failed accept() calls since the last report; "
                      "raise the descriptor limit, LimitNOFILE, or lower gateway.max_sse_clients)",
                      failure.strerror or failure, self._unreported,
                      extra={"errno": errno.errorcode.get(failure.errno or 0, str(failure.errno))})
            self._unreported = 0
            self._next_report = now + self._interval


ACCEPT_ERRORS = web.AppKey("accept_errors", AcceptErrors)


def raise_descriptor_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit (as Go's runtime does); return the
    soft limit now in force. The 1024 most shells start with is far below gateway.max_sse_clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or soft == resource.RLIM_INFINITY:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as err:  # a sandbox may refuse setrlimit (systemd's @resources filter)
        log.warning("could not raise the descriptor limit from %d to %d: %s", soft, hard, err)
        return soft
    return hard


def _check_descriptor_budget(settings: GatewayConfig, limit: int) -> None:
    wanted = settings.max_sse_clients + 1024
    if limit != resource.RLIM_INFINITY and limit < wanted:
        log.warning("the descriptor limit (%d) is below gateway.max_sse_clients + 1024 (%d): descriptors may "
                    "run out before the stream cap is reached; raise LimitNOFILE or ulimit -n", limit, wanted)


def tune_gc() -> None:
    """Once the app is set up: leave its start-up heap out of every later collection, and collect the
    youngest generation less often.

    A collection traverses every object of the generations it collects that is still alive. The start-up
    heap (modules, routes, config, caches: most of the process's objects) lives as long as the process, yet a
    full collection walked all of it again and held the event loop for the whole walk; `gc.freeze()` moves it
    out of reach. Under load, the young objects alive at any moment are those of the requests in flight, so
    each young collection walked them all; at CPython's default every 700 allocations, a busy gateway
    collected every few dozen requests. Garbage that needs the collector (reference cycles) is rare on the
    request path and waits a little longer. bench/webhook_bench.py and bench/api_bench.py run their bare
    servers with this too, so their ratios measure the gateway's own work.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)


@asynccontextmanager
async def started(app: web.Application) -> AsyncIterator[web.AppRunner]:
    """`app` set up in a runner with the gateway's connection settings (the defaults for an app without a
    config: a bench's bare app), the accept guard on the loop."""
    settings = app[CONFIG].gateway if CONFIG in app else GatewayConfig()
    _check_descriptor_budget(settings, raise_descriptor_limit())
    guard = AcceptErrors()
    app[ACCEPT_ERRORS] = guard
    loop = asyncio.get_running_loop()
    guard.install(loop)
    # handler_cancellation: a closed SSE client is noticed at once, not at the next ping.
    # keepalive_timeout: aiohttp's one timer for a connection between requests; it runs from the
    # connection's start (or its last response) until a request head has been read, and data arriving
    # does not reset it, so it bounds both an idle connection and a head sent byte by byte.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None,
                           keepalive_timeout=settings.keepalive_timeout)
    try:
        await runner.setup()
        tune_gc()
        try:
            yield runner
        finally:
            await runner.cleanup()
    finally:
        guard.uninstall(loop)


@asynccontextmanager
async def running(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """Serve `app` until the block exits; yields the base URL (port 0 picks a free one)."""
    async with started(app) as runner:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        bound = runner.addresses[0]
        yield f"http://{host}:{bound[1]}"


def default_loop() -> str:
    """"uvloop" where it is installed (it answers the same requests for less CPU), else "asyncio"."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def run_loop(main: Coroutine[Any, Any, T], loop: str | None = None) -> T:
    """asyncio.run(main) on the named event loop (default_loop() when None)."""
    if (loop or default_loop()) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


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
