"""Single flight across processes: a row in `locks` with an owner and a heartbeat.

The holder refreshes `heartbeat_at` while it works. A lock whose heartbeat is
older than `sync.stale_lock` belongs to a process that died (kill -9, power
loss): the next one to ask takes it over, and marks the dead owner's running
sync as interrupted in the same transaction, so nothing reads a run that claims
to be running forever.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from sync.clock import Clock
from sync.db import Database
from sync.errors import SyncInProgress
from sync.runs import mark_interrupted

SYNC_LOCK = "sync"


def new_owner() -> str:
    """Unique per process and lock holder: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SyncLock:
    def __init__(
        self, db: Database, clock: Clock, owner: str, *, stale_after: float, name: str = SYNC_LOCK
    ) -> None:
        self._db = db
        self._clock = clock
        self.owner = owner
        self.name = name
        self.stale_after = stale_after
        self.interrupted_runs: list[int] = []

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
        """Hold the lock for the block, heartbeating in the background."""
        await self.acquire(wait=wait)
        beat = asyncio.create_task(self._beat())
        try:
            yield self
        finally:
            beat.cancel()
            with suppress(asyncio.CancelledError):
                await beat
            await self.release()

    async def _beat(self) -> None:
        while True:
            await self._clock.sleep(self.heartbeat_every)
            try:
                await self.heartbeat()
            except sqlite3.OperationalError:
                continue  # the database was busy past busy_timeout; the next beat tries again
