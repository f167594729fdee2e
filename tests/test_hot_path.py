"""What the cheaper hot path (issue 15) must not have dropped: a cached answer still authenticates, a
spent budget is refused in every process, and every request is still counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.api import MAX_SHAPE_PATH, SHAPES
from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.cache import RESPONSE_CACHE
from gateway.keys import DB
from gateway.ratelimit import LIMITER
from gateway.server import default_loop, run_loop
from gateway.tokens import ROW_CACHE_SECONDS, TokenStore, signing_keys
from sync.clock import FakeClock
from tests.conftest import make_config
from tests.redis_server import redis_url  # noqa: F401 (fixture)

PAGE = "/api/v1/projects"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_cached_hit_with_a_token_revoked_here_is_refused(tmp_path: Path, aiohttp_client) -> None:
    app = create_app(make_config(tmp_path), clock=FakeClock(), scheduler=False)
    client: TestClient = await aiohttp_client(app)
    created = await app[TOKENS].create("reader", ["read"], None)
    first = await client.get(PAGE, headers=bearer(created.token))
    assert (await client.get(PAGE, headers=bearer(created.token))).status == 200
    assert app[RESPONSE_CACHE].hits >= 1  # the page is cached and its query shape remembered

    await app[TOKENS].revoke(created.id)

    assert (await client.get(PAGE, headers=bearer(created.token))).status == 401
    not_modified = await client.get(PAGE, headers={**bearer(created.token), "If-None-Match": first.headers["ETag"]})
    assert not_modified.status == 401


async def test_a_cached_hit_with_a_token_revoked_by_another_process_is_refused_within_the_row_cache(
    tmp_path: Path, aiohttp_client
) -> None:
    clock = FakeClock()
    config = make_config(tmp_path)
    app = create_app(config, clock=clock, scheduler=False)
    client: TestClient = await aiohttp_client(app)
    created = await app[TOKENS].create("reader", ["read"], None)
    for _ in range(3):
        assert (await client.get(PAGE, headers=bearer(created.token))).status == 200
    other_process = TokenStore(app[DB], clock, signing_keys(config))

    await other_process.revoke(created.id)
    await clock.advance(ROW_CACHE_SECONDS)

    assert (await client.get(PAGE, headers=bearer(created.token))).status == 401


async def test_an_exhausted_budget_is_refused_by_every_process_sharing_redis(
    tmp_path: Path, aiohttp_client, redis_url: str  # noqa: F811
) -> None:
    budget = 6
    config = make_config(tmp_path, redis_url=redis_url, ratelimit_api=f"{budget}/minute")
    apps = [create_app(config, scheduler=False) for _ in range(2)]  # two processes' worth of state
    clients: list[TestClient] = [await aiohttp_client(app) for app in apps]
    token = (await apps[0][TOKENS].create("reader", ["read"], None)).token

    # Each process alone stays within the budget; together they may go over by what they admit before
    # their next flush (the documented overshoot), never by more than one budget per other process.
    statuses = [(await client.get(PAGE, headers=bearer(token))).status for client in clients for _ in range(budget)]
    assert budget <= statuses.count(200) <= 2 * budget
    for _ in range(2):  # a process learns the others' hits when it flushes hits of its own: a round or two
        for client in clients:
            await client.get(PAGE, headers=bearer(token))
        for app in apps:
            assert await app[LIMITER].flush()

    answers = [await client.get(PAGE, headers=bearer(token)) for client in clients]
    assert [a.status for a in answers] == [429, 429]
    assert all(a.headers["RateLimit-Remaining"] == "0" and "Retry-After" in a.headers for a in answers)
    scrape = await (await clients[0].get("/metrics")).text()
    flushes = [s.value for f in text_string_to_metric_families(scrape) for s in f.samples
               if s.name == "lore_gateway_ratelimit_redis_flushes_total"]
    assert flushes and flushes[0] >= 2  # the round trips are few, and counted


async def test_an_exhausted_budget_is_refused_at_once_with_strict_limits(
    tmp_path: Path, aiohttp_client, redis_url: str  # noqa: F811
) -> None:
    config = make_config(tmp_path, redis_url=redis_url, ratelimit_api="3/minute", ratelimit_strict="true")
    apps = [create_app(config, scheduler=False) for _ in range(2)]
    clients: list[TestClient] = [await aiohttp_client(app) for app in apps]
    token = (await apps[0][TOKENS].create("reader", ["read"], None)).token

    statuses = [(await clients[n % 2].get(PAGE, headers=bearer(token))).status for n in range(5)]

    assert statuses == [200, 200, 200, 429, 429]


async def test_metrics_count_every_request_whatever_answered_it(tmp_path: Path, aiohttp_client) -> None:
    app = create_app(make_config(tmp_path, ratelimit_api="4/minute"), clock=FakeClock(), scheduler=False)
    client: TestClient = await aiohttp_client(app)
    token = (await app[TOKENS].create("reader", ["read"], None)).token
    first = await client.get(PAGE, headers=bearer(token))
    sent = [first.status]
    sent.append((await client.get(PAGE, headers=bearer(token))).status)  # a cache hit
    sent.append((await client.get(PAGE, headers={**bearer(token), "If-None-Match": first.headers["ETag"]})).status)
    sent.append((await client.get(PAGE, headers=bearer(token))).status)
    sent.append((await client.get(PAGE, headers=bearer(token))).status)  # over the budget
    sent.append((await client.get(PAGE, headers=bearer("lgw_not-a-token"))).status)
    sent.append((await client.get("/no/such/path")).status)
    assert sent == [200, 200, 304, 200, 429, 401, 404]

    scrape = await (await client.get("/metrics")).text()

    counted = {}
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            if sample.name == "lore_gateway_http_requests_total" and sample.labels["route"] != "/metrics":
                counted[int(sample.labels["status"])] = counted.get(int(sample.labels["status"]), 0) + sample.value
            if sample.name == "lore_gateway_rate_limited_requests_total" and sample.labels["limit"] == "api":
                assert sample.value == 1
            if sample.name == "lore_gateway_cache_hits_total":
                assert sample.value == 3  # every 200 and 304 after the first
    assert counted == {200: 3, 304: 1, 429: 1, 401: 1, 404: 1}


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_gateway_runs_on_uvloop_by_default_and_on_asyncio_when_asked() -> None:
    assert default_loop() == "uvloop"  # a dependency: it serves the same requests for less CPU
    assert run_loop(_loop_module()).startswith("uvloop")
    assert run_loop(_loop_module(), "asyncio").startswith("asyncio")


async def test_a_validated_query_is_remembered_a_refused_or_long_one_is_not(tmp_path: Path, aiohttp_client) -> None:
    app = create_app(make_config(tmp_path), clock=FakeClock(), scheduler=False)
    client: TestClient = await aiohttp_client(app)
    token = (await app[TOKENS].create("reader", ["read"], None)).token
    issues = "/api/v1/projects/7/issues"  # no such project: a 404, but its parameters were valid
    for _ in range(2):
        assert (await client.get(f"{issues}?per_page=5", headers=bearer(token))).status == 404
    assert list(app[SHAPES]) == [f"{issues}?per_page=5"]

    refused = [await client.get(f"{issues}?per_page=500", headers=bearer(token)) for _ in range(2)]
    long_query = f"{issues}?per_page=5&labels=" + "x" * MAX_SHAPE_PATH
    assert (await client.get(long_query, headers=bearer(token))).status == 404

    assert [r.status for r in refused] == [400, 400]
    assert list(app[SHAPES]) == [f"{issues}?per_page=5"]


async def test_a_304_and_a_cached_hit_carry_their_own_stamp_and_leave_the_cached_headers_alone(
    tmp_path: Path, aiohttp_client
) -> None:
    """The cache keeps each entry's headers made once; every answer copies them and only the copy gets the
    request's id and rate-limit headers."""
    app = create_app(make_config(tmp_path, ratelimit_api="100/minute"), clock=FakeClock(), scheduler=False)
    client: TestClient = await aiohttp_client(app)
    token = (await app[TOKENS].create("reader", ["read"], None)).token
    first = await client.get(PAGE, headers=bearer(token))
    etag = first.headers["ETag"]
    answers = [first]
    for headers in ({"If-None-Match": etag}, {}, {"If-None-Match": f'"other", W/{etag}'}, {"X-Request-Id": "mine"}):
        answers.append(await client.get(PAGE, headers={**bearer(token), **headers}))

    assert [a.status for a in answers] == [200, 304, 200, 304, 200]
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["99", "98", "97", "96", "95"]
    assert len({a.headers["X-Request-Id"] for a in answers}) == 5 and answers[-1].headers["X-Request-Id"] == "mine"
    for answer in answers:
        assert answer.headers.getall("ETag") == [etag]
        assert answer.headers["Cache-Control"] == "private, no-cache"
    assert answers[1].headers.get("Content-Type") is None and await answers[1].read() == b""
    for entry, _ in app[RESPONSE_CACHE]._entries.values():
        assert set(entry.headers) == {"Content-Type", "ETag", "Cache-Control"}
        assert set(entry.not_modified_headers) == {"ETag", "Cache-Control"}
