"""The shared rate limiter: a moving window per key, in memory or Redis; an outage fails open (or closed)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from limits.aio.storage import MemoryStorage

from gateway import ratelimit
from gateway.app import create_app
from gateway.ratelimit import (
    LIMITER,
    Decision,
    RateLimiter,
    SweepingMemoryStorage,
    headers,
    limiter_ctx,
    parse_rate,
)
from sync.config import Config, GatewayConfig
from tests.redis_server import redis_url  # noqa: F401 (fixture)


def closed_port() -> int:
    """A local port nothing listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    # A private redis-server (tests/redis_server.py), so no other run's counts leak in.
    rl = RateLimiter("memory://" if request.param == "memory" else request.getfixturevalue("redis_url"))
    yield rl
    await rl.close()


def fresh_key() -> str:
    """Redis outlives a test run: every test counts under its own key."""
    return f"test:{uuid.uuid4()}"


async def test_hits_up_to_the_limit_are_allowed_and_count_down(limiter: RateLimiter) -> None:
    key = fresh_key()

    decisions = [await limiter.hit("3/minute", key) for _ in range(3)]

    assert [(d.allowed, d.remaining) for d in decisions] == [(True, 2), (True, 1), (True, 0)]
    assert all(d.limit == 3 for d in decisions)
    assert all(0 < d.reset_after <= 60 for d in decisions)


async def test_the_hit_over_the_limit_is_denied_until_the_window_moves(limiter: RateLimiter) -> None:
    key = fresh_key()
    for _ in range(3):
        await limiter.hit("3/minute", key)

    denied = await limiter.hit("3/minute", key)

    assert (denied.allowed, denied.remaining) == (False, 0)
    assert 55 <= denied.reset_after <= 60
    assert limiter.errors == 0


async def test_keys_are_counted_separately(limiter: RateLimiter) -> None:
    first, second = fresh_key(), fresh_key()
    await limiter.hit("1/minute", first)

    assert (await limiter.hit("1/minute", second)).allowed
    assert not (await limiter.hit("1/minute", first)).allowed


async def test_in_memory_counters_are_swept_at_most_once_a_second_not_per_hit() -> None:
    # The override hooks a private name of limits' MemoryStorage: a release that renames it must fail here.
    assert "_MemoryStorage__schedule_expiry" in vars(MemoryStorage)
    limiter = RateLimiter("memory://")
    storage = limiter._storage
    assert isinstance(storage, SweepingMemoryStorage)
    sweeps = set()
    for _ in range(200):
        await limiter.hit("1000/minute", "busy")
        await asyncio.sleep(0)  # let a sweep task run and finish, as between requests
        sweeps.add(storage.timer)

    assert len(sweeps) == 1  # limits alone starts one per hit here
    await limiter.close()


async def test_an_expired_counter_restarts_at_once_and_the_next_sweep_frees_it() -> None:
    limiter = RateLimiter("memory://")
    storage = limiter._storage
    assert isinstance(storage, SweepingMemoryStorage)
    await limiter.hit("1/minute", "old")
    assert not (await limiter.hit("1/minute", "old")).allowed
    key = parse_rate("1/minute").key_for("old")
    storage.expirations[key] = time.time() - 1  # the window ended: no sweep has run since

    assert (await limiter.hit("1/minute", "old")).allowed

    storage.expirations[key] = time.time() - 1
    storage._next_sweep = 0.0  # a second has passed
    await limiter.hit("1/minute", "other")
    await storage.timer
    assert key not in storage.storage
    await limiter.close()


async def test_two_limiters_on_one_redis_share_the_count(redis_url: str) -> None:  # noqa: F811
    key = fresh_key()
    one, two = RateLimiter(redis_url), RateLimiter(redis_url)
    try:
        await one.hit("2/minute", key)
        await two.hit("2/minute", key)
        assert not (await one.hit("2/minute", key)).allowed
    finally:
        await one.close()
        await two.close()


async def test_redis_down_fails_open_and_is_counted() -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{closed_port()}/0", fail_open=True)
    try:
        decision = await limiter.hit("1/minute", "k")
    finally:
        await limiter.close()

    assert decision.allowed
    assert limiter.errors == 1


async def test_redis_down_fails_closed_when_configured_so() -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{closed_port()}/0", fail_open=False)
    try:
        decision = await limiter.hit("1/minute", "k")
    finally:
        await limiter.close()

    assert not decision.allowed
    assert "Retry-After" in headers(decision)


async def test_a_hung_redis_stalls_one_request_then_is_left_alone_for_the_cool_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connections = 0

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.read()  # accept, never answer
        writer.close()

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(ratelimit, "REDIS_SOCKET_TIMEOUT", 0.1)
    limiter = RateLimiter(f"redis://127.0.0.1:{port}/0", cooldown=60)
    try:
        decisions = [await limiter.hit("1/minute", "k") for _ in range(6)]
    finally:
        await limiter.close()
        server.close()

    assert all(d.allowed for d in decisions)
    assert limiter.errors == 6
    assert connections == 1


def test_headers_are_plain_integers_with_retry_after_only_when_denied() -> None:
    assert headers(Decision(True, 600, 599, 60)) == {
        "RateLimit-Limit": "600", "RateLimit-Remaining": "599", "RateLimit-Reset": "60",
    }
    assert headers(Decision(False, 600, 0, 0))["Retry-After"] == "1"


def test_a_rate_is_parsed_once() -> None:
    parse_rate.cache_clear()
    parse_rate("600/minute")
    parse_rate("600/minute")

    assert parse_rate.cache_info().hits == 1


def test_an_unknown_storage_is_refused() -> None:
    with pytest.raises(ValueError, match="memory:// or redis://"):
        RateLimiter("memcached://127.0.0.1:11211")


async def test_the_limiter_lives_in_a_cleanup_context(tmp_path: Path, aiohttp_client: object) -> None:
    app = create_app(Config(gateway=GatewayConfig(data_dir=tmp_path)))
    ratelimit.setup(app)
    ratelimit.setup(app)

    async def limited(request: web.Request) -> web.Response:
        decision = await request.app[LIMITER].hit("1/minute", "one")
        return web.Response(status=200 if decision.allowed else 429, headers=headers(decision))

    app.router.add_get("/limited", limited)
    client = await aiohttp_client(app)  # type: ignore[operator]

    assert [(await client.get("/limited")).status for _ in range(2)] == [200, 429]
    assert list(app.cleanup_ctx).count(limiter_ctx) == 1
