"""The migrations runner: applied once, in order, checksummed."""

import sqlite3

import pytest

from sync.store.db import Database, migrate
from sync.store.migrations import (
    Migration,
    MigrationError,
    apply_migrations,
    shipped_migrations,
)


def test_shipped_migrations_are_numbered_and_ordered():
    found = shipped_migrations()
    assert found, "the wheel must ship migrations"
    assert [m.version for m in found] == sorted(m.version for m in found)
    assert found[0].name.startswith("001_")


def test_migrate_creates_every_table_the_engine_uses(tmp_path):
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
    recorded = {v for (v,) in sqlite3.connect(path).execute("SELECT version FROM schema_migrations")}
    assert recorded == {m.version for m in shipped_migrations()}


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


async def test_004_moves_issues_and_mrs_to_rowid_tables_keeping_every_row(tmp_path):
    """Rows of a WITHOUT ROWID table over ~1 KB overflow; 004 rebuilds both item tables and must lose nothing."""
    import time

    from gateway.simulator.gitlab import GitLabSimulator
    from sync.ingest import mirror

    path = tmp_path / "lore.db"
    conn = sqlite3.connect(path, isolation_level=None)
    apply_migrations(conn, [m for m in shipped_migrations() if m.version <= 3])
    project = GitLabSimulator(token="t", seed=4).add_project("g/p", issues=30, merge_requests=12, notes_per_item=0)
    db = await Database.open(path, migrate_first=False)
    async with db.transaction() as writer:
        await writer.execute("INSERT INTO work_item_statuses (project_id, iid, checked_updated_at, status)"
                             " VALUES (?, 7, '', '{\"name\":\"Doing\"}')", (project.id,))
        await mirror.upsert_project(writer, project.rest(), time.time())
        await mirror.upsert_items(writer, "issue", project.id, list(project.issues.values()))
        await mirror.upsert_items(writer, "merge_request", project.id, list(project.merge_requests.values()))
        await writer.execute("UPDATE issues SET api = NULL WHERE iid = 3")  # a row from before 003's fragments
    await db.close()

    def rows(table):
        conn.row_factory = sqlite3.Row
        return {(r["project_id"], r["iid"]): dict(r) for r in conn.execute(f"SELECT * FROM {table}")}

    before = {table: rows(table) for table in ("issues", "merge_requests")}
    assert before["issues"][(project.id, 7)]["work_item_status"] == '{"name":"Doing"}'

    up_to_4 = [m for m in shipped_migrations() if m.version <= 4]
    assert [m.name for m in shipped_migrations() if m.version == 4] == apply_migrations(conn, up_to_4)

    for table in ("issues", "merge_requests"):
        assert rows(table) == before[table] and len(before[table]) in (30, 12)
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        assert "WITHOUT ROWID" not in ddl
        columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        assert columns[-2:] == ["api", "raw"]  # what a read needs comes before GitLab's big JSON
        plan = " ".join(r[3] for r in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT iid FROM {table} WHERE project_id = 1 ORDER BY updated_at DESC, iid DESC"))
        assert f"{table}_by_updated" in plan and "TEMP B-TREE" not in plan
    # The trigger that restores a rewritten issue's status came back with the table.
    conn.execute("UPDATE issues SET work_item_status = NULL WHERE iid = 7")
    conn.execute("INSERT OR REPLACE INTO issues SELECT * FROM issues WHERE iid = 7")
    assert conn.execute("SELECT work_item_status FROM issues WHERE iid = 7").fetchone()[0] == '{"name":"Doing"}'


def test_008_marks_tokens_made_before_it_as_legacy_and_keeps_them(tmp_path):
    conn = sqlite3.connect(tmp_path / "lore.db", isolation_level=None)
    apply_migrations(conn, [m for m in shipped_migrations() if m.version < 8])
    conn.execute("INSERT INTO api_tokens (name, scopes, secret_hash, created_at) VALUES ('old', '[\"read\"]', 'h', 1)")
    apply_migrations(conn)
    assert conn.execute("SELECT name, secret_hash, revoked_at, random_bits FROM api_tokens").fetchall() == [
        ("old", "h", None, 0)]
