"""Requests/s for one 100-issue page (`per_page=100`), side by side in one run, same load for every target:

  bare      a bare aiohttp handler returning the very same bytes (same event loop as the gateway)
  limited   the bare handler behind the gateway's rate limiter alone, for scale
  cached    the gateway, answered from its response cache
  304       the gateway's conditional GET (If-None-Match with the current ETag)
  uncached  the gateway with the cache off: SQLite query + projection + serialization every request
  datasette `datasette serve --immutable`, `_nocount=1&_shape=array&_size=100`, the same 100 rows
and, to show where a cached request's time goes, the same bytes from the gateway's own process:
  L1 app    a plain route of the gateway's app: routing, the one middleware (request id, metrics,
            error shape) and the response hook
  L2 limit  the same under /api/v1: plus the token's rate-limit hit and its RateLimit-* headers
  (cached)  plus auth, the parameter checks and the ETag / cache lookup: the real handler
Each layer's cost is the difference in server CPU us per request between consecutive rows.

Every server runs in its own process, all at once; rounds are interleaved (each round loads every
target once, in turn) and medians are reported, ratios as the median of each round's ratio, so a busy
neighbour slows both sides of a ratio alike. The load generator is wrk when installed (one thread),
else an aiohttp client in a separate process. Every target is checked for the right answer first.

    python bench/api_bench.py [--duration S] [--rounds N] [--connections C] [--loop asyncio|uvloop]
                              [--quick] [--json] [--no-wrk]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if TYPE_CHECKING:  # the project is imported in the server processes only: the load generator stays light
    from collections.abc import Callable

    from aiohttp import web

    from sync.config import Config

PROJECT_ID = 1001
ISSUES = 300
PAGE = f"/api/v1/projects/{PROJECT_ID}/issues?per_page=100"
DATASETTE_PAGE = "/bench/issues.json?_nocount=1&_shape=array&_size=100"
UNLIMITED = "1000000000/minute"  # one token makes every request: the limiter stays on the path, unbinding
LAYER_PAGE = "/bench/page"  # the layer routes, added to the gateway's app in its bench process
TARGETS = {"cached_over_bare": 0.6, "not_modified_over_bare": 0.65, "uncached_over_datasette": 10.0}
DATASETTE_COLUMNS = ("id", "iid", "project_id", "title", "description", "state", "labels", "author", "assignees",
                     "created_at", "updated_at", "closed_at", "web_url", "work_item_status")


@dataclass(frozen=True)
class Load:
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    expect: int = 200


@dataclass(frozen=True)
class Result:
    name: str
    requests_per_s: float  # the median round
    requests: int  # over every round
    errors: int
    bytes_per_response: int
    server_cpu_us_per_request: float  # steadier than req/s on a busy machine: what the server spent
    rounds: tuple[float, ...] = ()  # req/s of each round, in order


# -- data -------------------------------------------------------------------------------------------


def make_mirror(data_dir: Path) -> str:
    """A mirror of one project with ISSUES issues, written through sync.ingest.mirror; returns a read token."""
    from gateway.simulator.gitlab import GitLabSimulator
    from gateway.tokens import TokenStore, signing_keys
    from sync.clock import SystemClock
    from sync.ingest import mirror
    from sync.store.db import Database

    async def fill() -> str:
        sim = GitLabSimulator(token="bench", seed=11)
        project = sim.add_project("bench/p0", issues=ISSUES, merge_requests=0, notes_per_item=0)
        db = await Database.open(data_dir / "lore.db")
        try:
            async with db.transaction() as conn:
                await mirror.upsert_project(conn, project.rest(), time.time())
                await mirror.upsert_items(conn, "issue", project.id, list(project.issues.values()))
                await mirror.bump_versions(conn, project.id, ["issues", "discussions", "project"])
            store = TokenStore(db, SystemClock(), signing_keys(gateway_config(data_dir)))
            return (await store.create("bench", ["read"], None)).token
        finally:
            await db.close()

    return asyncio.run(fill())


def make_datasette_db(path: Path, page: list[dict]) -> None:
    """The page's items as rows (nested values as JSON text), for Datasette to serve from SQLite."""
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"CREATE TABLE issues ({', '.join(DATASETTE_COLUMNS)})")
        conn.executemany(
            f"INSERT INTO issues VALUES ({', '.join('?' * len(DATASETTE_COLUMNS))})",
            [tuple(_cell(item.get(c)) for c in DATASETTE_COLUMNS) for item in page],
        )
        conn.commit()
    finally:
        conn.close()


def _cell(value: object) -> object:
    return json.dumps(value) if isinstance(value, dict | list) else value


def gateway_config(data_dir: Path, port: int = 0) -> Config:
    from sync.config import Config, GatewayConfig, RateLimitConfig

    return Config(gateway=GatewayConfig(data_dir=data_dir, port=port), ratelimit=RateLimitConfig(api=UNLIMITED))


# -- servers (child processes) ----------------------------------------------------------------------


def serve(kind: str, data_dir: Path, port: int, body_file: Path | None, loop: str) -> None:
    """Child process entry: serve until SIGTERM."""
    from aiohttp import web

    from gateway.server import run_loop, running, wait_for_stop_signal

    if kind == "bare":
        body = body_file.read_bytes() if body_file else b"{}"

        async def page(request: web.Request) -> web.Response:
            return web.Response(body=body, content_type="application/json")

        app = web.Application(handler_args={"access_log": None})
        app.router.add_get(PAGE.split("?")[0], page)
    elif kind == "limited":
        app = limited_app(body_file.read_bytes() if body_file else b"{}")
    else:
        from gateway.app import create_app
        from gateway.cache import CACHE_MAX_BYTES

        app = create_app(gateway_config(data_dir, port), scheduler=False)
        if kind == "uncached":
            app[CACHE_MAX_BYTES] = 0
        else:
            add_layer_routes(app, body_file.read_bytes() if body_file else b"{}")

    async def main() -> None:
        async with running(app, "127.0.0.1", port):
            await wait_for_stop_signal()

    run_loop(main(), loop)


def add_layer_routes(app: web.Application, body: bytes) -> None:
    """The bare handler inside the gateway's app: outside /api/v1 (the middleware only) and inside it
    (plus the rate limit), so each layer's cost shows against the real handler on the same process."""
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app.router.add_get(LAYER_PAGE, page)
    app.router.add_get("/api/v1" + LAYER_PAGE, page)


def limited_app(body: bytes) -> web.Application:
    """The bare handler behind a middleware that spends one rate-limit hit per request, as the gateway does."""
    from aiohttp import web

    from gateway import ratelimit

    limiter = ratelimit.RateLimiter("memory://")

    @web.middleware
    async def limit(request: web.Request, handler: Callable) -> web.StreamResponse:
        decision = await limiter.hit(UNLIMITED, "api-token:1")
        response = await handler(request)
        response.headers.update(ratelimit.headers(decision))
        return response

    async def page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application(handler_args={"access_log": None}, middlewares=[limit])
    app.router.add_get(PAGE.split("?")[0], page)
    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process on a free port; `wait_ready` polls until `probe` answers."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)

    def wait_ready(self, probe: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}{probe}", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # it answers (a 401 is an answer)
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def ours(kind: str, data_dir: Path, loop: str, body_file: Path | None = None) -> Server:
    port = free_port()
    argv = [sys.executable, __file__, "--serve", kind, "--data", str(data_dir), "--port", str(port),
            "--loop", loop]
    if body_file is not None:
        argv += ["--body", str(body_file)]
    return Server(argv, port)


def datasette(db_path: Path) -> Server:
    port = free_port()
    exe = shutil.which("datasette", path=str(Path(sys.executable).parent)) or shutil.which("datasette")
    if exe is None:
        raise RuntimeError("datasette is not installed (pip install -e '.[test]')")
    return Server([exe, "serve", "--immutable", str(db_path), "--port", str(port), "--host", "127.0.0.1",
                   "--setting", "sql_time_limit_ms", "10000"], port)


# -- fetching and checking --------------------------------------------------------------------------


def fetch(url: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


# -- load generators --------------------------------------------------------------------------------


def run_wrk(load: Load, connections: int, duration: float) -> tuple[int, float, int]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
    for name, value in load.headers:
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, load.url], capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)
    return requests, rate, errors


def run_python_load(load: Load, connections: int, duration: float) -> tuple[int, float, int]:
    """The fallback: an aiohttp client in its own process (so it does not share the server's core)."""
    argv = [sys.executable, __file__, "--load", json.dumps({**asdict(load), "connections": connections,
                                                            "duration": duration})]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    counted = json.loads(out)
    return counted["requests"], counted["requests"] / counted["elapsed"], counted["errors"]


def python_load(spec: dict) -> None:
    """Child process entry: `connections` workers GET the URL for `duration` seconds; prints JSON counts."""
    import aiohttp

    async def main() -> dict:
        done = errors = 0
        headers = dict(spec["headers"])
        deadline = time.monotonic() + spec["duration"]
        connector = aiohttp.TCPConnector(limit=spec["connections"])
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                nonlocal done, errors
                while time.monotonic() < deadline:
                    async with session.get(spec["url"], headers=headers) as resp:
                        await resp.read()
                        done += 1
                        errors += resp.status != spec["expect"]

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(spec["connections"])))
            return {"requests": done, "errors": errors, "elapsed": time.monotonic() - started}

    print(json.dumps(asyncio.run(main())))


# -- the run ----------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux), 0.0 where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Target:
    name: str
    server: Server
    load: Load
    size: int


def measure_round(target: Target, args: argparse.Namespace) -> tuple[int, float, int, float]:
    """(requests, req/s, errors, server CPU seconds) of one run against one target."""
    generator = run_wrk if args.wrk else run_python_load
    cpu = cpu_seconds(target.server.proc.pid)
    requests, rate, errors = generator(target.load, args.connections, args.duration)
    return requests, rate, errors, cpu_seconds(target.server.proc.pid) - cpu


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def measure_all(targets: list[Target], args: argparse.Namespace) -> tuple[list[Result], list[dict[str, float]]]:
    """Interleaved rounds: each round loads every target once, in turn. Returns the median result per
    target and each round's req/s by target (the ratios are taken per round)."""
    generator = run_wrk if args.wrk else run_python_load
    if args.rounds > 1:
        for target in targets:  # warm-up: connections, caches
            generator(target.load, args.connections, min(1.0, args.duration / 4))
    per_round: list[dict[str, float]] = []
    runs: dict[str, list[tuple[int, float, int, float]]] = {t.name: [] for t in targets}
    for index in range(args.rounds):
        this_round = {}
        for target in targets[index % len(targets):] + targets[:index % len(targets)]:  # none always first
            run = measure_round(target, args)
            runs[target.name].append(run)
            this_round[target.name] = run[1]
        per_round.append(this_round)
    results = []
    for target in targets:
        done = runs[target.name]
        cpu_us = median([cpu / max(1, requests) * 1e6 for requests, _, _, cpu in done])
        results.append(Result(target.name, round(median([rate for _, rate, _, _ in done]), 1),
                              sum(r[0] for r in done), sum(r[2] for r in done), target.size, round(cpu_us, 1),
                              tuple(round(rate, 1) for _, rate, _, _ in done)))
    return results, per_round


def check_gateway(port: int, auth: dict[str, str]) -> tuple[bytes, str]:
    url = f"http://127.0.0.1:{port}{PAGE}"
    status, body, headers = fetch(url, auth)
    assert status == 200, body[:300]
    assert len(json.loads(body)["items"]) == 100
    assert fetch(url, {**auth, "If-None-Match": headers["ETag"]})[0] == 304
    return body, headers["ETag"]


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        token = make_mirror(data_dir)
        auth = {"Authorization": f"Bearer {token}"}
        body_file = Path(tmp) / "page.json"
        servers: list[Server] = []
        try:
            # The page's bytes first (from an uncached gateway), so every server can serve the same ones.
            uncached = ours("uncached", data_dir, args.loop)
            servers.append(uncached)
            uncached.wait_ready("/healthz")
            status, body, _ = fetch(f"http://127.0.0.1:{uncached.port}{PAGE}", auth)
            assert status == 200, body[:300]
            body_file.write_bytes(body)
            page = json.loads(body)["items"]
            gateway, bare, limited = (ours(kind, data_dir, args.loop, body_file)
                                      for kind in ("cached", "bare", "limited"))
            servers += [gateway, bare, limited]
            ds_path = Path(tmp) / "bench.db"
            make_datasette_db(ds_path, page)
            ds = datasette(ds_path)
            servers.append(ds)
            gateway.wait_ready("/healthz")
            again, etag = check_gateway(gateway.port, auth)
            assert again == body, "the cached gateway must answer the same bytes"
            for server in (bare, limited):
                server.wait_ready(PAGE.split("?")[0])
                status, again, headers = fetch(f"http://127.0.0.1:{server.port}{PAGE.split('?')[0]}", {})
                assert again == body
            assert "RateLimit-Remaining" in headers
            ds.wait_ready("/-/versions.json")
            status, ds_body, _ = fetch(f"http://127.0.0.1:{ds.port}{DATASETTE_PAGE}", {})
            assert status == 200 and [r["iid"] for r in json.loads(ds_body)] == [it["iid"] for it in page]
            layer1 = f"http://127.0.0.1:{gateway.port}{LAYER_PAGE}"
            layer2 = f"http://127.0.0.1:{gateway.port}/api/v1{LAYER_PAGE}"
            assert fetch(layer1, {})[1] == body
            status, again, headers = fetch(layer2, auth)
            assert again == body and "RateLimit-Remaining" in headers and "X-Request-Id" in headers

            def url(server: Server, path: str = PAGE) -> str:
                return f"http://127.0.0.1:{server.port}{path}"

            bare_url = url(bare, PAGE.split("?")[0])
            targets = [
                Target("bare", bare, Load(bare_url), len(body)),
                Target("L1 app", gateway, Load(layer1), len(body)),
                Target("L2 limit", gateway, Load(layer2, tuple(auth.items())), len(body)),
                Target("cached", gateway, Load(url(gateway), tuple(auth.items())), len(body)),
                Target("304", gateway, Load(url(gateway), (*auth.items(), ("If-None-Match", etag)), 304), 0),
                Target("limited", limited, Load(url(limited, PAGE.split("?")[0])), len(body)),
                Target("uncached", uncached, Load(url(uncached), tuple(auth.items())), len(body)),
                Target("datasette", ds, Load(url(ds, DATASETTE_PAGE)), len(ds_body)),
            ]
            results, per_round = measure_all(targets, args)
        finally:
            for server in servers:
                server.stop()

    def ratio(top: str, bottom: str, digits: int = 3) -> float:
        return round(median([r[top] / r[bottom] for r in per_round]), digits)

    ratios = {
        "cached_over_bare": ratio("cached", "bare"),
        "not_modified_over_bare": ratio("304", "bare"),
        "uncached_over_datasette": ratio("uncached", "datasette", 2),
        "limited_over_bare": ratio("limited", "bare"),
        "layer1_over_bare": ratio("L1 app", "bare"),
        "layer2_over_bare": ratio("L2 limit", "bare"),
        "bare_over_datasette": ratio("bare", "datasette", 1),
    }
    cpu = {r.name: r.server_cpu_us_per_request for r in results}
    layers = {
        "aiohttp (bare)": cpu["bare"],
        "gateway app + middleware + hook": round(cpu["L1 app"] - cpu["bare"], 1),
        "rate limit (token lookup, hit, headers)": round(cpu["L2 limit"] - cpu["L1 app"], 1),
        "auth + parameters + ETag/cache lookup": round(cpu["cached"] - cpu["L2 limit"], 1),
    }
    return {
        "load_generator": "wrk -t1" if args.wrk else "aiohttp client process",
        "loop": args.loop,
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "load_average": os.getloadavg(),
        "results": [asdict(r) for r in results],
        "ratios": ratios,
        "layers_us_per_request": layers,
        "targets": TARGETS,
        "targets_met": {k: ratios[k] >= v for k, v in TARGETS.items()},
    }


def print_report(report: dict) -> None:
    print(f"GET {PAGE}  ({report['load_generator']}, {report['connections']} connections, "
          f"{report['duration_s']} s x {report['rounds']} interleaved rounds, loop {report['loop']}, "
          f"load average {report['load_average'][0]:.1f})")
    print(f"{'target':<12}{'req/s':>11}{'requests':>10}{'errors':>8}{'bytes':>8}{'CPU us/req':>12}  rounds (req/s)")
    for r in report["results"]:
        rounds = " ".join(f"{x:,.0f}" for x in r["rounds"])
        print(f"{r['name']:<12}{r['requests_per_s']:>11,.1f}{r['requests']:>10}{r['errors']:>8}"
              f"{r['bytes_per_response']:>8}{r['server_cpu_us_per_request']:>12,.1f}  {rounds}")
    ratios, met = report["ratios"], report["targets_met"]
    print("ratios (median of the rounds' ratios):")
    for key, label in (("cached_over_bare", "cached / bare"), ("not_modified_over_bare", "304 / bare"),
                       ("uncached_over_datasette", "uncached / datasette")):
        verdict = "met" if met[key] else "NOT met"
        print(f"  {label:<22}{ratios[key]:>8.3f}   target >= {report['targets'][key]} {verdict}")
    print(f"  {'L1 app / bare':<22}{ratios['layer1_over_bare']:>8.3f}")
    print(f"  {'L2 limit / bare':<22}{ratios['layer2_over_bare']:>8.3f}")
    print(f"  {'limited / bare':<22}{ratios['limited_over_bare']:>8.3f}   (bare + the rate limiter alone)")
    print(f"  {'bare / datasette':<22}{ratios['bare_over_datasette']:>8.1f}")
    print("where a cached request's server CPU goes (us per request, medians; differences of the rows above):")
    for layer, us in report["layers_us_per_request"].items():
        print(f"  {layer:<42}{us:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per server")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians count")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default=None,
                        help="every server's event loop (default: what the gateway picks, uvloop if installed)")
    parser.add_argument("--quick", action="store_true", help="1 s per server (tests)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--no-wrk", dest="wrk", action="store_false", help="use the aiohttp load generator")
    parser.add_argument("--serve", choices=("bare", "limited", "cached", "uncached"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--body", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.data, args.port, args.body, args.loop)
        return
    if args.load:
        python_load(json.loads(args.load))
        return
    if args.quick:
        args.duration, args.rounds = 1.0, 1
    args.wrk = args.wrk and shutil.which("wrk") is not None
    if args.loop is None:
        from gateway.server import default_loop

        args.loop = default_loop()
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
