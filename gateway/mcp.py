"""`/mcp`: the Model Context Protocol over Streamable HTTP, served by the official `mcp` SDK inside aiohttp.

The SDK's ASGI app is mounted behind the gateway's own bearer tokens (scope `read`), rate limiter and
metrics, so an agent spends the same budget as a REST client. It runs stateless with JSON responses: no
session lives in a process, so `serve --workers N` needs nothing shared. The SDK negotiates the protocol:
2026-07-28's per-request envelope (`server/discover`), and the initialize handshake down to 2024-11-05.
Why the SDK and not a hand-written JSON-RPC endpoint (measured by bench/mcp_route_bench.py): see
docs/agents.md, "How the endpoint is built".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import mcp_types as types
import orjson
from aiohttp import web
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from gateway import api_limits
from gateway.api import CURSORS
from gateway.auth import requires
from gateway.keys import CLOCK, CONFIG, DB
from gateway.mcp_asgi import read_body, serve_asgi
from gateway.mcp_tools import TOOLS, Mirror, ToolArgumentError, ToolFailure
from gateway.sync_api import status_document

PATH = "/mcp"
MAX_BODY_BYTES = 1024 * 1024  # a tools/call is a few hundred bytes; nothing an agent sends comes close
SERVER_NAME = "lore-gateway"
INSTRUCTIONS = ("A local mirror of GitLab issues, merge requests and discussions, kept fresh by webhooks. "
                "Answers come from the mirror (no GitLab quota); sync_status says how fresh it is.")

MANAGER = web.AppKey("mcp_manager", StreamableHTTPSessionManager)
_BY_NAME = {tool.name: tool for tool in TOOLS}


def tool_list() -> list[types.Tool]:
    return [types.Tool(name=t.name, description=t.description, input_schema=t.input_schema,
                       annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False))
            for t in TOOLS]


def build_server(app: web.Application) -> Server[Any]:
    """The SDK's low-level server with the tools, reading through this app's database and config."""
    tools = tool_list()

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        spec = _BY_NAME.get(params.name)
        if spec is None:
            raise MCPError(types.INVALID_PARAMS, f"unknown tool {params.name!r}; tools/list names them",
                           {"error": "unknown_tool"})
        mirror = Mirror(app[DB], app[CLOCK], app[CONFIG], app[CURSORS], lambda: status_document(app))
        try:
            result = await spec.run(mirror, params.arguments or {})
        except ToolArgumentError as err:
            raise MCPError(types.INVALID_PARAMS, f"{params.name}: {err}",
                           {"error": "invalid_argument", "parameter": err.parameter}) from None
        except ToolFailure as err:
            raise MCPError(types.INVALID_PARAMS, f"{params.name}: {err}", {"error": err.code}) from None
        text = orjson.dumps(result).decode()
        if len(text.encode()) > mirror.budget:  # the tools fit their results; this is the net under them
            raise MCPError(types.INTERNAL_ERROR, f"{params.name}: the result would exceed mcp.max_result_tokens "
                           f"({app[CONFIG].mcp.max_result_tokens}); ask for less (a smaller limit)",
                           {"error": "result_too_large"})
        return types.CallToolResult(content=[types.TextContent(text=text)])

    return Server(SERVER_NAME, version=_version(), instructions=INSTRUCTIONS,
                  on_list_tools=list_tools, on_call_tool=call_tool)


def _version() -> str:
    try:
        return version("lore-gateway")
    except PackageNotFoundError:
        return "0"


# -- the endpoint -----------------------------------------------------------------------------------


async def handle_mcp(request: web.Request) -> web.StreamResponse:
    """`POST /mcp`: rate limited first (like `/api/v1`, before the token is checked), then auth."""
    await api_limits.spend(request)  # the same budget as /api/v1; gateway.front puts RateLimit-* on the answer
    return await _authorized(request)


@requires("read")
async def _authorized(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, MAX_BODY_BYTES, request.app[CONFIG].webhook.body_timeout)
    return await serve_asgi(request.app[MANAGER].handle_request, request, body)


async def _manager_ctx(app: web.Application) -> AsyncIterator[None]:
    """The SDK's manager runs in a task of its own: its anyio task group must be left in the task that
    entered it, and aiohttp may start and clean up an app from different tasks."""
    manager = StreamableHTTPSessionManager(build_server(app), json_response=True, stateless=True,
                                           max_request_body_size=MAX_BODY_BYTES)
    started, stop = asyncio.Event(), asyncio.Event()

    async def run() -> None:
        async with manager.run():
            started.set()
            await stop.wait()

    task = asyncio.create_task(run(), name="mcp-manager")
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # it failed to start: raise why
    app[MANAGER] = manager
    yield
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup(app: web.Application) -> None:
    """Call after `api.setup` (the cursor codec, the rate limiter and its response hook)."""
    api_limits.setup(app)
    app.cleanup_ctx.append(_manager_ctx)
    app.router.add_post(PATH, handle_mcp)  # stateless: no GET stream, no DELETE of a session
