"""Online backup of the store: a consistent copy of lore.db while `serve` keeps writing.

SQLite's backup API copies the pages of one read snapshot. Taken in a single step, a WAL reader's
snapshot never blocks the writer and is never restarted by its commits (a stepwise backup restarts
on every write from another connection and may never finish under load). The copy goes to a private
temp file, becomes a self-contained rollback-journal database, is checked, then renamed into place.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sync.store.db import BUSY_TIMEOUT_MS


class BackupError(Exception):
    """The backup cannot be made; `code` is stable, `message` says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class BackupResult:
    source: Path
    path: Path
    bytes: int
    pages: int
    seconds: float
    integrity: str  # "ok", from PRAGMA integrity_check on the copy


def backup_database(source: Path, target: Path) -> BackupResult:
    """Copy `source` to `target` (a file, or a directory to hold a time-stamped one). Blocking."""
    started = time.monotonic()
    if not source.is_file():
        raise BackupError("no_database", f"there is no database at {source} (check gateway.data_dir)")
    target = _target_file(target)
    _refuse_live_files(source, target)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # 0600
    os.close(fd)
    temp = Path(temp_name)
    try:
        pages, integrity = _copy(source, temp)
        _fsync(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return BackupResult(source, target, target.stat().st_size, pages, time.monotonic() - started, integrity)


def _target_file(target: Path) -> Path:
    target = Path(os.path.abspath(target.expanduser()))
    if target.is_dir():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return target / f"lore-{stamp}.db"
    if not target.parent.is_dir():
        raise BackupError("no_target_dir", f"{target.parent} is not a directory")
    return target


def _refuse_live_files(source: Path, target: Path) -> None:
    live = {source.resolve(), *(source.resolve().with_name(source.name + s) for s in ("-wal", "-shm", "-journal"))}
    if target.resolve() in live:
        raise BackupError("target_is_source", f"{target} is the live database (or one of its files)")


def _copy(source: Path, temp: Path) -> tuple[int, str]:
    src = sqlite3.connect(source, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        dst = sqlite3.connect(temp, isolation_level=None)
        try:
            src.backup(dst, pages=-1)  # one step: one snapshot (see the module docstring)
            # The copy carries the source's WAL flag; a backup should be one self-contained file.
            dst.execute("PRAGMA journal_mode=DELETE")
            integrity = str(dst.execute("PRAGMA integrity_check").fetchone()[0])
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
        finally:
            dst.close()
    except sqlite3.Error as err:
        raise BackupError("backup_failed", f"backup of {source} failed: {err}") from None
    finally:
        src.close()
    if integrity != "ok":
        raise BackupError("backup_corrupt", f"the copy of {source} fails its integrity check: {integrity}")
    return pages, integrity


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable: fsync the directory entry itself."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
