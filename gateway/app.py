"""The aiohttp application: state, resources and routes, wired in one place.

Resources live in cleanup contexts, opened in order and closed in reverse:
the database, the GitLab client, the sync runner, the token store, then the
scheduler (which reads its persisted state before anything can trigger a run).
Handlers stay thin and call into the engine (`sync`), which knows nothing about HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway import auth, health
from gateway.http import errors_middleware
from gateway.keys import BUS, CLOCK, CONFIG, DB, GITLAB, RUNNER, SCHEDULER
from sync.clock import Clock, SystemClock
from sync.config import Config, ensure_data_dir
from sync.db import Database
from sync.events import EventBus
from sync.gitlab import GitLabClient
from sync.runner import SyncRunner
from sync.scheduler import Scheduler


def create_app(config: Config, *, clock: Clock | None = None, scheduler: bool = True) -> web.Application:
    """The gateway. `scheduler=False` serves without ever syncing on its own (tests, read-only replicas)."""
    app = web.Application(
        middlewares=[errors_middleware],
        client_max_size=config.webhook.max_body_bytes,
        handler_args={"access_log": None},
    )
    app[CONFIG] = config
    app[CLOCK] = clock or SystemClock()
    app[BUS] = EventBus()
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_gitlab)
    app.cleanup_ctx.append(_runner)
    auth.setup(app)
    if scheduler:
        app.cleanup_ctx.append(_scheduler)
    health.setup(app)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    ensure_data_dir(app[CONFIG])
    app[DB] = await Database.open(app[CONFIG].db_path)
    yield
    await app[DB].close()


async def _gitlab(app: web.Application) -> AsyncIterator[None]:
    gitlab = app[CONFIG].gitlab
    if not gitlab.enabled:
        yield
        return
    client = GitLabClient(
        gitlab.url or "",
        gitlab.token or "",
        concurrency=gitlab.concurrency,
        timeout=gitlab.timeout,
        clock=app[CLOCK],
    )
    app[GITLAB] = client
    yield
    await client.close()


async def _runner(app: web.Application) -> AsyncIterator[None]:
    app[RUNNER] = SyncRunner(app[DB], app[BUS], app[CLOCK], app[CONFIG], client=app.get(GITLAB))
    yield


async def _scheduler(app: web.Application) -> AsyncIterator[None]:
    scheduler = Scheduler(app[DB], app[RUNNER], app[BUS], app[CLOCK], app[CONFIG])
    app[SCHEDULER] = scheduler
    await scheduler.start()
    yield
    await scheduler.stop()
