"""Requests/s for one 100-issue page (`per_page=100`), side by side in one run, same load for every server:

  (a) bare     a bare aiohttp handler returning the very same bytes
  (a') limited the bare handler behind the gateway's rate limiter alone (limits, in memory, and its
               RateLimit-* headers): what one required per-request feature costs, for scale
  (b) cached   the gateway, answered from its response cache
  (c) uncached the gateway with the cache off: SQLite query + projection + serialization every request
  (d) 304      the gateway's conditional GET (If-None-Match with the current ETag)
  (e) datasette `datasette serve --immutable`, `_nocount=1&_shape=array&_size=100`, the same 100 rows

Each server runs in its own process; the load generator is wrk when installed (one thread: the server
gets the other core), else an aiohttp client in a separate process. Every target is checked for the
right answer before it is measured, and a run whose load got errors is reported as such.

    python bench/api_bench.py [--duration S] [--rounds N] [--connections C] [--quick] [--json] [--no-wrk]
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
TARGETS = {"cached_over_bare": 0.7, "uncached_over_datasette": 10.0}
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
    requests_per_s: float
    requests: int
    errors: int
    bytes_per_response: int
    server_cpu_us_per_request: float  # steadier than req/s on a busy machine: what the server spent


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


def serve(kind: str, data_dir: Path, port: int, body_file: Path | None) -> None:
    """Child process entry: serve until SIGTERM."""
    from aiohttp import web

    from gateway.server import running, wait_for_stop_signal

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

    async def main() -> None:
        async with running(app, "127.0.0.1", port):
            await wait_for_stop_signal()

    asyncio.run(main())


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


def ours(kind: str, data_dir: Path, body_file: Path | None = None) -> Server:
    port = free_port()
    argv = [sys.executable, __file__, "--serve", kind, "--data", str(data_dir), "--port", str(port)]
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


def measure(name: str, server: Server, load: Load, args: argparse.Namespace, size: int) -> Result:
    """The best of `args.rounds` runs: other work on the machine only ever makes a run slower."""
    generator = run_wrk if args.wrk else run_python_load
    if args.rounds > 1:
        generator(load, args.connections, min(1.0, args.duration / 4))  # warm-up: connections, caches
    best: Result | None = None
    for _ in range(args.rounds):
        cpu = cpu_seconds(server.proc.pid)
        requests, rate, errors = generator(load, args.connections, args.duration)
        cpu_us = (cpu_seconds(server.proc.pid) - cpu) / max(1, requests) * 1e6
        result = Result(name, round(rate, 1), requests, errors, size, round(cpu_us, 1))
        if best is None or result.requests_per_s > best.requests_per_s:
            best = result
    assert best is not None
    return best


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        token = make_mirror(data_dir)
        auth = {"Authorization": f"Bearer {token}"}
        results: list[Result] = []

        cached = ours("cached", data_dir)
        try:
            cached.wait_ready("/healthz")
            url = f"http://127.0.0.1:{cached.port}{PAGE}"
            status, body, headers = fetch(url, auth)
            assert status == 200, body[:300]
            etag = headers["ETag"]
            page = json.loads(body)["items"]
            assert len(page) == 100
            assert fetch(url, {**auth, "If-None-Match": etag})[0] == 304
            results.append(measure("cached", cached, Load(url, tuple(auth.items())), args, len(body)))
            results.append(measure("304", cached, Load(url, (*auth.items(), ("If-None-Match", etag)), 304), args, 0))
        finally:
            cached.stop()

        uncached = ours("uncached", data_dir)
        try:
            uncached.wait_ready("/healthz")
            url = f"http://127.0.0.1:{uncached.port}{PAGE}"
            status, again, _ = fetch(url, auth)
            assert status == 200 and again == body, "the uncached gateway must answer the same bytes"
            results.append(measure("uncached", uncached, Load(url, tuple(auth.items())), args, len(body)))
        finally:
            uncached.stop()

        body_file = Path(tmp) / "page.json"
        body_file.write_bytes(body)
        bare = ours("bare", data_dir, body_file)
        try:
            bare.wait_ready(PAGE.split("?")[0])
            url = f"http://127.0.0.1:{bare.port}{PAGE.split('?')[0]}"
            assert fetch(url, {})[1] == body
            results.append(measure("bare", bare, Load(url), args, len(body)))
        finally:
            bare.stop()

        limited = ours("limited", data_dir, body_file)
        try:
            limited.wait_ready(PAGE.split("?")[0])
            url = f"http://127.0.0.1:{limited.port}{PAGE.split('?')[0]}"
            status, again, headers = fetch(url, {})
            assert again == body and "RateLimit-Remaining" in headers
            results.append(measure("limited", limited, Load(url), args, len(body)))
        finally:
            limited.stop()

        ds_path = Path(tmp) / "bench.db"
        make_datasette_db(ds_path, page)
        ds = datasette(ds_path)
        try:
            ds.wait_ready("/-/versions.json")
            url = f"http://127.0.0.1:{ds.port}{DATASETTE_PAGE}"
            status, ds_body, _ = fetch(url, {})
            rows = json.loads(ds_body)
            assert status == 200 and [r["iid"] for r in rows] == [it["iid"] for it in page]
            results.append(measure("datasette", ds, Load(url), args, len(ds_body)))
        finally:
            ds.stop()

    rate = {r.name: r.requests_per_s for r in results}
    ratios = {
        "cached_over_bare": round(rate["cached"] / rate["bare"], 3),
        "uncached_over_datasette": round(rate["uncached"] / rate["datasette"], 2),
        "not_modified_over_bare": round(rate["304"] / rate["bare"], 3),
        "limited_over_bare": round(rate["limited"] / rate["bare"], 3),
        "bare_over_datasette": round(rate["bare"] / rate["datasette"], 1),
    }
    return {
        "load_generator": "wrk -t1" if args.wrk else "aiohttp client process",
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "results": [asdict(r) for r in results],
        "ratios": ratios,
        "targets": TARGETS,
        "targets_met": {k: ratios[k] >= v for k, v in TARGETS.items()},
    }


def print_report(report: dict) -> None:
    print(f"GET {PAGE}  ({report['load_generator']}, {report['connections']} connections, "
          f"{report['duration_s']} s each)")
    print(f"{'server':<12}{'req/s':>12}{'requests':>11}{'errors':>8}{'bytes':>9}{'server CPU us/req':>19}")
    for r in report["results"]:
        print(f"{r['name']:<12}{r['requests_per_s']:>12,.1f}{r['requests']:>11}{r['errors']:>8}"
              f"{r['bytes_per_response']:>9}{r['server_cpu_us_per_request']:>19,.1f}")
    ratios, met = report["ratios"], report["targets_met"]
    print(f"cached / bare          {ratios['cached_over_bare']:>7.3f}   target >= 0.7 "
          f"{'met' if met['cached_over_bare'] else 'NOT met'}")
    print(f"uncached / datasette   {ratios['uncached_over_datasette']:>7.2f}   target >= 10  "
          f"{'met' if met['uncached_over_datasette'] else 'NOT met'}")
    print(f"304 / bare             {ratios['not_modified_over_bare']:>7.3f}")
    print(f"limited / bare         {ratios['limited_over_bare']:>7.3f}   (bare + the rate limiter alone)")
    print(f"bare / datasette       {ratios['bare_over_datasette']:>7.1f}")
    cpu = {r["name"]: r["server_cpu_us_per_request"] for r in report["results"]}
    if all(cpu.values()):
        print(f"by server CPU per request: cached/bare {cpu['bare'] / cpu['cached']:.3f}, "
              f"uncached/datasette {cpu['datasette'] / cpu['uncached']:.2f}, 304/bare {cpu['bare'] / cpu['304']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per server")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="runs per server; the best counts")
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
        serve(args.serve, args.data, args.port, args.body)
        return
    if args.load:
        python_load(json.loads(args.load))
        return
    if args.quick:
        args.duration, args.rounds = 1.0, 1
    args.wrk = args.wrk and shutil.which("wrk") is not None
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
