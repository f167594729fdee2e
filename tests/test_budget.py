"""The GitLab request budget: never over N a minute (also across clients sharing Redis), counted for status,
and a client that needs no RateLimit-* headers to stay within GitLab's throttle."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import FakeClock
from sync.gitlab.budget import RequestBudget, budget_usage
from sync.gitlab.client import GitLabClient, RetryPolicy
from sync.scaleout.redis_bus import redis_client
from sync.store.db import Database
from tests.conftest import SIM_TOKEN
from tests.redis_server import free_port, redis_url  # noqa: F401 (fixture)
from tests.test_cli_sync import cli, cli_env

BUDGET = 10


def throttled_simulator(clock: FakeClock, throttle: int, version: str = "18.5-ee") -> GitLabSimulator:
    """A self-managed GitLab whose Rack::Attack throttle allows `throttle` requests a minute: headers only on 429."""
    sim = GitLabSimulator(token=SIM_TOKEN, clock=clock, seed=3, gitlab_version=version)
    sim.add_project("acme/widgets", issues=3)
    sim.throttle = throttle
    return sim


async def serve(sim: GitLabSimulator, aiohttp_server: Any) -> str:
    return str((await aiohttp_server(sim.app())).make_url("")).rstrip("/")


async def on_fake_time(clock: FakeClock, coros: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run `coros` together; whenever every unfinished one waits on the clock (none in flight), move the clock
    to the next minute. So time passes only between requests, as it would for a client that sleeps."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.002)
        waiting = sum(not t.done() for t in tasks)
        if waiting and clock.sleepers >= waiting:
            await clock.advance(60 - clock.now() % 60)
    return [t.result() for t in tasks]


async def per_minute(db: Database) -> dict[int, int]:
    return {m: n for m, n in await db.fetchall("SELECT minute, requests FROM gitlab_requests")}


async def test_a_budget_of_n_a_minute_is_never_exceeded_over_a_simulated_span(aiohttp_server, db: Database) -> None:
    clock = FakeClock()
    sim = throttled_simulator(clock, throttle=BUDGET)
    budget = RequestBudget(db, clock, BUDGET)
    start = clock.now()
    async with GitLabClient(await serve(sim, aiohttp_server), SIM_TOKEN, clock=clock, budget=budget) as client:
        await on_fake_time(clock, [client.get("/projects/1001") for _ in range(35)])

    assert client.responses == {200: 35}  # GitLab's throttle never answered 429
    counted = await per_minute(db)
    assert sum(counted.values()) == 35 and max(counted.values()) == BUDGET
    assert sorted(counted.values()) == [5, BUDGET, BUDGET, BUDGET]  # every minute's budget used, none lost
    assert 3 * 60 <= clock.now() - start < 4 * 60  # 35 requests at 10 a minute need a fourth minute, no more
    assert budget.waits > 0


async def test_two_clients_sharing_redis_share_one_budget(aiohttp_server, tmp_path: Path,
                                                          redis_url: str) -> None:  # noqa: F811
    clock = FakeClock()
    sim = throttled_simulator(clock, throttle=BUDGET)
    url = await serve(sim, aiohttp_server)
    # Two hosts: each its own database, so only Redis links their budgets.
    dbs = [await Database.open(tmp_path / f"host{n}" / "lore.db") for n in (1, 2)]
    redis = [redis_client(redis_url), redis_client(redis_url)]
    clients = [GitLabClient(url, SIM_TOKEN, clock=clock, budget=RequestBudget(db, clock, BUDGET, redis=r))
               for db, r in zip(dbs, redis, strict=True)]
    try:
        await on_fake_time(clock, [c.get("/projects/1001") for c in clients for _ in range(16)])
        counted = [await per_minute(db) for db in dbs]
    finally:
        for c in clients:
            await c.close()
        for r in redis:
            await r.aclose()
        for db in dbs:
            await db.close()

    assert sum(c.responses[200] for c in clients) == 32 and all(c.responses[429] == 0 for c in clients)
    minutes = set(counted[0]) | set(counted[1])
    assert max(counted[0].get(m, 0) + counted[1].get(m, 0) for m in minutes) == BUDGET


async def test_without_a_budget_requests_are_still_counted_for_status(aiohttp_server, db: Database) -> None:
    clock = FakeClock()
    sim = throttled_simulator(clock, throttle=1000)
    async with GitLabClient(await serve(sim, aiohttp_server), SIM_TOKEN, clock=clock,
                            budget=RequestBudget(db, clock, 0)) as client:
        for _ in range(3):
            await client.get("/projects/1001")
        await clock.advance(61)
        await client.get("/projects/1001")

    usage = await budget_usage(db, clock, 0)
    assert usage.to_json() == {"last_hour": 4, "requests_per_minute": None, "remaining_this_minute": None}
    await clock.advance(3600)
    assert (await budget_usage(db, clock, 100)).to_json() == {
        "last_hour": 0, "requests_per_minute": 100, "remaining_this_minute": 100}


async def test_status_shows_what_is_left_of_this_minute(db: Database) -> None:
    clock = FakeClock(start=1_800_000_000.0)  # on a minute boundary
    budget = RequestBudget(db, clock, 5)
    for _ in range(3):
        await budget.acquire()

    assert (await budget_usage(db, clock, 5)).remaining_this_minute == 2


async def test_without_ratelimit_headers_the_client_waits_out_retry_after(aiohttp_server) -> None:
    clock = FakeClock()
    sim = throttled_simulator(clock, throttle=3)  # and no budget on our side
    async with GitLabClient(await serve(sim, aiohttp_server), SIM_TOKEN, clock=clock,
                            retry=RetryPolicy(attempts=3)) as client:
        start = clock.now()
        results = await on_fake_time(clock, [client.get("/projects/1001") for _ in range(5)])

    assert all(r["id"] == 1001 for r in results)
    assert client.responses[429] >= 1 and client.responses[200] == 5
    assert clock.now() - start >= 60 - start % 60  # it waited for the minute GitLab named, not less


async def test_a_redis_outage_leaves_the_database_gating_alone(db: Database) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    redis = redis_client(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    budget = RequestBudget(db, clock, 2, redis=redis)
    try:
        await budget.acquire()
        await budget.acquire()
        third = asyncio.ensure_future(budget.acquire())
        await asyncio.sleep(0.05)
        assert not third.done()  # the minute is spent, by the database's count
        await clock.advance(60)
        await asyncio.wait_for(third, 5)
    finally:
        await redis.aclose()


def test_a_negative_budget_is_refused(db: Database) -> None:
    with pytest.raises(ValueError):
        RequestBudget(db, FakeClock(), -1)


async def test_a_cli_sync_counts_its_requests_and_status_shows_the_budget(tmp_path: Path, gitlab_url: str,
                                                                         simulator: GitLabSimulator) -> None:
    env = cli_env(tmp_path, gitlab_url, gitlab_requests_per_minute="5000")
    assert (await cli(env, "sync"))[0] == 0

    code, out, _ = await cli(env, "--json", "status")
    text = (await cli(env, "status"))[1]

    usage = orjson.loads(out)["gitlab_requests"]
    assert code == 0 and usage["last_hour"] == simulator.request_count > 0
    assert usage["requests_per_minute"] == 5000 and usage["remaining_this_minute"] <= 5000
    assert f"GitLab requests in the last hour: {simulator.request_count}; budget 5000/minute" in text


async def test_the_status_api_reports_gitlab_requests(config_for, aiohttp_client) -> None:
    app = create_app(config_for(gitlab_requests_per_minute="100"), clock=FakeClock(), scheduler=False)
    client = await aiohttp_client(app)
    token = (await app[TOKENS].create("reader", ["read"], None)).token

    body = await (await client.get("/api/v1/sync/status", headers={"Authorization": f"Bearer {token}"})).json()

    assert body["gitlab_requests"] == {"last_hour": 0, "requests_per_minute": 100, "remaining_this_minute": 100}


async def test_a_minute_that_turns_while_a_request_is_refused_costs_no_extra_wait(db: Database) -> None:
    clock = FakeClock(start=1_800_000_000.0 + 59)  # one second before a minute turns

    class TurnsDuringTheTake(RequestBudget):
        turned = False

        async def _take(self, minute: int) -> bool:
            taken = await super()._take(minute)
            if not taken and not self.turned:
                self.turned = True
                await clock.advance(1)  # the refusal was on its way back when the minute turned
            return taken

    budget = TurnsDuringTheTake(db, clock, 1)
    assert await budget.acquire() == int(clock.now() // 60)

    counted_in = await asyncio.wait_for(budget.acquire(), 2)  # nothing moves the clock again

    assert counted_in == int(clock.now() // 60) and budget.waits == 0
