"""How to serve `/mcp`, measured: the official SDK mounted in aiohttp (route A) against a hand-written
JSON-RPC endpoint in aiohttp (route B), side by side in one gateway process, same tools, same auth and limiter.

  A  gateway/mcp.py: the SDK's stateless Streamable HTTP manager behind gateway/mcp_asgi.py, once with the
     2025-11-25 handshake era and once with the 2026-07-28 per-request envelope
  B  a minimal aiohttp handler written here: initialize, ping, tools/list, tools/call as plain JSON-RPC
     (2025-11-25 era only: 2026-07-28's envelope, header checks and discover would be ours to write)

Printed: p50/p99 of a tools/list and a tools/call round trip, the server's CPU per call, and what the SDK
costs to load (resident memory of its import, packages it adds). The server runs in its own process.

    python bench/mcp_route_bench.py [--calls N] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gatewayproc import GatewayProcess, gateway_process

MODERN = "2026-07-28"
LEGACY = "2025-11-25"


# -- the server process -----------------------------------------------------------------------------


def _route_b(app: Any) -> Any:
    """Route B: JSON-RPC over POST in plain aiohttp, behind the same limiter and token check as route A."""
    import orjson
    from aiohttp import web

    from gateway import api_limits
    from gateway.api import CURSORS
    from gateway.auth import requires
    from gateway.http import ApiError
    from gateway.keys import CLOCK, CONFIG, DB
    from gateway.mcp_tools import TOOLS, Mirror, ToolArgumentError, ToolFailure
    from gateway.ratelimit import LIMITER
    from gateway.sync_api import status_document

    tools = {t.name: t for t in TOOLS}
    listed = [{"name": t.name, "description": t.description, "inputSchema": t.input_schema} for t in TOOLS]

    def error(rid: Any, code: int, message: str) -> web.Response:
        return web.json_response({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}})

    @requires("read")
    async def endpoint(request: web.Request) -> web.StreamResponse:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error(None, -32700, "parse error")
        rid, method, params = body.get("id"), body.get("method"), body.get("params") or {}
        if rid is None:
            return web.Response(status=202)
        if method == "initialize":
            result: Any = {"protocolVersion": LEGACY, "capabilities": {"tools": {}},
                           "serverInfo": {"name": "route-b", "version": "0"}}
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            result = {"tools": listed}
        elif method == "tools/call" and params.get("name") in tools:
            mirror = Mirror(app[DB], app[CLOCK], app[CONFIG], app[CURSORS], lambda: status_document(app))
            try:
                document = await tools[params["name"]].run(mirror, params.get("arguments") or {})
            except (ToolArgumentError, ToolFailure) as err:
                return error(rid, -32602, str(err))
            result = {"content": [{"type": "text", "text": orjson.dumps(document).decode()}], "isError": False}
        else:
            return error(rid, -32601, "method not found")
        return web.Response(body=orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": result}),
                            content_type="application/json")

    async def limited(request: web.Request) -> web.StreamResponse:
        # handle_mcp's first step, word for word: the limiter before the token check.
        decision = await request.app[LIMITER].hit(request.app[CONFIG].ratelimit.api,
                                                  await api_limits.bucket(request))
        request[api_limits.DECISION] = decision
        if not decision.allowed:
            raise ApiError(429, "rate_limited", "rate limit exceeded")
        return await endpoint(request)

    return limited


def add_route_b(app: Any) -> None:
    """Mount route B at /mcp-b (called in the gateway process by bench/_gatewayproc.py)."""
    app.router.add_post("/mcp-b", _route_b(app))


async def _make_mirror(data_dir: Path, issues: int) -> None:
    from aiohttp.test_utils import TestServer

    from gateway.simulator.gitlab import GitLabSimulator
    from sync.clock import SystemClock
    from sync.control.runner import SyncRunner
    from sync.events import EventBus
    from sync.ingest.pipeline import SyncRequest
    from sync.store.db import Database
    from tests.conftest import SIM_TOKEN, make_config

    sim = GitLabSimulator(token=SIM_TOKEN, seed=5)
    sim.add_project("bench/app", issues=issues, merge_requests=issues // 4, notes_per_item=3)
    server = TestServer(sim.app())
    await server.start_server()
    try:
        config = make_config(data_dir, str(server.make_url("")).rstrip("/"), ("bench/app",))
        db = await Database.open(config.db_path)
        try:
            run = await SyncRunner(db, EventBus(), SystemClock(), config).run(SyncRequest(profile="balanced"))
            assert run.status == "succeeded", run.error_message
        finally:
            await db.close()
    finally:
        await server.close()


# -- the client -------------------------------------------------------------------------------------


def _request(method: str, params: dict[str, Any], version: str) -> tuple[dict[str, str], dict[str, Any]]:
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": version}
    if version == MODERN:
        params = {**params, "_meta": {"io.modelcontextprotocol/protocolVersion": MODERN,
                                      "io.modelcontextprotocol/clientCapabilities": {}}}
        headers["Mcp-Method"] = method
        if "name" in params:
            headers["Mcp-Name"] = params["name"]
    return headers, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


async def _measure(gateway: GatewayProcess, path: str, version: str, calls: int) -> dict[str, Any]:
    import aiohttp

    figures: dict[str, Any] = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {gateway.token}"}) as http:
        for name, method, params in (
            ("tools_list", "tools/list", {}),
            ("tools_call", "tools/call", {"name": "get_issue", "arguments": {"project": "bench/app", "iid": 1}}),
        ):
            headers, body = _request(method, params, version)
            samples = []
            cpu = gateway.cpu_seconds()
            for _ in range(calls):
                started = time.perf_counter()
                async with http.post(gateway.url + path, json=body, headers=headers) as response:
                    answer = await response.json(content_type=None)
                samples.append(time.perf_counter() - started)
                assert response.status == 200 and "result" in answer, answer
            cpu = gateway.cpu_seconds() - cpu
            samples.sort()
            figures[name] = {"p50_ms": statistics.median(samples) * 1000,
                             "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000,
                             "server_cpu_us": cpu / calls * 1e6}
    return figures


def _import_cost() -> dict[str, Any]:
    """Resident memory of importing the SDK's server pieces, and the packages it brings that we lack."""
    probe = ("import re, gateway.mcp_tools, aiohttp\n"
             "def rss():\n"
             "    return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
             "before = rss()\n"
             "import mcp.server.lowlevel, mcp.server.streamable_http_manager\n"
             "print(rss() - before)\n")
    root = str(Path(__file__).resolve().parent.parent)
    kib = statistics.median(int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                               check=True, cwd=root).stdout) for _ in range(3))
    ours = _packages(*_OUR_DEPENDENCIES)
    return {"sdk_import_rss_mib": kib / 1024, "packages_added": sorted(_packages("mcp") - ours)}


# pyproject.toml's dependencies without mcp: what the gateway installs without route A.
_OUR_DEPENDENCIES = ("aiohttp", "aiosqlite", "itsdangerous", "limits", "numpy", "orjson",
                     "prometheus-client", "redis")


def _packages(*roots: str) -> set[str]:
    """`roots` and everything they install on this platform (environment markers evaluated, no extras)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            wanted = requires(name) or []
        except PackageNotFoundError:
            continue
        for line in wanted:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


async def bench(calls: int, issues: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        await _make_mirror(data_dir, issues)
        with gateway_process(data_dir, "bench.mcp_route_bench:add_route_b") as gateway:
            await _measure(gateway, "/mcp", LEGACY, max(5, calls // 10))  # warm both up
            await _measure(gateway, "/mcp-b", LEGACY, max(5, calls // 10))
            routes = {
                "A_sdk_2025_11_25": await _measure(gateway, "/mcp", LEGACY, calls),
                "A_sdk_2026_07_28": await _measure(gateway, "/mcp", MODERN, calls),
                "B_aiohttp_2025_11_25": await _measure(gateway, "/mcp-b", LEGACY, calls),
            }
    b = routes["B_aiohttp_2025_11_25"]
    ratios = {f"{route}_over_B_{call}_{figure}": routes[route][call][figure] / max(b[call][figure], 1e-9)
              for route in ("A_sdk_2025_11_25", "A_sdk_2026_07_28") for call in ("tools_list", "tools_call")
              for figure in ("p50_ms", "server_cpu_us")}
    return {"calls": calls, "routes": routes, "ratios": ratios, "import": _import_cost()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    calls, issues = (40, 20) if args.quick else (args.calls, 500)
    report = asyncio.run(bench(calls, issues))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{calls} sequential calls each, server in its own process")
    print(f"{'route':24} {'call':11} {'p50 ms':>8} {'p99 ms':>8} {'server CPU us':>14}")
    for route, figures in report["routes"].items():
        for call, f in figures.items():
            print(f"{route:24} {call:11} {f['p50_ms']:8.2f} {f['p99_ms']:8.2f} {f['server_cpu_us']:14.0f}")
    for name, value in report["ratios"].items():
        print(f"{name:48} {value:6.2f}x")
    cost = report["import"]
    print(f"SDK import: +{cost['sdk_import_rss_mib']:.1f} MiB resident; packages added: "
          f"{len(cost['packages_added'])} ({', '.join(cost['packages_added'])})")


if __name__ == "__main__":
    main()
