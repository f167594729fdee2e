"""Database.write: one write transaction run as one function on the writer's thread."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sync.store.db import Database


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = await Database.open(tmp_path / "lore.db")
    yield db
    await db.close()


def updated_at_on_disk(path: Path) -> float:
    conn = sqlite3.connect(path)  # a separate connection sees only what was committed
    try:
        return conn.execute("SELECT updated_at FROM service_state WHERE id = 1").fetchone()[0]
    finally:
        conn.close()


def set_updated_at(value: float) -> object:
    def work(conn: sqlite3.Connection) -> int:
        assert conn.in_transaction  # inside the BEGIN IMMEDIATE
        return conn.execute("UPDATE service_state SET updated_at = ? WHERE id = 1", (value,)).rowcount

    return work


async def test_write_commits_and_returns_what_the_work_returned(database: Database) -> None:
    assert await database.write(set_updated_at(42.0)) == 1
    assert updated_at_on_disk(database.path) == 42.0


async def test_a_failing_write_rolls_back_and_the_next_one_still_commits(database: Database) -> None:
    await database.write(set_updated_at(1.0))

    def half_then_fail(conn: sqlite3.Connection) -> None:
        set_updated_at(2.0)(conn)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await database.write(half_then_fail)
    assert updated_at_on_disk(database.path) == 1.0
    await database.write(set_updated_at(3.0))  # no transaction was left open on the writer
    assert updated_at_on_disk(database.path) == 3.0


async def test_an_sqlite_error_rolls_back_and_is_raised_as_it_is(database: Database) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        set_updated_at(5.0)(conn)
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(sqlite3.OperationalError):
        await database.write(bad)
    async with database.transaction() as conn:  # the writer is usable by transaction() too
        await conn.execute("UPDATE service_state SET updated_at = 6 WHERE id = 1")
    assert updated_at_on_disk(database.path) == 6.0


@pytest.mark.parametrize(("full_sync", "level"), [(False, 1), (True, 2)])
async def test_full_sync_applies_to_that_write_only(database: Database, full_sync: bool, level: int) -> None:
    def synchronous(conn: sqlite3.Connection) -> int:
        return conn.execute("PRAGMA synchronous").fetchone()[0]

    assert await database.write(synchronous, full_sync=full_sync) == level
    assert await database.write(synchronous) == 1  # NORMAL again afterwards
