"""Webhook bodies as large and as encoded as clients send them: GitLab's 25 MB, gzip that is and is not gzip,
and events about projects the mirror does not hold."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

import orjson
import pytest

from gateway import webhooks
from gateway.simulator.gitlab import GitLabSimulator, Webhook
from sync.clock import FakeClock
from sync.config import WebhookConfig
from sync.control import inbox_queries
from sync.store.db import Database
from sync.types import ItemRef
from tests.test_webhooks import NOW, SECRET, SIGNING_TOKEN, URL, MakeClient, gateway  # noqa: F401

MB = 1_000_000


@pytest.fixture
def sim() -> GitLabSimulator:
    simulator = GitLabSimulator(clock=FakeClock(float(NOW)), seed=3)
    simulator.add_project("acme/widgets", issues=5, merge_requests=3, notes_per_item=1)
    return simulator


def big_description_edit(sim: GitLabSimulator) -> Webhook:
    """A 1 MB description replaced by another: GitLab carries it three times (attributes and `changes`)."""
    sim.update_issue(1001, 2, description="a" * MB)
    return sim.update_issue(1001, 2, description="b" * MB)


def test_the_default_limit_is_gitlabs_25_mb() -> None:
    assert WebhookConfig().max_body_bytes == 25 * 1024 * 1024


async def test_a_3_mb_issue_hook_is_accepted_routed_and_stored_without_its_body(
    gateway: MakeClient, sim: GitLabSimulator  # noqa: F811
) -> None:
    gw = await gateway()
    hook = big_description_edit(sim)
    assert len(hook.body()) > 3 * MB

    response = await gw.post(hook)

    assert response.status == 202
    [row] = await gw.rows()
    assert (row["kind"], row["iid"], row["payload"]) == ("issue", 2, b"")


async def test_a_signed_3_mb_body_verifies(gateway: MakeClient, sim: GitLabSimulator) -> None:  # noqa: F811
    gw = await gateway()
    hook = big_description_edit(sim)

    response = await gw.client.post(URL, data=hook.body(), headers=hook.headers(signing_token=SIGNING_TOKEN,
                                                                                  timestamp=NOW))

    assert response.status == 202


async def test_a_body_of_exactly_the_limit_is_read_and_one_byte_more_is_refused_unread(
    gateway: MakeClient  # noqa: F811
) -> None:
    limit = 5000
    gw = await gateway(max_body_bytes=limit)
    headers = Webhook(event="Issue Hook", payload={}).headers(secret=SECRET)
    padded = orjson.dumps({"object_kind": "issue", "pad": ""})
    at_limit = padded[:-2] + b" " * (limit - len(padded)) + padded[-2:]

    fits = await gw.client.post(URL, data=at_limit, headers=headers)
    over = await gw.client.post(URL, data=at_limit + b" ", headers=headers)

    assert len(at_limit) == limit and fits.status == 202
    assert over.status == 413 and (await over.json())["error"]["code"] == "payload_too_large"


async def test_a_gzip_body_is_decoded_and_routed(gateway: MakeClient, sim: GitLabSimulator) -> None:  # noqa: F811
    gw = await gateway()
    hook = sim.update_issue(1001, 3, title="zipped")
    headers = {**hook.headers(secret=SECRET), "Content-Encoding": "gzip"}

    response = await gw.client.post(URL, data=gzip.compress(hook.body()), headers=headers)

    assert response.status == 202
    assert [(r["kind"], r["iid"]) for r in await gw.rows()] == [("issue", 3)]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_a_compressed_body_counts_its_decoded_size_against_the_limit(
    coding: str, gateway: MakeClient  # noqa: F811
) -> None:
    gw = await gateway(max_body_bytes=100_000)
    bomb = orjson.dumps({"object_kind": "issue", "pad": "0" * (5 * MB)})
    body = gzip.compress(bomb) if coding == "gzip" else zlib.compress(bomb)
    headers = {**Webhook(event="Issue Hook", payload={}).headers(secret=SECRET), "Content-Encoding": coding}

    response = await gw.client.post(URL, data=body, headers=headers)

    assert len(body) < 100_000
    assert response.status == 413
    assert await gw.rows() == []


# -- events about projects the mirror does not hold ----------------------------------------------------------


async def _add_event(db: Database, project_id: int, kind: str | None, iid: int | None) -> None:
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO webhook_events (event, project_id, kind, iid, received_at, payload)"
                           " VALUES ('System Hook', ?, ?, ?, 0, x'')", (project_id, kind, iid))


async def test_an_event_about_a_project_the_mirror_does_not_hold_names_nothing_to_fetch(
    db: Database
) -> None:
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO projects (id, path_with_namespace, name, web_url, raw, synced_at)"
                           " VALUES (1001, 'acme/widgets', 'widgets', 'u', x'7b7d', 0)")
    await _add_event(db, 1001, "project", None)
    await _add_event(db, 4242, "project", None)
    await _add_event(db, 4242, "merge_request", 7)

    events = await inbox_queries.pending_rows(db)

    assert [(e.item.project_id, e.item.kind) for e in events] == [(1001, "project"), (4242, None), (4242, None)]
    assert inbox_queries.targets_for(events) == (ItemRef(1001, "project"),)


async def test_before_the_first_sync_no_event_is_filtered(db: Database) -> None:
    await _add_event(db, 4242, "merge_request", 7)

    events = await inbox_queries.pending_rows(db)

    assert [(e.item.project_id, e.item.kind, e.item.iid) for e in events] == [(4242, "merge_request", 7)]


# -- large bodies take the standard library's parser: same answers as orjson's ---------------------------

LARGE = 300 * 1024  # over the size at which the parser changes (gateway/webhooks.py)


@pytest.mark.parametrize(("body", "why"), [
    (b"[" * LARGE + b"]" * LARGE, "nested deeper than the parser's recursion limit"),
    (b'{"object_kind": "issue", "x": "' + b"\xff" * LARGE + b'"}', "invalid UTF-8"),
    (b'{"object_kind": "issue", "x": "' + b"a" * LARGE, "cut short"),
    (b'["' + b"a" * LARGE + b'"]', "an array, not an object"),
])
async def test_a_large_body_that_is_not_a_json_object_gets_400(
    body: bytes, why: str, gateway: MakeClient  # noqa: F811
) -> None:
    gw = await gateway()
    headers = Webhook(event="Issue Hook", payload={}).headers(secret=SECRET)

    response = await gw.client.post(URL, data=body, headers=headers)

    assert (response.status, (await response.json())["error"]["code"]) == (400, "invalid_json"), why
    assert await gw.rows() == []


async def test_a_large_routed_event_is_routed_like_a_small_one(
    gateway: MakeClient, sim: GitLabSimulator  # noqa: F811
) -> None:
    gw = await gateway()
    small = sim.add_note(1001, "merge_request", 2, "short")
    large = sim.add_note(1001, "merge_request", 3, "\U0001f600 " + "long " * LARGE)

    for hook in (small, large):
        assert (await gw.post(hook)).status == 202

    assert [(r["kind"], r["iid"]) for r in await gw.rows()] == [("merge_request", 2), ("merge_request", 3)]


def test_a_body_that_breaks_off_for_a_reason_other_than_its_coding_is_invalid_body() -> None:
    # A client that dies mid-body hears no answer, so this is checked on the mapping itself.
    from aiohttp.web_protocol import RequestPayloadError

    error = webhooks._unreadable(RequestPayloadError("Response payload is not completed"))

    assert (error.status, error.code) == (400, "invalid_body")


# -- large bodies share a budget while they are read -------------------------------------------------------


async def _start_upload(port: int, size: int, sent: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A request for a `size`-byte Issue Hook of which only `sent` bytes go out for now."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (f"POST {URL} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Gitlab-Event: Issue Hook\r\n"
            f"X-Gitlab-Token: {SECRET}\r\nContent-Length: {size}\r\n\r\n")
    writer.write(head.encode() + _issue_body(size)[:sent])
    await writer.drain()
    return reader, writer


def _issue_body(size: int) -> bytes:
    start = b'{"object_kind": "issue", "project": {"id": 1001}, "object_attributes": {"iid": 4}, "pad": "'
    return start + b"x" * (size - len(start) - 2) + b'"}'


async def _finish(size: int, sent: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    writer.write(_issue_body(size)[sent:])
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def until_true(predicate: Any) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


async def test_large_bodies_wait_for_room_while_small_ones_go_straight_through(
    gateway: MakeClient, sim: GitLabSimulator  # noqa: F811
) -> None:
    limit = 3 * MB
    gw = await gateway(max_body_bytes=limit)
    budget = gw.app[webhooks.BODY_BUDGET]
    port = gw.client.port
    size = 2 * MB + 1  # over the size that goes straight through
    first = await _start_upload(port, size, 1000)
    second = await _start_upload(port, size, 1000)
    await until_true(lambda: budget.free == 2 * limit - 2 * size)

    third = await _start_upload(port, size, 1000)
    await until_true(lambda: budget.waiting == 1)  # reserved nothing: it holds no memory while it waits
    small = await gw.post(sim.update_issue(1001, 1, title="small"))
    assert small.status == 202

    assert await _finish(size, 1000, *first) == 202
    await until_true(lambda: budget.waiting == 0)
    assert [await _finish(size, 1000, *second), await _finish(size, 1000, *third)] == [202, 202]
    await until_true(lambda: budget.free == budget.capacity)


async def test_a_body_of_unknown_decoded_size_reserves_the_whole_limit(
    gateway: MakeClient  # noqa: F811
) -> None:
    gw = await gateway(max_body_bytes=2 * MB)
    budget = gw.app[webhooks.BODY_BUDGET]
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    packed = gzip.compress(_issue_body(10_000))
    head = (f"POST {URL} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Gitlab-Event: Issue Hook\r\n"
            f"X-Gitlab-Token: {SECRET}\r\nContent-Encoding: gzip\r\nContent-Length: {len(packed)}\r\n\r\n")
    writer.write(head.encode() + packed[:10])
    await writer.drain()

    await until_true(lambda: budget.free == budget.capacity - 2 * MB)

    writer.write(packed[10:])
    await writer.drain()
    assert int((await reader.readline()).split()[1]) == 202
    writer.close()
    await until_true(lambda: budget.free == budget.capacity)
