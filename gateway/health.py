"""`/healthz` (the process answers) and `/readyz` (the store is migrated and writable)."""

from __future__ import annotations

import sqlite3

from aiohttp import web

from gateway.http import error_response, json_response
from gateway.keys import CONFIG, DB


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    db = request.app.get(DB)
    if db is None:
        return error_response(503, "not_ready", "the store is not open yet")
    try:
        await db.check_writable()
    except sqlite3.Error as exc:
        return error_response(503, "not_ready", f"the store is not writable: {exc}")
    body = {"status": "ready", "sync_enabled": config.gitlab.enabled}
    if not config.gitlab.enabled:
        body["message"] = "sync is disabled until gitlab.url and a token are set"
    return json_response(body)


def setup(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
