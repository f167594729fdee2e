"""The durable webhook inbox: `add()` returns only once the event is committed in `webhook_events`.

A commit costs far more than a row, so writes are group-committed: one writer task drains a queue and
commits everything waiting in ONE transaction, while callers await their own row's result. Under load
batches grow by themselves (whatever arrives during a commit goes into the next one); when idle a lone
event is committed at once, with no timer adding latency.

"Durable" means committed in WAL mode with synchronous=NORMAL: it survives a crash of the process, not a
power cut (the last commits may be lost then). `fsync=True` (`webhook.fsync`) commits with synchronous=FULL.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sync.clock import Clock
from sync.control import inbox_queries
from sync.store.db import Database
from sync.types import ItemRef

_INSERT = (
    "INSERT INTO webhook_events (id, idempotency_key, event, project_id, kind, iid, received_at, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(idempotency_key) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class InboxEvent:
    """A webhook event as the gateway hands it in to be stored. What the scheduler reads back of a stored
    one is inbox_queries.PendingEvent."""

    idempotency_key: str | None  # None: not deduplicated (GitLab before 17.4 sends no key)
    event: str
    item: ItemRef  # kind None when there is nothing to sync
    payload: bytes


@dataclass(frozen=True)
class Accepted:
    event_id: int
    duplicate: bool


class InboxError(Exception):
    """The event was not stored: the inbox is closed, or the commit failed (nothing of its batch is kept)."""


@dataclass(eq=False)
class _Pending:
    event: InboxEvent
    future: asyncio.Future[Accepted]


class Inbox:
    """Group-committing writer of `webhook_events`; `start()` before `add()`, `close()` flushes."""

    def __init__(self, db: Database, clock: Clock, *, max_batch: int = 512, fsync: bool = False,
                 on_new_events: Callable[[], None] | None = None) -> None:
        """`fsync`: each commit waits for the disk (synchronous=FULL), so it survives a power cut too.
        `on_new_events`: called after a commit that stored a new event (the scheduler's `notify`)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._db = db
        self._fsync = fsync
        self._clock = clock
        self._on_new_events = on_new_events
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0  # transactions committed: far fewer than `rows` under load
        self.rows = 0  # events newly stored (duplicates excluded)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the inbox is already started")
        self._task = asyncio.create_task(self._writer(), name="inbox-writer")
        self._task.add_done_callback(self._writer_done)

    async def close(self) -> None:
        """Commit what is queued, then stop the writer. Safe to call more than once."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    async def add(self, event: InboxEvent) -> Accepted:
        """Store `event` durably; a key already stored (or earlier in the same batch) is a duplicate.

        Raises InboxError when it could not be stored.
        """
        if self._task is None or self._task.done() or self._closing:
            raise InboxError("the inbox is not accepting events")
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(event, future))
        self._wakeup.set()
        # A caller that goes away (client disconnect) cancels only its own future: the event stays queued and
        # is stored anyway, and the writer skips the cancelled future.
        return await future

    async def count_pending(self) -> int:
        """Stored events no committed sync run has processed yet."""
        return await inbox_queries.count_pending(self._db)

    # -- the writer --------------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                size = min(len(self._queue), self._max_batch)
                await self._commit_batch([self._queue.popleft() for _ in range(size)])
            if self._closing:
                return

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            results = await self._store([p.event for p in batch])
        except (sqlite3.Error, OverflowError) as exc:
            # OverflowError: an int too big for SQLite. The reason never quotes a payload; callers say 503.
            _fail(batch, InboxError(f"could not commit {len(batch)} event(s): {exc}"))
            return
        except BaseException:
            _fail(batch, InboxError("the inbox writer stopped"))
            raise
        for pending, accepted in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(accepted)
        if self._on_new_events is not None and not all(a.duplicate for a in results):
            # Deferred, so the callers answered above run first: their webhook.received precedes the
            # scheduler's reaction on the bus.
            asyncio.get_running_loop().call_soon(self._on_new_events)

    async def _store(self, events: Sequence[InboxEvent]) -> list[Accepted]:
        # One trip to the writer's thread for the whole batch (Database.write): the ids, the duplicates and
        # the insert in one transaction, so a batch waits on SQLite once, not on four hand-offs.
        results, stored = await self._db.write(functools.partial(_insert_batch, events, self._clock.now()),
                                               full_sync=self._fsync)
        self.commits += 1
        self.rows += stored
        return results

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        """If the writer ended early (a bug, or cancelled at shutdown), nobody may wait forever."""
        _fail(list(self._queue), InboxError("the inbox writer stopped"))
        self._queue.clear()


def _fail(batch: Sequence[_Pending], error: InboxError) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(error)


def _plan(
    events: Sequence[InboxEvent], existing: dict[str, int], next_id: int, now: float
) -> tuple[list[Accepted], list[tuple[object, ...]]]:
    """Each event's outcome and the rows to insert; a key already stored, or earlier in the batch, is a
    duplicate."""
    results: list[Accepted] = []
    rows: list[tuple[object, ...]] = []
    for e in events:
        key = e.idempotency_key
        if key is not None and key in existing:
            results.append(Accepted(existing[key], duplicate=True))
            continue
        if key is not None:
            existing[key] = next_id
        item = e.item
        rows.append((next_id, key, e.event, item.project_id, item.kind, item.iid, now, e.payload))
        results.append(Accepted(next_id, duplicate=False))
        next_id += 1
    return results, rows


def _insert_batch(events: Sequence[InboxEvent], now: float, conn: sqlite3.Connection) -> tuple[list[Accepted], int]:
    """On the writer's thread, inside the batch's write transaction: each event's outcome, and how many rows
    were inserted. Ids are assigned inside the transaction (no other writer can interleave), so the whole
    batch goes in with one executemany and each caller still learns its own row id."""
    keys = {e.idempotency_key for e in events if e.idempotency_key is not None}
    next_id, existing = _next_id_and_existing(conn, keys)
    results, rows = _plan(events, existing, next_id, now)
    if rows:
        cursor = conn.executemany(_INSERT, rows)
        if cursor.rowcount != len(rows):  # impossible while we are the only writer: fail, never guess
            raise sqlite3.IntegrityError("an inbox row conflicted inside its own write transaction")
    return results, len(rows)


def _next_id_and_existing(conn: sqlite3.Connection, keys: set[str]) -> tuple[int, dict[str, int]]:
    """The next free id and the ids of `keys` already stored, in one query."""
    sql = "SELECT NULL, coalesce(max(id), 0) FROM webhook_events"
    if keys:
        marks = ",".join("?" * len(keys))
        sql += f" UNION ALL SELECT idempotency_key, id FROM webhook_events WHERE idempotency_key IN ({marks})"
    rows = conn.execute(sql, tuple(keys)).fetchall()
    # The max row is the one whose key is NULL (IN never matches NULL): no reliance on UNION ALL order.
    next_id = next(event_id for key, event_id in rows if key is None) + 1
    return next_id, {key: event_id for key, event_id in rows if key is not None}
