"""Durably committed webhooks per second through the real app, as a ratio to a bare aiohttp 202 handler.

A third server is the gateway with `webhook.fsync = true` (each inbox commit under synchronous=FULL, so an
accepted webhook survives a power cut): its ratio to the default gateway is what that setting costs.

Both servers run, one after the other, in a child process, so the load generator (this process, an aiohttp
client with a fixed number of connections) never competes with the server it measures on the same core. The
gateway's figure counts only 202s, each of which means a committed inbox row; afterwards the inbox is
counted on disk and must hold exactly as many rows as 202s were returned.

    python bench/webhook_bench.py [--requests N] [--concurrency C] [--rounds R] [--quick] [--json]

A shared 2-core machine is noisy: several rounds (bare, then the gateway's app with a bare 202 route, then
the gateway) run and the median round is shown, with each server's CPU per request, which a busy neighbour
disturbs far less than requests per second. The differences in CPU per request say where the time goes:
the app and its middleware, then the webhook handler itself (token check, rate limit, routing, inbox
commit). A fifth server, `commit`, is the bare handler plus only the inbox commit (no app): the floor under
the gateway, what durability alone costs. Every server runs on the same event loop (the gateway's default
unless --loop says otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tree this bench is in, not an install

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gateway.simulator.gitlab import GitLabSimulator, Webhook
    from sync.control.inbox import Inbox

SECRET = "bench-secret-0123456789"
PATH = "/webhooks/gitlab"
TARGET_RATIO = 0.55
TARGET_P99_MS = 20.0
APP_PATH = "/bench/accept"  # the bare 202 handler inside the gateway's app
KINDS = ("bare", "commit", "app", "gateway", "fsync")
Requests = list[tuple[bytes, dict[str, str]]]


# -- the servers (child process) -------------------------------------------------------------------

def bare_app() -> web.Application:
    async def accept(request: web.Request) -> web.Response:
        return web.Response(status=202, body=b'{"accepted": true}', content_type="application/json")

    app = web.Application()
    app.router.add_post(PATH, accept)
    return app


def commit_app(data_dir: Path) -> web.Application:
    """The bare 202 handler plus only what makes a 202 durable: the body read and a row group-committed in
    the inbox (sync.control.inbox, the gateway's own writer) before the answer. The floor under the
    gateway's figure: no app, middleware, authentication, limit, parsing or routing."""
    from gateway import webhooks
    from sync.clock import SystemClock
    from sync.control.inbox import Inbox, InboxEvent
    from sync.store.db import Database
    from sync.types import ItemRef

    async def inbox_ctx(app: web.Application) -> AsyncIterator[None]:
        db = await Database.open(data_dir / "lore.db")
        inbox = Inbox(db, SystemClock())
        await inbox.start()
        app[webhooks.INBOX] = inbox
        yield
        await inbox.close()
        await db.close()

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        event = InboxEvent(request.headers.get("Idempotency-Key"), request.headers.get("X-Gitlab-Event", ""),
                           ItemRef(None, None), b"")
        accepted = await request.app[webhooks.INBOX].add(event)
        return web.Response(status=202, body=b'{"accepted": true, "event_id": "%d"}' % accepted.event_id,
                            content_type="application/json")

    app = web.Application()
    app.cleanup_ctx.append(inbox_ctx)
    app.router.add_post(PATH, accept)
    return app


def gateway_app(data_dir: Path, requests: int, *, fsync: bool = False) -> web.Application:
    from gateway import webhooks
    from gateway.app import create_app
    from sync.config import Config, GatewayConfig, RateLimitConfig, WebhookConfig

    # Every request comes from one address: the limit stays on the path but must not be what is measured.
    rate = f"{max(6000, 2 * requests)}/minute"
    config = Config(gateway=GatewayConfig(data_dir=data_dir), webhook=WebhookConfig(secrets=(SECRET,), fsync=fsync),
                    ratelimit=RateLimitConfig(webhook=rate))
    app = create_app(config)
    webhooks.setup(app)  # a no-op if create_app already wires it
    return app


def app_with_bare_route(data_dir: Path, requests: int) -> web.Application:
    app = gateway_app(data_dir, requests)

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=202, body=b'{"accepted": true}', content_type="application/json")

    app.router.add_post(APP_PATH, accept)
    return app


async def serve(kind: str, data_dir: Path, requests: int) -> None:
    from gateway.server import tune_gc

    if kind == "bare":
        app = bare_app()
    elif kind == "commit":
        app = commit_app(data_dir)
    elif kind == "app":
        app = app_with_bare_route(data_dir, requests)
    else:
        app = gateway_app(data_dir, requests, fsync=kind == "fsync")
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    tune_gc()  # as gateway.server runs the gateway, and for the bare server alike
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    inbox = _inbox_of(app)
    await runner.cleanup()  # closes the inbox (flushing it) and the database
    stats = {"commits": inbox.commits, "rows": inbox.rows} if inbox is not None else {}
    print(f"STATS {json.dumps(stats)}", flush=True)


def _inbox_of(app: web.Application) -> Inbox | None:
    from gateway import webhooks

    return app.get(webhooks.INBOX)


# -- the load generator ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    """One phase of load against one server, as the client saw it."""

    seconds: float
    statuses: dict[int, int]
    duplicates: int
    latencies: list[float]

    @property
    def ok(self) -> int:
        return self.statuses.get(202, 0)


@dataclass(frozen=True)
class Result:
    """A measured run against one server (warm-up excluded)."""

    name: str
    per_second: float
    p50_ms: float
    p99_ms: float
    server_cpu_us: float | None  # server CPU (all threads) per request: robust to a busy machine
    statuses: dict[int, int]


def make_requests(count: int) -> Requests:
    """Real GitLab payloads from the simulator (issues, MRs, notes, pushes), each with a unique key."""
    from gateway.simulator.gitlab import GitLabSimulator

    sim = GitLabSimulator(seed=11)
    sim.add_project("bench/project", issues=20, merge_requests=10, notes_per_item=1)
    templates = []
    for i in range(40):
        hook = _hook(sim, i)
        templates.append((hook.body(), hook.headers(secret=SECRET)))
    requests = []
    for body, headers in itertools.islice(itertools.cycle(templates), count):
        requests.append((body, {**headers, "Idempotency-Key": str(uuid.uuid4())}))
    return requests


def _hook(sim: GitLabSimulator, i: int) -> Webhook:
    if i % 4 == 0:
        return sim.update_issue(1001, 1 + i % 20, title=f"title {i}")
    if i % 4 == 1:
        return sim.update_merge_request(1001, 1 + i % 10, title=f"mr {i}")
    if i % 4 == 2:
        return sim.add_note(1001, "issue", 1 + i % 20, f"note {i}")
    return sim.push_event(1001, message=f"Fixes #{1 + i % 20}")  # one that mentions nothing is not stored


async def load(url: str, requests: Requests, concurrency: int) -> Phase:
    """`concurrency` connections, each posting the next request as soon as its previous one is answered."""
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    duplicates = 0
    queue = iter(requests)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal duplicates
        for body, headers in queue:
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
            latencies.append(time.perf_counter() - started)
            statuses[response.status] += 1
            duplicates += b'"duplicate":true' in answer

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Phase(elapsed, dict(statuses), duplicates, latencies)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000 if ordered else 0.0


class Server:
    """One server in a child process; `stop()` ends it cleanly (SIGTERM) and returns what it reported."""

    def __init__(self, kind: str, data_dir: Path, requests: int, loop: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--data-dir", str(data_dir),
             "--requests", str(requests), "--loop", loop],
            stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"the {kind} server did not start")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}{APP_PATH if kind == 'app' else PATH}"

    def cpu_seconds(self) -> float | None:
        """User + system CPU of the server process (all its threads) so far; None off Linux."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        for line in out.splitlines():
            if line.startswith("STATS "):
                return json.loads(line.removeprefix("STATS "))
        return {}


@dataclass(frozen=True)
class Run:
    result: Result
    accepted: int  # new events answered 202 over the whole run, warm-up included
    server_stats: dict[str, int]


def run_one(kind: str, data_dir: Path, warmup: Requests, measured: Requests, concurrency: int, loop: str) -> Run:
    server = Server(kind, data_dir, len(warmup) + len(measured), loop)
    try:
        warm = asyncio.run(load(server.url, warmup, concurrency))
        cpu_before = server.cpu_seconds()
        phase = asyncio.run(load(server.url, measured, concurrency))
        cpu_after = server.cpu_seconds()
    finally:
        stats = server.stop()
    cpu_us = None
    if cpu_before is not None and cpu_after is not None:
        cpu_us = (cpu_after - cpu_before) / len(measured) * 1e6
    result = Result(kind, phase.ok / phase.seconds, percentile(phase.latencies, 0.5),
                    percentile(phase.latencies, 0.99), cpu_us, phase.statuses)
    accepted = sum(p.ok - p.duplicates for p in (warm, phase))
    return Run(result, accepted, stats)


def inbox_rows(data_dir: Path) -> int:
    conn = sqlite3.connect(data_dir / "lore.db")
    try:
        return int(conn.execute("SELECT count(*) FROM webhook_events").fetchone()[0])
    finally:
        conn.close()


def one_round(data_dir: Path, warmup: Requests, measured: Requests, concurrency: int, loop: str) -> dict[str, Any]:
    bare = run_one("bare", data_dir / "bare", warmup, measured, concurrency, loop)
    commit = run_one("commit", data_dir / "commit", warmup, measured, concurrency, loop)
    app = run_one("app", data_dir / "app", warmup, measured, concurrency, loop)
    gw = run_one("gateway", data_dir / "gateway", warmup, measured, concurrency, loop)
    synced = run_one("fsync", data_dir / "fsync", warmup, measured, concurrency, loop)
    rows = inbox_rows(data_dir / "gateway")
    synced_rows = inbox_rows(data_dir / "fsync")
    stats = gw.server_stats
    return {
        "bare": asdict(bare.result), "commit": asdict(commit.result), "app": asdict(app.result),
        "gateway": asdict(gw.result),
        "commit_ratio": commit.result.per_second / bare.result.per_second if bare.result.per_second else 0.0,
        "fsync": asdict(synced.result),
        "ratio": gw.result.per_second / bare.result.per_second if bare.result.per_second else 0.0,
        "fsync_ratio": synced.result.per_second / gw.result.per_second if gw.result.per_second else 0.0,
        "fsync_transactions": synced.server_stats.get("commits"),
        "inbox_rows": rows, "accepted_202": gw.accepted,
        "rows_match": (rows == gw.accepted and synced_rows == synced.accepted
                       and inbox_rows(data_dir / "commit") == commit.accepted),
        "transactions": stats.get("commits"),
        "rows_per_transaction": stats["rows"] / stats["commits"] if stats.get("commits") else None,
    }


def summarize(rounds: list[dict[str, Any]], requests: int, concurrency: int, loop: str) -> dict[str, Any]:
    """The round with the median ratio stands for the run (a busy machine makes single rounds noisy)."""
    median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    cpu = {kind: median[kind]["server_cpu_us"] for kind in KINDS}
    layers = None
    if all(value is not None for value in cpu.values()):
        layers = {"aiohttp (bare 202)": round(cpu["bare"], 1),
                  "floor: + body read + inbox row committed (no app)": round(cpu["commit"] - cpu["bare"], 1),
                  "gateway app + middleware": round(cpu["app"] - cpu["bare"], 1),
                  "webhook handler (token, limit, route, inbox commit)": round(cpu["gateway"] - cpu["app"], 1)}
    return {
        "requests": requests, "concurrency": concurrency, "cpus": os.cpu_count(), "rounds": len(rounds),
        "loop": loop, "load_average": os.getloadavg(),
        "ratios": [round(r["ratio"], 3) for r in rounds], "target_ratio": TARGET_RATIO,
        "fsync_ratios": [round(r["fsync_ratio"], 3) for r in rounds],
        "target_p99_ms": TARGET_P99_MS, **median, "rows_match": all(r["rows_match"] for r in rounds),
        # fsync against the default is its own median: the round median for gateway/bare need not be it.
        "fsync_ratio": statistics.median(r["fsync_ratio"] for r in rounds),
        "layers_us_per_request": layers,
    }


def print_report(r: dict[str, Any]) -> None:
    print(f"webhook bench: {r['requests']} requests x {r['rounds']} round(s), {r['concurrency']} "
          f"connections, {r['cpus']} CPUs, loop {r['loop']}, load average {r['load_average'][0]:.1f}; each "
          f"server in its own process, the load generator in this one")
    print(f"{'':10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'server CPU us/req':>19}  statuses")
    for name in KINDS:
        x = r[name]
        cpu = f"{x['server_cpu_us']:.0f}" if x["server_cpu_us"] is not None else "n/a"
        figures = f"{x['per_second']:>9.0f}{x['p50_ms']:>9.2f}{x['p99_ms']:>9.2f}{cpu:>19}"
        print(f"{name:10}{figures}  {x['statuses']}")
    verdict = "ok" if r["ratio"] >= r["target_ratio"] else "BELOW TARGET"
    print(f"ratio gateway/bare (median round): {r['ratio']:.2f}x, target >= {r['target_ratio']}x: {verdict}; "
          f"every round: {r['ratios']}")
    print(f"floor, bare 202 + only the inbox commit / bare (same round): {r['commit_ratio']:.2f}x, "
          f"p99 {r['commit']['p99_ms']:.1f} ms")
    print(f"ratio fsync/gateway (webhook.fsync = true against the default, each round side by side; median): "
          f"{r['fsync_ratio']:.2f}x; every round: {r['fsync_ratios']}")
    p99 = r["gateway"]["p99_ms"]
    print(f"gateway p99 {p99:.1f} ms, target <= {r['target_p99_ms']:.0f} ms: "
          f"{'ok' if p99 <= r['target_p99_ms'] else 'ABOVE TARGET'}")
    # A closed loop: every connection sends its next request when the last is answered, so the mean
    # latency is connections / throughput (Little's law) whatever the server does with its time. The
    # p99 cannot be below that mean; bare's own p99 is the load generator's floor at its rate.
    floors = ", ".join(f"{name} {r['concurrency'] / r[name]['per_second'] * 1000:.1f} ms"
                       for name in ("bare", "gateway") if r[name]["per_second"])
    print(f"  mean latency forced by {r['concurrency']} connections at the measured rate: {floors}; "
          f"bare's own p99 {r['bare']['p99_ms']:.1f} ms")
    if r["layers_us_per_request"]:
        print("where a webhook's server CPU goes (us per request, median round):")
        for layer, us in r["layers_us_per_request"].items():
            print(f"  {layer:<54}{us:>8.1f}")
    if r["transactions"]:
        per = r["rows_per_transaction"]
        print(f"inbox: {r['transactions']} transactions, {per:.1f} rows each on average "
              f"(with fsync: {r['fsync_transactions']} transactions)")
    match = "ok" if r["rows_match"] else "MISMATCH"
    print(f"inbox rows {r['inbox_rows']} == 202s returned (warm-up included) {r['accepted_202']}: {match}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=None, help="requests before measuring (default N/10)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="bare-then-gateway rounds; the median is shown")
    parser.add_argument("--quick", action="store_true", help="a tiny run, for the test suite")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=None,
                        help="every server's event loop (default: what the gateway picks, uvloop if installed)")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from gateway.server import default_loop, run_loop

    loop = args.loop or default_loop()
    if args.serve:
        run_loop(serve(args.serve, args.data_dir, args.requests), loop)
        return 0
    if args.quick:
        args.requests, args.concurrency, args.rounds = 400, 16, 1
    warmup_count = args.requests // 10 if args.warmup is None else args.warmup
    all_requests = make_requests(warmup_count + args.requests)
    warmup, measured = all_requests[:warmup_count], all_requests[warmup_count:]
    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        rounds = [one_round(Path(tmp) / f"round{i}", warmup, measured, args.concurrency, loop)
                  for i in range(args.rounds)]
    result = summarize(rounds, args.requests, args.concurrency, loop)
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0 if result["rows_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
