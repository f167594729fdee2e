"""`lore-gateway changes`: the change feed from the command line, on a database written directly."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from sync.read import changes
from sync.store.db import Database, migrate
from tests.test_cli_knowledge import run


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A mirror where issue 1 was created, an MR and its note created, then the issue deleted."""
    for name in list(os.environ):
        if name.startswith("LORE_GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LORE_GATEWAY_GATEWAY_DATA_DIR", str(tmp_path))
    migrate(tmp_path / "lore.db")
    conn = sqlite3.connect(tmp_path / "lore.db")
    with conn:
        conn.execute("INSERT INTO projects VALUES (1001, 'acme/widgets', 'widgets', '', x'', 0)")
        for table in ("issues", "merge_requests"):
            conn.execute(f"INSERT INTO {table} (project_id, iid, id, title, state, created_at, updated_at, raw)"
                         " VALUES (1001, 1, 1, 't', 'opened', '', '', x'01')")
        conn.execute("INSERT INTO notes VALUES (77, 1001, 'merge_request', 1, 'd', 0, 0, 0, 'ana', 0, '', '', '{}')")
        conn.execute("DELETE FROM issues WHERE iid = 1")
    conn.close()
    return tmp_path


async def prune(path: Path, before: float) -> None:
    db = await Database.open(path)
    try:
        async with db.transaction() as conn:
            await changes.prune(conn, before)
    finally:
        await db.close()


def test_changes_prints_one_line_a_change_and_the_next_cursor(data_dir, capsys):
    code, out, _ = run(capsys, "changes")
    lines = out.splitlines()
    assert code == 0
    assert [line.split()[2:] for line in lines[:4]] == [
        ["created", "acme/widgets#1"], ["created", "acme/widgets!1"], ["created", "note", "77", "on", "acme/widgets!1"],
        ["deleted", "acme/widgets#1"]]
    assert lines[-1] == "next: --since 4"


def test_changes_json_is_the_api_document_and_since_continues_from_it(data_dir, capsys):
    code, out, _ = run(capsys, "changes", "--limit", "2", "--json")
    first = orjson.loads(out)
    assert code == 0 and [c["seq"] for c in first["items"]] == [1, 2] and first["next_cursor"] == "2"
    code, out, _ = run(capsys, "--json", "changes", "--since", first["next_cursor"])
    rest = orjson.loads(out)["items"]
    assert [(c["kind"], c["note_id"], c["action"]) for c in rest] == [("note", 77, "created"),
                                                                      ("issue", None, "deleted")]


def test_an_expired_cursor_exits_1_with_cursor_expired(data_dir, capsys):
    conn = sqlite3.connect(data_dir / "lore.db")
    with conn:
        conn.execute("UPDATE changes SET at = '2000-01-01T00:00:00.000Z'")
    conn.close()
    asyncio.run(prune(data_dir / "lore.db", time.time() - 86_400))
    code, out, err = run(capsys, "changes", "--since", "1", "--json")
    assert code == 1 and orjson.loads(out)["error"]["code"] == "cursor_expired" and "list again" in err


@pytest.mark.parametrize("argv", [["--since", "abc"], ["--since", "-1"], ["--limit", "0"], ["--limit", "x"]])
def test_a_bad_cursor_or_limit_is_a_usage_error(data_dir, capsys, argv):
    code, _, err = run(capsys, "changes", *argv)
    assert code == 2 and "lore-gateway:" in err
