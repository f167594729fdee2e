"""Rate limits for webhooks (per source address) and the REST API (per token), over the `limits` library.

Fixed window, chosen by measurement: limits' in-memory moving window expires entries through a thread hop,
which next to the SQLite writer's thread cost about a third of webhook throughput here; the price is a
burst of up to twice the limit across a window edge. A storage outage answers by `fail_open`, not by error.
In memory, expired counters are swept at most once a second (`SweepingMemoryStorage`), not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache

from aiohttp import web
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.asyncio import BlockingConnectionPool
from redis.exceptions import RedisError

from gateway.keys import CONFIG

SWEEP_INTERVAL = 1.0  # seconds between sweeps of expired in-memory counters
REDIS_MAX_CONNECTIONS = 64
REDIS_POOL_TIMEOUT = 1.0  # seconds to wait for a free pooled connection before it counts as an outage
REDIS_SOCKET_TIMEOUT = 1.0
# limits wraps some storage calls in StorageError and lets others raise the client's own errors: catch both.
_STORAGE_ERRORS = (StorageError, RedisError, OSError)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: int  # whole seconds until the window resets (>= 0)


@lru_cache(maxsize=64)
def parse_rate(rate: str) -> RateLimitItem:
    """'600/minute' -> a RateLimitItem, parsed once per distinct string. Raises ValueError."""
    return parse(rate)


class SweepingMemoryStorage(MemoryStorage):
    """limits' in-memory storage, sweeping expired counters at most once every SWEEP_INTERVAL.

    MemoryStorage starts its sweep (a new task that scans every key) from each `incr` once the previous
    sweep is done: under load, one task and one scan of all keys per request, so a hit slows with the
    number of keys (per-address limits): with 50k keys, 10 ms a hit here; with this, 37 us. Counts stay
    exact without it: `incr` drops an expired key before counting; the sweep only frees memory, which
    a second's delay does not change.
    """

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0

    # MemoryStorage calls `self.__schedule_expiry()`, a name-mangled private method: this overrides it.
    # tests/test_ratelimit.py fails if a limits release renames it, rather than silently sweeping per hit.
    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL
            await MemoryStorage._MemoryStorage__schedule_expiry(self)  # type: ignore[attr-defined]


class RateLimiter:
    """`await hit(rate, key)` counts one request against `key` and says whether it may go ahead."""

    def __init__(self, storage_uri: str, *, fail_open: bool = True, cooldown: float = 1.0) -> None:
        self.fail_open = fail_open
        self.errors = 0  # hits decided without the storage (an error, or during the cool-down after one)
        self._cooldown = cooldown
        self._down_until = 0.0
        self._pool: BlockingConnectionPool | None = None
        self._storage = self._open(storage_uri)

    def _open(self, uri: str) -> Storage:
        if uri.startswith("memory://"):
            return SweepingMemoryStorage()
        if uri.startswith(("redis://", "rediss://")):
            # redis-py's default async pool raises past 100 connections; a blocking one waits, briefly.
            self._pool = BlockingConnectionPool.from_url(
                uri, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_TIMEOUT,
                socket_timeout=REDIS_SOCKET_TIMEOUT, socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
            )
            return storage_from_string(
                f"async+{uri}", implementation="redispy", connection_pool=self._pool, wrap_exceptions=True,
            )
        raise ValueError("rate limit storage must be memory:// or redis://")

    async def hit(self, rate: str, key: str) -> Decision:
        """Count one request against `key` under `rate` ("600/minute").

        FixedWindowRateLimiter's algorithm and keys, with the count read off the increment itself: two
        storage calls instead of four, and a `remaining` that belongs to this very hit. After a storage
        error the storage is left alone for `cooldown` seconds, so an outage stalls one request, not all.
        """
        item = parse_rate(rate)
        if time.monotonic() < self._down_until:
            return self._without_storage(item)
        storage_key = item.key_for(key)  # the key FixedWindowRateLimiter uses too
        try:
            count = await self._storage.incr(storage_key, item.get_expiry())
            reset_at = await self._storage.get_expiry(storage_key)
        except _STORAGE_ERRORS:
            self._down_until = time.monotonic() + self._cooldown
            return self._without_storage(item)
        reset_after = max(0, math.ceil(reset_at - time.time()))
        return Decision(count <= item.amount, item.amount, max(0, item.amount - count), reset_after)

    def _without_storage(self, item: RateLimitItem) -> Decision:
        self.errors += 1
        if self.fail_open:
            return Decision(True, item.amount, item.amount, 0)
        return Decision(False, item.amount, 0, math.ceil(self._cooldown))

    async def close(self) -> None:
        timer = self._storage.timer if isinstance(self._storage, MemoryStorage) else None
        if timer is not None and not timer.done():
            # Its expiry task would otherwise outlive the event loop ("Task was destroyed but it is pending").
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        if self._pool is not None:
            await self._pool.aclose()


def headers(d: Decision) -> dict[str, str]:
    """RateLimit-* headers (Reset in seconds, as the contract says), plus Retry-After when denied."""
    out = {"RateLimit-Limit": str(d.limit), "RateLimit-Remaining": str(d.remaining),
           "RateLimit-Reset": str(d.reset_after)}
    if not d.allowed:
        out["Retry-After"] = str(max(1, d.reset_after))
    return out


# -- app wiring ------------------------------------------------------------------------------------

LIMITER = web.AppKey("limiter", RateLimiter)


async def limiter_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG].ratelimit
    limiter = RateLimiter(config.storage, fail_open=config.fail_open)
    app[LIMITER] = limiter
    yield
    await limiter.close()


def setup(app: web.Application) -> None:
    """Register the limiter once, however many modules (webhooks, REST) ask for it."""
    if limiter_ctx not in app.cleanup_ctx:
        app.cleanup_ctx.append(limiter_ctx)
