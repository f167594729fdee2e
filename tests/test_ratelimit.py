"""The shared rate limiter: a fixed window per key, in memory or Redis (local counts flushed, or strict);
an outage fails open (or closed)."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from gateway import ratelimit
from gateway.app import create_app
from gateway.ratelimit import (
    LIMITER,
    SWEEP_INTERVAL,
    Decision,
    RateLimiter,
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


@pytest.fixture(params=["memory", "redis", "redis-strict"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    # A private redis-server (tests/redis_server.py), so no other run's counts leak in.
    url = "memory://" if request.param == "memory" else request.getfixturevalue("redis_url")
    rl = RateLimiter(url, strict=request.param == "redis-strict")
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


async def test_ended_windows_are_swept_when_a_window_opens_at_most_once_a_second_not_per_hit() -> None:
    limiter = RateLimiter("memory://")
    windows = limiter.windows.windows
    for n in range(50):
        await limiter.hit("1/minute", f"address-{n}")
    for window in windows.values():
        window.ends_at = time.monotonic() - 1  # every window ended; no hit has opened one since

    await limiter.hit("1/minute", "one more")  # the first hit swept (nothing) less than a second ago
    assert len(windows) == 51  # ended windows are kept until the next sweep

    limiter.windows._next_sweep = time.monotonic()  # a second has passed
    await limiter.hit("1/minute", "another")  # a window opens: the sweep runs, and frees every ended one
    assert sorted(windows) == sorted(parse_rate("1/minute").key_for(k) for k in ("one more", "another"))
    assert SWEEP_INTERVAL >= 1.0
    await limiter.close()


async def test_an_ended_window_restarts_at_once_without_waiting_for_a_sweep() -> None:
    limiter = RateLimiter("memory://")
    await limiter.hit("1/minute", "old")
    assert not (await limiter.hit("1/minute", "old")).allowed
    limiter.windows.windows[parse_rate("1/minute").key_for("old")].ends_at = time.monotonic() - 0.001

    assert (await limiter.hit("1/minute", "old")).allowed
    await limiter.close()


async def test_two_strict_limiters_on_one_redis_share_the_count_at_every_hit(redis_url: str) -> None:  # noqa: F811
    key = fresh_key()
    one, two = RateLimiter(redis_url, strict=True), RateLimiter(redis_url, strict=True)
    try:
        await one.hit("2/minute", key)
        await two.hit("2/minute", key)
        assert not (await one.hit("2/minute", key)).allowed
    finally:
        await one.close()
        await two.close()


async def test_two_limiters_on_one_redis_share_the_count_from_their_own_next_flush(
    redis_url: str,  # noqa: F811
) -> None:
    key = fresh_key()
    one, two = RateLimiter(redis_url), RateLimiter(redis_url)
    try:
        await one.hit("2/minute", key)
        await two.hit("2/minute", key)
        assert await two.flush() and await one.flush()  # one's flush reads back two's hit too

        denied = await one.hit("2/minute", key)
        assert (denied.allowed, denied.remaining) == (False, 0)
        assert 55 <= denied.reset_after <= 60  # the window Redis keeps, not a new local one
    finally:
        await one.close()
        await two.close()


async def test_an_exhausted_budget_is_refused_by_every_limiter_after_at_most_one_flush_interval_of_overshoot(
    redis_url: str,  # noqa: F811
) -> None:
    key, budget = fresh_key(), 10
    limiters = [RateLimiter(redis_url) for _ in range(3)]
    try:
        # The worst case: every process spends the whole budget between two flushes.
        admitted = [sum([(await rl.hit(f"{budget}/minute", key)).allowed for _ in range(budget + 5)])
                    for rl in limiters]
        assert admitted == [budget] * 3  # no process alone goes over; together: one interval's worth each
        for rl in limiters:
            assert await rl.flush()

        assert [(await rl.hit(f"{budget}/minute", key)).allowed for rl in limiters] == [False] * 3
    finally:
        for rl in limiters:
            await rl.close()


async def test_many_hits_make_one_redis_round_trip_per_flush(redis_url: str) -> None:  # noqa: F811
    limiter = RateLimiter(redis_url)
    try:
        for n in range(500):
            await limiter.hit("1000/minute", f"{fresh_key()}-{n % 7}")
        assert limiter.round_trips == 0  # hits never wait on Redis
        assert await limiter.flush()

        assert limiter.round_trips == 1
    finally:
        await limiter.close()


async def test_the_flusher_sends_counts_on_its_own_and_close_sends_the_rest(
    redis_url: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
) -> None:
    monkeypatch.setattr(ratelimit, "FLUSH_INTERVAL", 0.01)
    key = fresh_key()
    writer, reader = RateLimiter(redis_url), RateLimiter(redis_url, strict=True)
    try:
        await writer.hit("5/minute", key)
        for _ in range(200):
            if writer.round_trips:
                break
            await asyncio.sleep(0.01)
        await writer.hit("5/minute", key)
        await writer.close()

        assert (await reader.hit("5/minute", key)).remaining == 2  # 2 flushed + this one
    finally:
        await reader.close()


async def test_redis_down_keeps_counting_in_the_process_and_counts_each_such_decision() -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{closed_port()}/0", fail_open=True)
    try:
        await limiter.hit("2/minute", "k")
        assert not await limiter.flush()
        decisions = [await limiter.hit("2/minute", "k") for _ in range(2)]
    finally:
        await limiter.close()

    assert [d.allowed for d in decisions] == [True, False]  # the process's own count still binds
    assert limiter.errors == 2


async def test_redis_down_refuses_from_the_first_failed_flush_until_redis_answers_when_closed() -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{closed_port()}/0", fail_open=False)
    try:
        assert (await limiter.hit("5/minute", "k")).allowed  # not known yet: no flush has failed
        assert not await limiter.flush()
        refused = await limiter.hit("5/minute", "k")
        assert not await limiter.flush()  # nothing pending, but the probe still finds Redis down
        again = await limiter.hit("5/minute", "k")
    finally:
        await limiter.close()

    assert not refused.allowed and not again.allowed
    assert "Retry-After" in headers(refused)


async def test_strict_redis_down_fails_open_and_is_counted() -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{closed_port()}/0", fail_open=True, strict=True)
    try:
        decision = await limiter.hit("1/minute", "k")
    finally:
        await limiter.close()

    assert decision.allowed
    assert limiter.errors == 1


async def test_strict_redis_down_fails_closed_when_configured_so() -> None:
    limiter = RateLimiter(f"redis://127.0.0.1:{closed_port()}/0", fail_open=False, strict=True)
    try:
        decision = await limiter.hit("1/minute", "k")
    finally:
        await limiter.close()

    assert not decision.allowed
    assert "Retry-After" in headers(decision)


async def test_a_hung_strict_redis_stalls_one_request_then_is_left_alone_for_the_cool_down(
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
    limiter = RateLimiter(f"redis://127.0.0.1:{port}/0", cooldown=60, strict=True)
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
