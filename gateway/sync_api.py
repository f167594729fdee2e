"""`/api/v1/sync/...`: the scheduler's status, the run log, and asking for a run or a resume.

Handlers only translate HTTP to the engine: a POST queues a want with the scheduler (which coalesces it
like any trigger) and never runs a sync itself, so the request returns at once. An app built without a
scheduler (a read-only replica) still reports status from the database and can clear a pause there, but
refuses to queue runs it would never start.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from aiohttp import web

from gateway.auth import requires
from gateway.cache import CACHE_CONTROL, matches
from gateway.http import ApiError, BodyDeadline, bad_parameter, json_body, json_response
from gateway.keys import CLOCK, CONFIG, DB, SCHEDULER
from sync import PROFILES, PermanentError, RunLog, resume_service, sync_status

RUNS_DEFAULT_LIMIT = 20
RUNS_MAX_LIMIT = 100
_NO_SCHEDULER = "this gateway runs without a scheduler and starts no syncs; use `lore-gateway sync`"


async def status_document(app: web.Application) -> dict[str, Any]:
    """The status document (docs/api.md "Sync"): the live scheduler's view, or the database's without one."""
    scheduler = app.get(SCHEDULER)
    if scheduler is not None:
        return await scheduler.status()
    return await sync_status(app[DB], app[CLOCK], app[CONFIG])


@requires("read")
async def get_status(request: web.Request) -> web.Response:
    """`GET /api/v1/sync/status`."""
    return _fresh_json(request, await status_document(request.app))


@requires("read")
async def get_runs(request: web.Request) -> web.Response:
    """`GET /api/v1/sync/runs?limit=N`: the newest runs first; one page (see `next_cursor`)."""
    limit = _limit(request.query.get("limit"))
    runs = await RunLog(request.app[DB], request.app[CLOCK]).recent(limit)
    # Paging would need a keyset query in sync/control/runs.py; the newest 100 runs are what callers ask for.
    return _fresh_json(request, {"items": [run.to_json() for run in runs], "next_cursor": None})


@requires("sync")
async def post_sync(request: web.Request) -> web.Response:
    """`POST /api/v1/sync`: 202 {"queued": true, "run_id": null}; the run id is not known until it starts."""
    profile = await _requested_profile(request)
    scheduler = request.app.get(SCHEDULER)
    if scheduler is None:
        raise ApiError(503, "not_ready", _NO_SCHEDULER)
    try:
        scheduler.request_run("api", profile)
    except PermanentError as error:  # sync disabled: nothing to queue until GitLab is configured
        raise ApiError(503, "not_ready", error.message) from None
    return json_response({"queued": True, "run_id": None}, status=202)


@requires("admin")
async def post_resume(request: web.Request) -> web.Response:
    """`POST /api/v1/sync/resume`: clear a pause and any backoff; 200 with the new status document."""
    scheduler = request.app.get(SCHEDULER)
    if scheduler is not None:
        await scheduler.resume()
    else:
        await resume_service(request.app[DB], request.app[CLOCK].now())
    return json_response(await status_document(request.app), headers={"Cache-Control": "no-store"})


# -- parameters -------------------------------------------------------------------------------------


def _limit(raw: str | None) -> int:
    if raw is None:
        return RUNS_DEFAULT_LIMIT
    # isdigit alone would accept "²"; int() alone would accept " 5", "+5" and "1_0".
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= RUNS_MAX_LIMIT:
        raise bad_parameter("limit", f"must be an integer from 1 to {RUNS_MAX_LIMIT}")
    return int(raw)


async def _requested_profile(request: web.Request) -> str | None:
    """`?profile=` or a JSON body {"profile": ...}; both may be absent, and must agree when both are sent."""
    from_query = request.query.get("profile")
    from_body = await _body_profile(request)
    if from_query is not None and from_body is not None and from_query != from_body:
        raise bad_parameter("profile", "the query and the body ask for different profiles")
    profile = from_body if from_body is not None else from_query
    if profile is not None and profile not in PROFILES:
        raise bad_parameter("profile", f"must be one of {', '.join(PROFILES)}")
    return profile


async def _body_profile(request: web.Request) -> str | None:
    async with BodyDeadline(request, request.app[CONFIG].webhook.body_timeout):
        raw = await request.read()
    if not raw.strip():
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", 'the body must be a JSON object such as {"profile": "fast"}')
    profile = body.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise bad_parameter("profile", f"must be one of {', '.join(PROFILES)}")
    return profile


# -- responses --------------------------------------------------------------------------------------


def _fresh_json(request: web.Request, data: Any) -> web.Response:
    """JSON with a strong ETag of its own bytes: these documents have no data version to derive one from
    (the scheduler's state is not data), and hashing a few KB is cheaper than the queries behind them."""
    body = json_body(data)
    etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers, content_type="application/json")


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/sync/status", get_status)
    app.router.add_get("/api/v1/sync/runs", get_runs)
    app.router.add_post("/api/v1/sync", post_sync)
    app.router.add_post("/api/v1/sync/resume", post_resume)
