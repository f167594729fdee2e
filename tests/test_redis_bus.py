"""The Redis-backed bus, lock and leader lease against a real redis-server (two "processes" = two instances).

Each instance has its own connections and origin, exactly as two gateway processes would; what they
share is only what goes through Redis.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest

from sync.control.lock import LockUnavailable
from sync.events import Event
from sync.scaleout.redis_bus import RedisEventBus, redis_client
from sync.scaleout.redis_lock import LeaderLease, RedisLock
from tests.redis_server import RedisServer, redis_server, redis_url  # noqa: F401 (fixtures)

SETTLE = 5.0  # a guard against a hung test, never a timing assumption


async def until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SETTLE
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def buses(redis_url: str) -> AsyncIterator[Callable[..., RedisEventBus]]:  # noqa: F811
    opened: list[RedisEventBus] = []

    async def open_bus(url: str = redis_url, **kwargs) -> RedisEventBus:
        bus = RedisEventBus(url, **kwargs)
        await bus.start()
        opened.append(bus)
        return bus

    yield open_bus
    for bus in opened:
        await bus.close()


async def test_events_published_by_two_processes_reach_both_with_the_same_increasing_ids(buses) -> None:
    a, b = await buses(), await buses()
    sub_a, sub_b = a.subscribe(), b.subscribe()
    for n in range(5):
        (a if n % 2 else b).publish("sync.progress", {"n": n})
    await until(lambda: sub_a.queue.qsize() == 5 and sub_b.queue.qsize() == 5)
    seen_a = [sub_a.queue.get_nowait() for _ in range(5)]
    seen_b = [sub_b.queue.get_nowait() for _ in range(5)]
    assert seen_a == seen_b
    ids = [e.id for e in seen_a]
    assert ids == sorted(ids) and len(set(ids)) == 5
    # Between two publishers the order is Redis's; each publisher's own order is kept.
    order = [e.data["n"] for e in seen_a]
    assert [n for n in order if n % 2] == [1, 3] and [n for n in order if not n % 2] == [0, 2, 4]


async def test_local_listeners_see_own_events_and_remote_listeners_only_the_others(buses) -> None:
    a, b = await buses(), await buses()
    local_b: list[Event] = []
    remote_b: list[Event] = []
    b.add_listener(local_b.append)
    b.add_remote_listener(remote_b.append)
    a.publish("data.changed", {"project_id": 1})
    b.publish("webhook.received", {"event_id": "1"})
    await until(lambda: len(remote_b) == 1 and b.last_id is not None and b.last_id >= 2)
    assert [e.name for e in local_b] == ["webhook.received"]
    assert [e.name for e in remote_b] == ["data.changed"] and remote_b[0].id is not None


async def test_a_process_replays_events_another_published_from_its_ring_buffer(buses) -> None:
    a, b = await buses(), await buses()
    for n in range(4):
        a.publish("sync.progress", {"n": n})
    await until(lambda: len(b.since(0) or []) == 4)
    first = b.since(0)[0].id
    assert [e.data["n"] for e in b.since(first)] == [1, 2, 3]
    assert a.since(first) == b.since(first)


async def test_a_process_started_later_fills_its_ring_buffer_from_the_stream(buses) -> None:
    a = await buses()
    for n in range(3):
        a.publish("sync.progress", {"n": n})
    await until(lambda: len(a.since(0) or []) == 3)
    late = await buses()
    assert late.since(0) == a.since(0)


async def test_the_stream_is_trimmed_to_about_the_ring_size(buses, redis_url: str) -> None:  # noqa: F811
    a = await buses(buffer_size=10)
    for n in range(500):
        a.publish("sync.progress", {"n": n})
    await until(lambda: a.last_id is not None and a.last_id >= 500)
    client = redis_client(redis_url)
    try:
        assert await client.xlen("lore-gateway:events") < 200  # approximate MAXLEN trims whole nodes
    finally:
        await client.aclose()


async def test_without_redis_events_are_delivered_locally_and_sharing_resumes_after_a_restart(
    buses, redis_server: RedisServer, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    a, b = await buses(redis_server.url), await buses(redis_server.url)
    sub_a, sub_b = a.subscribe(), b.subscribe()
    a.publish("sync.started", {"run_id": 1})
    await until(lambda: sub_b.queue.qsize() == 1)
    before = b.last_id or 0
    caplog.set_level(logging.WARNING, "lore_gateway.bus")
    redis_server.stop()
    await until(lambda: not a.shared)
    down = a.publish("sync.finished", {"run_id": 1})
    assert down.id is not None and sub_a.queue.qsize() == 2  # delivered here, at once, with a local id
    assert "delivered in this process only" in caplog.text
    redis_server.start()  # an empty Redis: the id counter starts again from nothing
    await until(lambda: a.shared and b.shared)
    after = b.publish("sync.started", {"run_id": 2})
    del after
    await until(lambda: sub_a.queue.qsize() == 3 and sub_b.queue.qsize() == 2)
    resumed = [sub_a.queue.get_nowait() for _ in range(3)][-1]
    assert resumed.data == {"run_id": 2} and resumed.id is not None and resumed.id > (down.id or 0) > before


# -- the lock and the lease ---------------------------------------------------------------------------


@pytest.fixture
async def client(redis_url: str):  # noqa: F811
    redis = redis_client(redis_url)
    yield redis
    await redis.aclose()


async def test_a_held_lock_refuses_another_owner_and_fencing_tokens_only_grow(client) -> None:
    first = RedisLock(client, "t:lock", "host-a:1", ttl=5)
    second = RedisLock(client, "t:lock", "host-b:2", ttl=5)
    token = await first.try_acquire()
    assert token is not None and await second.try_acquire() is None
    assert await second.holder() == "host-a:1"
    await first.release()
    later = await second.try_acquire()
    assert later is not None and later > token


async def test_an_expired_lock_goes_to_the_next_owner_and_the_old_holder_cannot_renew_it(client) -> None:
    first = RedisLock(client, "t:lock", "host-a:1", ttl=0.1)
    second = RedisLock(client, "t:lock", "host-b:2", ttl=5)
    await first.try_acquire()
    await asyncio.sleep(0.2)
    assert await second.try_acquire() is not None
    assert await first.renew() is False
    await first.release()  # not ours any more: leaves the new holder alone
    assert await second.holder() == "host-b:2"


async def test_an_unreachable_redis_is_lock_unavailable_not_a_refusal() -> None:
    from tests.redis_server import free_port

    redis = redis_client(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(LockUnavailable):
            await RedisLock(redis, "t:lock", "host-a:1", ttl=5).try_acquire()
    finally:
        await redis.aclose()


async def test_exactly_one_of_two_processes_leads_and_the_other_takes_over_when_it_stops(client) -> None:
    a = LeaderLease(RedisLock(client, "t:leader", "host-a:1", ttl=0.3))
    b = LeaderLease(RedisLock(client, "t:leader", "host-b:2", ttl=0.3))
    await a.start()
    await b.start()
    try:
        assert (a.leader, b.leader) == (True, False)
        assert a.allows_timer() and not b.allows_timer()
        await a.stop()
        await until(lambda: b.leader)
    finally:
        await a.stop()
        await b.stop()


async def test_while_redis_is_unreachable_every_process_may_run_the_timer(redis_server: RedisServer) -> None:  # noqa: F811
    redis = redis_client(redis_server.url)
    lease = LeaderLease(RedisLock(redis, "t:leader", "host-b:2", ttl=0.3))
    other = RedisLock(redis, "t:leader", "host-a:1", ttl=30)
    try:
        await other.try_acquire()
        await lease.step()
        assert not lease.allows_timer()
        redis_server.stop()
        await lease.step()
        assert lease.allows_timer()
    finally:
        await lease.stop()
        await redis.aclose()
