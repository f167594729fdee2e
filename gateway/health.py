"""`/healthz` (the process answers) and `/readyz` (the store is migrated, readable and writable).

Both answer anyone, without a token or a rate limit, so neither may cost much: `/readyz` writes nothing
and takes no lock, and its answer is reused for READY_TTL, so a flood of probes makes one cheap read a
second at most.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.http import error_response, json_response
from gateway.keys import CLOCK, CONFIG, DB
from sync import SYNC_DISABLED, Clock, Database

READY_TTL = 1.0  # seconds a readiness answer is reused


class Readiness:
    """The store's readiness, checked at most once every `ttl` however many callers ask at once."""

    def __init__(self, db: Database, clock: Clock, ttl: float = READY_TTL) -> None:
        self.checks = 0  # checks that reached the database
        self._db = db
        self._clock = clock
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._checked_at: float | None = None
        self._problem: str | None = None

    async def problem(self) -> str | None:
        """None when ready, else why not (SQLite's message)."""
        async with self._lock:  # callers during a check wait for it and share its answer
            now = self._clock.monotonic()
            if self._checked_at is None or now - self._checked_at >= self._ttl:
                self._problem = await self._check()
                self._checked_at = self._clock.monotonic()
                self.checks += 1
            return self._problem

    async def _check(self) -> str | None:
        try:
            await self._db.check_ready()
        except sqlite3.Error as exc:
            return str(exc)
        return None


READINESS = web.AppKey("readiness", Readiness)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    readiness = request.app.get(READINESS)
    if readiness is None:
        return error_response(503, "not_ready", "the store is not open yet")
    problem = await readiness.problem()
    if problem is not None:
        return error_response(503, "not_ready", f"the store is not writable: {problem}")
    body = {"status": "ready", "sync_enabled": config.gitlab.enabled}
    if not config.gitlab.enabled:
        body["message"] = SYNC_DISABLED
    return json_response(body)


async def _readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    app[READINESS] = Readiness(app[DB], app[CLOCK])
    yield


def setup(app: web.Application) -> None:
    """The routes and the readiness check; call after the database's cleanup context is added."""
    app.cleanup_ctx.append(_readiness_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
