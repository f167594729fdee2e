"""`GET /api/v1/changes?since=&limit=`: the change feed (sync.read.changes) over HTTP.

The handler checks the parameters and maps the engine's errors: a malformed cursor is a 400, one the
feed can no longer continue is a 410 `cursor_expired` (list again). The answer carries a strong ETag
of its body, so a poller that is caught up gets a 304 until something changes.
"""

from __future__ import annotations

import hashlib

from aiohttp import web

from gateway.auth import requires
from gateway.cache import matches
from gateway.http import ApiError, bad_parameter, json_body
from gateway.keys import DB
from sync import DEFAULT_LIMIT, MAX_LIMIT, CursorExpired, InvalidChangeCursor, read_changes

PATH = "/api/v1/changes"


@requires("read")
async def get_changes(request: web.Request) -> web.Response:
    since = request.query.get("since")
    limit = _limit(request.query.get("limit"))
    try:
        page = await read_changes(request.app[DB], since, limit)
    except InvalidChangeCursor as err:
        raise bad_parameter("since", str(err)) from None
    except CursorExpired as err:
        raise ApiError(410, err.code, err.message) from None
    body = json_body(page.to_json())
    etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers, content_type="application/json")


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= MAX_LIMIT):
        raise bad_parameter("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def setup(app: web.Application) -> None:
    app.router.add_get(PATH, get_changes)
