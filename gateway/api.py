"""The read endpoints of `/api/v1`: projects, issues, merge requests and their discussions.

Handlers only validate what the client sent and name what the answer depends on; `sync.read.queries` reads
and shapes the rows, and `gateway.cache` decides between a 304, a cached body and a fresh render. So a
parameter is checked (and a bad one refused with a 400 naming it) before any ETag is computed, and a
path id that is not a positive integer is a 404, like any other id that names nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web

from gateway import api_limits, openapi
from gateway.auth import requires
from gateway.cache import cache_ctx, conditional_json
from gateway.http import ApiError, bad_parameter
from gateway.keys import DB, SIGNING_KEYS
from sync import (
    MAX_ID,
    TABLES,
    CursorCodec,
    InvalidCursor,
    InvalidFilter,
    ItemFilters,
    ItemKey,
    Kind,
    ThreadKey,
    VersionKey,
    parse_author,
    parse_labels,
    parse_rfc3339,
    parse_state,
    parse_status,
    project_key_from_json,
    queries,
)

PREFIX = "/api/v1"
DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100

MAX_SHAPES = 512  # validated paths + queries remembered per app (cleared when full)
MAX_SHAPE_PATH = 200  # longer paths + queries are checked every time: the memo stays well under 1 MB

CURSORS = web.AppKey("cursors", CursorCodec)
SHAPES = web.AppKey("api_shapes", dict)
K = TypeVar("K")


# -- parameters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paging:
    per_page: int
    cursor: str | None

    def canonical(self) -> str:
        return f"per_page={self.per_page}&cursor={self.cursor or ''}"


def _paging(query: Mapping[str, str]) -> Paging:
    text = query.get("per_page")
    per_page = DEFAULT_PER_PAGE
    if text is not None:
        if not (text.isascii() and text.isdigit() and len(text) <= 3 and 1 <= int(text) <= MAX_PER_PAGE):
            raise bad_parameter("per_page", f"must be an integer from 1 to {MAX_PER_PAGE}")
        per_page = int(text)
    cursor = query.get("cursor")
    if cursor is not None and not cursor:
        raise bad_parameter("cursor", "must not be empty (leave it out to start at the beginning)")
    return Paging(per_page, cursor)


def _filters(kind: Kind, query: Mapping[str, str]) -> ItemFilters:
    try:
        state = parse_state(kind, query["state"]) if "state" in query else "all"
        labels = parse_labels(query["labels"]) if "labels" in query else ()
        author = parse_author(query["author"]) if "author" in query else None
        after = query.get("updated_after")
        updated_after = parse_rfc3339("updated_after", after) if after is not None else None
        status = parse_status(query["status"]) if kind == "issue" and "status" in query else None
    except InvalidFilter as err:
        raise bad_parameter(err.parameter, err.message) from None
    return ItemFilters(state, labels, author, updated_after, status)


def _path_id(request: web.Request, name: str, what: str) -> int:
    """A positive integer from the path; anything else names nothing here: 404."""
    text = request.match_info[name]
    if text.isascii() and text.isdigit() and len(text) <= 19 and 1 <= int(text) <= MAX_ID:
        return int(text)
    raise ApiError(404, "not_found", f"no {what} {text!r}: ids are positive integers")


def _after(request: web.Request, paging: Paging, fingerprint: str, build: Callable[[list[Any]], K]) -> K | None:
    """The typed key the page continues after (None on the first page); 400 for a cursor that is not
    ours, not for this list and filters, or not well formed."""
    if paging.cursor is None:
        return None
    try:
        return build(request.app[CURSORS].decode(paging.cursor, fingerprint))
    except InvalidCursor as err:
        raise bad_parameter("cursor", str(err)) from None


def _remembered(request: web.Request, parse: Callable[[], K]) -> K:
    """What `parse` made of this very path and query last time. The checks, canonical forms and decoded
    cursor are pure functions of them (the cursor keys are fixed for the app's life), and redoing them
    was a fifth of a cached request. A refusal is not remembered: it raises every time. Only short ones
    are kept, so the memo's memory stays small next to the response cache's bound (which it is not in)."""
    raw = request.raw_path
    if len(raw) > MAX_SHAPE_PATH:
        return parse()
    shapes = request.app[SHAPES]
    shape = shapes.get(raw)
    if shape is None:
        shape = parse()
        if len(shapes) >= MAX_SHAPES:
            shapes.clear()
        shapes[raw] = shape
    return shape


def _not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


def _list_body(request: web.Request, page: queries.Page | queries.RawPage, fingerprint: str) -> bytes:
    cursor = None if page.next_key is None else request.app[CURSORS].encode(page.next_key, fingerprint)
    if isinstance(page, queries.RawPage):  # items are stored JSON fragments: join, do not re-serialize
        return b'{"items":[' + b",".join(page.items) + b'],"next_cursor":' + orjson.dumps(cursor) + b"}"
    return orjson.dumps({"items": page.items, "next_cursor": cursor})


# -- projects ---------------------------------------------------------------------------------------


@requires("read")
async def list_projects(request: web.Request) -> web.Response:
    paging = _paging(request.query)
    path = "/projects"
    after = _after(request, paging, path, project_key_from_json)
    db = request.app[DB]

    async def render() -> bytes:
        return _list_body(request, await queries.list_projects(db, after, paging.per_page), path)

    return await conditional_json(request, path=path, query=paging.canonical(),
                                  depends_on=[(0, "projects")], render=render)


@requires("read")
async def get_project(request: web.Request) -> web.Response:
    project_id = _path_id(request, "id", "project")
    db = request.app[DB]

    async def render() -> bytes:
        project = await queries.get_project(db, project_id)
        if project is None:
            raise _not_found("project")
        return orjson.dumps(project)

    return await conditional_json(request, path=f"/projects/{project_id}", query="",
                                  depends_on=[(project_id, "project")], render=render)


# -- issues and merge requests ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ItemList:
    """A list request's parameters, validated and in canonical form."""

    project_id: int
    filters: ItemFilters
    paging: Paging
    path: str
    fingerprint: str
    after: ItemKey | None
    query: str
    depends_on: tuple[VersionKey, ...]


def _item_list(request: web.Request, kind: Kind) -> _ItemList:
    project_id = _path_id(request, "id", "project")
    filters = _filters(kind, request.query)
    paging = _paging(request.query)
    path = f"/projects/{project_id}/{TABLES[kind]}"
    fingerprint = f"{path}?{filters.canonical()}"
    after = _after(request, paging, fingerprint, ItemKey.from_json)
    return _ItemList(project_id, filters, paging, path, fingerprint, after,
                     f"{paging.canonical()}&{filters.canonical()}", ((project_id, TABLES[kind]),))


async def _list_items(request: web.Request, kind: Kind) -> web.Response:
    shape = _remembered(request, lambda: _item_list(request, kind))
    project_id, filters, paging, fingerprint, after = (shape.project_id, shape.filters, shape.paging,
                                                        shape.fingerprint, shape.after)
    db = request.app[DB]

    async def render() -> bytes:
        page = await queries.list_items(db, kind, project_id, filters, after, paging.per_page)
        if not page.items and not await queries.project_exists(db, project_id):
            raise _not_found("project")
        return _list_body(request, page, fingerprint)

    return await conditional_json(request, path=shape.path, query=shape.query, depends_on=shape.depends_on,
                                  render=render)


async def _get_item(request: web.Request, kind: Kind) -> web.Response:
    project_id = _path_id(request, "id", "project")
    iid = _path_id(request, "iid", kind.replace("_", " "))
    db = request.app[DB]

    async def render() -> bytes:
        item = await queries.get_item(db, kind, project_id, iid)
        if item is None:
            raise _not_found(kind.replace("_", " "))
        return item

    return await conditional_json(request, path=f"/projects/{project_id}/{TABLES[kind]}/{iid}",
                                  query="", depends_on=[(project_id, TABLES[kind])], render=render)


async def _discussions(request: web.Request, kind: Kind) -> web.Response:
    """Threads are paginated like any list (per_page counts threads, GitLab's default of 20)."""
    project_id = _path_id(request, "id", "project")
    iid = _path_id(request, "iid", kind.replace("_", " "))
    paging = _paging(request.query)
    path = f"/projects/{project_id}/{TABLES[kind]}/{iid}/discussions"
    after = _after(request, paging, path, ThreadKey.from_json)
    db = request.app[DB]

    async def render() -> bytes:
        page = await queries.list_discussions(db, kind, project_id, iid, after, paging.per_page)
        if not page.items and not await queries.item_exists(db, kind, project_id, iid):
            raise _not_found(kind.replace("_", " "))
        return _list_body(request, page, path)

    # The item's existence is part of the answer too (a 404 once it is gone).
    depends_on = [(project_id, TABLES[kind]), (project_id, "discussions")]
    return await conditional_json(request, path=path, query=paging.canonical(),
                                  depends_on=depends_on, render=render)


@requires("read")
async def list_issues(request: web.Request) -> web.Response:
    return await _list_items(request, "issue")


@requires("read")
async def get_issue(request: web.Request) -> web.Response:
    return await _get_item(request, "issue")


@requires("read")
async def issue_discussions(request: web.Request) -> web.Response:
    return await _discussions(request, "issue")


@requires("read")
async def list_merge_requests(request: web.Request) -> web.Response:
    return await _list_items(request, "merge_request")


@requires("read")
async def get_merge_request(request: web.Request) -> web.Response:
    return await _get_item(request, "merge_request")


@requires("read")
async def merge_request_discussions(request: web.Request) -> web.Response:
    return await _discussions(request, "merge_request")


# -- wiring -----------------------------------------------------------------------------------------


async def _cursors_ctx(app: web.Application) -> AsyncIterator[None]:
    # The gateway's signing keys, read by auth.setup's context (so auth.setup comes first): cursors
    # survive restarts and work across the processes of `serve --workers N`.
    app[CURSORS] = CursorCodec(app[SIGNING_KEYS])
    app[SHAPES] = {}
    yield


ROUTES: tuple[tuple[str, Callable[[web.Request], Any]], ...] = (
    ("/projects", list_projects),
    ("/projects/{id}", get_project),
    ("/projects/{id}/issues", list_issues),
    ("/projects/{id}/issues/{iid}", get_issue),
    ("/projects/{id}/issues/{iid}/discussions", issue_discussions),
    ("/projects/{id}/merge_requests", list_merge_requests),
    ("/projects/{id}/merge_requests/{iid}", get_merge_request),
    ("/projects/{id}/merge_requests/{iid}/discussions", merge_request_discussions),
)


def setup(app: web.Application) -> None:
    """The read API with its cache, its rate limits and its OpenAPI document. Call after the database
    and the token store are set up (create_app's own contexts and `auth.setup`)."""
    app.cleanup_ctx.append(cache_ctx)
    app.cleanup_ctx.append(_cursors_ctx)
    for path, handler in ROUTES:
        app.router.add_get(PREFIX + path, handler)
    api_limits.setup(app)
    openapi.setup(app)
