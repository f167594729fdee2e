"""Reads run on the event loop within a budget; a longer one moves to the reader thread, with the same answer."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from sync.store.db import INLINE_BUDGET, Database

# About 200k VM steps of pure computation: far more than INLINE_BUDGET on any machine.
LONG = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) SELECT sum(i) FROM n"


async def test_a_quick_read_is_answered_on_the_event_loop_thread(db: Database) -> None:
    threads = []
    db._inline._conn.create_function("thread", 0, lambda: threads.append(threading.get_ident()) or 1)

    rows = await db.fetchall("SELECT thread(), ? AS x", (5,))

    assert [tuple(r) for r in rows] == [(1, 5)] and rows[0]["x"] == 5
    assert threads == [threading.get_ident()]
    assert db.reads_moved_to_thread == 0


async def test_a_read_over_budget_moves_to_the_reader_thread_and_still_answers(db: Database) -> None:
    assert INLINE_BUDGET <= 0.005  # the promise to the event loop

    total = await db.fetchval(LONG, (200_000,))

    assert total == 200_000 * 200_001 // 2
    assert db.reads_moved_to_thread == 1
    assert await db.fetchval("SELECT 41 + 1") == 42  # the next quick read is inline again
    assert db.reads_moved_to_thread == 1


async def test_a_broken_statement_raises_as_it_did_before(db: Database) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await db.fetchall("SELECT * FROM no_such_table")
    assert db.reads_moved_to_thread == 0  # raised on the loop, not run a second time on the thread


async def test_the_inline_reader_cannot_write(db: Database) -> None:
    with pytest.raises(sqlite3.OperationalError):
        db._inline._conn.execute("CREATE TABLE sneaky (x)")
    assert await db.fetchval("SELECT count(*) FROM sqlite_master WHERE name = 'sneaky'") == 0


async def test_inline_reads_see_what_the_writer_committed(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO locks (name, owner, acquired_at, heartbeat_at) VALUES ('x', 'me', 0, 0)")
    assert await db.fetchval("SELECT owner FROM locks WHERE name = 'x'") == "me"


async def test_a_read_asked_off_the_loop_runs_only_on_the_reader_thread(db: Database) -> None:
    # For a statement whose cost sits in one step the budget cannot interrupt (bm25()'s first call).
    inline, reader = [], []
    db._inline._conn.create_function("where_am_i", 0, lambda: inline.append(threading.get_ident()) or 1)
    await db._reader.create_function("where_am_i", 0, lambda: reader.append(threading.get_ident()) or 1)

    rows = await db.fetchall("SELECT where_am_i(), ? AS x", (7,), inline=False)

    assert [tuple(r) for r in rows] == [(1, 7)] and rows[0]["x"] == 7
    assert inline == [] and len(reader) == 1 and reader[0] != threading.get_ident()
    assert db.reads_moved_to_thread == 0  # asked for, not moved over budget
