"""Single flight across hosts: a Redis lease with a fencing token, and the leader lease for the timer.

Both are leases (SET NX PX) that their holder renews, so a holder that dies frees them after the TTL
with no one having to notice. Every lock taken gets a fencing token from INCR: it only ever grows, so a
holder whose lease expired (paused, partitioned) can be told apart from the one that holds it now.
Redis errors become `LockUnavailable`: the callers choose what an outage means (sync/control/lock.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sync.control.lock import LockUnavailable

log = logging.getLogger("lore_gateway.lock")

# KEYS: lock, fence counter. ARGV: owner, ttl ms. Returns the fencing token, or nil when held by another.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[1]) + 1) ~= ARGV[1] .. '|' then
  return nil
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""
# KEYS: lock. ARGV: the value we set, ttl ms. 1 when still ours (and extended), 0 when lost.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
_ERRORS = (RedisError, OSError)


class RedisLock:
    """A lease on `name` for `owner`: `try_acquire()` -> fencing token or None; `renew()`; `release()`."""

    def __init__(self, client: Redis, name: str, owner: str, *, ttl: float) -> None:
        self._client = client
        self.name = name
        self.owner = owner
        self.ttl = ttl
        self.token: int | None = None  # the fencing token of the lease we hold
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def _value(self) -> str:
        return f"{self.owner}|{self.token}"

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    async def try_acquire(self) -> int | None:
        """The fencing token if the lease is now ours; None if another owner holds it."""
        try:
            token = await self._acquire(keys=[self.name, f"{self.name}:fence"], args=[self.owner, self._ttl_ms])
        except _ERRORS as err:
            raise LockUnavailable(str(err)) from err
        self.token = None if token is None else int(token)
        return self.token

    async def holder(self) -> str | None:
        try:
            value = await self._client.get(self.name)
        except _ERRORS as err:
            raise LockUnavailable(str(err)) from err
        return None if value is None else value.decode().rpartition("|")[0]

    async def renew(self) -> bool:
        """Extend the lease; False when it is no longer ours (it expired and someone else took it)."""
        if self.token is None:
            return False
        try:
            return bool(await self._renew(keys=[self.name], args=[self._value, self._ttl_ms]))
        except _ERRORS as err:
            raise LockUnavailable(str(err)) from err

    async def release(self) -> None:
        """Give the lease up if it is still ours; safe to call more than once."""
        if self.token is None:
            return
        try:
            await self._release(keys=[self.name], args=[self._value])
        except _ERRORS as err:
            raise LockUnavailable(str(err)) from err
        finally:
            self.token = None


class LeaderLease:
    """Which one process runs the timer fallback: the holder of a renewed lease.

    While Redis is unreachable every process counts as leader: the timer is what guarantees convergence,
    and the SQLite lock still lets only one of them run.
    """

    def __init__(self, lock: RedisLock) -> None:
        self._lock = lock
        self._leader = False
        self._reachable = False
        self._task: asyncio.Task[None] | None = None

    @property
    def leader(self) -> bool:
        return self._leader

    def allows_timer(self) -> bool:
        return self._leader or not self._reachable

    async def start(self) -> None:
        await self.step()
        self._task = asyncio.create_task(self._keep(), name="leader-lease")

    async def stop(self) -> None:
        """Stop renewing and hand the lease over at once; safe to call more than once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._leader:
            with contextlib.suppress(LockUnavailable):
                await self._lock.release()
        self._leader = False

    async def step(self) -> None:
        """Renew the lease we hold, or try to take a free one."""
        try:
            held = self._leader and await self._lock.renew()
            if not held:
                held = await self._lock.try_acquire() is not None
        except LockUnavailable:
            self._reachable = False
            return
        if held != self._leader:
            log.info("timer fallback leader: %s", "this process" if held else "another process")
        self._reachable = True
        self._leader = held

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._lock.ttl / 3)
            await self.step()
