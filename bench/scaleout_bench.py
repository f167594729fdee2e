"""Scale-out: cached GET requests/s of `serve` with Redis (`--workers 1`, `--workers 2`, and `--workers 1`
with `ratelimit.strict`) against one process without Redis, with the Redis commands each request cost;
and SSE fan-out to 2,000 clients across two workers sharing events through Redis (delivery p50/p99).

Everything is real: `lore-gateway serve` subprocesses (a private redis-server on a free port), a
simulated GitLab in its own process, wrk for HTTP load (a Python client when wrk is not installed, which
then measures the client more than the server). The servers run side by side; rounds are interleaved
(each round loads every server once, in turn) and the medians are reported. Redis commands per request
come from Redis's own `total_commands_processed` around each load (everything counts: the bus, the
leader lease, the INFO itself), so they bound the round trips from above: a flush is one round trip
of several commands. A delivery's latency runs from the moment a webhook is POSTed to one worker until
a client (on either worker) has its `webhook.received`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._simproc import TOKEN as SIM_TOKEN
from bench._simproc import SimSpec, simulator_process

SECRET = "bench-hook-secret"
PROJECT_PATH = "bench/p0"
PROJECT_ID = 1001
WAIT = 60.0
CONNECT_BATCH = 200
_EVENT = re.compile(rb"event: webhook\.received\r?\ndata: \{[^\r\n]*\"iid\":(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def redis_server(url: str | None) -> Iterator[str]:
    """The given Redis, or a private throw-away redis-server."""
    if url:
        yield url
        return
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


# -- the gateway under test ---------------------------------------------------------------------------


def gateway_env(data_dir: Path, gitlab_url: str, redis_url: str | None, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORE_GATEWAY_")}
    env |= {
        "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir), "LORE_GATEWAY_GATEWAY_PORT": str(port),
        "LORE_GATEWAY_GATEWAY_LOG_LEVEL": "warning", "LORE_GATEWAY_GITLAB_URL": gitlab_url,
        "LORE_GATEWAY_GITLAB_TOKEN": SIM_TOKEN, "LORE_GATEWAY_GITLAB_PROJECTS": PROJECT_PATH,
        "LORE_GATEWAY_WEBHOOK_SECRETS": SECRET,
        "LORE_GATEWAY_RATELIMIT_API": "100000000/minute", "LORE_GATEWAY_RATELIMIT_WEBHOOK": "100000000/minute",
        # Webhooks here only feed the fan-out: no sync run may add its own load.
        "LORE_GATEWAY_SYNC_DEBOUNCE": "12h", "LORE_GATEWAY_SYNC_MAX_WAIT": "12h",
        # Every SSE client uses the one bench token: the per-token cap (50 by default) must not bind.
        "LORE_GATEWAY_GATEWAY_MAX_SSE_PER_TOKEN": "100000",
    }
    if redis_url is not None:
        env["LORE_GATEWAY_REDIS_URL"] = redis_url
    return env


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"lore-gateway {' '.join(args)} failed: {done.stderr}")
    return done.stdout


@contextmanager
def serving(env: dict[str, str], workers: int) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--workers", str(workers)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "serving on" in line:
                break
        else:
            raise RuntimeError("serve exited before serving")
        # Keep reading its stderr so the gateway never blocks on a full pipe.
        drain = subprocess.Popen(["cat"], stdin=proc.stderr, stdout=subprocess.DEVNULL)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        if "drain" in locals():
            drain.wait(10)


# -- cached GET throughput ----------------------------------------------------------------------------


async def python_load(url: str, token: str, seconds: float, connections: int) -> float:
    """Requests/s from a plain aiohttp client (only when wrk is missing; it is the bottleneck then)."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with session.get(url) as response:
                await response.read()
                assert response.status == 200
                done += 1

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Bearer {token}"}) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    return done / seconds


def wrk_load(url: str, token: str, seconds: float, connections: int) -> float:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-H",
                          f"Authorization: Bearer {token}", url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


@dataclass(frozen=True)
class Setup:
    name: str
    workers: int
    redis: bool
    strict: bool = False


SETUPS = (Setup("no redis, 1 process", 1, False), Setup("redis, --workers 1", 1, True),
          Setup("redis, --workers 2", 2, True), Setup("redis strict, --workers 1", 1, True, strict=True))


def redis_commands(url: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.info("stats")["total_commands_processed"])
    finally:
        client.close()


def page_url(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['LORE_GATEWAY_GATEWAY_PORT']}/api/v1/projects/{PROJECT_ID}/issues?per_page=20"


def load_once(url: str, token: str, seconds: float, connections: int) -> tuple[float, int]:
    """(requests/s, requests) of one run of load."""
    if shutil.which("wrk"):
        rate = wrk_load(url, token, seconds, connections)
    else:
        rate = asyncio.run(python_load(url, token, seconds, connections))
    return rate, round(rate * seconds)


def throughput(base: dict[str, str], gitlab_url: str, redis_url: str, tmp: Path, token: str,
               args: argparse.Namespace) -> dict[str, Any]:
    """Every setup serving at once on its own port (one shared database), loaded in interleaved rounds."""
    envs = {}
    for setup in SETUPS:
        env = gateway_env(Path(base["LORE_GATEWAY_GATEWAY_DATA_DIR"]), gitlab_url,
                          redis_url if setup.redis else None, free_port())
        if setup.strict:
            env["LORE_GATEWAY_RATELIMIT_STRICT"] = "true"
        envs[setup.name] = env
    rates: dict[str, list[float]] = {s.name: [] for s in SETUPS}
    commands: dict[str, list[float]] = {s.name: [] for s in SETUPS}
    ratios: dict[str, list[float]] = {s.name: [] for s in SETUPS}
    with contextlib.ExitStack() as stack:
        for setup in SETUPS:
            stack.enter_context(serving(envs[setup.name], setup.workers))
        for setup in SETUPS:  # warm: every worker renders and caches the page
            asyncio.run(python_load(page_url(envs[setup.name]), token, 0.5, 4 * setup.workers))
        for index in range(args.rounds):
            this_round = {}
            for setup in SETUPS[index % len(SETUPS):] + SETUPS[:index % len(SETUPS)]:  # no setup always first
                before = redis_commands(redis_url)
                rate, requests = load_once(page_url(envs[setup.name]), token, args.seconds, args.connections)
                used = redis_commands(redis_url) - before
                rates[setup.name].append(rate)
                this_round[setup.name] = rate
                if setup.redis:
                    commands[setup.name].append(used / max(1, requests))
            for setup in SETUPS:
                ratios[setup.name].append(this_round[setup.name] / this_round[SETUPS[0].name])
    return {setup.name: {"workers": setup.workers, "redis": setup.redis, "strict": setup.strict,
                         "rps": round(median(rates[setup.name])),
                         "rounds_rps": [round(r) for r in rates[setup.name]],
                         "over_no_redis": round(median(ratios[setup.name]), 3),
                         "redis_commands_per_request": (round(median(commands[setup.name]), 4)
                                                        if setup.redis else None)}
            for setup in SETUPS}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# -- SSE fan-out --------------------------------------------------------------------------------------


@dataclass
class Client(asyncio.Protocol):
    request: bytes
    sent_at: dict[int, float]
    latencies: list[float]
    complete: asyncio.Event  # set once every client has every event
    expected: int
    received: set[int] = field(default_factory=set)
    buffer: bytes = b""
    opened: asyncio.Future[None] | None = None
    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self.buffer + data
        if self.opened is not None and not self.opened.done() and b"event: " in buffer:
            self.opened.set_result(None)
        end = 0
        for match in _EVENT.finditer(buffer):
            iid = int(match.group(1))
            if iid in self.sent_at and iid not in self.received:
                self.received.add(iid)
                self.latencies.append(now - self.sent_at[iid])
                if len(self.latencies) >= self.expected:
                    self.complete.set()
            end = match.end()
        self.buffer = buffer[end:][-2048:]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.opened is not None and not self.opened.done():
            self.opened.set_exception(ConnectionError("closed before the first event"))


async def fan_out(port: int, token: str, clients: int, events: int, gitlab_hooks: list[tuple[bytes, dict]]
                  ) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = (f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    fleet: list[Client] = []
    complete = asyncio.Event()
    for start in range(0, clients, CONNECT_BATCH):
        batch = [Client(request, sent_at, latencies, complete, clients * events, opened=loop.create_future())
                 for _ in range(start, min(clients, start + CONNECT_BATCH))]
        await asyncio.gather(*(loop.create_connection(lambda c=c: c, "127.0.0.1", port) for c in batch))
        await asyncio.wait_for(asyncio.gather(*(c.opened for c in batch if c.opened)), WAIT)
        fleet.extend(batch)
    try:
        async with aiohttp.ClientSession() as session:
            for iid, (body, headers) in enumerate(gitlab_hooks[:events], start=1):
                sent_at[iid] = time.monotonic()
                async with session.post(f"http://127.0.0.1:{port}/webhooks/gitlab", data=body,
                                        headers=headers) as answer:
                    assert answer.status == 202, await answer.text()
                await asyncio.sleep(0.05)  # events spaced out: latency, not a burst's queueing, is measured
        try:
            await asyncio.wait_for(complete.wait(), WAIT)
        except TimeoutError:
            pass  # reported: deliveries < expected
    finally:
        for client in fleet:
            if client.transport is not None:
                client.transport.close()
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2) if ordered else 0.0

    return {"clients": clients, "events": events, "deliveries": len(latencies), "expected": clients * events,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


def webhooks(count: int) -> list[tuple[bytes, dict]]:
    """Issue Hook bodies naming issues 1..count (the iid is how a client matches what it received)."""
    from gateway.simulator.gitlab import GitLabSimulator

    sim = GitLabSimulator(token=SIM_TOKEN)
    sim.add_project(PROJECT_PATH, issues=count)
    hooks = []
    for iid in range(1, count + 1):
        hook = sim.update_issue(PROJECT_ID, iid, title=f"bench {iid}")
        hooks.append((hook.body(), hook.headers(secret=SECRET)))
    return hooks


# -- the run ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = SimSpec(projects=1, issues=60, merge_requests=10, notes_per_item=1, latency=0.0)
    with redis_server(args.redis) as redis_url, simulator_process(spec) as gitlab_url, \
            tempfile.TemporaryDirectory(prefix="scaleout-bench-") as tmp:
        env = gateway_env(Path(tmp), gitlab_url, redis_url, free_port())
        cli(env, "sync")
        token = json.loads(cli(env, "--json", "token", "create", "--name", "bench", "--scope", "read"))["token"]
        get = throughput(env, gitlab_url, redis_url, Path(tmp), token, args)
        with serving(env, 2):
            sse = asyncio.run(fan_out(int(env["LORE_GATEWAY_GATEWAY_PORT"]), token, args.clients, args.events,
                                      webhooks(args.events)))
    return {"get": get, "load": "wrk -t2" if shutil.which("wrk") else "python", "connections": args.connections,
            "seconds": args.seconds, "rounds": args.rounds, "sse": sse, "cpus": os.cpu_count(),
            "load_average": os.getloadavg()}


TARGETS = {"redis, --workers 1": 0.9, "redis, --workers 2": 1.0}
MAX_COMMANDS_PER_REQUEST = 0.1


def print_get(report: dict[str, Any]) -> None:
    print(f"cached GET, 20 issues ({report['load']}, {report['connections']} connections, {report['seconds']:.0f} s "
          f"x {report['rounds']} interleaved rounds, {report['cpus']} CPUs, load average "
          f"{report['load_average'][0]:.1f}); ratios are medians of each round's ratio to the first row")
    print(f"{'setup':<28}{'req/s':>9}{'/ no redis':>12}{'redis cmds/req':>16}  rounds (req/s)")
    for name, row in report["get"].items():
        commands = row["redis_commands_per_request"]
        verdict = ""
        if name in TARGETS:
            verdict = f"  target >= {TARGETS[name]}: {'met' if row['over_no_redis'] >= TARGETS[name] else 'NOT met'}"
        print(f"{name:<28}{row['rps']:>9}{row['over_no_redis']:>12.3f}"
              f"{'-' if commands is None else f'{commands:.4f}':>16}  {' '.join(map(str, row['rounds_rps']))}"
              f"{verdict}")
    local = report["get"]["redis, --workers 1"]["redis_commands_per_request"]
    print(f"Redis commands per cached request (an upper bound on round trips), local counting: {local:.4f}; "
          f"target <= {MAX_COMMANDS_PER_REQUEST}: {'met' if local <= MAX_COMMANDS_PER_REQUEST else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per worker count")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians count")
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--redis", help="a Redis URL to use instead of a private redis-server")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.connections, args.clients, args.events, args.rounds = 1.0, 8, 20, 5, 1
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_get(report)
        sse = report["sse"]
        print(f"SSE fan-out across 2 workers via Redis: {sse['clients']} clients x {sse['events']} events, "
              f"{sse['deliveries']}/{sse['expected']} delivered, p50 {sse['p50_ms']} ms, p99 {sse['p99_ms']} ms,"
              f" max {sse['max_ms']} ms")
    return 0 if report["sse"]["deliveries"] == report["sse"]["expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
