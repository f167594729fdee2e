"""ETags, 304s and the response cache: derived from data versions, answered from memory, never stale."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.cache import (
    CACHE_MAX_BYTES,
    RESPONSE_CACHE,
    VERSIONS,
    Cached,
    ResponseCache,
    entry_size,
    make_etag,
    matches,
)
from gateway.keys import BUS, DB
from sync.clock import FakeClock, SystemClock
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest import mirror
from sync.ingest.pipeline import SyncRequest
from sync.store.db import Database
from sync.store.versions import DataVersions

WIDGETS, GADGETS = 1001, 1002
PATHS = ("/projects", f"/projects/{WIDGETS}", f"/projects/{WIDGETS}/issues", f"/projects/{WIDGETS}/issues/3",
         f"/projects/{WIDGETS}/issues/3/discussions", f"/projects/{WIDGETS}/merge_requests",
         f"/projects/{WIDGETS}/merge_requests/2", f"/projects/{WIDGETS}/merge_requests/2/discussions",
         f"/projects/{GADGETS}/issues", f"/projects/{GADGETS}/issues/3")


class Gateway:
    def __init__(self, client: Any, token: str, clock: FakeClock) -> None:
        self.client = client
        self.app = client.app
        self.token = token
        self.clock = clock

    async def get(self, path: str, *, etag: str | None = None, token: str | None = None, **params: Any):
        headers = {"Authorization": f"Bearer {token or self.token}"}
        if etag:
            headers["If-None-Match"] = etag
        return await self.client.get(f"/api/v1{path}", params=params, headers=headers)

    async def etag(self, path: str, **params: Any) -> str:
        resp = await self.get(path, **params)
        assert resp.status == 200, await resp.text()
        return resp.headers["ETag"]

    async def etags(self) -> dict[str, str]:
        return {path: await self.etag(path) for path in PATHS}

    async def sync(self, config: Any) -> None:
        """A sync in this process: its events reach the app's bus, as under `serve`."""
        run = await SyncRunner(self.app[DB], self.app[BUS], SystemClock(), config).run(SyncRequest(profile="fast"))
        assert run.status == "succeeded", run.error_message


def count_db_calls(monkeypatch: pytest.MonkeyPatch, db: Database) -> Counter[str]:
    calls: Counter[str] = Counter()
    for name in ("fetchall", "fetchone", "fetchval", "transaction"):
        original = getattr(db, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(db, name, counted)
    return calls


async def make_gateway(aiohttp_client, config, clock: FakeClock, cache_max_bytes: int | None = None) -> Gateway:
    app = create_app(config, clock=clock, scheduler=False)
    if cache_max_bytes is not None:
        app[CACHE_MAX_BYTES] = cache_max_bytes
    client = await aiohttp_client(app)
    token = (await app[TOKENS].create("reader", ["read"], None)).token
    return Gateway(client, token, clock)


@pytest.fixture
async def gateway(simulator, config_for, db, aiohttp_client) -> Gateway:
    run = await SyncRunner(db, EventBus(), SystemClock(), config_for()).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded"
    return await make_gateway(aiohttp_client, config_for(), FakeClock())


# -- ETags and 304 ----------------------------------------------------------------------------------


async def test_every_read_answers_a_strong_etag(gateway):
    tags = await gateway.etags()
    assert all(t.startswith('"') and t.endswith('"') for t in tags.values())
    assert len(set(tags.values())) == len(PATHS)


async def test_if_none_match_with_the_current_etag_is_304_with_no_body(gateway):
    path = f"/projects/{WIDGETS}/issues"
    etag = await gateway.etag(path, per_page=5)
    resp = await gateway.get(path, etag=etag, per_page=5)
    assert resp.status == 304
    assert resp.headers["ETag"] == etag
    assert await resp.read() == b""


async def test_an_etag_belongs_to_its_query(gateway):
    path = f"/projects/{WIDGETS}/issues"
    etag = await gateway.etag(path, per_page=5)
    assert (await gateway.get(path, etag=etag, per_page=6)).status == 200
    assert (await gateway.get(path, etag=etag, per_page=5, state="closed")).status == 200
    assert (await gateway.get(path, etag=f'W/{etag}, "other"', per_page=5)).status == 304


async def test_a_304_and_a_cached_body_touch_no_sqlite(gateway, monkeypatch):
    path = f"/projects/{WIDGETS}/issues"
    first = await gateway.get(path)  # renders, caches, and records the token's use
    body, etag = await first.read(), first.headers["ETag"]
    calls = count_db_calls(monkeypatch, gateway.app[DB])
    for _ in range(5):
        assert (await gateway.get(path, etag=etag)).status == 304
        again = await gateway.get(path)
        assert again.status == 200 and await again.read() == body
    assert sum(calls.values()) == 0, calls
    assert gateway.app[RESPONSE_CACHE].hits >= 5


async def test_a_sync_that_changes_nothing_keeps_every_etag(gateway, config_for):
    before = await gateway.etags()
    await gateway.sync(config_for())
    assert await gateway.etags() == before


async def test_a_changed_issue_changes_the_etags_that_include_it_and_no_others(gateway, simulator, config_for):
    before = await gateway.etags()
    simulator.update_issue(WIDGETS, 3, title="a new title")
    await gateway.sync(config_for())
    after = await gateway.etags()
    changed = {path for path in PATHS if before[path] != after[path]}
    assert changed == {f"/projects/{WIDGETS}/issues", f"/projects/{WIDGETS}/issues/3",
                       f"/projects/{WIDGETS}/issues/3/discussions",
                       # all of a project's discussions share one version
                       f"/projects/{WIDGETS}/merge_requests/2/discussions",
                       # GitLab moved the project's last_activity_at too
                       "/projects", f"/projects/{WIDGETS}"}
    issue = await (await gateway.get(f"/projects/{WIDGETS}/issues/3")).json()
    assert issue["title"] == "a new title"


async def test_an_old_etag_gets_the_new_body_after_a_change(gateway, simulator, config_for):
    path = f"/projects/{WIDGETS}/issues/3"
    etag = await gateway.etag(path)
    simulator.update_issue(WIDGETS, 3, title="changed again")
    await gateway.sync(config_for())
    resp = await gateway.get(path, etag=etag)
    assert resp.status == 200 and (await resp.json())["title"] == "changed again"


async def test_a_bus_event_makes_the_next_request_see_the_new_version_at_once(gateway):
    path = f"/projects/{GADGETS}/issues"
    etag = await gateway.etag(path)
    async with gateway.app[DB].transaction() as conn:
        await mirror.bump_versions(conn, GADGETS, ["issues"])
    gateway.app[BUS].publish("data.changed", {"project_id": GADGETS, "kind": "issue", "iids": [1]})
    assert (await gateway.get(path, etag=etag)).status == 200


async def test_a_write_by_another_process_is_seen_after_one_poll(gateway, tmp_path):
    path = f"/projects/{GADGETS}/issues/3"
    etag = await gateway.etag(path)
    other = await Database.open(tmp_path / "data" / "lore.db")  # a CLI sync: another connection, no bus
    try:
        async with other.transaction() as conn:
            issue = dict((await (await gateway.get(path)).json()), title="written elsewhere")
            stored = {**issue, "author": {"id": 1, "username": "alice.chen", "name": "Alice Chen"},
                      "updated_at": "2099-01-01T00:00:00.000Z"}
            await mirror.upsert_items(conn, "issue", GADGETS, [stored])
            await mirror.bump_versions(conn, GADGETS, ["issues"])
    finally:
        await other.close()
    assert (await gateway.get(path, etag=etag)).status == 304  # not seen before the poll: at most ~1 s
    await gateway.clock.advance(1.0)
    for _ in range(50):  # the poll's read runs on the reader thread
        if gateway.app[VERSIONS].reads >= 2:
            break
        await asyncio.sleep(0.01)
    resp = await gateway.get(path, etag=etag)
    assert resp.status == 200 and (await resp.json())["title"] == "written elsewhere"


async def test_if_none_match_star_is_304_only_for_what_exists(gateway):
    assert (await gateway.get(f"/projects/{WIDGETS}/issues/3", etag="*")).status == 304
    assert (await gateway.get(f"/projects/{WIDGETS}/issues/999", etag="*")).status == 404


async def test_errors_carry_no_etag_and_are_not_cached(gateway):
    resp = await gateway.get(f"/projects/{WIDGETS}/issues/999")
    assert resp.status == 404 and "ETag" not in resp.headers
    assert len(gateway.app[RESPONSE_CACHE]) == 0


# -- the response cache -----------------------------------------------------------------------------


async def test_callers_with_different_scopes_do_not_share_cache_entries(gateway):
    admin = (await gateway.app[TOKENS].create("admin", ["admin"], None)).token
    path = f"/projects/{WIDGETS}/issues"
    await gateway.get(path)
    await gateway.get(path, token=admin)
    assert len(gateway.app[RESPONSE_CACHE]) == 2


async def test_with_the_cache_off_every_body_is_rendered_and_still_correct(
    simulator, config_for, db, aiohttp_client
):
    run = await SyncRunner(db, EventBus(), SystemClock(), config_for()).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded"
    off = await make_gateway(aiohttp_client, config_for(), FakeClock(), cache_max_bytes=0)
    path = f"/projects/{WIDGETS}/issues"
    first, second = await off.get(path), await off.get(path)
    assert await first.read() == await second.read()
    assert first.headers["ETag"] == second.headers["ETag"]
    assert len(off.app[RESPONSE_CACHE]) == 0
    assert (await off.get(path, etag=first.headers["ETag"])).status == 304


def key(n: int) -> tuple:
    return (f"/p/{n}", "", (1,), frozenset({"read"}))


def test_the_cache_is_bounded_in_bytes_and_evicts_the_least_recently_used():
    size = entry_size(key(0), Cached(b"x" * 700, '"0"'))
    cache = ResponseCache(max_bytes=4 * size + size // 2)  # four fit
    for n in range(4):
        cache.put(key(n), Cached(b"x" * 700, f'"{n}"'))
    assert cache.get(key(0)) is not None  # 0 is now the most recently used
    cache.put(key(4), Cached(b"x" * 700, '"4"'))
    assert cache.get(key(1)) is None and cache.get(key(0)) is not None
    assert cache.bytes <= cache.max_bytes and cache.evictions == 1


def test_a_body_larger_than_a_quarter_of_the_budget_is_not_kept():
    cache = ResponseCache(max_bytes=4000)
    cache.put(key(0), Cached(b"x" * 1000, '"0"'))
    assert len(cache) == 0


def test_replacing_an_entry_does_not_leak_its_bytes():
    cache = ResponseCache(max_bytes=10_000)
    for _ in range(3):
        cache.put(key(0), Cached(b"x" * 100, '"0"'))
    assert cache.bytes == entry_size(key(0), Cached(b"x" * 100, '"0"'))


def test_an_entry_is_charged_for_its_key_as_well_as_its_body():
    entry = Cached(b"{}", '"0"')
    long_query = "labels=" + ",".join(f"label-{n:04d}-" + "x" * 200 for n in range(20))

    short, long = entry_size(key(0), entry), entry_size(("/p/0", long_query, (1,), frozenset({"read"})), entry)

    assert long - short >= len(long_query)
    assert short >= len(entry.body) + len(entry.etag) + len("/p/0") + len("read")


@pytest.mark.parametrize(("header", "hit"), [
    ('"abc"', True), ('W/"abc"', True), ('"x", "abc"', True), ("*", True), ('"abcd"', False), ("", False),
    ('abc', False),
])
def test_if_none_match_compares_weakly_and_accepts_lists_and_star(header, hit):
    assert matches(header, '"abc"') is hit


def test_an_etag_depends_on_path_query_and_versions():
    base = make_etag("/p", "q", (1, 2))
    assert base == make_etag("/p", "q", (1, 2))
    assert len({base, make_etag("/p2", "q", (1, 2)), make_etag("/p", "q2", (1, 2)), make_etag("/p", "q", (1, 3))}) == 4


# -- data versions ----------------------------------------------------------------------------------


async def test_many_readers_after_a_change_share_one_read_of_the_versions(db):
    versions = DataVersions(db, FakeClock())
    await versions.start()
    try:
        async with db.transaction() as conn:
            await mirror.bump_versions(conn, 7, ["issues"])
        reads = versions.reads
        versions.mark_stale()
        results = await asyncio.gather(*(versions.snapshot([(7, "issues")]) for _ in range(20)))
        assert results == [(1,)] * 20
        assert versions.reads == reads + 1
    finally:
        await versions.close()


async def test_a_version_never_bumped_is_zero_and_an_idle_snapshot_reads_nothing(db):
    versions = DataVersions(db, FakeClock())
    await versions.start()
    try:
        reads = versions.reads
        assert await versions.snapshot([(1, "issues"), (0, "projects")]) == (0, 0)
        assert versions.reads == reads
    finally:
        await versions.close()
