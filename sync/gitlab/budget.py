"""The GitLab request budget: `gitlab.requests_per_minute` across every stage, process and host.

Every request the client sends (REST and GraphQL, retries included) first takes a slot in the current
clock minute, counted the way GitLab's own throttle (Rack::Attack) counts: fixed minute windows, so a
burst may spend the whole minute at once and the next request waits for the minute to turn. The count
lives in the database (every process sharing it sees the same window, and status reads it from there);
with `[redis] url` set, Redis takes the slot first, so hosts gate each other atomically. The client never
needs GitLab's `RateLimit-*` headers for this: self-managed GitLab sends them only on a 429.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sync.clock import Clock
from sync.store.db import Database

log = logging.getLogger("lore_gateway.budget")

WINDOW = 60.0  # seconds: the budget is per clock minute
KEEP_MINUTES = 120  # rows kept for status's last hour, with a margin
REDIS_TTL = 180  # seconds a minute's Redis counter outlives its minute, clock skew between hosts included

# KEYS: the minute's counter. ARGV: limit (0 = none), ttl seconds. The new count, or -1 when the minute is spent.
_TAKE = """
local limit = tonumber(ARGV[1])
if limit > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') >= limit then
  return -1
end
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return n
"""
_REDIS_ERRORS = (RedisError, OSError)


@dataclass(frozen=True)
class BudgetUsage:
    """What status shows as `gitlab_requests`."""

    last_hour: int  # requests in the current clock minute and the 59 before it
    requests_per_minute: int | None  # None: no budget
    remaining_this_minute: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "last_hour": self.last_hour,
            "requests_per_minute": self.requests_per_minute,
            "remaining_this_minute": self.remaining_this_minute,
        }


class RequestBudget:
    """`await acquire()` before each request: returns once the request fits this minute's budget.

    With `per_minute` 0 it never waits, but still counts, so status can say how many requests were made.
    """

    def __init__(self, db: Database, clock: Clock, per_minute: int = 0, *, redis: Redis | None = None,
                 redis_prefix: str = "lore-gateway:") -> None:
        if per_minute < 0:
            raise ValueError("per_minute must not be negative")
        self._db = db
        self._clock = clock
        self.per_minute = per_minute
        self._redis_take = redis.register_script(_TAKE) if redis is not None else None
        self._prefix = f"{redis_prefix}gitlab_requests:"
        self._redis_down = False
        self.waits = 0  # how many times a request waited for the next minute (for the bench and logs)
        self.waiting = 0  # requests waiting for the next minute right now

    async def acquire(self) -> int:
        """Wait for a slot; returns the clock minute (Unix seconds // 60) the request was counted in."""
        while True:
            minute = int(self._clock.now() // WINDOW)
            if await self._take(minute):
                return minute
            # Measured again: the take itself awaited, and the minute may have turned meanwhile.
            left = (minute + 1) * WINDOW - self._clock.now()
            if left <= 0:
                continue
            self.waits += 1
            self.waiting += 1
            try:
                await self._clock.sleep(left)
            finally:
                self.waiting -= 1

    async def _take(self, minute: int) -> bool:
        shared = await self._take_in_redis(minute)
        if shared is False:
            return False
        # Redis said yes (or is not used): the database counts it; it gates only without a Redis answer.
        return await take_in_database(self._db, minute, 0 if shared else self.per_minute)

    async def _take_in_redis(self, minute: int) -> bool | None:
        """True/False: Redis's verdict; None: no Redis, or it is unreachable (the database gates alone)."""
        if self._redis_take is None:
            return None
        try:
            count = await self._redis_take(keys=[f"{self._prefix}{minute}"],
                                           args=[self.per_minute, REDIS_TTL])
        except _REDIS_ERRORS as exc:
            if not self._redis_down:
                log.warning("request budget: Redis unreachable (%s); the database gates requests alone", exc)
            self._redis_down = True
            return None
        if self._redis_down:
            log.info("request budget: Redis is back")
            self._redis_down = False
        return int(count) >= 0


async def take_in_database(db: Database, minute: int, limit: int) -> bool:
    """Count one request in `minute` unless `limit` (0 = none) is already reached; atomic across processes."""
    async with db.transaction() as conn:
        rows = await conn.execute_fetchall("SELECT requests FROM gitlab_requests WHERE minute = ?", (minute,))
        if not rows:
            await conn.execute("DELETE FROM gitlab_requests WHERE minute < ?", (minute - KEEP_MINUTES,))
            await conn.execute("INSERT INTO gitlab_requests (minute, requests) VALUES (?, 1)", (minute,))
            return True
        if limit and rows[0][0] >= limit:
            return False
        await conn.execute("UPDATE gitlab_requests SET requests = requests + 1 WHERE minute = ?", (minute,))
        return True


async def budget_usage(db: Database, clock: Clock, per_minute: int) -> BudgetUsage:
    """Requests in the last hour and what is left of this minute's budget, from the database."""
    minute = int(clock.now() // WINDOW)
    rows = await db.fetchall(
        "SELECT minute, requests FROM gitlab_requests WHERE minute > ? AND minute <= ?", (minute - 60, minute)
    )
    this_minute = sum(r[1] for r in rows if r[0] == minute)
    return BudgetUsage(
        last_hour=sum(r[1] for r in rows),
        requests_per_minute=per_minute or None,
        remaining_this_minute=max(0, per_minute - this_minute) if per_minute else None,
    )
