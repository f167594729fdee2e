"""The read model: every query the REST API runs, its filters and keyset cursors, and the shape of items.

Lists are keyset-paginated on a unique sort key (never OFFSET), so a sync that moves an item during a walk
cannot make the walk repeat or skip any other item. A cursor is the last key seen plus a fingerprint of
the filters it belongs to, signed so a tampered or foreign cursor is refused instead of silently
restarting or mixing two walks. Items are projected from GitLab's stored JSON (`raw`) to the documented
fields, with every timestamp in our one RFC 3339 UTC form.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from sync.clock import normalize_time, utc_iso
from sync.store.db import Database
from sync.types import MAX_ID, Kind

JSONObject = dict[str, Any]
TABLES: dict[str, str] = {"issue": "issues", "merge_request": "merge_requests"}
STATES: dict[str, tuple[str, ...]] = {
    "issue": ("opened", "closed", "all"),
    "merge_request": ("opened", "closed", "merged", "locked", "all"),
}
MAX_LABELS = 20
MAX_TEXT = 255
_MAX_CURSOR = 512
_NORMAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


class InvalidFilter(ValueError):
    """A filter value the API must refuse; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


# -- filters ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemFilters:
    """What a list of issues or merge requests is narrowed to; `state` "all" means no narrowing."""

    state: str = "all"
    labels: tuple[str, ...] = ()  # sorted and deduplicated: every one must be on the item
    author: str | None = None
    updated_after: str | None = None  # normalized, inclusive
    status: str | None = None  # issues only: a work-item status name or category, lower case, or "none"

    def canonical(self) -> str:
        """One spelling per meaning, for cache keys and cursor fingerprints."""
        return orjson.dumps([self.state, self.labels, self.author, self.updated_after, self.status]).decode()


def parse_state(kind: Kind, value: str) -> str:
    if value not in STATES[kind]:
        raise InvalidFilter("state", f"must be one of {', '.join(STATES[kind])}")
    return value


def parse_status(value: str) -> str:
    """A work-item status name or category (case-insensitive), or `none` for issues without one."""
    wanted = value.strip().lower()
    if not wanted or len(wanted) > MAX_TEXT:
        raise InvalidFilter("status", f"a status name or category of 1 to {MAX_TEXT} characters, or none")
    return wanted


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


def parse_labels(value: str) -> tuple[str, ...]:
    """A comma list; blanks are dropped, so `labels=` means no label filter."""
    labels = sorted({label.strip() for label in value.split(",") if label.strip()})
    if len(labels) > MAX_LABELS:
        raise InvalidFilter("labels", f"at most {MAX_LABELS} labels")
    if any(len(label) > MAX_TEXT for label in labels):
        raise InvalidFilter("labels", f"a label is at most {MAX_TEXT} characters")
    return tuple(labels)


def parse_author(value: str) -> str:
    name = value.strip()
    if not name or len(name) > MAX_TEXT:
        raise InvalidFilter("author", f"a username of 1 to {MAX_TEXT} characters")
    return name


def parse_rfc3339(parameter: str, value: str) -> str:
    """An RFC 3339 date-time (with a `Z` or an offset) in our normalized form; InvalidFilter otherwise."""
    text = value.strip()
    if not _RFC3339.fullmatch(text):
        raise InvalidFilter(parameter, "must be an RFC 3339 date-time, e.g. 2024-05-01T12:00:00Z")
    try:
        moment = datetime.fromisoformat(text.upper().replace(" ", "T").replace("Z", "+00:00"))
        return utc_iso(moment.astimezone(UTC).timestamp()) or ""
    except (ValueError, OverflowError, OSError):
        raise InvalidFilter(parameter, "is not a valid date-time") from None


# -- cursors ----------------------------------------------------------------------------------------


class InvalidCursor(ValueError):
    """A cursor that is malformed, tampered with, or belongs to another list or set of filters."""


class CursorCodec:
    """Opaque cursors: base64url(JSON [key, fingerprint]) "." base64url(HMAC). The first key signs,
    all verify, so rotating the gateway's signing keys keeps the cursors clients hold working."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a CursorCodec needs at least one key")
        self._keys = [hashlib.sha256(b"lore-gateway.cursor|" + k.encode()).digest() for k in keys]

    def encode(self, key: list[Any], fingerprint: str) -> str:
        body = orjson.dumps([key, _short_hash(fingerprint)])
        return f"{_b64(body)}.{_b64(self._mac(self._keys[0], body))}"

    def decode(self, text: str, fingerprint: str) -> list[Any]:
        """The key the cursor continues after; InvalidCursor if it is not one of ours for this list."""
        body = self._verified(text)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidCursor("malformed") from None
        if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], list)):
            raise InvalidCursor("malformed")
        if payload[1] != _short_hash(fingerprint):
            raise InvalidCursor("it belongs to another list or other filters: start again without it")
        return payload[0]

    def _verified(self, text: str) -> bytes:
        body_text, dot, mac_text = text.partition(".")
        if not dot or len(text) > _MAX_CURSOR or not text.isascii():
            raise InvalidCursor("malformed")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            raise InvalidCursor("malformed") from None
        if not any(hmac.compare_digest(mac, self._mac(k, body)) for k in self._keys):
            raise InvalidCursor("not a cursor this gateway issued")
        return body

    @staticmethod
    def _mac(key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()[:16]


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=9).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Typed keys: a signed cursor is ours, but its key is still checked before it reaches SQL.


@dataclass(frozen=True)
class ItemKey:
    """Position in a list of issues or MRs, sorted by (updated_at desc, iid desc)."""

    updated_at: str
    iid: int

    def to_json(self) -> list[Any]:
        return [self.updated_at, self.iid]

    @classmethod
    def from_json(cls, key: list[Any]) -> ItemKey:
        if len(key) == 2 and isinstance(key[0], str) and _is_id(key[1]) and _RFC3339.fullmatch(key[0]):
            return cls(key[0], key[1])
        raise InvalidCursor("malformed")


@dataclass(frozen=True)
class ThreadKey:
    """Position in an item's discussions: the last thread's place in GitLab's order, and its id, so a
    thread removed before it does not shift the walk."""

    seq: int
    discussion_id: str

    def to_json(self) -> list[Any]:
        return [self.seq, self.discussion_id]

    @classmethod
    def from_json(cls, key: list[Any]) -> ThreadKey:
        if len(key) == 2 and _is_id(key[0], low=0) and isinstance(key[1], str) and len(key[1]) <= MAX_TEXT:
            return cls(key[0], key[1])
        raise InvalidCursor("malformed")


def project_key_from_json(key: list[Any]) -> int:
    if len(key) == 1 and _is_id(key[0]):
        return key[0]
    raise InvalidCursor("malformed")


def _is_id(value: Any, *, low: int = 1) -> bool:
    return type(value) is int and low <= value <= MAX_ID


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


# -- shapes: GitLab's JSON as stored -> the documented item -----------------------------------------


def _user(value: Any) -> JSONObject | None:
    if not isinstance(value, dict):
        return None
    return {"id": value.get("id"), "username": value.get("username"), "name": value.get("name")}


def _users(value: Any) -> list[JSONObject]:
    return [u for u in map(_user, value) if u is not None] if isinstance(value, list) else []


def _time(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    if _NORMAL_TIME.fullmatch(value):
        return value  # GitLab's REST form is already ours: skip the parse (most items have one or two)
    try:
        return normalize_time(value)
    except (ValueError, OverflowError):
        return None  # not a time GitLab would send: say nothing rather than something wrong


def _labels(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    if all(type(v) is str for v in value):
        return value
    # Plain names, or label objects when GitLab was asked `with_labels_details`.
    return [v if isinstance(v, str) else str(v.get("name", "")) for v in value if isinstance(v, str | dict)]


def _assignees(raw: JSONObject) -> list[JSONObject]:
    if "assignees" in raw:
        return _users(raw["assignees"])
    return _users([raw["assignee"]]) if raw.get("assignee") else []  # GitLab CE before multiple assignees


def _common(raw: JSONObject, created_at: str, updated_at: str) -> JSONObject:
    return {
        "id": raw.get("id"),
        "iid": raw.get("iid"),
        "project_id": raw.get("project_id"),
        "title": raw.get("title"),
        "description": raw.get("description"),
        "state": raw.get("state"),
        "labels": _labels(raw.get("labels")),
        "author": _user(raw.get("author")),
        "assignees": _assignees(raw),
        "created_at": created_at,
        "updated_at": updated_at,
        "closed_at": _time(raw.get("closed_at")),
        "web_url": raw.get("web_url"),
    }


def item_fragment(kind: Kind, raw: JSONObject, created_at: str, updated_at: str) -> bytes:
    """An issue's or MR's API JSON (GitLab's field names), without an issue's `work_item_status`.

    sync.ingest.mirror stores it when it writes the row; reads splice in the status (see `_served`).
    """
    item = _common(raw, created_at, updated_at)
    if kind == "merge_request":
        item["source_branch"] = raw.get("source_branch")
        item["target_branch"] = raw.get("target_branch")
        item["merged_at"] = _time(raw.get("merged_at"))
        item["reviewers"] = _users(raw.get("reviewers"))
    return orjson.dumps(item)


def note_json(raw_bytes: bytes, created_at: str, updated_at: str, system: int) -> JSONObject:
    raw = orjson.loads(raw_bytes)
    position = raw.get("position")
    return {
        "id": raw.get("id"),
        "body": raw.get("body"),
        "author": _user(raw.get("author")),
        "created_at": created_at,
        "updated_at": updated_at,
        "system": bool(system),
        # GitLab leaves these out of notes that cannot be resolved.
        "resolvable": bool(raw.get("resolvable", False)),
        "resolved": bool(raw.get("resolved", False)),
        "position": position if isinstance(position, dict) else None,
    }


def project_json(raw_bytes: bytes, synced_at: float) -> JSONObject:
    raw = orjson.loads(raw_bytes)
    return {
        "id": raw.get("id"),
        "name": raw.get("name"),
        "path_with_namespace": raw.get("path_with_namespace"),
        "description": raw.get("description"),
        "default_branch": raw.get("default_branch"),
        "visibility": raw.get("visibility"),
        "archived": bool(raw.get("archived", False)),
        "web_url": raw.get("web_url"),
        "created_at": _time(raw.get("created_at")),
        "last_activity_at": _time(raw.get("last_activity_at")),
        "synced_at": utc_iso(synced_at),
    }
