"""The aiohttp application: state, resources and routes, wired in one place.

Resources live in cleanup contexts, opened in order and closed in reverse:
the database, the event bus (and Redis, when configured), the GitLab client, the
sync runner, the token store, then the scheduler (which reads its persisted state
before anything can trigger a run). Handlers stay thin and call into the engine
(`sync`), which knows nothing about HTTP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import api, auth, front, health, knowledge_api, metrics, sse, status_page, sync_api, webhooks
from gateway import mcp as mcp_endpoint
from gateway.cache import VERSIONS
from gateway.changes_api import setup as setup_changes
from gateway.keys import BUS, CLOCK, CONFIG, DB, GITLAB, LEADER, REDIS, RUNNER, SCHEDULER, WORKERS
from sync import (
    DEFAULT_PREFIX,
    Clock,
    Config,
    Database,
    EventBus,
    GitLabClient,
    LeaderLease,
    RedisEventBus,
    RedisLock,
    RequestBudget,
    Scheduler,
    SyncRunner,
    SystemClock,
    ensure_data_dir,
    new_owner,
    redis_client,
    refresh_health,
)

LEADER_TTL = 15.0  # seconds: how long the timer fallback goes without a leader after the leader dies
PER_PROCESS_LIMITS = ("rate limits are per process: with several workers and no [redis] url, each token "
                      "gets its budget once per worker")


def shared_config(config: Config) -> Config:
    """With a [redis] url, rate limits left at the in-memory default move to Redis: one token, one budget."""
    if config.redis.url and config.ratelimit.storage.startswith("memory://"):
        return dataclasses.replace(config, ratelimit=dataclasses.replace(config.ratelimit, storage=config.redis.url))
    return config


def create_app(
    config: Config, *, clock: Clock | None = None, scheduler: bool = True, workers: int = 1
) -> web.Application:
    """The gateway. `scheduler=False` serves without ever syncing on its own (tests, read-only replicas);
    `workers` is how many processes serve this port (`serve --workers N`), for the status warnings."""
    config = shared_config(config)
    app = web.Application(
        handler_args={"access_log": None},
    )
    app[CONFIG] = config
    app[CLOCK] = clock or SystemClock()
    app[WORKERS] = workers
    app[BUS] = RedisEventBus(config.redis.url) if config.redis.url else EventBus()
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_gitlab)
    app.cleanup_ctx.append(_runner)
    auth.setup(app)
    if scheduler:
        app.cleanup_ctx.append(_scheduler)
    health.setup(app)
    webhooks.setup(app)
    api.setup(app)
    knowledge_api.setup(app)
    sync_api.setup(app)
    setup_changes(app)
    sse.setup(app)
    mcp_endpoint.setup(app)
    metrics.setup(app)
    front.setup(app)  # the one middleware: request id, metrics, error shape, API rate limit
    status_page.setup(app)
    app.cleanup_ctx.append(_remote_invalidation)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    ensure_data_dir(app[CONFIG])
    app[DB] = await Database.open(app[CONFIG].db_path)
    yield
    await app[DB].close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    """The shared bus and the client the sync lock and the leader lease use; neither needs Redis up."""
    url = app[CONFIG].redis.url
    bus = app[BUS]
    if url is None or not isinstance(bus, RedisEventBus):
        yield
        return
    client = redis_client(url)
    app[REDIS] = client
    await bus.start()
    yield
    await bus.close()
    await client.aclose()


async def _remote_invalidation(app: web.Application) -> AsyncIterator[None]:
    """Data changed by another process invalidates this one's response cache at once (not at the poll)."""
    versions = app.get(VERSIONS)
    if versions is None:
        yield
        return
    app[BUS].add_remote_listener(versions.on_event)
    yield
    app[BUS].remove_remote_listener(versions.on_event)


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
        budget=RequestBudget(app[DB], app[CLOCK], gitlab.requests_per_minute, redis=app.get(REDIS)),
    )
    app[GITLAB] = client
    yield
    await client.close()


async def _runner(app: web.Application) -> AsyncIterator[None]:
    owner, client = new_owner(), app.get(REDIS)
    distributed = None if client is None else RedisLock(client, f"{DEFAULT_PREFIX}lock:sync", owner,
                                                        ttl=app[CONFIG].sync.stale_lock)
    app[RUNNER] = SyncRunner(app[DB], app[BUS], app[CLOCK], app[CONFIG], client=app.get(GITLAB), owner=owner,
                             distributed_lock=distributed)
    yield


async def _scheduler(app: web.Application) -> AsyncIterator[None]:
    lease = _leader_lease(app)
    if lease is not None:
        await lease.start()
    client, config, clock = app.get(GITLAB), app[CONFIG], app[CLOCK]
    scheduler = Scheduler(app[DB], app[RUNNER], app[BUS], app[CLOCK], app[CONFIG],
                          timer_gate=lease.allows_timer if lease else None, warnings=_warnings(app),
                          after_pass=(lambda: refresh_health(client, config, clock)) if client else None)
    app[SCHEDULER] = scheduler
    await scheduler.start()
    yield
    await scheduler.stop()
    if lease is not None:
        await lease.stop()


def _leader_lease(app: web.Application) -> LeaderLease | None:
    client = app.get(REDIS)
    if client is None:
        return None
    lease = LeaderLease(RedisLock(client, f"{DEFAULT_PREFIX}leader:timer", app[RUNNER].owner, ttl=LEADER_TTL))
    app[LEADER] = lease
    return lease


def _warnings(app: web.Application) -> tuple[str, ...]:
    return (PER_PROCESS_LIMITS,) if app[WORKERS] > 1 and not app[CONFIG].redis.url else ()
