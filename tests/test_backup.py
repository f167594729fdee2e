"""`backup PATH`: SQLite's online backup of lore.db is one consistent snapshot, even while another
connection keeps committing, and the copy is a private, self-contained, checked database file."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import orjson
import pytest

from gateway.cli import main
from sync.store.backup import BackupError, backup_database
from sync.store.db import migrate

BATCH = 25  # rows per writer transaction: a consistent copy holds whole batches only


def seeded(path: Path, rows: int, payload: int = 2048) -> None:
    migrate(path)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO webhook_events (event, received_at, payload) VALUES ('seed', 0, ?)",
            ((os.urandom(payload),) for _ in range(rows)),
        )


class Writer(threading.Thread):
    """Commits BATCH rows a transaction on its own connection until stopped."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.commits = 0
        self.stop = threading.Event()
        self.started_writing = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            while not self.stop.is_set():
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO webhook_events (event, received_at, payload) VALUES ('live', ?, ?)",
                    ((self.commits, os.urandom(64)) for _ in range(BATCH)),
                )
                conn.execute("COMMIT")
                self.commits += 1
                if self.commits >= 3:
                    self.started_writing.set()
        finally:
            conn.close()


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT id, event, received_at, payload FROM webhook_events ORDER BY id").fetchall()


def test_a_backup_taken_while_another_connection_writes_is_a_consistent_snapshot(tmp_path: Path) -> None:
    source = tmp_path / "lore.db"
    seeded(source, rows=10_000)  # ~20 MB: the copy takes long enough for the writer to commit meanwhile
    writer = Writer(source)
    writer.start()
    assert writer.started_writing.wait(10)
    before = writer.commits
    result = backup_database(source, tmp_path / "backup.db")
    during = writer.commits - before
    writer.stop.set()
    writer.join(10)

    copy = rows(result.path)
    live = [r for r in copy if r[1] == "live"]
    assert result.integrity == "ok"
    assert len(live) % BATCH == 0  # never half a transaction
    assert len(live) >= before * BATCH  # everything committed before the backup began
    assert copy == rows(source)[: len(copy)]  # the same rows, byte for byte, as the source at that point
    print(f"writer commits during the backup: {during}; backup {result.bytes} bytes in {result.seconds:.3f}s")


def test_the_backup_is_one_private_self_contained_file(tmp_path: Path) -> None:
    source = tmp_path / "lore.db"
    seeded(source, rows=10)
    result = backup_database(source, tmp_path / "out" / ".." / "backup.db")
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    assert not Path(f"{result.path}-wal").exists()
    with sqlite3.connect(result.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT count(*) FROM webhook_events").fetchone()[0] == 10


def test_a_directory_target_gets_a_dated_file(tmp_path: Path) -> None:
    source = tmp_path / "lore.db"
    seeded(source, rows=1)
    target = tmp_path / "backups"
    target.mkdir()
    result = backup_database(source, target)
    assert result.path.parent == target and result.path.name.startswith("lore-") and result.path.suffix == ".db"


def test_an_existing_backup_is_replaced_whole(tmp_path: Path) -> None:
    source = tmp_path / "lore.db"
    seeded(source, rows=3)
    target = tmp_path / "backup.db"
    target.write_bytes(b"an older backup")
    backup_database(source, target)
    assert len(rows(target)) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_the_live_database_is_refused_as_the_target(tmp_path: Path) -> None:
    source = tmp_path / "lore.db"
    seeded(source, rows=1)
    with pytest.raises(BackupError) as caught:
        backup_database(source, source)
    assert caught.value.code == "target_is_source"


def test_a_missing_database_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(BackupError) as caught:
        backup_database(tmp_path / "lore.db", tmp_path / "backup.db")
    assert caught.value.code == "no_database"
    assert list(tmp_path.iterdir()) == []


def test_backup_cli_prints_the_result_as_json(tmp_path: Path, monkeypatch, capsys) -> None:
    data = tmp_path / "data"
    data.mkdir()
    seeded(data / "lore.db", rows=5)
    for name in list(os.environ):
        if name.startswith("LORE_GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LORE_GATEWAY_GATEWAY_DATA_DIR", str(data))
    code = main(["backup", str(tmp_path / "b.db"), "--json"])
    document = orjson.loads(capsys.readouterr().out)
    assert code == 0 and document["integrity"] == "ok" and document["path"] == str(tmp_path / "b.db")


def test_backup_cli_without_a_database_exits_1(tmp_path: Path, monkeypatch, capsys) -> None:
    for name in list(os.environ):
        if name.startswith("LORE_GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LORE_GATEWAY_GATEWAY_DATA_DIR", str(tmp_path / "data"))
    code = main(["--json", "backup", str(tmp_path / "b.db")])
    assert code == 1 and orjson.loads(capsys.readouterr().out)["error"]["code"] == "no_database"
