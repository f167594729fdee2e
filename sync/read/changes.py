"""The change feed: every create, update and delete of an issue, MR or note, in commit order.

The rows are written by the triggers of migrations/006_change_feed.sql, so every write path of the
mirror is covered and each change gets a number from the database (`seq`): monotonic, the same in
every process, and kept across restarts. A cursor is that number; one below what retention pruned
has missed changes, and is refused (CursorExpired) so the client lists again.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Literal

import aiosqlite

from sync.clock import utc_iso
from sync.store.db import BUSY_TIMEOUT_MS, Database

ChangeKind = Literal["issue", "merge_request", "note"]
Action = Literal["created", "updated", "deleted"]
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_MAX_CURSOR_DIGITS = 18  # below 2**63: SQLite's INTEGER PRIMARY KEY


class InvalidChangeCursor(ValueError):
    """`since` is not a cursor of this feed (a 400); the message says why."""


class CursorExpired(Exception):
    """The cursor is older than what the feed still keeps (or newer than it has ever been, after a
    restore from a backup): changes were missed, so the client must list again (a 410)."""

    code = "cursor_expired"

    def __init__(self, cursor: int, oldest: int, latest: int) -> None:
        if cursor > latest:
            message = f"cursor {cursor} is ahead of this feed (at {latest}): the mirror was restored; list again"
        else:
            message = (
                f"cursor {cursor} is older than the changes kept (from {oldest + 1}, see changes.retention):"
                " list again, then follow the feed from its latest cursor"
            )
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Change:
    seq: int
    kind: ChangeKind
    project_id: int
    iid: int  # the item's, or the note's parent's
    note_id: int | None
    parent_kind: str  # issue | merge_request: a note's parent's kind; an item's own
    action: Action
    at: str  # RFC 3339, UTC, Z

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "project_id": self.project_id,
            "iid": self.iid,
            "note_id": self.note_id,
            "parent_kind": self.parent_kind,
            "action": self.action,
            "at": self.at,
        }


@dataclass(frozen=True)
class ChangePage:
    items: list[Change]
    next_cursor: str  # pass as `since` to read on: the last seq returned, or `since` when none was

    def to_json(self) -> dict[str, Any]:
        return {"items": [c.to_json() for c in self.items], "next_cursor": self.next_cursor}


def parse_cursor(since: str | None) -> int:
    """The seq a cursor stands for (0: from the start); InvalidChangeCursor for anything else."""
    if since is None:
        return 0
    if not (since.isascii() and since.isdigit() and len(since) <= _MAX_CURSOR_DIGITS):
        raise InvalidChangeCursor(
            "must be a cursor this feed returned (next_cursor, or an SSE data.changed seq): a whole number"
        )
    return int(since)


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be from 1 to {MAX_LIMIT}")
    return limit


# One statement, so one snapshot: a prune committed between reading the watermark and reading the
# rows would otherwise skip changes without the cursor being seen as expired.
_PAGE = (
    "SELECT p.through_seq, coalesce(s.seq, 0), c.seq, c.kind, c.project_id, c.iid, c.note_id, c.parent_kind,"
    " c.action, c.at"
    " FROM changes_pruned p"
    " LEFT JOIN sqlite_sequence s ON s.name = 'changes'"
    " LEFT JOIN (SELECT * FROM changes WHERE seq > ? ORDER BY seq LIMIT ?) c"
    " WHERE p.id = 1 ORDER BY c.seq"
)


async def read_changes(db: Database, since: str | None, limit: int = DEFAULT_LIMIT) -> ChangePage:
    """Up to `limit` changes after the cursor `since` (None: from the oldest kept), oldest first.

    Raises InvalidChangeCursor for a malformed cursor, CursorExpired for one the feed can no longer
    continue (changes after it were pruned, or it is ahead of the feed), ValueError for a bad limit.
    A page shorter than `limit` means the client is caught up.
    """
    after = parse_cursor(since)
    rows = await db.fetchall(_PAGE, (after, check_limit(limit)))
    pruned, latest = rows[0][0], rows[0][1]
    if since is not None and (after < pruned or after > latest):
        raise CursorExpired(after, pruned, latest)
    items = [_change(row) for row in rows if row[2] is not None]
    next_seq = items[-1].seq if items else max(after, pruned)
    return ChangePage(items, str(next_seq))


def _change(row: sqlite3.Row) -> Change:
    _, _, seq, kind, project_id, iid, note_id, parent_kind, action, at = row
    return Change(seq, kind, project_id, iid, note_id, parent_kind, action, at)


async def prune(conn: aiosqlite.Connection, before: float) -> int:
    """Inside a write transaction: drop the changes committed before `before` (Unix seconds), and
    remember the highest seq dropped so older cursors are expired. Returns how many were dropped."""
    # A prefix in seq order, up to the first change that is recent enough: the watermark means "all up
    # to here" even if the wall clock once stepped back. The walk from the oldest row costs what it
    # prunes (no index on `at` to keep up on every write).
    rows = await conn.execute_fetchall(
        "SELECT max(seq) FROM changes WHERE seq < coalesce("
        " (SELECT seq FROM changes WHERE at >= ? ORDER BY seq LIMIT 1), (SELECT max(seq) + 1 FROM changes))",
        (utc_iso(before),),
    )
    through = rows[0][0]
    if through is None:
        return 0
    cur = await conn.execute("DELETE FROM changes WHERE seq <= ?", (through,))
    await conn.execute("UPDATE changes_pruned SET through_seq = max(through_seq, ?) WHERE id = 1", (through,))
    return cur.rowcount


def latest_seq_now(db: Database) -> int:
    """The highest seq committed, read at once without awaiting, for an event published from a
    synchronous callback right after a commit (SSE `data.changed`). A short-lived connection of its
    own: about a few hundred microseconds, once per committed page of a sync."""
    conn = sqlite3.connect(db.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only=ON")
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    finally:
        conn.close()
    return 0 if row is None else int(row[0])
