"""`serve --workers N`: N gateway processes on one port, supervised by the parent.

The parent applies migrations once (workers never race on one), then spawns the workers; each builds
its own app and binds host:port with SO_REUSEPORT, and the kernel spreads connections among them. The
parent restarts nothing: a worker that exits on its own stops the others and the parent exits 1, so the
service manager (systemd `Restart=on-failure`) restarts the whole set from a clean state.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import queue
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from aiohttp import web

from sync import Config, migrate

POLL = 0.1  # seconds between the supervisor's looks at its workers
READY_TIMEOUT = 60.0
EXIT_GRACE = 25.0  # aiohttp may take 2 x SHUTDOWN_TIMEOUT (10 s) to stop; then the worker is killed
LISTEN_FAILED = 3  # a worker's exit code when it could not bind the port


class SupervisorError(Exception):
    """A worker could not start, or exited while serving: the gateway stopped (exit 1)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class WorkerSpec:
    config: Config
    host: str
    port: int
    workers: int
    index: int


# -- the worker -------------------------------------------------------------------------------------


def worker_main(spec: WorkerSpec, ready: mp.Queue) -> None:  # type: ignore[type-arg]
    """A worker process's entry point (spawned: nothing is inherited but the arguments)."""
    from gateway.server import configure_logging, run_loop

    configure_logging(spec.config.gateway.log_level)
    # Until its own handlers are installed a worker ignores Ctrl-C: the parent forwards a clean SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(run_loop(_serve(spec, ready)))


async def _serve(spec: WorkerSpec, ready: mp.Queue) -> int:  # type: ignore[type-arg]
    from gateway.app import create_app
    from gateway.server import started, wait_for_stop_signal

    app = create_app(spec.config, workers=spec.workers)
    async with started(app) as runner:
        try:
            await web.TCPSite(runner, spec.host, spec.port, reuse_port=True).start()
        except OSError as exc:
            ready.put((spec.index, f"cannot listen on {spec.host}:{spec.port}: {exc.strerror or exc}"))
            return LISTEN_FAILED
        ready.put((spec.index, None))
        await wait_for_stop_signal()
    return 0


# -- the supervisor -----------------------------------------------------------------------------------


async def serve_workers(config: Config, workers: int, report: Callable[[str], None]) -> None:
    """Run `workers` gateway processes until SIGINT/SIGTERM; raises SupervisorError when one fails."""
    await asyncio.to_thread(migrate, config.db_path)
    host = config.gateway.host
    with _reserved_port(host, config.gateway.port) as port:
        ctx = mp.get_context("spawn")
        ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        procs = [ctx.Process(target=worker_main, name=f"lore-gateway-worker-{i}",
                             args=(WorkerSpec(config, host, port, workers, i), ready)) for i in range(workers)]
        stop = asyncio.Event()
        with _stop_signals(stop):
            for proc in procs:
                proc.start()
            try:
                await _wait_ready(procs, ready, stop)
                report(f"lore-gateway: serving on http://{host}:{port} with {workers} workers "
                       f"(pids {', '.join(str(p.pid) for p in procs)}; data in {config.gateway.data_dir})")
                await _supervise(procs, stop)
            finally:
                await asyncio.to_thread(_stop_all, procs)


async def _wait_ready(procs: list[BaseProcess], ready: mp.Queue, stop: asyncio.Event) -> None:  # type: ignore[type-arg]
    waiting = set(range(len(procs)))
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
    while waiting and not stop.is_set():
        try:
            index, failure = ready.get_nowait()
        except queue.Empty:
            index, failure = None, None
        if index is None:
            _raise_if_exited(procs)
            if asyncio.get_running_loop().time() > deadline:
                raise SupervisorError("worker_start_timeout", f"workers {sorted(waiting)} did not start in time")
            await asyncio.sleep(POLL)
            continue
        if failure is not None:
            raise SupervisorError("listen_failed", failure)
        waiting.discard(index)


async def _supervise(procs: list[BaseProcess], stop: asyncio.Event) -> None:
    while not stop.is_set():
        _raise_if_exited(procs)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL)


def _raise_if_exited(procs: list[BaseProcess]) -> None:
    for proc in procs:
        if proc.exitcode is not None:
            raise SupervisorError("worker_died", f"{proc.name} (pid {proc.pid}) exited with code {proc.exitcode};"
                                                 " stopped the others")


def _stop_all(procs: list[BaseProcess]) -> None:
    """SIGTERM every live worker, wait for graceful exits, kill what outlives the grace period."""
    for proc in procs:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.join(EXIT_GRACE)
        if proc.is_alive():
            proc.kill()
            proc.join()


@contextlib.contextmanager
def _stop_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def _reserved_port(host: str, port: int) -> Iterator[int]:
    """`port`, or for 0 a free one, held by a bound (not listening) SO_REUSEPORT socket while workers start,
    so nothing else takes it in between; connections only ever go to the workers' listening sockets."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            holder.bind((host, port))
        except OSError as exc:
            raise SupervisorError("listen_failed", f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        yield holder.getsockname()[1]
