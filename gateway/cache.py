"""Conditional GETs and the response cache: strong ETags from data versions, 304s, and hot bodies in memory.

An ETag is a hash of what a response depends on (the path, the normalized query, the data versions of
the resources it reads, the representation), never of the body, so `If-None-Match` is answered from
memory without rendering or touching SQLite. The cache is keyed by the same things plus the caller's
scopes: a version bump changes the key, so stale entries are never served, only aged out (LRU, bounded
in bytes). The bound counts what an entry really keeps alive, key included: a query with twenty long
labels makes a key of several KB around a body of a few dozen bytes.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from gateway.auth import PRINCIPAL
from gateway.http import ApiError
from gateway.keys import BUS, CLOCK, DB
from sync import DataVersions, VersionKey

DEFAULT_MAX_BYTES = 32 * 1024 * 1024
# Per entry, beyond the key and the Cached: the OrderedDict's slot and ordering node (with the table's
# spare room) and the (entry, size) pair; tracemalloc measured 161 bytes over 100k entries.
SLOT_OVERHEAD = 160
# An entry's two header sets hold more than sys.getsizeof says of them (their items' storage): tracemalloc
# measured 940 bytes for a Cached without its body and ETag, 300 more than getsizeof's sum.
HEADER_SETS_OVERHEAD = 320
# Bump when the JSON shape of any response changes, so no client keeps a body of the old shape.
REPRESENTATION = "v1"
CACHE_CONTROL = "private, no-cache"  # per-token answers: revalidate every time (cheap: a 304)

CACHE_MAX_BYTES = web.AppKey("cache_max_bytes", int)  # set before start-up; 0 turns the cache off
VERSIONS = web.AppKey("data_versions", DataVersions)

Render = Callable[[], Awaitable[bytes]]
CacheKey = tuple[str, str, tuple[int, ...], frozenset[str]]


@dataclass(frozen=True, slots=True)
class Cached:
    body: bytes
    etag: str
    # The answers' fixed headers, made once per entry: a hit copies them instead of building them.
    headers: CIMultiDict[str] = field(init=False, repr=False, compare=False)
    not_modified_headers: CIMultiDict[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", CIMultiDict(
            {"Content-Type": "application/json", "ETag": self.etag, "Cache-Control": CACHE_CONTROL}))
        object.__setattr__(self, "not_modified_headers", _not_modified_headers(self.etag))


def _not_modified_headers(etag: str) -> CIMultiDict[str]:
    return CIMultiDict({"ETag": etag, "Cache-Control": CACHE_CONTROL})


def entry_size(key: CacheKey, entry: Cached) -> int:
    """The bytes keeping `entry` under `key` holds alive: the key's tuple and every object in it, the
    entry with its body, ETag and header sets, and the dict slot. Objects other entries may share (the scope strings,
    small ints) are charged to each: the bound errs on the safe side."""
    path, query, versions, scopes = key
    return (sys.getsizeof(key) + sys.getsizeof(path) + sys.getsizeof(query)
            + sys.getsizeof(versions) + sum(sys.getsizeof(version) for version in versions)
            + sys.getsizeof(scopes) + sum(sys.getsizeof(scope) for scope in scopes)
            + sys.getsizeof(entry) + sys.getsizeof(entry.body) + sys.getsizeof(entry.etag)
            + sys.getsizeof(entry.headers) + sys.getsizeof(entry.not_modified_headers) + HEADER_SETS_OVERHEAD
            + SLOT_OVERHEAD)


class ResponseCache:
    """An LRU of responses bounded by the memory they hold (`entry_size`); `max_bytes=0` caches nothing."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[CacheKey, tuple[Cached, int]] = OrderedDict()  # key -> (entry, its size)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> Cached | None:
        if not self.max_bytes:
            return None
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found[0]

    def put(self, key: CacheKey, entry: Cached) -> None:
        """Keep `entry`, evicting the least recently used; one bigger than a quarter of the budget is not
        kept (it would flush everything else for one response)."""
        size = entry_size(key, entry)
        if size > self.max_bytes // 4:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (entry, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted_size) = self._entries.popitem(last=False)
            self.bytes -= evicted_size
            self.evictions += 1


RESPONSE_CACHE = web.AppKey("response_cache", ResponseCache)


def make_etag(path: str, query: str, versions: tuple[int, ...]) -> str:
    """A strong ETag for this path, normalized query and data versions."""
    text = f"{REPRESENTATION}|{path}|{query}|{versions}".encode()
    digest = hashlib.blake2b(text, digest_size=15).digest()
    return '"' + base64.urlsafe_b64encode(digest).decode() + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: `*`, or any listed tag equal to ours by weak comparison."""
    if not if_none_match:
        return False
    if if_none_match == etag:  # what a client sends back as it was given: no parsing
        return True
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


async def conditional_json(
    request: web.Request, *, path: str, query: str, depends_on: Iterable[VersionKey], render: Render
) -> web.Response:
    """Answer a GET: 304 when the client's tag is current, else a cached or freshly rendered body.

    `render` runs only on a cache miss; an ApiError it raises (a 404) is answered and never cached.
    """
    app = request.app
    versions = await app[VERSIONS].snapshot(depends_on)
    cache = app[RESPONSE_CACHE]
    key: CacheKey = (path, query, versions, request[PRINCIPAL].scopes)
    entry = cache.get(key)
    etag = make_etag(path, query, versions) if entry is None else entry.etag  # a hit saves the hashing
    if_none_match = request.headers.get("If-None-Match")
    # `*` matches only a representation that exists: without a cached one, render first (it may 404).
    known = entry is not None or if_none_match is None or if_none_match.strip() != "*"
    if known and matches(if_none_match, etag):
        # Answered before anything else is built: a 304 costs less than a cached 200.
        return web.Response(status=304, headers=entry.not_modified_headers if entry is not None
                            else _not_modified_headers(etag))
    if entry is None:
        entry = Cached(await _render(render), etag)
        cache.put(key, entry)
        if matches(if_none_match, etag):
            return web.Response(status=304, headers=entry.not_modified_headers)
    return web.Response(body=entry.body, headers=entry.headers)


async def _render(render: Render) -> bytes:
    try:
        return await render()
    except sqlite3.OperationalError as err:
        # A locked or unavailable store is a passing condition, not a bug in the request.
        raise ApiError(503, "not_ready", f"the store is busy or unavailable: {err}",
                       headers={"Retry-After": "1"}) from None


async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context (after the database): the in-memory data versions and the response cache."""
    versions = DataVersions(app[DB], app[CLOCK])
    await versions.start()
    app[VERSIONS] = versions
    app[RESPONSE_CACHE] = ResponseCache(app.get(CACHE_MAX_BYTES, DEFAULT_MAX_BYTES))
    app[BUS].add_listener(versions.on_event)
    yield
    app[BUS].remove_listener(versions.on_event)
    await versions.close()
