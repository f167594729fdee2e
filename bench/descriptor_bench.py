"""Descriptor exhaustion: what the log gets, and how soon /healthz answers once descriptors free up.

A server process runs under a low `ulimit -n` while this process holds more idle connections to it than it
can accept, for a while; then they are closed and /healthz is timed. The baseline is the gateway app on a
bare aiohttp AppRunner, which leaves failed accept()s to asyncio's default exception handler (a log record
with a traceback for each, `backlog` of them per wake-up); the gateway runs as `serve` does
(gateway.server.running: the accept guard, one line every few seconds). Side by side, in one run.

`--loop uvloop` runs both servers on uvloop, the gateway's default where it is installed: libuv meets
EMFILE itself (it refuses the extra connection at once and reports nothing to Python), so neither server
logs anything and /healthz answers within milliseconds, but the accept-error counter stays at 0 there;
`process_open_fds` against `process_max_fds` on /metrics shows the condition on either loop.

    python bench/descriptor_bench.py [--nofile N] [--connections N] [--hold S] [--loop L] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIGNING_KEY = "b" * 40
WAIT = 60.0  # seconds before the bench gives up on a server that does not answer
FIRST_LINE_WAIT = 5.0  # seconds to wait for the first failed accept to be logged (never, on uvloop)


@dataclass(frozen=True)
class Phase:
    log_lines: int
    log_bytes: int
    lines_per_second: float
    healthz_after_release_ms: float  # from closing the idle connections to /healthz's 200


# -- the server (a child process) ----------------------------------------------------------------------


async def serve(mode: str, data_dir: str) -> None:
    from aiohttp import web

    from gateway.app import create_app
    from gateway.server import SHUTDOWN_TIMEOUT, running, wait_for_stop_signal
    from sync.config import load_config

    config = load_config(None, {"LORE_GATEWAY_GATEWAY_DATA_DIR": data_dir,
                                "LORE_GATEWAY_AUTH_SIGNING_KEYS": SIGNING_KEY})
    app = create_app(config, scheduler=False)
    if mode == "gateway":
        async with running(app, "127.0.0.1", 0) as url:
            print(url, flush=True)
            await wait_for_stop_signal()
        return
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        await wait_for_stop_signal()
    finally:
        await runner.cleanup()


# -- the measurement ---------------------------------------------------------------------------------------


async def measure(mode: str, nofile: int, connections: int, hold: float, loop: str) -> Phase:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--serve", mode, "--data-dir", f"{tmp}/data", "--nofile", str(nofile),
                "--loop", loop,
                stdout=asyncio.subprocess.PIPE, stderr=stderr)
        try:
            assert proc.stdout is not None
            url = (await asyncio.wait_for(proc.stdout.readline(), WAIT)).decode().strip()
            assert url, log.read_text()[-2000:]
            host, port = url.removeprefix("http://").split(":")
            connecting = [asyncio.ensure_future(asyncio.open_connection(host, int(port)))
                          for _ in range(connections)]
            started = log.stat().st_size, len(log.read_bytes().splitlines())
            await _exhausted(log, started[0])  # a busy machine may take a while to accept that many
            await asyncio.sleep(hold)
            text = log.read_bytes()
            lines, size = len(text.splitlines()) - started[1], len(text) - started[0]
            released = time.perf_counter()
            _release(connecting)
            await _healthz(url)
            answered_ms = (time.perf_counter() - released) * 1000
        finally:
            proc.terminate()
            await proc.wait()
    return Phase(lines, size, round(lines / hold, 1), round(answered_ms, 1))


async def _exhausted(log: Path, size_before: int) -> None:
    """Until the server has logged the first failed accept (or FIRST_LINE_WAIT passes): the hold starts
    there, so a busy machine that accepts slowly still holds the descriptors exhausted for `hold`."""
    deadline = time.perf_counter() + FIRST_LINE_WAIT
    # Another process writes the log: polling its size is the only signal there is.
    while log.stat().st_size == size_before and time.perf_counter() < deadline:  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.05)


def _release(connecting: list[asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]) -> None:
    for attempt in connecting:
        if attempt.done() and attempt.exception() is None:
            attempt.result()[1].close()
        else:
            attempt.cancel()


async def _healthz(url: str) -> None:
    timeout = aiohttp.ClientTimeout(total=WAIT)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(f"{url}/healthz") as response:
        assert response.status == 200


async def run(nofile: int, connections: int, hold: float, loop: str) -> dict[str, object]:
    baseline = await measure("bare", nofile, connections, hold, loop)
    gateway = await measure("gateway", nofile, connections, hold, loop)
    return {"nofile": nofile, "connections": connections, "hold_s": hold, "loop": loop, "bare": asdict(baseline),
            "gateway": asdict(gateway), "ratio": round(baseline.log_lines / max(1, gateway.log_lines), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nofile", type=int, default=256, help="the server's ulimit -n")
    parser.add_argument("--connections", type=int, default=400, help="idle connections held open")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the descriptors stay exhausted")
    parser.add_argument("--quick", action="store_true", help="1 s of exhaustion (the test suite)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="both servers' event loop (default asyncio, where failed accepts reach Python)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", choices=("bare", "gateway"), help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
        from gateway.server import configure_logging

        configure_logging("info")
        from gateway.server import run_loop

        run_loop(serve(args.serve, args.data_dir), args.loop)
        return 0
    report = asyncio.run(run(args.nofile, args.connections, 1.0 if args.quick else args.hold, args.loop))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"server ulimit -n {report['nofile']}, {report['connections']} idle connections held "
          f"{report['hold_s']} s, loop {report['loop']}")
    for name in ("bare", "gateway"):
        phase = report[name]
        assert isinstance(phase, dict)
        print(f"  {name:8} {phase['log_lines']:6} log lines ({phase['lines_per_second']}/s, "
              f"{phase['log_bytes']} bytes); /healthz {phase['healthz_after_release_ms']} ms after the "
              "connections closed")
    print(f"  log lines, bare / gateway: {report['ratio']}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
