"""The durable inbox: committed before `add` returns, deduplicated by key, group-committed under load."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sync.clock import FakeClock
from sync.control.inbox import Accepted, Inbox, InboxError, InboxEvent
from sync.store.db import Database
from sync.types import ItemRef


def event(key: str | None = None, *, name: str = "Issue Hook", iid: int | None = 7) -> InboxEvent:
    return InboxEvent(key, name, ItemRef(1001, "issue" if iid else None, iid), b'{"object_kind":"issue"}')


@pytest.fixture
async def inbox(db: Database) -> AsyncIterator[Inbox]:
    box = Inbox(db, FakeClock(1_800_000_000.0))
    await box.start()
    yield box
    await box.close()


def rows_on_disk(path: Path) -> list[tuple[object, ...]]:
    """Read through a separate connection: only committed rows are visible there."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT id, idempotency_key, event, project_id, kind, iid, received_at, payload FROM webhook_events"
            " ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


async def test_add_returns_once_the_row_is_committed(inbox: Inbox, db: Database) -> None:
    accepted = await inbox.add(event("key-1"))

    assert accepted == Accepted(accepted.event_id, duplicate=False)
    assert rows_on_disk(db.path) == [
        (accepted.event_id, "key-1", "Issue Hook", 1001, "issue", 7, 1_800_000_000.0, b'{"object_kind":"issue"}')
    ]


async def test_a_key_seen_before_is_a_duplicate_with_the_first_rows_id(inbox: Inbox, db: Database) -> None:
    first = await inbox.add(event("key-1"))

    again = await inbox.add(event("key-1"))

    assert again == Accepted(first.event_id, duplicate=True)
    assert len(rows_on_disk(db.path)) == 1


async def test_the_same_key_twice_in_one_batch_is_a_duplicate(inbox: Inbox, db: Database) -> None:
    results = await asyncio.gather(inbox.add(event("same")), inbox.add(event("same")), inbox.add(event("other")))

    assert [r.duplicate for r in results] == [False, True, False]
    assert results[0].event_id == results[1].event_id
    assert len(rows_on_disk(db.path)) == 2


async def test_events_without_a_key_are_never_deduplicated(inbox: Inbox, db: Database) -> None:
    results = [await inbox.add(event(None)) for _ in range(3)]

    assert not any(r.duplicate for r in results)
    assert len({r.event_id for r in results}) == 3
    assert len(rows_on_disk(db.path)) == 3


async def test_concurrent_adds_are_committed_together(inbox: Inbox, db: Database) -> None:
    results = await asyncio.gather(*(inbox.add(event(f"k{i}")) for i in range(200)))

    assert len({r.event_id for r in results}) == 200
    assert len(rows_on_disk(db.path)) == 200
    assert inbox.commits <= 3, "200 callers waiting at once should share a transaction or two"


async def test_max_batch_bounds_one_transaction(db: Database) -> None:
    box = Inbox(db, FakeClock(), max_batch=10)
    await box.start()
    await asyncio.gather(*(box.add(event(f"k{i}")) for i in range(100)))
    await box.close()

    assert box.commits == 10
    assert box.rows == 100


async def test_a_failed_commit_fails_every_caller_of_its_batch(inbox: Inbox, db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON webhook_events WHEN NEW.event = 'Boom Hook'"
            " BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )

    results = await asyncio.gather(
        inbox.add(event("a")), inbox.add(event("b", name="Boom Hook")), inbox.add(event("c")),
        return_exceptions=True,
    )

    assert all(isinstance(r, InboxError) for r in results)
    assert rows_on_disk(db.path) == []


async def test_the_writer_survives_a_failed_commit(inbox: Inbox, db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON webhook_events WHEN NEW.event = 'Boom Hook'"
            " BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
    with pytest.raises(InboxError):
        await inbox.add(event("b", name="Boom Hook"))

    accepted = await inbox.add(event("a"))

    assert not accepted.duplicate
    assert len(rows_on_disk(db.path)) == 1


async def test_an_integer_sqlite_cannot_hold_fails_the_batch_not_the_writer(inbox: Inbox) -> None:
    with pytest.raises(InboxError):
        await inbox.add(InboxEvent(None, "Issue Hook", ItemRef(2**70, "issue", 1), b"{}"))

    assert not (await inbox.add(event("after"))).duplicate


async def test_close_commits_what_is_queued(db: Database) -> None:
    box = Inbox(db, FakeClock())
    await box.start()
    adds = [asyncio.create_task(box.add(event(f"k{i}"))) for i in range(50)]
    await asyncio.sleep(0)  # let every add enqueue

    await box.close()

    assert all(not task.result().duplicate for task in adds)
    assert len(rows_on_disk(db.path)) == 50


async def test_add_after_close_is_refused(db: Database) -> None:
    box = Inbox(db, FakeClock())
    await box.start()
    await box.close()

    with pytest.raises(InboxError):
        await box.add(event("late"))


async def test_a_caller_that_goes_away_still_gets_its_event_stored(inbox: Inbox, db: Database) -> None:
    task = asyncio.create_task(inbox.add(event("gone")))
    await asyncio.sleep(0)
    task.cancel()

    await inbox.add(event("next"))  # the writer has processed everything queued before it

    assert [row[1] for row in rows_on_disk(db.path)] == ["gone", "next"]


async def test_count_pending_counts_unprocessed_rows(inbox: Inbox, db: Database) -> None:
    first = await inbox.add(event("a"))
    await inbox.add(event("b"))
    async with db.transaction() as conn:
        await conn.execute("UPDATE webhook_events SET processed_at = 1 WHERE id = ?", (first.event_id,))

    assert await inbox.count_pending() == 1


def observe_synchronous(db: Database, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The `PRAGMA synchronous` each write transaction of `db` runs under (1 NORMAL, 2 FULL), whether it
    goes through `transaction()` or in one trip through `write()`."""
    seen: list[int] = []
    original, original_write = db.transaction, db.write

    @asynccontextmanager
    async def observed(**options: bool) -> AsyncIterator[Any]:
        async with original(**options) as conn:
            seen.append((await conn.execute_fetchall("PRAGMA synchronous"))[0][0])
            yield conn

    async def observed_write(work: Callable[[sqlite3.Connection], Any], **options: bool) -> Any:
        def observing(conn: sqlite3.Connection) -> Any:
            seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])
            return work(conn)

        return await original_write(observing, **options)

    monkeypatch.setattr(db, "transaction", observed)
    monkeypatch.setattr(db, "write", observed_write)
    return seen


@pytest.mark.parametrize(("fsync", "level"), [(False, 1), (True, 2)])
async def test_fsync_commits_the_inbox_under_synchronous_full_and_leaves_other_writes_normal(
        db: Database, monkeypatch: pytest.MonkeyPatch, fsync: bool, level: int) -> None:
    seen = observe_synchronous(db, monkeypatch)
    box = Inbox(db, FakeClock(), fsync=fsync)
    await box.start()
    try:
        await box.add(event("key-1"))
    finally:
        await box.close()
    async with db.transaction() as conn:  # any other write afterwards: back to NORMAL
        await conn.execute("UPDATE service_state SET updated_at = 1 WHERE id = 1")
    assert seen == [level, 1]


async def test_a_commit_that_stores_a_new_event_calls_on_new_events_and_a_duplicate_does_not(
        db: Database) -> None:
    calls: list[int] = []
    box = Inbox(db, FakeClock(), on_new_events=lambda: calls.append(1))
    await box.start()
    await box.add(event("k1"))
    await asyncio.sleep(0)
    assert calls == [1]
    await box.add(event("k1"))
    await asyncio.sleep(0)
    await box.close()
    assert calls == [1]


_CRASHING_WRITER = """
import asyncio, os, sys, traceback
from pathlib import Path
from sync.clock import FakeClock
from sync.control.inbox import Inbox, InboxEvent
from sync.store.db import Database
from sync.types import ItemRef

async def main():
    db = await Database.open(Path(sys.argv[1]))
    box = Inbox(db, FakeClock(1.0))
    await box.start()
    events = [InboxEvent(f"key-{i}", "Issue Hook", ItemRef(1001, "issue", i + 1), b"") for i in range(50)]
    accepted = await asyncio.gather(*(box.add(e) for e in events))  # group-committed in a few batches
    print(" ".join(str(a.event_id) for a in accepted), flush=True)
    os._exit(0)  # die here: no close, no flush, no checkpoint

try:
    asyncio.run(main())
except BaseException:  # the writer thread would keep a failed run alive until the test's timeout
    traceback.print_exc()
    os._exit(1)
"""


def test_every_accepted_event_is_on_disk_after_the_process_dies(tmp_path: Path) -> None:
    """What a 202 promises: `add` returned, so the row survives the process dying right after."""
    path = tmp_path / "lore.db"
    done = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(path)], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    accepted = [int(event_id) for event_id in done.stdout.split()]
    assert len(accepted) == 50
    assert [row[0] for row in rows_on_disk(path)] == sorted(accepted)
