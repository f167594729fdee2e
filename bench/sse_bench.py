"""SSE fan-out: N clients on one server process, M events published; the gateway beside a bare baseline.

The baseline is a bare aiohttp-sse handler per client, fed by a plain loop that puts each event into every
client's (unbounded) queue. The gateway is the real app (`GET /api/v1/events`: auth, both stream caps, the
event bus's fan-out writing to every stream, the slow-client checks) with a bench-only route that publishes
on its bus. Both publish the same way: one
event, then yield once, so each event is fanned out before the next and the pace is the server's own.
Each server runs in a child process; the clients (raw asyncio protocols, cheap enough not to be what is
measured) run in this one. Latency is receipt minus publication, both on the system-wide monotonic clock.

    python bench/sse_bench.py [--clients N] [--events M] [--rounds R] [--quick] [--json]
    python bench/sse_bench.py --memory [--clients N]   # where each open stream's bytes go (tracemalloc)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

EVENTS_PATH = "/api/v1/events"
CONNECT_BATCH = 100  # connects in flight at once: stays under the listen backlog, so no SYN is retried
WAIT = 120.0  # seconds a phase may take before the bench gives up on missing events
_EVENT = re.compile(rb'data: \{"seq":(\d+),"t":([0-9.e+-]+)\}\r\n')


# -- the servers (child process) ---------------------------------------------------------------------


def bare_app() -> web.Application:
    from aiohttp_sse import sse_response

    queues: set[asyncio.Queue[tuple[str, str]]] = set()

    async def stream(request: web.Request) -> web.StreamResponse:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        queues.add(queue)
        try:
            async with sse_response(request) as resp:
                await resp.send("{}", event="hello")
                while True:
                    data, event_id = await queue.get()
                    await resp.send(data, id=event_id, event="bench")
        finally:
            queues.discard(queue)

    async def publish(request: web.Request) -> web.Response:
        count = int(request.query["count"])
        for seq in range(count):
            data = orjson.dumps({"seq": seq, "t": time.monotonic()}).decode()
            for queue in queues:
                queue.put_nowait((data, str(seq + 1)))
            await asyncio.sleep(0)
        return web.json_response({"published": count, "clients": len(queues)})

    app = web.Application()
    app.router.add_get(EVENTS_PATH, stream)
    app.router.add_post("/bench/publish", publish)
    return app


def gateway_app(data_dir: Path, clients: int) -> web.Application:
    from gateway.app import create_app
    from gateway.keys import BUS
    from gateway.sse import STREAMS
    from sync.config import load_config

    config = load_config(None, {
        "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir),
        "LORE_GATEWAY_AUTH_SIGNING_KEYS": "bench-key-0123456789abcdef0123456789abcdef",
        # Every client uses one token: the per-token limit stays on the path but must not be what is measured.
        "LORE_GATEWAY_RATELIMIT_API": "1000000/minute",
        # Both caps stay on the path, set just above the fleet (the default total, 5000, is below a big run).
        "LORE_GATEWAY_GATEWAY_MAX_SSE_CLIENTS": str(clients + 1),
        "LORE_GATEWAY_GATEWAY_MAX_SSE_PER_TOKEN": str(clients + 1),
    })
    app = create_app(config)

    async def publish(request: web.Request) -> web.Response:
        count = int(request.query["count"])
        bus = request.app[BUS]
        for seq in range(count):
            bus.publish("bench", {"seq": seq, "t": time.monotonic()})
            await asyncio.sleep(0)
        streams = request.app[STREAMS]
        return web.json_response({"published": count, "clients": streams.connected,
                                  "dropped": streams.dropped})

    app.router.add_post("/bench/publish", publish)
    return app


async def serve(kind: str, data_dir: Path, clients: int, trace: bool) -> None:
    app = bare_app() if kind == "bare" else gateway_app(data_dir, clients)
    if trace:
        tracemalloc.start()
        app.router.add_post("/bench/memory", memory_route())
    # As `serve` runs it (gateway/server.py), so both servers pay what production pays.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0,
                           handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    token = await _bench_token(app) if kind == "gateway" else ""
    print(f"PORT {runner.addresses[0][1]} TOKEN {token}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def memory_route() -> Any:
    """`POST /bench/memory?clients=N`: the first call marks, the next one reports what was allocated since,
    per client, by the source line that allocated it (Python's allocations only: not the C libraries')."""
    marks: list[tracemalloc.Snapshot] = []

    async def memory(request: web.Request) -> web.Response:
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        if not marks:
            marks.append(snapshot)
            return web.json_response({})
        clients = int(request.query["clients"])
        grown = [d for d in snapshot.compare_to(marks[0], "lineno") if d.size_diff > 0]
        files = [d for d in snapshot.compare_to(marks[0], "filename") if d.size_diff > 0]
        per_file = [(_site(d.traceback[0]).rsplit(":", 1)[0], d.size_diff / clients) for d in files[:10]]
        sites = [(_site(d.traceback[0]), d.size_diff / clients, d.count_diff / clients) for d in grown[:15]]
        return web.json_response({"traced_bytes_per_stream": sum(d.size_diff for d in files) / clients,
                                  "files": per_file, "sites": sites})

    return memory


def _site(frame: tracemalloc.Frame) -> str:
    path = frame.filename
    for marker in ("site-packages/", "/lib/python3", str(Path(__file__).resolve().parent.parent) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{frame.lineno}"


async def _bench_token(app: web.Application) -> str:
    from gateway.auth import TOKENS

    return (await app[TOKENS].create("sse-bench", ["read"], None)).token


class Server:
    """One server in a child process; `stop()` ends it with SIGTERM."""

    def __init__(self, kind: str, data_dir: Path, clients: int, *, trace: bool = False) -> None:
        self.kind = kind
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--data-dir", str(data_dir),
                                      "--clients", str(clients), *(["--trace"] if trace else [])],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"the {kind} server did not start")
        parts = line.split()
        self.port = int(parts[1])
        self.token = parts[3] if len(parts) > 3 else ""

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the server process so far; None off Linux."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self) -> int | None:
        """Resident memory of the server process; None off Linux."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), None)
        return int(line.split()[1]) if line else None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the clients (this process) ----------------------------------------------------------------------


@dataclass
class Tally:
    """What every client of a phase received: one latency a delivery, and the span they cover."""

    latencies: list[float] = field(default_factory=list)
    first_published: float = float("inf")
    last_received: float = 0.0

    def record(self, received_at: float, published_at: float) -> None:
        self.latencies.append(received_at - published_at)
        self.first_published = min(self.first_published, published_at)
        self.last_received = max(self.last_received, received_at)

    @property
    def window(self) -> float:
        """From the first publication to the last receipt."""
        return max(self.last_received - self.first_published, 1e-9)


class Client(asyncio.Protocol):
    """An EventSource reduced to what is measured: which bench events arrive, and when."""

    def __init__(self, request: bytes, tally: list[Tally]) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.tally = tally  # a one-element box: each phase swaps in a fresh Tally
        self.last_seq = -1
        self.buffer = b""
        self.status_ok: bool | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self.buffer + data
        if self.status_ok is None:
            self.status_ok = buffer.startswith(b"HTTP/1.1 200")
            if not self.status_ok and not self.opened.done():
                self.opened.set_result(None)  # refused (a cap, auth): connect_all says so at once
        if not self.opened.done() and b"event: " in buffer:
            self.opened.set_result(None)  # the first event (snapshot or hello) is arriving
        tally, end = self.tally[0], 0
        for match in _EVENT.finditer(buffer):
            self.last_seq = int(match.group(1))
            tally.record(now, float(match.group(2)))
            end = match.end()
        # Keep only what may be the start of the next event (at most one event's size).
        self.buffer = buffer[end:][-512:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the first event"))


@dataclass(frozen=True)
class Phase:
    """One server's measured phase, as the clients saw it."""

    server: str
    clients: int
    events: int
    deliveries: int
    expected: int
    seconds: float  # first publication to last receipt
    per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_us: float | None  # server CPU per delivery: robust to a busy machine
    client_cpu_share: float  # this process's CPU / wall time while measuring: near 1.0 means client-bound
    disconnected: int
    rss_kb_per_client: float | None  # server memory each open stream added (connected, idle)


async def connect_all(port: int, token: str, count: int, tally: list[Tally]) -> list[Client]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (f"GET {EVENTS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
               f"{auth}\r\n").encode()
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    for start in range(0, count, CONNECT_BATCH):
        batch = [Client(request, tally) for _ in range(start, min(count, start + CONNECT_BATCH))]
        await asyncio.gather(*(loop.create_connection(lambda c=c: c, "127.0.0.1", port) for c in batch))
        await asyncio.wait_for(asyncio.gather(*(c.opened for c in batch)), WAIT)
        if not all(c.status_ok for c in batch):
            raise RuntimeError("the server refused a client")
        clients.extend(batch)
    return clients


async def publish_and_collect(port: int, clients: list[Client], events: int) -> None:
    """Publish `events` and wait until every client still connected has received them all."""
    for client in clients:
        client.last_seq = -1
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://127.0.0.1:{port}/bench/publish", params={"count": str(events)}) as answer:
            assert answer.status == 200, await answer.text()
    deadline = time.monotonic() + WAIT
    while any(c.last_seq < events - 1 and not c.closed.done() for c in clients):
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.005)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000 if ordered else 0.0


async def measure(server: Server, clients: int, events: int, warmup: int) -> Phase:
    box = [Tally()]
    rss_before = server.rss_kb()
    fleet = await connect_all(server.port, server.token, clients, box)
    rss_after = server.rss_kb()
    try:
        await publish_and_collect(server.port, fleet, warmup)
        box[0] = tally = Tally()
        cpu_before, client_cpu, wall = server.cpu_seconds(), time.process_time(), time.monotonic()
        await publish_and_collect(server.port, fleet, events)
        cpu_after = server.cpu_seconds()
        client_share = (time.process_time() - client_cpu) / max(time.monotonic() - wall, 1e-9)
    finally:
        for client in fleet:
            if client.transport is not None:
                client.transport.close()
    deliveries = len(tally.latencies)
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and deliveries:
        cpu_us = (cpu_after - cpu_before) / deliveries * 1e6
    return Phase(
        server.kind, clients, events, deliveries, clients * events, tally.window, deliveries / tally.window,
        percentile(tally.latencies, 0.5), percentile(tally.latencies, 0.99),
        max(tally.latencies, default=0.0) * 1000, cpu_us, client_share,
        sum(1 for c in fleet if c.closed.done() and c.last_seq < events - 1),
        (rss_after - rss_before) / clients if rss_before is not None and rss_after is not None else None,
    )


async def breakdown(server: Server, clients: int) -> dict[str, Any]:
    """Connect the fleet between two marks of the server's tracemalloc: what one idle open stream holds."""
    url = f"http://127.0.0.1:{server.port}/bench/memory"
    async with aiohttp.ClientSession() as session:
        async with session.post(url) as answer:
            assert answer.status == 200, await answer.text()
        rss_before = server.rss_kb()
        fleet = await connect_all(server.port, server.token, clients, [Tally()])
        rss_after = server.rss_kb()
        async with session.post(url, params={"clients": str(clients)}) as answer:
            report: dict[str, Any] = await answer.json()
    for client in fleet:
        if client.transport is not None:
            client.transport.close()
    if rss_before is not None and rss_after is not None:
        report["rss_bytes_per_stream"] = (rss_after - rss_before) * 1024 / clients
    return report


def memory_report(data_dir: Path, clients: int) -> dict[str, Any]:
    reports = {}
    for kind in ("bare", "gateway"):
        server = Server(kind, data_dir / kind, clients, trace=True)
        try:
            reports[kind] = asyncio.run(breakdown(server, clients))
        finally:
            server.stop()
    return reports


def print_memory(reports: dict[str, Any], clients: int) -> None:
    print(f"Memory of one idle open stream, {clients} clients (tracemalloc: Python allocations by source line;"
          " RSS includes the C libraries' and the allocator's overhead)")
    for kind, report in reports.items():
        rss = report.get("rss_bytes_per_stream")
        print(f"{kind}: traced {report['traced_bytes_per_stream']:.0f} B/stream, RSS "
              f"{'n/a' if rss is None else f'{rss:.0f}'} B/stream")
        print("  by file: " + ", ".join(f"{path} {size:.0f} B" for path, size in report["files"]))
        for site, size, count in report["sites"]:
            print(f"  {size:>8.0f} B {count:>5.1f} blocks  {site}")


def run_server(kind: str, data_dir: Path, clients: int, events: int, warmup: int) -> Phase:
    server = Server(kind, data_dir, clients)
    try:
        return asyncio.run(measure(server, clients, events, warmup))
    finally:
        server.stop()


def one_round(data_dir: Path, clients: int, events: int, warmup: int) -> dict[str, Any]:
    bare = run_server("bare", data_dir / "bare", clients, events, warmup)
    gateway = run_server("gateway", data_dir / "gateway", clients, events, warmup)
    cpu_ratio = None
    if gateway.server_cpu_us and bare.server_cpu_us:
        cpu_ratio = gateway.server_cpu_us / bare.server_cpu_us
    return {
        "bare": asdict(bare), "gateway": asdict(gateway),
        "ratio": gateway.per_second / bare.per_second if bare.per_second else 0.0,
        "cpu_ratio": cpu_ratio,
        "complete": gateway.deliveries == gateway.expected and bare.deliveries == bare.expected,
    }


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median ratio stands for the run (a busy machine makes single rounds noisy)."""
    median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    return {"cpus": os.cpu_count(), "rounds": len(rounds), "ratios": [round(r["ratio"], 3) for r in rounds],
            **median, "complete": all(r["complete"] for r in rounds)}


def print_report(r: dict[str, Any]) -> None:
    g = r["gateway"]
    print(f"SSE fan-out: {g['clients']} clients x {g['events']} events, {r['rounds']} round(s), {r['cpus']} CPUs;"
          " each server in its own process, the clients in this one")
    print(f"{'':9}{'deliv/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'srv CPU us/deliv':>18}"
          f"{'client CPU':>12}{'KB/stream':>11}  delivered")
    for name in ("bare", "gateway"):
        x = r[name]
        cpu = f"{x['server_cpu_us']:.1f}" if x["server_cpu_us"] is not None else "n/a"
        print(f"{name:9}{x['per_second']:>10.0f}{x['p50_ms']:>9.2f}{x['p99_ms']:>9.2f}{x['max_ms']:>9.2f}"
              f"{cpu:>18}{x['client_cpu_share']:>12.0%}{_kb(x['rss_kb_per_client']):>11}"
              f"  {x['deliveries']}/{x['expected']}"
              f" ({x['disconnected']} cut off)")
    cpu_ratio = f"{r['cpu_ratio']:.2f}x" if r["cpu_ratio"] else "n/a"
    print(f"ratio gateway/bare deliveries/s (median round): {r['ratio']:.2f}x; every round: {r['ratios']};"
          f" server CPU per delivery gateway/bare: {cpu_ratio}")
    print(f"every client received every event: {'ok' if r['complete'] else 'NO'}")


def _kb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200, help="events published in the measured phase")
    parser.add_argument("--warmup", type=int, default=20, help="events published before measuring")
    parser.add_argument("--rounds", type=int, default=3, help="bare-then-gateway rounds; the median is shown")
    parser.add_argument("--quick", action="store_true", help="20 clients x 20 events, one round (the test suite)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--memory", action="store_true",
                        help="instead of the fan-out: where each idle stream's memory goes, both servers")
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=("bare", "gateway"), help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(serve(args.serve, args.data_dir, args.clients, args.trace))
        return 0
    if args.memory:
        with tempfile.TemporaryDirectory(prefix="sse-bench-") as tmp:
            reports = memory_report(Path(tmp), args.clients)
        if args.json:
            print(json.dumps(reports))
        else:
            print_memory(reports, args.clients)
        return 0
    if args.quick:
        args.clients, args.events, args.warmup, args.rounds = 20, 20, 5, 1
    with tempfile.TemporaryDirectory(prefix="sse-bench-") as tmp:
        rounds = [one_round(Path(tmp) / f"round{i}", args.clients, args.events, args.warmup)
                  for i in range(args.rounds)]
    result = summarize(rounds)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0 if result["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
