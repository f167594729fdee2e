"""Writes GitLab objects into the mirror tables, inside a caller's transaction.

Every upsert compares `updated_at` with what is stored and writes only rows that
changed, so a sync that finds nothing new writes nothing, bumps no data version
and leaves every ETag alone. The functions return what they changed; the caller
decides what to announce.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite
import orjson

from sync.clock import normalize_time, parse_time
from sync.shape import item_fragment
from sync.store.db import Database
from sync.types import TABLES, ItemRef, Kind


def _username(user: Any) -> str | None:
    return user.get("username") if isinstance(user, dict) else None


def _opt_time(value: Any) -> str | None:
    return normalize_time(value) if isinstance(value, str) and value else None


def changed_items(items: Iterable[dict], stored: dict[int, str]) -> list[dict]:
    """The items whose updated_at differs from the mirror's (new ones included)."""
    return [it for it in items if stored.get(it["iid"]) != normalize_time(it["updated_at"])]


async def upsert_project(conn: aiosqlite.Connection, project: dict, now: float) -> bool:
    raw = orjson.dumps(project)
    cur = await conn.execute(
        "INSERT INTO projects (id, path_with_namespace, name, web_url, raw, synced_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET path_with_namespace = excluded.path_with_namespace,"
        " name = excluded.name, web_url = excluded.web_url, raw = excluded.raw, synced_at = excluded.synced_at"
        " WHERE projects.raw IS NOT excluded.raw",
        (
            project["id"],
            project["path_with_namespace"],
            project.get("name") or "",
            project.get("web_url") or "",
            raw,
            now,
        ),
    )
    return cur.rowcount > 0


async def upsert_items(
    conn: aiosqlite.Connection, kind: Kind, project_id: int, items: Sequence[dict]
) -> None:
    """Insert or replace issues or merge requests (one executemany for the batch)."""
    if kind == "issue":
        await conn.executemany(
            "INSERT OR REPLACE INTO issues (project_id, iid, id, title, state, author_username, labels,"
            " created_at, updated_at, raw, api) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [(*(c := _common(project_id, it)), orjson.dumps(it), _api(kind, it, c)) for it in items],
        )
    else:
        await conn.executemany(
            "INSERT OR REPLACE INTO merge_requests (project_id, iid, id, title, state, author_username, labels,"
            " created_at, updated_at, merged_at, raw, api) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [(*(c := _common(project_id, it)), _opt_time(it.get("merged_at")), orjson.dumps(it), _api(kind, it, c))
             for it in items],
        )


def _api(kind: Kind, item: dict, common: tuple) -> bytes:
    """The read API's JSON of the item, rendered once here rather than on every read."""
    return item_fragment(kind, item, created_at=common[7], updated_at=common[8])


def _common(project_id: int, item: dict) -> tuple:
    return (
        project_id,
        item["iid"],
        item["id"],
        item.get("title") or "",
        item.get("state") or "",
        _username(item.get("author")),
        orjson.dumps(item.get("labels") or []).decode(),
        normalize_time(item["created_at"]),
        normalize_time(item["updated_at"]),
    )


async def replace_discussions(
    conn: aiosqlite.Connection, project_id: int, kind: Kind, iid: int, discussions: Sequence[dict]
) -> int:
    """Make the item's notes exactly those of `discussions`; return how many notes it has."""
    rows = []
    for d_seq, discussion in enumerate(discussions):
        for n_seq, note in enumerate(discussion.get("notes") or []):
            rows.append(
                (
                    note["id"],
                    project_id,
                    kind,
                    iid,
                    str(discussion["id"]),
                    int(bool(discussion.get("individual_note"))),
                    d_seq,
                    n_seq,
                    _username(note.get("author")),
                    int(bool(note.get("system"))),
                    normalize_time(note["created_at"]),
                    normalize_time(note.get("updated_at") or note["created_at"]),
                    orjson.dumps(note),
                )
            )
    # Only the notes GitLab no longer has are deleted (the rest are rewritten in place), so the change
    # feed (migrations/006_change_feed.sql) sees a tombstone for a deleted note, not for every note.
    await conn.execute(
        "DELETE FROM notes WHERE project_id = ? AND noteable_kind = ? AND noteable_iid = ?"
        " AND id NOT IN (SELECT value FROM json_each(?))",
        (project_id, kind, iid, orjson.dumps([row[0] for row in rows]).decode()),
    )
    await conn.executemany(
        "INSERT OR REPLACE INTO notes (id, project_id, noteable_kind, noteable_iid, discussion_id, individual_note,"
        " discussion_seq, note_seq, author_username, system, created_at, updated_at, raw)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    return len(rows)


def notes_fingerprint(discussions: Sequence[dict]) -> list[tuple[int, str]]:
    """(id, updated_at) of every note in order: equal fingerprints mean nothing to write."""
    return [
        (note["id"], normalize_time(note.get("updated_at") or note["created_at"]))
        for discussion in discussions
        for note in discussion.get("notes") or []
    ]


async def stored_notes_fingerprint(conn: aiosqlite.Connection, project_id: int, kind: Kind, iid: int) -> list:
    rows = await conn.execute_fetchall(
        "SELECT id, updated_at FROM notes WHERE project_id = ? AND noteable_kind = ? AND noteable_iid = ?"
        " ORDER BY discussion_seq, note_seq",
        (project_id, kind, iid),
    )
    return [(r[0], r[1]) for r in rows]


async def replace_mr_files(
    conn: aiosqlite.Connection, project_id: int, iid: int, diffs: Sequence[dict]
) -> int:
    await conn.execute("DELETE FROM mr_files WHERE project_id = ? AND mr_iid = ?", (project_id, iid))
    rows = {(d.get("new_path") or d.get("old_path"), d.get("old_path") or d.get("new_path")) for d in diffs}
    await conn.executemany(
        "INSERT INTO mr_files (project_id, mr_iid, path, old_path) VALUES (?, ?, ?, ?)",
        [(project_id, iid, new, old) for new, old in rows if new],
    )
    return len(rows)


async def delete_item(conn: aiosqlite.Connection, project_id: int, kind: Kind, iid: int) -> bool:
    """Forget an item GitLab no longer has: the item, its notes, files, documents and bookkeeping.

    The one way an item leaves the mirror (webhook-less deletions, 404/403s, reconcile), so everything
    that reacts to a deletion (search, the change feed's triggers) sees it in this one transaction.
    """
    cur = await conn.execute(f"DELETE FROM {TABLES[kind]} WHERE project_id = ? AND iid = ?", (project_id, iid))
    await conn.execute(
        "DELETE FROM notes WHERE project_id = ? AND noteable_kind = ? AND noteable_iid = ?",
        (project_id, kind, iid),
    )
    if kind == "merge_request":
        await conn.execute("DELETE FROM mr_files WHERE project_id = ? AND mr_iid = ?", (project_id, iid))
    else:
        await conn.execute("DELETE FROM work_item_statuses WHERE project_id = ? AND iid = ?", (project_id, iid))
    # Documents too, not only at the next documents stage: a `fast` run must not leave search hits.
    # Written as two lookups on the (kind, project_id, iid, note_id) index, not one scan.
    await conn.execute(
        "DELETE FROM documents WHERE kind IN (?, 'note') AND project_id = ? AND iid = ? AND parent_kind = ?",
        (kind, project_id, iid, kind),
    )
    await conn.execute(
        "DELETE FROM discussion_rechecks WHERE project_id = ? AND kind = ? AND iid = ?", (project_id, kind, iid)
    )
    return cur.rowcount > 0


# -- throttled touch: discussions fetched again once GitLab's touch window has closed ------------------


async def record_discussions_fetch(
    conn: aiosqlite.Connection, ref: ItemRef, item_updated_at: str, fetched_at: float, touch_interval: float
) -> None:
    """Remember a discussions fetch that GitLab's throttled touch could have hidden a later note from.

    A note moves the item's updated_at only when the last move is more than `touch_interval` old, so a
    fetch sent no later than `updated_at + touch_interval` may miss a note that never shows in a listing:
    such an item is kept for `due_rechecks`. A later fetch sees everything a listing would not.
    """
    key = (ref.project_id, ref.kind, ref.iid)
    if fetched_at <= parse_time(item_updated_at) + touch_interval:
        await conn.execute(
            "INSERT OR REPLACE INTO discussion_rechecks (project_id, kind, iid, item_updated_at, fetched_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (*key, normalize_time(item_updated_at), fetched_at),
        )
    else:
        await conn.execute("DELETE FROM discussion_rechecks WHERE project_id = ? AND kind = ? AND iid = ?", key)


async def due_rechecks(
    conn: aiosqlite.Connection, project_ids: Sequence[int], now: float, touch_interval: float
) -> list[ItemRef]:
    """Items whose touch window has closed since their discussions were last fetched inside it."""
    if not project_ids:
        return []
    marks = ",".join("?" * len(project_ids))
    rows = await conn.execute_fetchall(
        f"SELECT project_id, kind, iid, item_updated_at FROM discussion_rechecks WHERE project_id IN ({marks})"
        " ORDER BY project_id, kind, iid",
        tuple(project_ids),
    )
    return [ItemRef(r[0], r[1], r[2]) for r in rows if now > parse_time(r[3]) + touch_interval]


# -- reconcile: what GitLab no longer lists ----------------------------------------------------------


async def stored_iids(conn: aiosqlite.Connection, project_id: int, kind: Kind) -> set[int]:
    rows = await conn.execute_fetchall(f"SELECT iid FROM {TABLES[kind]} WHERE project_id = ?", (project_id,))
    return {r[0] for r in rows}


async def has_items(conn: aiosqlite.Connection, project_id: int) -> bool:
    """Whether the mirror holds any issue or MR of the project."""
    rows = await conn.execute_fetchall(
        "SELECT EXISTS (SELECT 1 FROM issues WHERE project_id = ?)"
        " OR EXISTS (SELECT 1 FROM merge_requests WHERE project_id = ?)",
        (project_id, project_id),
    )
    return bool(rows[0][0])


async def mark_reconciled(conn: aiosqlite.Connection, project_id: int, now: float) -> None:
    await conn.execute(
        "INSERT INTO reconciles (project_id, reconciled_at) VALUES (?, ?)"
        " ON CONFLICT (project_id) DO UPDATE SET reconciled_at = excluded.reconciled_at",
        (project_id, now),
    )


async def reconcile_due_since(db: Database, projects: Sequence[str]) -> float | None:
    """Since when a reconcile may be due for these configured projects (paths or ids).

    The oldest reconcile among those the mirror holds, 0.0 if one of them never had one, and None when
    the mirror holds none of them (no item that GitLab could have deleted, so nothing to reconcile).
    """
    if not projects:
        return None
    marks = ",".join("?" * len(projects))
    rows = await db.fetchall(
        f"SELECT count(*), min(coalesce(r.reconciled_at, 0.0)) FROM projects p"
        f" LEFT JOIN reconciles r ON r.project_id = p.id"
        f" WHERE CAST(p.id AS TEXT) IN ({marks}) OR lower(p.path_with_namespace) IN ({marks})",
        (*projects, *(p.lower() for p in projects)),
    )
    found, oldest = rows[0]
    return float(oldest) if found else None


async def get_cursor(conn: aiosqlite.Connection, project_id: int, resource: str) -> str | None:
    rows = await conn.execute_fetchall(
        "SELECT updated_after FROM sync_cursors WHERE project_id = ? AND resource = ?", (project_id, resource)
    )
    return rows[0][0] if rows else None


async def set_cursor(conn: aiosqlite.Connection, project_id: int, resource: str, updated_after: str) -> None:
    await conn.execute(
        "INSERT INTO sync_cursors (project_id, resource, updated_after) VALUES (?, ?, ?)"
        " ON CONFLICT (project_id, resource) DO UPDATE SET updated_after = excluded.updated_after",
        (project_id, resource, updated_after),
    )


async def bump_versions(conn: aiosqlite.Connection, project_id: int, resources: Iterable[str]) -> None:
    """Advance the data version of each resource; ETags derive from these."""
    await conn.executemany(
        "INSERT INTO data_versions (project_id, resource, version) VALUES (?, ?, 1)"
        " ON CONFLICT (project_id, resource) DO UPDATE SET version = version + 1",
        [(project_id, r) for r in set(resources)],
    )
