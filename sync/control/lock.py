"""Single flight across processes: a row in `locks` with an owner and a heartbeat.

The holder refreshes `heartbeat_at` while it works. A lock whose heartbeat is
older than `sync.stale_lock` belongs to a process that died (kill -9, power
loss): the next one to ask takes it over, and marks the dead owner's running
sync as interrupted in the same transaction, so nothing reads a run that claims
to be running forever. With Redis configured, a lease there (sync.scaleout.redis_lock) is taken first, for
hosts that do not share this database's locks; losing Redis leaves the row as the guard.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Protocol

from sync.clock import Clock
from sync.control.runs import mark_interrupted
from sync.errors import SyncInProgress
from sync.store.db import Database

SYNC_LOCK = "sync"

log = logging.getLogger("lore_gateway.lock")


class LockUnavailable(Exception):
    """The distributed lock's store could not be asked (Redis down): not a refusal."""


class DistributedLock(Protocol):
    """A lease shared beyond this database (sync.scaleout.redis_lock.RedisLock); raises LockUnavailable."""

    token: int | None

    async def try_acquire(self) -> int | None: ...

    async def holder(self) -> str | None: ...

    async def renew(self) -> bool: ...

    async def release(self) -> None: ...


def new_owner() -> str:
    """Unique per process and lock holder: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SyncLock:
    def __init__(
        self, db: Database, clock: Clock, owner: str, *, stale_after: float, name: str = SYNC_LOCK,
        distributed: DistributedLock | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self.owner = owner
        self.name = name
        self.stale_after = stale_after
        self.interrupted_runs: list[int] = []
        self.distributed = distributed  # taken before the row when set
        self.fence: int | None = None  # the distributed lock's fencing token while held

    @property
    def heartbeat_every(self) -> float:
        return max(0.05, min(self.stale_after / 4, 30.0))

    async def try_acquire(self) -> bool:
        """Take the lock if it is free, ours, or stale; never waits."""
        now = self._clock.now()
        async with self._db.transaction() as conn:
            rows = await conn.execute_fetchall(
                "SELECT owner, heartbeat_at FROM locks WHERE name = ?", (self.name,)
            )
            if rows:
                holder, heartbeat_at = rows[0]
                if holder != self.owner and now - heartbeat_at < self.stale_after:
                    return False
                if holder != self.owner:
                    self.interrupted_runs = await mark_interrupted(conn, holder, now)
            await conn.execute(
                "INSERT INTO locks (name, owner, acquired_at, heartbeat_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, acquired_at = excluded.acquired_at,"
                " heartbeat_at = excluded.heartbeat_at, run_id = NULL",
                (self.name, self.owner, now, now),
            )
            return True

    async def holder(self) -> str | None:
        return await self._db.fetchval("SELECT owner FROM locks WHERE name = ?", (self.name,))

    async def acquire(self, *, wait: bool = False, poll: float = 1.0) -> None:
        """Take the lock, or raise SyncInProgress (or, with `wait`, poll until it is free)."""
        while not await self.try_acquire():
            if not wait:
                raise SyncInProgress(await self.holder() or "unknown")
            await self._clock.sleep(poll)

    async def heartbeat(self) -> bool:
        """Refresh our heartbeat; False if the lock is no longer ours (it was taken over)."""
        async with self._db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE locks SET heartbeat_at = ? WHERE name = ? AND owner = ?",
                (self._clock.now(), self.name, self.owner),
            )
            return cur.rowcount == 1

    async def release(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (self.name, self.owner))

    async def set_run(self, run_id: int) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE locks SET run_id = ? WHERE name = ? AND owner = ?", (run_id, self.name, self.owner)
            )

    @asynccontextmanager
    async def held(self, *, wait: bool = False) -> AsyncIterator[SyncLock]:
        """Hold the lock for the block (the distributed lease first, if any), heartbeating both."""
        await self._acquire_distributed(wait=wait, poll=1.0)
        try:
            await self.acquire(wait=wait)
            beat = asyncio.create_task(self._beat())
            try:
                yield self
            finally:
                beat.cancel()
                with suppress(asyncio.CancelledError):
                    await beat
                await self.release()
        finally:
            await self._release_distributed()

    async def _acquire_distributed(self, *, wait: bool, poll: float) -> None:
        """Take the lease or raise SyncInProgress; an unreachable store lets the row decide alone."""
        self.fence = None
        if self.distributed is None:
            return
        while True:
            try:
                self.fence = await self.distributed.try_acquire()
                if self.fence is not None:
                    return
                holder = await self.distributed.holder()
            except LockUnavailable as err:
                log.warning("distributed lock unavailable (%s): single flight rests on the database lock", err)
                return
            if not wait:
                raise SyncInProgress(holder or "unknown")
            await self._clock.sleep(poll)

    async def _release_distributed(self) -> None:
        if self.distributed is None or self.fence is None:
            return
        try:
            await self.distributed.release()
        except LockUnavailable as err:
            log.warning("could not release the distributed lock (%s): it expires by itself", err)
        self.fence = None

    async def _beat(self) -> None:
        while True:
            await self._clock.sleep(self.heartbeat_every)
            try:
                await self.heartbeat()
            except sqlite3.OperationalError:
                pass  # the database was busy past busy_timeout; the next beat tries again
            await self._renew_distributed()

    async def _renew_distributed(self) -> None:
        if self.distributed is None or self.fence is None:
            return
        try:
            if not await self.distributed.renew():
                log.error("the distributed sync lock (fence %s) expired and was taken by another holder; "
                          "the database lock still guards this run", self.fence)
        except LockUnavailable as err:
            log.warning("could not renew the distributed lock (%s)", err)
