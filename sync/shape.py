"""The documented JSON of mirrored objects (docs/api.md): an issue's or MR's fields, a note, a project,
from GitLab's stored JSON, every timestamp in our one RFC 3339 UTC form.

A module of its own, beside sync/types.py and not under read/ or ingest/, because both sides use it: the
write side (sync/ingest/mirror.py) renders an item's JSON once when it stores the row, and the read side
(sync/read/queries.py) renders notes, projects and rows stored before fragments were. Neither side
imports the other to get it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from sync.clock import normalize_time, utc_iso
from sync.types import Kind

JSONObject = dict[str, Any]
_NORMAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


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

    sync.ingest.mirror stores it when it writes the row; reads splice in the status
    (sync.read.queries `_served`).
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
