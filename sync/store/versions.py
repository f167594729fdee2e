"""Data versions in memory: what ETags and the response cache are derived from, read without SQLite.

The pipeline bumps `data_versions` only when rows change. This keeps a copy of that tiny table in
memory so a conditional GET never touches the database: an in-process change (a bus event) marks the
copy stale at once and the next reader awaits one shared re-read, and a background poll picks up
writes by other processes (a CLI `sync`) within `poll_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterable

from sync.clock import Clock
from sync.events import DataChanged, Event, SyncFailed, SyncFinished
from sync.store.db import Database

log = logging.getLogger("lore_gateway.versions")

VersionKey = tuple[int, str]  # (project_id, resource); project 0 holds gateway-wide resources
POLL_INTERVAL = 1.0
# Events published after a commit that may have bumped versions (project rows are bumped with no event
# of their own, so the end of a run counts too).
STALE_EVENTS = frozenset({DataChanged.name, SyncFinished.name, SyncFailed.name})


class DataVersions:
    """`await snapshot(keys)` -> the current version of each key (0 for one never bumped)."""

    def __init__(self, db: Database, clock: Clock, *, poll_interval: float = POLL_INTERVAL) -> None:
        self._db = db
        self._clock = clock
        self._poll_interval = poll_interval
        self._versions: dict[VersionKey, int] = {}
        self._marks = 0  # how many times the copy was marked stale
        self._fresh_through = -1  # the mark count the last completed read covers (-1: never read)
        self._reading: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self.reads = 0  # how many times the table was read (tests and metrics)

    async def start(self) -> None:
        await self.refresh()
        self._poller = asyncio.create_task(self._poll(), name="data-versions-poll")

    async def close(self) -> None:
        """Stop polling; safe to call more than once."""
        for task in (self._poller, self._reading):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._poller = None

    def on_event(self, event: Event) -> None:
        """A bus listener: quick, never raises."""
        if event.name in STALE_EVENTS:
            self.mark_stale()

    def mark_stale(self) -> None:
        """Something committed: the next snapshot re-reads the table first."""
        self._marks += 1

    async def snapshot(self, keys: Iterable[VersionKey]) -> tuple[int, ...]:
        while self._fresh_through < self._marks:
            await self._shared_read()
        return tuple(self._versions.get(key, 0) for key in keys)

    async def refresh(self) -> None:
        """Read the table now (the poll, and tests that wrote from another connection)."""
        self.mark_stale()
        while self._fresh_through < self._marks:
            await self._shared_read()

    async def _shared_read(self) -> None:
        """One read at a time, awaited by every caller that needs it (a cancelled caller does not cancel
        it for the others)."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.create_task(self._read(), name="data-versions-read")
        await asyncio.shield(self._reading)

    async def _read(self) -> None:
        covers = self._marks
        rows = await self._db.fetchall("SELECT project_id, resource, version FROM data_versions")
        self.reads += 1
        fresh = {(int(r[0]), str(r[1])): int(r[2]) for r in rows}
        for key, version in fresh.items():
            # Never backwards: a read that raced a newer one must not undo it.
            if version > self._versions.get(key, 0):
                self._versions[key] = version
        self._fresh_through = max(self._fresh_through, covers)

    async def _poll(self) -> None:
        while True:
            await self._clock.sleep(self._poll_interval)
            try:
                await self.refresh()
            except sqlite3.Error as err:
                # A busy or briefly unavailable store: the next poll tries again; ETags stay as they were.
                log.warning("could not read data versions: %s", err)
