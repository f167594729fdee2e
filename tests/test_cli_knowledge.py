"""`lore-gateway search` and `experts` in process, on a database written directly (no GitLab needed)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import orjson
import pytest

from gateway.cli import main
from sync.clock import utc_iso
from sync.store.db import migrate

DAY = 86_400.0


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A mirror with two projects, a few documents and MRs on src/auth/."""
    for name in list(os.environ):
        if name.startswith("LORE_GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LORE_GATEWAY_GATEWAY_DATA_DIR", str(tmp_path))
    path = tmp_path / "lore.db"
    migrate(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO projects VALUES (1001, 'acme/widgets', 'widgets', '', x'', 0)")
        conn.execute("INSERT INTO projects VALUES (1002, 'acme/gadgets', 'gadgets', '', x'', 0)")
        conn.executemany(
            "INSERT INTO documents (kind, project_id, iid, note_id, parent_kind, title, body, web_url, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, '2026-01-01T00:00:00.000Z')",
            [
                ("issue", 1001, 1, 0, "issue", "Zeppelin mooring mast collapses", "It fell over in the wind."),
                ("merge_request", 1001, 2, 0, "merge_request", "Brace the zeppelin mast", "Adds guy wires."),
                ("issue", 1002, 1, 0, "issue", "Unrelated", "nothing here"),
            ],
        )
        for iid, (author, age) in enumerate([("ana", 3), ("ana", 10), ("ben", 400)], start=1):
            at = utc_iso(time.time() - age * DAY)
            raw = orjson.dumps({"author": {"username": author, "name": author.title()}})
            conn.execute(
                "INSERT INTO merge_requests (project_id, iid, id, title, state, author_username, created_at,"
                " updated_at, merged_at, raw) VALUES (1001, ?, ?, 't', 'merged', ?, ?, ?, ?, ?)",
                (iid, iid, author, at, at, at, raw),
            )
            conn.execute("INSERT INTO mr_files VALUES (1001, ?, 'src/auth/tokens.py', 'src/auth/tokens.py')", (iid,))
    conn.close()
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_search_prints_references_titles_and_highlighted_snippets(data_dir, capsys):
    code, out, _ = run(capsys, "search", "zeppelin mast")
    assert code == 0
    assert "issue         acme/widgets#1  Zeppelin mooring mast collapses" in out
    assert "acme/widgets!2" in out


def test_search_json_is_the_api_item_shape_and_filters_apply(data_dir, capsys):
    code, out, _ = run(capsys, "search", "zeppelin", "--type", "merge_request", "--project", "acme/widgets", "--json")
    assert code == 0
    items = orjson.loads(out)["items"]
    assert [(i["type"], i["iid"]) for i in items] == [("merge_request", 2)]


def test_a_malformed_query_is_a_usage_error_with_exit_2(data_dir, capsys):
    code, out, err = run(capsys, "--json", "search", '"unbalanced')
    assert code == 2
    assert orjson.loads(out)["error"]["code"] == "usage_error" and "not a valid search query" in err


def test_experts_needs_a_project_when_several_are_mirrored(data_dir, capsys):
    code, _, err = run(capsys, "experts", "src/auth/")
    assert code == 2 and "acme/widgets (1001)" in err


def test_experts_ranks_and_marks_stale_contributors(data_dir, capsys):
    code, out, _ = run(capsys, "experts", "src/auth/", "--project", "1001", "--json")
    assert code == 0
    body = orjson.loads(out)
    assert [(e["username"], e["stale"]) for e in body["items"]] == [("ana", False), ("ben", True)]
    assert body["items"][0]["contributions"] == {"mr_author": 2}

    code, text, _ = run(capsys, "experts", "src/auth/", "--project", "acme/widgets")
    assert code == 0 and "1. ana (Ana)" in text and "[stale]" in text


def test_experts_for_an_unknown_project_fails_with_not_found(data_dir, capsys):
    code, out, _ = run(capsys, "--json", "experts", "src/", "--project", "nope/none")
    assert code == 1 and orjson.loads(out)["error"]["code"] == "not_found"
