"""The read model's SQL: every list and lookup the REST API and the MCP tools run against the mirror.

Lists are keyset-paginated on a unique sort key (never OFFSET), so a sync that moves an item during a walk
cannot make the walk repeat or skip any other item; the keys and their signed cursors are
sync/read/cursors.py's, the filters sync/read/filters.py's, the JSON of what is read sync/shape.py's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sync.read.cursors import ItemKey, ThreadKey
from sync.read.filters import ItemFilters
from sync.shape import JSONObject, item_fragment, note_json, project_json
from sync.store.db import Database
from sync.types import TABLES, Kind


def work_item_status_filter_sql(value: str, column: str = "issues.work_item_status") -> tuple[str, list[str]]:
    """A WHERE condition and its parameters for `?status=VALUE` on issues.

    VALUE matches a status name or category case-insensitively ("in progress", "DONE", "to_do");
    `none` matches issues without a status. `column` names the column in the caller's query.
    """
    if value.strip().lower() == "none":
        return f"{column} IS NULL", []
    wanted = value.strip().lower()
    condition = (
        f"(lower(json_extract({column}, '$.name')) = ? OR lower(json_extract({column}, '$.category')) = ?)"
    )
    return condition, [wanted, wanted]


# -- pages ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of a list: its items, and the key of its last item when more may follow."""

    items: list[JSONObject]
    next_key: list[Any] | None


@dataclass(frozen=True)
class RawPage:
    """A page whose items are already JSON bytes (issues and MRs, served from their stored fragments)."""

    items: list[bytes]
    next_key: list[Any] | None


async def list_projects(db: Database, after: int | None, limit: int) -> Page:
    rows = await db.fetchall(
        "SELECT raw, synced_at FROM projects WHERE id > ? ORDER BY id LIMIT ?", (after or 0, limit + 1)
    )
    items = [project_json(r[0], r[1]) for r in rows[:limit]]
    return Page(items, [items[-1]["id"]] if len(rows) > limit else None)


async def get_project(db: Database, project_id: int) -> JSONObject | None:
    row = await db.fetchone("SELECT raw, synced_at FROM projects WHERE id = ?", (project_id,))
    return None if row is None else project_json(row[0], row[1])


async def project_exists(db: Database, project_id: int) -> bool:
    return await db.fetchone("SELECT 1 FROM projects WHERE id = ?", (project_id,)) is not None


async def list_items(
    db: Database, kind: Kind, project_id: int, filters: ItemFilters, after: ItemKey | None, limit: int
) -> RawPage:
    """Issues or MRs of a project, newest update first, as their stored API JSON."""
    where, params = _item_conditions(project_id, filters, after)
    rows = await db.fetchall(
        f"SELECT {_SERVED_COLUMNS[kind]} FROM {TABLES[kind]} WHERE {where}"
        " ORDER BY updated_at DESC, iid DESC LIMIT ?",
        (*params, limit + 1),
    )
    items = [_served(kind, r) for r in rows[:limit]]
    if len(rows) <= limit:
        return RawPage(items, None)
    iid, updated_at = rows[limit - 1][:2]
    return RawPage(items, ItemKey(updated_at, iid).to_json())


def _item_conditions(project_id: int, filters: ItemFilters, after: ItemKey | None) -> tuple[str, list[Any]]:
    conditions, params = ["project_id = ?"], [project_id]
    if filters.state != "all":
        conditions.append("state = ?")
        params.append(filters.state)
    if filters.author is not None:
        conditions.append("author_username = ?")
        params.append(filters.author)
    if filters.updated_after is not None:
        conditions.append("updated_at >= ?")
        params.append(filters.updated_after)
    for label in filters.labels:
        conditions.append("EXISTS (SELECT 1 FROM json_each(labels) WHERE value = ?)")
        params.append(label)
    if filters.status is not None:
        condition, values = work_item_status_filter_sql(filters.status, column="work_item_status")
        conditions.append(condition)
        params.extend(values)
    if after is not None:
        conditions.append("(updated_at, iid) < (?, ?)")
        params.extend((after.updated_at, after.iid))
    return " AND ".join(conditions), params


async def get_item(db: Database, kind: Kind, project_id: int, iid: int) -> bytes | None:
    """One issue or MR as API JSON bytes, or None."""
    row = await db.fetchone(
        f"SELECT {_SERVED_COLUMNS[kind]} FROM {TABLES[kind]} WHERE project_id = ? AND iid = ?", (project_id, iid)
    )
    return None if row is None else _served(kind, row)


# What serving an item reads: its stored API fragment, and `raw` (GitLab's JSON, ~2 KB a row) only for a
# row written before fragments were stored. An issue's status (JSON text kept by sync.ingest.workitems) is
# spliced in here rather than stored in the fragment, because statuses change apart from the item.
_SERVED_COLUMNS = {
    "issue": "iid, updated_at, api, CASE WHEN api IS NULL THEN raw END, created_at,"
    " CAST(work_item_status AS BLOB)",
    "merge_request": "iid, updated_at, api, CASE WHEN api IS NULL THEN raw END, created_at, NULL",
}


def _served(kind: Kind, row: Any) -> bytes:
    """The row's API JSON: as stored, or rendered from `raw` for a row older than stored fragments."""
    _, updated_at, body, raw, created_at, status = row
    if body is None:
        body = item_fragment(kind, orjson.loads(raw), created_at, updated_at)
    if kind != "issue":
        return body
    return body[:-1] + b',"work_item_status":' + (status or b"null") + b"}"


async def item_exists(db: Database, kind: Kind, project_id: int, iid: int) -> bool:
    row = await db.fetchone(f"SELECT 1 FROM {TABLES[kind]} WHERE project_id = ? AND iid = ?", (project_id, iid))
    return row is not None


async def list_discussions(
    db: Database, kind: Kind, project_id: int, iid: int, after: ThreadKey | None, limit: int
) -> Page:
    """An item's threads in GitLab's order, each with its notes in order; `limit` counts threads."""
    parent = (project_id, kind, iid)
    anchor = (-1, "") if after is None else (after.seq, after.discussion_id)
    rows = await db.fetchall(
        "WITH page AS ("
        "  SELECT DISTINCT discussion_seq FROM notes"
        "  WHERE project_id = ? AND noteable_kind = ? AND noteable_iid = ? AND discussion_seq > coalesce("
        "    (SELECT discussion_seq FROM notes WHERE project_id = ? AND noteable_kind = ? AND noteable_iid = ?"
        "     AND discussion_id = ? LIMIT 1), ?)"
        "  ORDER BY discussion_seq LIMIT ?)"
        " SELECT discussion_id, individual_note, discussion_seq, created_at, updated_at, system, raw FROM notes"
        " WHERE project_id = ? AND noteable_kind = ? AND noteable_iid = ?"
        " AND discussion_seq IN (SELECT discussion_seq FROM page)"
        " ORDER BY discussion_seq, note_seq",
        (*parent, *parent, anchor[1], anchor[0], limit + 1, *parent),
    )
    threads = _threads(rows)
    if len(threads) <= limit:
        return Page([t for t, _ in threads], None)
    last_thread, last_seq = threads[limit - 1]
    return Page([t for t, _ in threads[:limit]], ThreadKey(last_seq, last_thread["id"]).to_json())


def _threads(rows: Sequence[Any]) -> list[tuple[JSONObject, int]]:
    threads: list[tuple[JSONObject, int]] = []
    for discussion_id, individual, seq, created_at, updated_at, system, raw in rows:
        if not threads or threads[-1][1] != seq:
            threads.append(({"id": discussion_id, "individual_note": bool(individual), "notes": []}, seq))
        threads[-1][0]["notes"].append(note_json(raw, created_at, updated_at, system))
    return threads
