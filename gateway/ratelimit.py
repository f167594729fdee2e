"""Rate limits for webhooks (per source address) and the REST API (per token), fixed windows.

Counting happens in this process (`LocalWindows`): a hit is a dict lookup and two additions, no await.
In memory that is the whole limiter. With Redis, each process adds its hits up locally and a flusher
sends them every FLUSH_INTERVAL in one MULTI/EXEC round trip, reading back the shared counts: a cached
request no longer waits on Redis (issue 15). The price, documented in docs/scaling.md: a token may exceed
its budget by what N processes admit in one flush interval before they see the shared count. With
`ratelimit.strict = true` every hit goes to Redis through `limits` instead (exact, one round trip each).
Fixed windows, chosen by measurement: a burst of up to twice the limit across a window edge is the price.
A storage outage answers by `fail_open`, not by error.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from functools import lru_cache
from typing import NamedTuple

from aiohttp import web
from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError

from gateway.keys import CONFIG

SWEEP_INTERVAL = 1.0  # seconds between sweeps of ended windows
MAX_PLANS = 4096  # (rate, key) pairs whose storage key is remembered (limits builds it anew each time)
FLUSH_INTERVAL = 0.1  # seconds between flushes of local counts to Redis: the overshoot's time bound
REDIS_KEY_PREFIX = "LIMITS:"  # limits' own prefix: strict and local counting share one counter per key
REDIS_MAX_CONNECTIONS = 64
REDIS_POOL_TIMEOUT = 1.0  # seconds to wait for a free pooled connection before it counts as an outage
REDIS_SOCKET_TIMEOUT = 1.0
# limits wraps some storage calls in StorageError and lets others raise the client's own errors: catch both.
_STORAGE_ERRORS = (StorageError, RedisError, OSError)


class Decision(NamedTuple):
    """One hit's outcome. A NamedTuple, not a frozen dataclass: one is made per request, and a frozen
    dataclass's __init__ goes through object.__setattr__ for every field."""

    allowed: bool
    limit: int
    remaining: int
    reset_after: int  # whole seconds until the window resets (>= 0)


@lru_cache(maxsize=64)
def parse_rate(rate: str) -> RateLimitItem:
    """'600/minute' -> a RateLimitItem, parsed once per distinct string. Raises ValueError."""
    return parse(rate)


class _Window:
    """One key's fixed window as this process sees it."""

    __slots__ = ("ends_at", "pending", "shared")

    def __init__(self, ends_at: float) -> None:
        self.shared = 0  # the count Redis had at this process's last flush (every process's hits)
        self.pending = 0  # hits counted here and not yet flushed (in memory: every hit)
        self.ends_at = ends_at  # time.monotonic() at which the window ends


class LocalWindows:
    """Fixed-window counters in this process, keyed like limits' FixedWindowRateLimiter.

    Ended windows are swept at most once every SWEEP_INTERVAL (when a new window opens), not per hit:
    a hit stays O(1) however many keys (per-address limits) there are.
    """

    def __init__(self) -> None:
        self.windows: dict[str, _Window] = {}
        self._next_sweep = 0.0

    def hit(self, key: str, expiry: int, now: float) -> tuple[int, float]:
        """Count one hit; (the count so far in this window, when it ends)."""
        window = self.windows.get(key)
        if window is None or now >= window.ends_at:
            if now >= self._next_sweep:
                self._sweep(now)
            window = self.windows[key] = _Window(now + expiry)
        window.pending += 1
        return window.shared + window.pending, window.ends_at

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + SWEEP_INTERVAL
        for key in [key for key, window in self.windows.items() if now >= window.ends_at]:
            del self.windows[key]


class RedisFlusher:
    """Sends this process's pending counts to Redis and reads back the shared ones, in one round trip.

    Per key, in one MULTI/EXEC: SET NX PX (a new key gets the sender's window end, so every process's
    window for a key ends when the first one to flush said), INCRBY, PTTL. Atomic, so a key cannot
    expire between the SET and the INCRBY and live on without a TTL; plain commands, so any Redis does.
    """

    def __init__(self, client: Redis, windows: LocalWindows) -> None:
        self.client = client
        self.windows = windows
        self.flushes = 0  # round trips made (the bench divides by requests)

    async def flush(self, *, probe: bool = False) -> None:
        """Raises the client's errors; the counts it took are put back first, so none are lost. With
        nothing to send, `probe` still asks Redis (a PING), so an outage is seen to end."""
        batch = [(key, window, window.pending) for key, window in self.windows.windows.items() if window.pending]
        if not batch:
            if probe:
                await self.client.ping()
            return
        now = time.monotonic()
        for _, window, sent in batch:  # hits during the round trip count as pending, the sent as shared
            window.pending -= sent
            window.shared += sent
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                for key, window, sent in batch:
                    name = REDIS_KEY_PREFIX + key
                    pipe.set(name, 0, px=max(1, int((window.ends_at - now) * 1000)), nx=True)
                    pipe.incrby(name, sent)
                    pipe.pttl(name)
                replies = await pipe.execute()
        except BaseException:
            for _, window, sent in batch:
                window.pending += sent
                window.shared -= sent
            raise
        finally:
            self.flushes += 1
        now = time.monotonic()
        for index, (_, window, _) in enumerate(batch):
            count, left_ms = replies[3 * index + 1], replies[3 * index + 2]
            window.shared = int(count)
            if left_ms > 0:
                window.ends_at = now + left_ms / 1000


class RateLimiter:
    """`await hit(rate, key)` counts one request against `key` and says whether it may go ahead.

    memory://: counted here only. redis:// (default): counted here, flushed every FLUSH_INTERVAL.
    redis:// with `strict`: every hit is a round trip through limits' Redis storage.
    """

    def __init__(self, storage_uri: str, *, fail_open: bool = True, cooldown: float = 1.0,
                 strict: bool = False) -> None:
        self.fail_open = fail_open
        self.errors = 0  # hits decided without the storage (an error, or during the cool-down after one)
        self._cooldown = cooldown
        self._down_until = 0.0
        self._pool: BlockingConnectionPool | None = None
        self._strict: Storage | None = None
        self._flusher: RedisFlusher | None = None
        self._flushing: asyncio.Task[None] | None = None
        self.windows = LocalWindows()
        self._plans: dict[tuple[str, str], tuple[RateLimitItem, str, int]] = {}
        self._open(storage_uri, strict)

    def _open(self, uri: str, strict: bool) -> None:
        if uri.startswith("memory://"):
            return
        if not uri.startswith(("redis://", "rediss://")):
            raise ValueError("rate limit storage must be memory:// or redis://")
        # redis-py's default async pool raises past 100 connections; a blocking one waits, briefly.
        self._pool = BlockingConnectionPool.from_url(
            uri, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_TIMEOUT,
            socket_timeout=REDIS_SOCKET_TIMEOUT, socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
        )
        if strict:
            self._strict = storage_from_string(
                f"async+{uri}", implementation="redispy", connection_pool=self._pool, wrap_exceptions=True,
            )
        else:
            self._flusher = RedisFlusher(Redis(connection_pool=self._pool), self.windows)

    @property
    def counts_here(self) -> bool:
        """True when a hit is decided in this process (memory, or local counting): `hit_now` may be used."""
        return self._strict is None

    @property
    def round_trips(self) -> int:
        """Flushes to Redis so far (strict mode does not count its per-hit round trips)."""
        return self._flusher.flushes if self._flusher is not None else 0

    async def hit(self, rate: str, key: str) -> Decision:
        """Count one request against `key` under `rate` ("600/minute").

        After a storage error the storage is left alone for `cooldown` seconds, so an outage stalls one
        request (strict) or one flush, not all.
        """
        if self._strict is not None:
            return await self._strict_hit(parse_rate(rate), key)
        return self.hit_now(rate, key)

    def hit_now(self, rate: str, key: str) -> Decision:
        """`hit` without an await, for callers on the hot path; not for strict mode (it must ask Redis)."""
        item, storage_key, expiry = self._plan(rate, key)
        now = time.monotonic()
        if self._flusher is not None:
            if self._flushing is None:
                self._flushing = asyncio.get_running_loop().create_task(self._flush_forever())
            if now < self._down_until:
                self.errors += 1
                if not self.fail_open:
                    return Decision(False, item.amount, 0, math.ceil(self._down_until - now))
        count, ends_at = self.windows.hit(storage_key, expiry, now)
        return Decision(count <= item.amount, item.amount, max(0, item.amount - count),
                        max(0, math.ceil(ends_at - now)))

    def _plan(self, rate: str, key: str) -> tuple[RateLimitItem, str, int]:
        """The item, the storage key FixedWindowRateLimiter would use, and the window's length, kept for
        the busiest pairs: building the key was a third of a hit."""
        plan = self._plans.get((rate, key))
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            item = parse_rate(rate)
            plan = self._plans[(rate, key)] = (item, item.key_for(key), item.get_expiry())
        return plan

    async def _strict_hit(self, item: RateLimitItem, key: str) -> Decision:
        """FixedWindowRateLimiter's algorithm and keys, with the count read off the increment itself: two
        storage calls instead of four, and a `remaining` that belongs to this very hit."""
        assert self._strict is not None
        if time.monotonic() < self._down_until:
            return self._without_storage(item)
        storage_key = item.key_for(key)  # the key FixedWindowRateLimiter uses too
        try:
            count = await self._strict.incr(storage_key, item.get_expiry())
            reset_at = await self._strict.get_expiry(storage_key)
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

    async def flush(self) -> bool:
        """Send the pending counts now (the flusher's tick, and tests); False if Redis failed."""
        if self._flusher is None:
            return True
        try:
            await self._flusher.flush(probe=self._down_until > 0.0)
        except _STORAGE_ERRORS:
            self._down_until = time.monotonic() + self._cooldown
            return False
        self._down_until = 0.0
        return True

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()

    async def close(self) -> None:
        if self._flushing is not None:
            self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flushing
            await self.flush()  # the last counts, so a restart does not hand back a spent budget
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
    limiter = RateLimiter(config.storage, fail_open=config.fail_open, strict=config.strict)
    app[LIMITER] = limiter
    yield
    await limiter.close()


def setup(app: web.Application) -> None:
    """Register the limiter once, however many modules (webhooks, REST) ask for it."""
    if limiter_ctx not in app.cleanup_ctx:
        app.cleanup_ctx.append(limiter_ctx)
