"""The MCP tools over the mirror: their schemas, their arguments, and results that fit a token budget.

One module because each tool's schema, its argument parsing and its budgeted result sit side by side, and
every tool shares the one truncation rule.

Each tool calls the same engine functions as the REST handlers (sync.read.queries, sync.read.search, sync.read.experts,
the status document) and shapes the answer for a model: compact JSON text, never above
`mcp.max_result_tokens` (counted as 4 bytes of UTF-8 JSON a token, which never undercounts characters).
A result that had to be cut says so in `truncated` and carries the `next_cursor` (or `next_offset`) that
continues exactly where it stopped, so nothing is ever dropped silently.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from sync import KINDS as SEARCH_KINDS
from sync import (
    MAX_ID,
    MAX_TEXT,
    RANK_WINDOW,
    STATES,
    TABLES,
    Clock,
    Config,
    CursorCodec,
    Database,
    InvalidCursor,
    InvalidFilter,
    ItemFilters,
    ItemKey,
    Kind,
    SearchQueryError,
    ThreadKey,
    changes,
    find_experts,
    parse_author,
    parse_labels,
    parse_rfc3339,
    parse_state,
    parse_status,
    project_key_from_json,
    queries,
    resolve_project,
    search,
)

CHARS_PER_TOKEN = 4
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_QUERY_CHARS = 1_000
MAX_OFFSET = 1_000_000
DESCRIPTION_PREVIEW = 400  # characters of a description shown in a list; the get_* tools give it whole
THREAD_BATCH = 20  # threads read per query while filling a get_* page
RESERVE = 900  # bytes kept free for next_cursor (at most 512), `truncated` and the closing brackets

JSON = dict[str, Any]


class ToolArgumentError(ValueError):
    """An argument the tool cannot take: `parameter` names it, the message says what would do."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class ToolFailure(Exception):
    """Well-formed arguments the mirror cannot answer: `code` is REST's (not_found, cursor_expired)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _not_found(message: str) -> ToolFailure:
    return ToolFailure("not_found", message)


@dataclass(frozen=True)
class Mirror:
    """What the tools read: the gateway's database, clock, configuration, cursor codec and status."""

    db: Database
    clock: Clock
    config: Config
    cursors: CursorCodec
    status: Callable[[], Awaitable[dict[str, Any]]]

    @property
    def budget(self) -> int:
        """The most bytes a result's text may have."""
        return self.config.mcp.max_result_tokens * CHARS_PER_TOKEN


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: JSON
    run: Callable[[Mirror, Mapping[str, Any]], Awaitable[JSON]]


# -- arguments --------------------------------------------------------------------------------------


def _optional_text(args: Mapping[str, Any], name: str, max_chars: int = MAX_TEXT) -> str | None:
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ToolArgumentError(name, "must be a non-empty string")
    if len(value) > max_chars:
        raise ToolArgumentError(name, f"must be at most {max_chars} characters")
    return value.strip()


def _text(args: Mapping[str, Any], name: str, max_chars: int = MAX_TEXT) -> str:
    value = _optional_text(args, name, max_chars)
    if value is None:
        raise ToolArgumentError(name, "is required")
    return value


def _integer(args: Mapping[str, Any], name: str, default: int | None, low: int, high: int) -> int:
    value = args.get(name, default)
    if value is None:
        raise ToolArgumentError(name, "is required")
    if type(value) is not int or not low <= value <= high:
        raise ToolArgumentError(name, f"must be an integer from {low} to {high}")
    return value


def _choice(args: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    value = args.get(name)
    if value is not None and value not in choices:
        raise ToolArgumentError(name, f"must be one of {', '.join(choices)}")
    return value


def _labels(args: Mapping[str, Any]) -> tuple[str, ...]:
    value = args.get("labels")
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise ToolArgumentError("labels", "must be a list of label names or a comma-separated string")
    return parse_labels(value)


def _filters(kind: Kind, args: Mapping[str, Any]) -> ItemFilters:
    try:
        state = parse_state(kind, _choice(args, "state", STATES[kind]) or "all")
        author = args.get("author")
        updated_after = args.get("updated_after")
        status = args.get("status") if kind == "issue" else None
        for name, value in (("author", author), ("updated_after", updated_after), ("status", status)):
            if value is not None and not isinstance(value, str):
                raise ToolArgumentError(name, "must be a string")
        return ItemFilters(
            state,
            _labels(args),
            parse_author(author) if author is not None else None,
            parse_rfc3339("updated_after", updated_after) if updated_after is not None else None,
            parse_status(status) if status is not None else None,
        )
    except InvalidFilter as err:
        raise ToolArgumentError(err.parameter, err.message) from None


async def _project(mirror: Mirror, args: Mapping[str, Any]) -> int:
    """A mirrored project's id, from its numeric id or its path ("group/project")."""
    value = args.get("project")
    if value is None:
        raise ToolArgumentError("project", "is required: a project id or path such as group/project")
    if type(value) is int and 1 <= value <= MAX_ID:
        ref = str(value)
    elif isinstance(value, str) and value.strip() and len(value) <= MAX_TEXT:
        ref = value
    else:
        raise ToolArgumentError("project", "must be a project id (a positive integer) or a path such as group/project")
    project_id = await resolve_project(mirror.db, ref)
    if project_id is None:
        raise _not_found(f"project {value!r} is not in the mirror (list_projects shows the mirrored ones)")
    return project_id


def _cursor(mirror: Mirror, args: Mapping[str, Any], fingerprint: str) -> list[Any] | None:
    text = args.get("cursor")
    if text is None:
        return None
    if not isinstance(text, str) or not text:
        raise ToolArgumentError("cursor", "must be the next_cursor string of an earlier result")
    try:
        return mirror.cursors.decode(text, fingerprint)
    except InvalidCursor as err:
        raise ToolArgumentError("cursor", f"{err}; pass next_cursor from the previous call unchanged") from None


# -- budgets ----------------------------------------------------------------------------------------


def size(value: Any) -> int:
    """Bytes of `value` as compact JSON, the unit results are budgeted in."""
    return len(orjson.dumps(value))


def _fit_text(text: str, start: int, room: int) -> int:
    """The end of the longest slice text[start:end] whose JSON string takes at most `room` bytes."""
    end = min(len(text), start + max(room - 2, 0))
    while end > start and size(text[start:end]) > room:
        over = size(text[start:end]) - room
        end = max(start, end - max(over // 6, 1))  # escapes take at most 6 bytes a character
    return end


def _fit_items(items: list[Any], room: int) -> int:
    """How many of `items`, in order, fit into `room` bytes of a JSON list."""
    used, count = 2, 0
    for item in items:
        used += size(item) + 1
        if used > room:
            break
        count += 1
    return count


def _cut_note(kind: str, shown: int, total: int, how: str) -> str:
    return f"cut to stay under the result budget: {shown} of {total} {kind} shown; {how}"


def _preview(item: JSON) -> JSON:
    """A list entry: the item with its description shortened to a preview, saying so."""
    description = item.get("description")
    if isinstance(description, str) and len(description) > DESCRIPTION_PREVIEW:
        item = {**item, "description": description[:DESCRIPTION_PREVIEW],
                "description_truncated": f"first {DESCRIPTION_PREVIEW} of {len(description)} characters;"
                                         " the get_ tool for this item returns all of it"}
    return item


# -- tools: search, lists, experts, status ----------------------------------------------------------


async def search_tool(mirror: Mirror, args: Mapping[str, Any]) -> JSON:
    text = _text(args, "query", MAX_QUERY_CHARS)
    kind = _choice(args, "type", SEARCH_KINDS)
    project_id = await _project(mirror, args) if args.get("project") is not None else None
    limit = _integer(args, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _integer(args, "offset", 0, 0, MAX_OFFSET)
    try:
        page = await search(mirror.db, text, kind=kind, project_id=project_id, limit=limit, offset=offset)
    except SearchQueryError as err:
        raise ToolArgumentError("query", str(err)) from None
    hits = [hit.to_json() for hit in page.items]
    shown = _fit_items(hits, mirror.budget - RESERVE)
    result: JSON = {"items": hits[:shown], "next_offset": page.next_offset}
    if shown < len(hits):
        result["next_offset"] = offset + shown
        result["truncated"] = _cut_note("hits", shown, len(hits), f"call again with offset={offset + shown}")
    elif page.next_offset is None and offset + len(hits) >= RANK_WINDOW:
        # sync.read.search ranks a broad query among its RANK_WINDOW newest matches only, and ends there.
        result["truncated"] = (f"the last hit: search ranks at most the {RANK_WINDOW:,} most recently indexed "
                               "matches, and this query may match more; narrow it (type, project, more words) "
                               "to reach older ones")
    return result


async def _list(mirror: Mirror, fingerprint: str, page: queries.Page | queries.RawPage,
                key_of: Callable[[JSON], list[Any]], what: str) -> JSON:
    items = [_preview(orjson.loads(i) if isinstance(i, bytes) else i) for i in page.items]
    shown = _fit_items(items, mirror.budget - RESERVE)
    if items and not shown:
        raise ToolFailure("result_too_large", f"one of the {what} alone exceeds mcp.max_result_tokens; "
                                              "raise it, or read the item with its get_ tool")
    next_key = page.next_key if shown == len(items) else key_of(items[shown - 1]) if shown else None
    result: JSON = {"items": items[:shown],
                    "next_cursor": None if next_key is None else mirror.cursors.encode(next_key, fingerprint)}
    if shown < len(items):
        result["truncated"] = _cut_note(what, shown, len(items), "call again with cursor=next_cursor")
    return result


async def list_projects_tool(mirror: Mirror, args: Mapping[str, Any]) -> JSON:
    fingerprint = "/projects"  # the REST list's: a cursor from either continues the other
    key = _cursor(mirror, args, fingerprint)
    after = _decoded(project_key_from_json, key)
    limit = _integer(args, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    page = await queries.list_projects(mirror.db, after, limit)
    return await _list(mirror, fingerprint, page, lambda p: [p["id"]], "projects")


def _decoded(build: Callable[[list[Any]], Any], key: list[Any] | None) -> Any:
    if key is None:
        return None
    try:
        return build(key)
    except InvalidCursor as err:
        raise ToolArgumentError("cursor", str(err)) from None


async def _list_items(mirror: Mirror, kind: Kind, args: Mapping[str, Any]) -> JSON:
    project_id = await _project(mirror, args)
    filters = _filters(kind, args)
    limit = _integer(args, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    fingerprint = f"/projects/{project_id}/{TABLES[kind]}?{filters.canonical()}"
    after = _decoded(ItemKey.from_json, _cursor(mirror, args, fingerprint))
    page = await queries.list_items(mirror.db, kind, project_id, filters, after, limit)
    return await _list(mirror, fingerprint, page, lambda i: [i["updated_at"], i["iid"]], TABLES[kind])


async def list_issues_tool(mirror: Mirror, args: Mapping[str, Any]) -> JSON:
    return await _list_items(mirror, "issue", args)


async def list_merge_requests_tool(mirror: Mirror, args: Mapping[str, Any]) -> JSON:
    return await _list_items(mirror, "merge_request", args)


async def experts_tool(mirror: Mirror, args: Mapping[str, Any]) -> JSON:
    path = _text(args, "path", 4096)
    project_id = await _project(mirror, args)
    limit = _integer(args, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    found = await find_experts(mirror.db, project_id, path, mirror.config.experts, now=mirror.clock.now(),
                               limit=limit)
    result = found.to_json()
    experts = result["items"]
    shown = _fit_items(experts, mirror.budget - RESERVE - size({**result, "items": []}))
    if shown < len(experts):
        result["items"] = experts[:shown]
        result["truncated"] = _cut_note("experts", shown, len(experts),
                                        "the best are first; ask for a narrower path for more detail")
    return result


async def changes_tool(mirror: Mirror, args: Mapping[str, Any]) -> JSON:
    since = args.get("since")
    if since is not None and not isinstance(since, str):
        raise ToolArgumentError("since", "must be the next_cursor string of an earlier result")
    limit = _integer(args, "limit", changes.DEFAULT_LIMIT, 1, changes.MAX_LIMIT)
    try:
        page = await changes.read_changes(mirror.db, since, limit)
    except changes.InvalidChangeCursor as err:
        raise ToolArgumentError("since", str(err)) from None
    except changes.CursorExpired as err:
        raise ToolFailure(err.code, err.message) from None
    items = [change.to_json() for change in page.items]
    shown = _fit_items(items, mirror.budget - RESERVE)
    result: JSON = {"items": items[:shown], "next_cursor": page.next_cursor,
                    "caught_up": len(items) < limit and shown == len(items)}
    if shown < len(items):
        result["next_cursor"] = str(items[shown - 1]["seq"])
        result["truncated"] = _cut_note("changes", shown, len(items), "call again with since=next_cursor")
    return result


async def sync_status_tool(mirror: Mirror, args: Mapping[str, Any]) -> JSON:
    status = await mirror.status()
    runs = status.get("recent_runs") or []
    shown = _fit_items(runs, mirror.budget - RESERVE - size({**status, "recent_runs": []}))
    if shown < len(runs):
        status = {**status, "recent_runs": runs[:shown],
                  "truncated": _cut_note("recent runs", shown, len(runs), "GET /api/v1/sync/runs lists them all")}
    return status


# -- tools: one issue or MR with its discussions ----------------------------------------------------


def condensed_note(note: JSON) -> JSON:
    """A note as an agent needs it: who, when, what, and for a diff note the file and line."""
    author = note.get("author") or {}
    out: JSON = {"id": note.get("id"), "author": author.get("username"), "at": note.get("created_at"),
                 "body": note.get("body") or ""}
    position = note.get("position")
    if isinstance(position, dict):
        out["file"] = position.get("new_path") or position.get("old_path")
        out["line"] = position.get("new_line") or position.get("old_line")
    if note.get("system"):
        out["system"] = True
    if note.get("resolvable"):
        out["resolved"] = bool(note.get("resolved"))
    return out


class _Page:
    """A get_* result being filled: what is in it, how many bytes are left, where it stopped."""

    def __init__(self, budget: int) -> None:
        self.room = budget - RESERVE
        self.document: JSON = {}
        self.threads: list[JSON] = []
        self.next_key: list[Any] | None = None
        self.cut: str | None = None

    def take(self, value: Any) -> bool:
        """Count `value` (plus a separator) against the room; False, taking nothing, if it does not fit."""
        needed = size(value) + 1
        if needed > self.room:
            return False
        self.room -= needed
        return True


async def _get_item(mirror: Mirror, kind: Kind, args: Mapping[str, Any]) -> JSON:
    project_id = await _project(mirror, args)
    iid = _integer(args, "iid", None, 1, MAX_ID)
    fingerprint = f"mcp:get:{kind}:{project_id}:{iid}"
    key = _cursor(mirror, args, fingerprint)
    raw = await queries.get_item(mirror.db, kind, project_id, iid)
    if raw is None:
        raise _not_found(f"no {kind.replace('_', ' ')} {iid} in project {project_id}")
    item = orjson.loads(raw)
    description = item.get("description") or ""
    page = _Page(mirror.budget)
    if key is None:
        page.document["item"] = {**item, "description": ""}
        page.take(page.document["item"])
        offset, start = 0, None
    else:
        offset, start = _get_position(key)
    if key is None or key[0] == "d":
        if not _description(page, description, offset, first=key is None):
            return _finish(mirror, page, fingerprint)
        start = (None, 0, 0)
    await _discussions(mirror, page, kind, project_id, iid, start)
    return _finish(mirror, page, fingerprint)


def _get_position(key: list[Any]) -> tuple[int, tuple[ThreadKey | None, int, int] | None]:
    """A get_* cursor: ["d", offset] (in the description) or ["n", anchor, note index, body offset]."""
    if len(key) == 2 and key[0] == "d" and type(key[1]) is int and key[1] >= 0:
        return key[1], None
    if (len(key) == 4 and key[0] == "n" and isinstance(key[1], list) and type(key[2]) is int and key[2] >= 0
            and type(key[3]) is int and key[3] >= 0):
        anchor = _decoded(ThreadKey.from_json, key[1]) if key[1] else None
        return 0, (anchor, key[2], key[3])
    raise ToolArgumentError("cursor", "malformed; pass next_cursor from the previous call unchanged")


def _description(page: _Page, description: str, offset: int, *, first: bool) -> bool:
    """Put description[offset:] in; False if the page is full before its end (next_key then says where)."""
    end = _fit_text(description, offset, page.room - 120)
    part = description[offset:end]
    page.room -= size(part) + 120
    if first:
        page.document["item"]["description"] = part
    else:
        page.document["description_part"] = {"from": offset, "to": end, "of": len(description), "text": part}
    if end < len(description):
        if first:
            page.document["item"]["description_truncated"] = f"first {end} of {len(description)} characters"
        page.next_key = ["d", end]
        page.cut = (f"cut to stay under the result budget: the description continues at character {end} of "
                    f"{len(description)}, then the discussions; call again with cursor=next_cursor")
        return False
    return True


async def _discussions(mirror: Mirror, page: _Page, kind: Kind, project_id: int, iid: int,
                       start: tuple[ThreadKey | None, int, int]) -> None:
    """Fill the page with condensed notes, thread by thread, from `start` (anchor, note index, body offset)."""
    anchor, note_index, body_offset = start
    while True:
        batch = await queries.list_discussions(mirror.db, kind, project_id, iid, anchor, THREAD_BATCH)
        for position, thread in enumerate(batch.items):
            notes = thread["notes"][note_index:]
            stop = _thread(page, thread["id"], notes, note_index, body_offset)
            if stop is not None:
                thread_anchor = anchor if position == 0 else await _key_before(mirror, kind, project_id, iid,
                                                                               anchor, position)
                index, offset = stop
                page.next_key = ["n", thread_anchor.to_json() if thread_anchor else [], index, offset]
                return
            note_index, body_offset = 0, 0
        if batch.next_key is None:
            return
        anchor = ThreadKey.from_json(batch.next_key)


async def _key_before(mirror: Mirror, kind: Kind, project_id: int, iid: int, anchor: ThreadKey | None,
                      count: int) -> ThreadKey:
    """The key of the `count`-th thread after `anchor`: where a walk resumes to reach the next one."""
    page = await queries.list_discussions(mirror.db, kind, project_id, iid, anchor, count)
    assert page.next_key is not None  # a thread follows: the caller stopped inside it
    return ThreadKey.from_json(page.next_key)


def _thread(page: _Page, thread_id: str, notes: list[JSON], first_index: int,
            body_offset: int) -> tuple[int, int] | None:
    """Add a thread's notes; (note index, body offset) to resume at when the page fills, else None."""
    entry: JSON = {"id": thread_id, "notes": []}
    if not page.take(entry):
        _say_cut(page)
        return first_index, body_offset
    page.threads.append(entry)
    for number, note in enumerate(notes, start=first_index):
        short = condensed_note(note)
        body = short["body"]
        if body_offset:
            short["body"], short["body_from"] = body[body_offset:], body_offset
        if page.take(short):
            entry["notes"].append(short)
            body_offset = 0
            continue
        # A note that does not fit ends the page, unless the page holds nothing else yet: then its body is
        # cut to fit, so every page moves the walk on.
        if _has_content(page):
            if not entry["notes"]:
                page.threads.pop()
            _say_cut(page)
            return number, body_offset
        end = _fit_text(body, body_offset, page.room - size({**short, "body": ""}) - 80)
        short["body"], short["body_from"] = body[body_offset:end], body_offset
        short["body_truncated"] = f"continues at character {end} of {len(body)}"
        page.take(short)
        entry["notes"].append(short)
        _say_cut(page)
        return number, end
    return None


def _has_content(page: _Page) -> bool:
    return "item" in page.document or "description_part" in page.document or any(t["notes"] for t in page.threads)


def _say_cut(page: _Page) -> None:
    page.cut = "cut to stay under the result budget: more discussion follows; call again with cursor=next_cursor"


def _finish(mirror: Mirror, page: _Page, fingerprint: str) -> JSON:
    document = page.document
    if "item" in document or page.threads:
        document["discussions"] = page.threads
    document["next_cursor"] = None if page.next_key is None else mirror.cursors.encode(page.next_key, fingerprint)
    if page.cut:
        document["truncated"] = page.cut
    return document


async def get_issue_tool(mirror: Mirror, args: Mapping[str, Any]) -> JSON:
    return await _get_item(mirror, "issue", args)


async def get_merge_request_tool(mirror: Mirror, args: Mapping[str, Any]) -> JSON:
    return await _get_item(mirror, "merge_request", args)


# -- the tool list ----------------------------------------------------------------------------------

_PROJECT = {"type": ["integer", "string"], "description": "Project id, or path such as group/project."}
_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}
_CURSOR = {"type": "string", "description": "next_cursor from the previous call, to continue."}
_IID = {"type": "integer", "minimum": 1, "description": "The iid shown in GitLab (#12 or !12)."}


def _schema(properties: JSON, required: tuple[str, ...] = ()) -> JSON:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def _list_schema(kind: Kind) -> JSON:
    properties: JSON = {
        "project": _PROJECT,
        "state": {"type": "string", "enum": list(STATES[kind]), "default": "all"},
        "labels": {"type": "array", "items": {"type": "string"}, "description": "All must be on the item."},
        "author": {"type": "string", "description": "Author username."},
        "updated_after": {"type": "string", "format": "date-time"},
        "limit": _LIMIT,
        "cursor": _CURSOR,
    }
    if kind == "issue":
        properties["status"] = {"type": "string", "description": "Work item status name or category, or none."}
    return _schema(properties, ("project",))


_GET_NOTE = ("The item with its discussions condensed (author, time, body; file and line for diff notes), "
             "in thread order. A long result is cut and says so; pass next_cursor to read on.")

TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec("search",
             "Full-text search of issues, merge requests and comments in the local GitLab mirror (FTS5 syntax: "
             "phrases in quotes, AND/OR/NOT, prefix*). Best matches first, with snippets.",
             _schema({"query": {"type": "string"},
                      "type": {"type": "string", "enum": list(SEARCH_KINDS)},
                      "project": _PROJECT,
                      "limit": _LIMIT,
                      "offset": {"type": "integer", "minimum": 0, "description": "next_offset of the last call."}},
                     ("query",)),
             search_tool),
    ToolSpec("list_projects", "The mirrored GitLab projects (ids and paths).",
             _schema({"limit": _LIMIT, "cursor": _CURSOR}), list_projects_tool),
    ToolSpec("list_issues", "A project's issues, most recently updated first, with filters.",
             _list_schema("issue"), list_issues_tool),
    ToolSpec("list_merge_requests", "A project's merge requests, most recently updated first, with filters.",
             _list_schema("merge_request"), list_merge_requests_tool),
    ToolSpec("get_issue", "One issue. " + _GET_NOTE,
             _schema({"project": _PROJECT, "iid": _IID, "cursor": _CURSOR}, ("project", "iid")), get_issue_tool),
    ToolSpec("get_merge_request", "One merge request. " + _GET_NOTE,
             _schema({"project": _PROJECT, "iid": _IID, "cursor": _CURSOR}, ("project", "iid")),
             get_merge_request_tool),
    ToolSpec("experts",
             "Who knows a file or directory: people scored by recent merge requests, reviews and diff comments "
             "on it (older work counts less).",
             _schema({"path": {"type": "string", "description": "A file, or a directory such as src/auth/."},
                      "project": _PROJECT, "limit": _LIMIT}, ("path", "project")),
             experts_tool),
    ToolSpec("changes",
             "What changed in the mirror since a cursor: every issue, MR and note created, updated or deleted, "
             "oldest first, each with its seq. Start without since, keep next_cursor, pass it as since later.",
             _schema({"since": {"type": "string", "description": "next_cursor of the last call."},
                      "limit": {"type": "integer", "minimum": 1, "maximum": changes.MAX_LIMIT,
                                "default": changes.DEFAULT_LIMIT}}),
             changes_tool),
    ToolSpec("sync_status",
             "How fresh the mirror is: scheduler state, last sync, last success, backoff, pending webhooks.",
             _schema({}), sync_status_tool),
)
