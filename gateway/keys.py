"""The typed keys of the application's state (aiohttp `AppKey`s), in one place so any module can use them."""

from __future__ import annotations

from aiohttp import web
from redis.asyncio import Redis

from sync import Clock, Config, Database, EventBus, GitLabClient, LeaderLease, Scheduler, SyncRunner

CONFIG = web.AppKey("config", Config)
CLOCK = web.AppKey("clock", Clock)
DB = web.AppKey("db", Database)
BUS = web.AppKey("bus", EventBus)
GITLAB = web.AppKey("gitlab", GitLabClient)
RUNNER = web.AppKey("runner", SyncRunner)
SCHEDULER = web.AppKey("scheduler", Scheduler)
REDIS = web.AppKey("redis", Redis)  # set only with a [redis] url
LEADER = web.AppKey("leader_lease", LeaderLease)  # set only with a [redis] url and a scheduler
SIGNING_KEYS = web.AppKey("signing_keys", tuple[str, ...])  # set by auth.setup; tokens and cursors
WORKERS = web.AppKey("workers", int)  # processes serving this port (serve --workers N)
