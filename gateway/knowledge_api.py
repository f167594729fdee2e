"""`GET /api/v1/search` and `GET /api/v1/experts`: the knowledge built on the mirror, over HTTP.

Handlers only validate parameters and call the engine (sync.read.search, sync.read.semantic, sync.read.experts).
Search pages by an opaque offset cursor: relevance order has no stable key to page by. Both answer
with a strong ETag of the body (304 on a match): their inputs (the FTS index, the time of day for
decay) have no data version of their own yet.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.auth import requires
from gateway.http import ApiError, bad_parameter, json_body
from gateway.keys import CLOCK, CONFIG, DB
from sync import (
    KINDS,
    MAX_ID,
    EmbeddingClient,
    SearchQueryError,
    SyncError,
    VectorIndex,
    find_experts,
    project_exists,
    search,
)

EMBEDDER = web.AppKey("embedder", EmbeddingClient)
VECTORS = web.AppKey("vectors", VectorIndex)

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 100
MAX_QUERY_CHARS = 1_000
MODES = ("text", "semantic")
MAX_OFFSET = 1_000_000  # no one pages a relevance list this far; it keeps OFFSET sane


# -- handlers ---------------------------------------------------------------------------------------


@requires("read")
async def get_search(request: web.Request) -> web.Response:
    """`GET /api/v1/search?q=&type=&project=&mode=text|semantic&per_page=&cursor=`."""
    query = request.query
    text = _required(query, "q")
    if len(text) > MAX_QUERY_CHARS:
        raise bad_parameter("q", f"must be at most {MAX_QUERY_CHARS} characters")
    kind = _choice(query, "type", KINDS)
    project_id = _positive_int(query, "project")
    per_page = _per_page(query)
    offset = _decode_cursor(query.get("cursor"))
    if (_choice(query, "mode", MODES) or "text") == "semantic":
        items, next_offset = await _semantic(request, text, kind, project_id, per_page, offset)
    else:
        try:
            page = await search(request.app[DB], text, kind=kind, project_id=project_id, limit=per_page,
                                offset=offset)
        except SearchQueryError as exc:
            raise bad_parameter("q", str(exc)) from None
        items, next_offset = page.items, page.next_offset
    document = {
        "items": [hit.to_json() for hit in items],
        "next_cursor": None if next_offset is None else _encode_cursor(next_offset),
    }
    return _tagged_json(request, document)


@requires("read")
async def get_experts(request: web.Request) -> web.Response:
    """`GET /api/v1/experts?path=&project=&limit=`: 404 if the project is not mirrored."""
    path = _required(request.query, "path")
    project_id = _positive_int(request.query, "project")
    if project_id is None:
        raise bad_parameter("project", "required (a GitLab project id)")
    limit = _per_page(request.query, "limit")
    db = request.app[DB]
    if not await project_exists(db, project_id):
        raise ApiError(404, "not_found", f"project {project_id} is not in the mirror")
    config = request.app[CONFIG].experts
    result = await find_experts(db, project_id, path, config, now=request.app[CLOCK].now(), limit=limit)
    return _tagged_json(request, result.to_json())


async def _semantic(
    request: web.Request, text: str, kind: str | None, project_id: int | None, per_page: int, offset: int
) -> tuple[list, int | None]:
    embedder = request.app.get(EMBEDDER)
    if embedder is None:
        raise bad_parameter("mode", "semantic search needs an embedding endpoint ([embeddings] url)")
    try:
        vector = (await embedder.embed([text]))[0]
    except SyncError as exc:
        raise ApiError(503, "embeddings_unavailable", f"the embedding endpoint failed: {exc.message}") from None
    return await request.app[VECTORS].search(
        request.app[DB], vector, kind=kind, project_id=project_id, limit=per_page, offset=offset
    )


# -- parameters -------------------------------------------------------------------------------------


def _required(query: Any, name: str) -> str:
    value = query.get(name, "").strip()
    if not value:
        raise bad_parameter(name, "required, and must not be empty")
    return value


def _choice(query: Any, name: str, choices: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is not None and value not in choices:
        raise bad_parameter(name, f"must be one of {', '.join(choices)}")
    return value


def _positive_int(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_ID:
        raise bad_parameter(name, "must be a positive integer (a GitLab project id)")
    return int(raw)


def _per_page(query: Any, name: str = "per_page") -> int:
    raw = query.get(name)
    if raw is None:
        return DEFAULT_PER_PAGE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PER_PAGE:
        raise bad_parameter(name, f"must be an integer from 1 to {MAX_PER_PAGE}")
    return int(raw)


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(raw: str | None) -> int:
    if raw is None:
        return 0
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    kind, _, number = text.partition(":")
    if kind != "o" or not (number.isascii() and number.isdigit()) or int(number) > MAX_OFFSET:
        raise bad_parameter("cursor", "not a cursor this endpoint gave out")
    return int(number)


# -- responses --------------------------------------------------------------------------------------


def _tagged_json(request: web.Request, document: Any) -> web.Response:
    body = json_body(document)
    etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    tags = {t.strip().removeprefix("W/") for t in request.headers.get("If-None-Match", "").split(",")}
    if etag in tags or "*" in tags:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers, content_type="application/json")


async def _semantic_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the embedding client and the in-memory vectors, when an endpoint is configured."""
    settings = app[CONFIG].embeddings
    if not settings.url:
        yield
        return
    client = EmbeddingClient(settings.url, settings.model)
    app[EMBEDDER] = client
    app[VECTORS] = VectorIndex(settings.model)
    yield
    await client.close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_semantic_ctx)
    app.router.add_get("/api/v1/search", get_search)
    app.router.add_get("/api/v1/experts", get_experts)
