"""The migrations runner: applied once, in order, checksummed."""

import sqlite3

import pytest

from sync.db import Database, migrate
from sync.migrations import (
    Migration,
    MigrationError,
    apply_migrations,
    pending_migrations,
    shipped_migrations,
)


def test_shipped_migrations_are_numbered_and_ordered():
    found = shipped_migrations()
    assert found, "the wheel must ship migrations"
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].name.startswith("001_")


def test_migrate_creates_every_table_of_the_design(tmp_path):
    path = tmp_path / "lore.db"
    assert migrate(path) == [m.name for m in shipped_migrations()]
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")}
    for table in (
        "projects",
        "issues",
        "merge_requests",
        "notes",
        "mr_files",
        "documents",
        "documents_fts",
        "sync_runs",
        "sync_cursors",
        "service_state",
        "webhook_events",
        "locks",
        "api_tokens",
        "schema_migrations",
    ):
        assert table in tables
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrate_twice_applies_nothing_the_second_time(tmp_path):
    path = tmp_path / "lore.db"
    migrate(path)
    assert migrate(path) == []
    assert pending_migrations(sqlite3.connect(path)) == []


def test_an_edited_applied_migration_is_an_error_not_a_skip(tmp_path):
    conn = sqlite3.connect(tmp_path / "lore.db", isolation_level=None)
    original = [Migration(1, "001_a.sql", "CREATE TABLE a (x);")]
    apply_migrations(conn, original)
    edited = [Migration(1, "001_a.sql", "CREATE TABLE a (x, y);")]
    with pytest.raises(MigrationError, match="changed after it was applied"):
        apply_migrations(conn, edited)


def test_a_failing_migration_leaves_nothing_half_applied(tmp_path):
    conn = sqlite3.connect(tmp_path / "lore.db", isolation_level=None)
    broken = [Migration(1, "001_a.sql", "CREATE TABLE a (x); CREATE TABLE a (x);")]
    with pytest.raises(MigrationError, match=r"001_a\.sql failed"):
        apply_migrations(conn, broken)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "a" not in tables
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 0


def test_new_migrations_apply_in_order_after_old_ones(tmp_path):
    conn = sqlite3.connect(tmp_path / "lore.db", isolation_level=None)
    first = Migration(1, "001_a.sql", "CREATE TABLE a (x);")
    apply_migrations(conn, [first])
    second = Migration(2, "002_b.sql", "ALTER TABLE a ADD COLUMN y;")
    assert apply_migrations(conn, [first, second]) == ["002_b.sql"]


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "lore.db", isolation_level=None)
    apply_migrations(conn, [Migration(1, "001_a.sql", "SELECT 1;"), Migration(2, "002_b.sql", "SELECT 1;")])
    with pytest.raises(MigrationError, match="does not know"):
        apply_migrations(conn, [Migration(1, "001_a.sql", "SELECT 1;")])


async def test_transactions_roll_back_on_error_and_readers_see_commits(tmp_path):
    db = await Database.open(tmp_path / "lore.db")
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO sync_cursors VALUES (1, 'issues', 'x')")
                raise RuntimeError("boom")
        assert await db.fetchval("SELECT count(*) FROM sync_cursors") == 0
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO sync_cursors VALUES (1, 'issues', 'x')")
        assert await db.fetchval("SELECT count(*) FROM sync_cursors") == 1
    finally:
        await db.close()
