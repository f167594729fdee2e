"""GET /api/v1/changes over HTTP: the feed's shape, paging, errors (400, 401, 403, 410) and 304."""

from __future__ import annotations

import time

import pytest

from gateway.app import create_app
from gateway.auth import TOKENS
from sync.clock import SystemClock
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest import mirror
from sync.ingest.pipeline import SyncRequest
from sync.read import changes
from tests.conftest import make_config
from tests.test_knowledge_api import Api
from tests.test_pipeline import runner_for

WIDGETS = 1001


@pytest.fixture
async def synced(simulator, config_for, db):
    run = await runner_for(db, config_for()).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded"
    return config_for()


@pytest.fixture
async def app_and_api(synced, aiohttp_client):
    app = create_app(synced, scheduler=False)
    client = await aiohttp_client(app)
    reader = await app[TOKENS].create("reader", ["read"], None)
    return app, Api(client, reader.token)


async def test_the_feed_pages_through_every_change_in_order_with_the_contract_fields(app_and_api, db):
    _, api = app_and_api
    expected = await db.fetchval("SELECT count(*) FROM changes")
    seen, since = [], None
    while True:
        page = await api.json("/changes", **({"since": since} if since else {}), limit=40)
        seen += page["items"]
        since = page["next_cursor"]
        if len(page["items"]) < 40:
            break
    assert len(seen) == expected > 0
    assert [c["seq"] for c in seen] == sorted({c["seq"] for c in seen})
    first = seen[0]
    assert set(first) == {"seq", "kind", "project_id", "iid", "note_id", "parent_kind", "action", "at"}
    assert first["action"] == "created" and first["at"].endswith("Z")
    assert since == str(seen[-1]["seq"])


async def test_a_deletion_after_the_cursor_is_a_tombstone(app_and_api, db):
    _, api = app_and_api
    cursor = (await api.json("/changes", limit=1000))["next_cursor"]
    async with db.transaction() as conn:
        await mirror.delete_item(conn, WIDGETS, "merge_request", 2)
    items = (await api.json("/changes", since=cursor))["items"]
    assert items[0]["kind"] == "merge_request" and items[0]["iid"] == 2 and items[0]["action"] == "deleted"
    assert {(c["kind"], c["action"]) for c in items[1:]} <= {("note", "deleted")}


async def test_a_caught_up_poller_gets_304_until_something_changes(app_and_api, db):
    _, api = app_and_api
    cursor = (await api.json("/changes", limit=1000))["next_cursor"]
    first = await api.get("/changes", since=cursor)
    etag = first.headers["ETag"]
    assert (await api.get("/changes", since=cursor, headers={"If-None-Match": etag})).status == 304
    async with db.transaction() as conn:
        await mirror.delete_item(conn, WIDGETS, "issue", 4)
    assert (await api.get("/changes", since=cursor, headers={"If-None-Match": etag})).status == 200


@pytest.mark.parametrize(("params", "name"), [
    ({"since": "abc"}, "since"), ({"since": ""}, "since"), ({"since": "-3"}, "since"),
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "x"}, "limit"),
])
async def test_a_bad_parameter_is_a_400_naming_it(app_and_api, params, name):
    _, api = app_and_api
    error = await api.error("/changes", 400, **params)
    assert error["code"] == "invalid_parameter" and error["message"].startswith(f"{name}:")


async def test_a_cursor_older_than_retention_gets_410_cursor_expired(app_and_api, db):
    _, api = app_and_api
    cursor = (await api.json("/changes", limit=5))["next_cursor"]
    async with db.transaction() as conn:
        await changes.prune(conn, time.time() + 1)  # as if retention had passed for all of them
    error = await api.error("/changes", 410, since=cursor)
    assert error["code"] == "cursor_expired" and "list again" in error["message"]


async def test_the_feed_needs_a_read_token(app_and_api):
    app, api = app_and_api
    assert (await api.client.get("/api/v1/changes")).status == 401
    sync_only = await app[TOKENS].create("syncer", ["sync"], None)
    resp = await api.client.get("/api/v1/changes", headers={"Authorization": f"Bearer {sync_only.token}"})
    assert resp.status == 403


async def test_an_empty_mirror_gives_an_empty_feed_at_cursor_0(tmp_path, aiohttp_client):
    app = create_app(make_config(tmp_path / "data"), scheduler=False)
    client = await aiohttp_client(app)
    api = Api(client, (await app[TOKENS].create("r", ["read"], None)).token)
    assert await api.json("/changes") == {"items": [], "next_cursor": "0"}


async def test_sse_data_changed_seq_is_a_cursor_that_continues_without_a_gap(simulator, config_for, db):
    """A client that followed the stream up to an event switches to the feed from that event's seq."""
    bus, events = EventBus(), []
    bus.add_listener(lambda e: events.append(e.data) if e.name == "data.changed" else None)
    runner = SyncRunner(db, bus, SystemClock(), config_for())
    await runner.run(SyncRequest(profile="fast"))
    middle = events[len(events) // 2]["seq"]
    simulator.update_issue(WIDGETS, 7, title="after the switch")
    await runner.run(SyncRequest(profile="fast"))
    after = await changes.read_changes(db, str(middle), changes.MAX_LIMIT)
    everything = await changes.read_changes(db, None, changes.MAX_LIMIT)
    assert after.items == [c for c in everything.items if c.seq > middle]
    assert after.items[-1].iid == 7 and after.items[-1].action == "updated"
