"""Several gateway processes on one database, coordinated through Redis, end to end.

Every gateway here is a real `lore-gateway serve` subprocess on 127.0.0.1 against the GitLab simulator
(served by the test's own event loop) and a private redis-server the test may stop and restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.ratelimit import FLUSH_INTERVAL
from gateway.simulator.gitlab import GitLabSimulator
from tests.redis_server import RedisServer, free_port, redis_server, redis_url  # noqa: F401 (fixtures)
from tests.test_cli_sync import cli, cli_env

SETTLE = 20.0  # a guard against a hung test, never a timing assumption
SECRET = "hook-secret"
WIDGETS = 1001  # acme/widgets in the conftest simulator


# -- gateway processes ------------------------------------------------------------------------------


@dataclass
class Gateway:
    proc: asyncio.subprocess.Process
    url: str
    stderr: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.proc.wait(), SETTLE + 10)
        if self._drain is not None:
            await self._drain
        return code


async def start_gateway(env: dict[str, str], *args: str) -> Gateway:
    """`serve` on a free port; returns once it says it is serving (its stderr keeps being read)."""
    port = free_port()
    env = {**env, "LORE_GATEWAY_GATEWAY_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", *args, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    gateway = Gateway(proc, f"http://127.0.0.1:{port}")
    assert proc.stderr is not None
    async with asyncio.timeout(SETTLE):
        while True:
            line = (await proc.stderr.readline()).decode()
            if not line:
                raise AssertionError("serve exited before serving:\n" + "".join(gateway.stderr))
            gateway.stderr.append(line)
            if "serving on" in line:
                break
    gateway._drain = asyncio.create_task(_drain(proc.stderr, gateway.stderr))
    return gateway


async def _drain(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode())


@pytest.fixture
async def gateways() -> AsyncIterator[Callable[..., Any]]:
    started: list[Gateway] = []

    async def start(env: dict[str, str], *args: str) -> Gateway:
        gateway = await start_gateway(env, *args)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.stop()


async def scaleout_env(tmp_path: Path, gitlab_url: str, redis: str | None, **extra: str) -> tuple[dict, str]:
    """A synced data dir (no start-up run will race the test) and a read+sync token for it."""
    settings = {"webhook_secrets": SECRET, "sync_debounce": "200ms", "sync_max_wait": "2s",
                "ratelimit_api": "100000/minute", "gateway_log_level": "warning", **extra}
    if redis:
        settings["redis_url"] = redis
    env = cli_env(tmp_path, gitlab_url, **settings)
    code, _, err = await cli(env, "sync")
    assert code == 0, err
    code, out, err = await cli(env, "--json", "token", "create", "--name", "t", "--scope", "read",
                               "--scope", "sync")
    assert code == 0, err
    return env, orjson.loads(out)["token"]


def runs(tmp_path: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(tmp_path / "lore.db") as conn:
        return conn.execute("SELECT id, trigger, status FROM sync_runs ORDER BY id").fetchall()


def title_in_mirror(tmp_path: Path, iid: int) -> str:
    with sqlite3.connect(tmp_path / "lore.db") as conn:
        return conn.execute("SELECT title FROM issues WHERE project_id = ? AND iid = ?", (WIDGETS, iid)).fetchone()[0]


async def eventually(condition: Callable[[], Any], *, every: float = 0.05) -> None:
    deadline = time.monotonic() + SETTLE
    while not await _truthy(condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)


async def _truthy(value: Any) -> bool:
    return bool(await value) if asyncio.iscoroutine(value) else bool(value)


# -- an EventSource client --------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    event: str
    data: dict[str, Any]
    id: int | None


class EventStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> Received:
        fields: dict[str, str] = {}
        async with asyncio.timeout(SETTLE):
            while True:
                line = (await self.response.content.readline()).decode().rstrip("\r\n")
                if line == "" and "event" in fields:
                    event_id = fields.get("id")
                    return Received(fields["event"], orjson.loads(fields.get("data", "{}")),
                                    int(event_id) if event_id else None)
                if line and not line.startswith(":"):
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")

    async def until(self, name: str, accept: Callable[[Received], bool] = lambda r: True) -> list[Received]:
        seen = []
        while True:
            received = await self.next()
            seen.append(received)
            if received.event == name and accept(received):
                return seen


async def open_stream(session: aiohttp.ClientSession, gateway: Gateway, token: str,
                      last_event_id: int | None = None) -> EventStream:
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    response = await session.get(f"{gateway.url}/api/v1/events", headers=headers)
    assert response.status == 200
    stream = EventStream(response)
    assert (await stream.next()).event == "scheduler.state"
    return stream


# -- with Redis ---------------------------------------------------------------------------------------


async def test_a_webhook_to_one_process_gives_exactly_one_run_and_the_other_streams_its_progress(
    tmp_path: Path, gitlab_url: str, simulator: GitLabSimulator, redis_url: str, gateways  # noqa: F811
) -> None:
    env, token = await scaleout_env(tmp_path, gitlab_url, redis_url)
    a, b = await gateways(env), await gateways(env)
    before = runs(tmp_path)
    async with aiohttp.ClientSession() as session:
        on_b = await open_stream(session, b, token)
        hook = simulator.update_issue(WIDGETS, 3, title="Renamed through A")
        assert await simulator.deliver(hook, f"{a.url}/webhooks/gitlab", secret=SECRET, session=session) == 202
        seen = await on_b.until("sync.finished")
    names = [r.event for r in seen]
    assert names.index("webhook.received") < names.index("sync.started") < names.index("sync.finished")
    started = next(r for r in seen if r.event == "sync.started")
    assert seen[-1].data["run_id"] == started.data["run_id"]
    # One run; a second would start within debounce + the lock retry (about a second): wait past that.
    await asyncio.sleep(2.5)
    new = runs(tmp_path)[len(before):]
    assert [(trigger, status) for _, trigger, status in new] == [("webhook", "succeeded")]
    assert title_in_mirror(tmp_path, 3) == "Renamed through A"


async def test_one_token_alternating_between_two_processes_is_limited_at_the_configured_total_when_strict(
    tmp_path: Path, gitlab_url: str, redis_url: str, gateways  # noqa: F811
) -> None:
    env, token = await scaleout_env(tmp_path, gitlab_url, redis_url, ratelimit_api="10/minute",
                                    ratelimit_strict="true")
    a, b = await gateways(env), await gateways(env)
    statuses = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for n in range(14):
            async with session.get(f"{(a, b)[n % 2].url}/api/v1/projects") as response:
                statuses.append(response.status)
    assert statuses == [200] * 10 + [429] * 4


async def test_one_token_spent_across_two_processes_is_refused_by_both_within_the_documented_overshoot(
    tmp_path: Path, gitlab_url: str, redis_url: str, gateways  # noqa: F811
) -> None:
    env, token = await scaleout_env(tmp_path, gitlab_url, redis_url, ratelimit_api="10/minute")
    a, b = await gateways(env), await gateways(env)
    statuses: list[int] = []
    last: list[int] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:

        async def get(gateway: Any) -> int:
            async with session.get(f"{gateway.url}/api/v1/projects") as response:
                return response.status

        for n in range(14):
            statuses.append(await get((a, b)[n % 2]))
        for _ in range(50):  # each learns the other's hits at its next flush of its own (every 0.1 s)
            await asyncio.sleep(FLUSH_INTERVAL)
            last = [await get(a), await get(b)]
            statuses += last
            if last == [429, 429]:
                break
    assert last == [429, 429]
    # Neither process alone admits more than the budget: together, at most one budget over (docs/scaling.md).
    assert 10 <= statuses.count(200) <= 20


async def test_last_event_id_on_one_process_replays_the_events_another_published(
    tmp_path: Path, gitlab_url: str, simulator: GitLabSimulator, redis_url: str, gateways  # noqa: F811
) -> None:
    env, token = await scaleout_env(tmp_path, gitlab_url, redis_url, sync_debounce="30s", sync_max_wait="60s")
    a, b = await gateways(env), await gateways(env)
    async with aiohttp.ClientSession() as session:
        on_a = await open_stream(session, a, token)
        for iid in (1, 2, 3):
            hook = simulator.update_issue(WIDGETS, iid, title=f"Change {iid}")
            await simulator.deliver(hook, f"{a.url}/webhooks/gitlab", secret=SECRET, session=session)
        received = [r for r in await on_a.until("webhook.received", lambda r: r.data["iid"] == 3)
                    if r.event == "webhook.received"]
        on_a.response.close()
        on_b = await open_stream(session, b, token, last_event_id=received[0].id)
        replayed = [r for r in await on_b.until("webhook.received", lambda r: r.data["iid"] == 3)
                    if r.event == "webhook.received"]
    assert [(r.id, r.data["iid"]) for r in replayed] == [(r.id, r.data["iid"]) for r in received[1:]]


async def test_a_change_synced_by_one_process_invalidates_the_others_cache_within_a_second(
    tmp_path: Path, gitlab_url: str, simulator: GitLabSimulator, redis_url: str, gateways  # noqa: F811
) -> None:
    env, token = await scaleout_env(tmp_path, gitlab_url, redis_url)
    a, b = await gateways(env), await gateways(env)
    issue = f"{b.url}/api/v1/projects/{WIDGETS}/issues/5"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.get(issue) as response:
            old_etag = response.headers["ETag"]
        on_a = await open_stream(session, a, token)
        hook = simulator.update_issue(WIDGETS, 5, title="Changed on A")
        await simulator.deliver(hook, f"{a.url}/webhooks/gitlab", secret=SECRET, session=session)
        await on_a.until("sync.finished")
        loop = asyncio.get_running_loop()
        finished_at = loop.time()

        async def fresh_on_b() -> bool:
            async with session.get(issue, headers={"If-None-Match": old_etag}) as response:
                return response.status == 200 and (await response.json())["title"] == "Changed on A"

        await eventually(fresh_on_b, every=0.02)
        assert loop.time() - finished_at < 1.0


async def test_with_redis_stopped_mid_run_no_webhook_is_lost_and_the_mirror_converges_when_it_returns(
    tmp_path: Path, gitlab_url: str, simulator: GitLabSimulator, redis_server: RedisServer, gateways  # noqa: F811
) -> None:
    env, token = await scaleout_env(tmp_path, gitlab_url, redis_server.url)
    a, b = await gateways(env), await gateways(env)
    simulator.latency = 0.05  # a run that lasts long enough to stop Redis in the middle of it
    async with aiohttp.ClientSession() as session:
        on_a = await open_stream(session, a, token)
        first = simulator.update_issue(WIDGETS, 7, title="Before the outage")
        await simulator.deliver(first, f"{a.url}/webhooks/gitlab", secret=SECRET, session=session)
        await on_a.until("sync.started")
        redis_server.stop()
        during = []
        for iid, gateway in ((8, a), (9, b), (10, a)):
            hook = simulator.update_issue(WIDGETS, iid, title=f"During the outage {iid}")
            during.append(await simulator.deliver(hook, f"{gateway.url}/webhooks/gitlab", secret=SECRET,
                                                  session=session))
        async with session.get(f"{b.url}/api/v1/projects",
                               headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200  # REST serves, rate limits fail open
        redis_server.start()
        simulator.latency = 0.0

        def converged() -> bool:
            titles = {iid: title_in_mirror(tmp_path, iid) for iid in (7, 8, 9, 10)}
            return titles == {7: "Before the outage", 8: "During the outage 8", 9: "During the outage 9",
                              10: "During the outage 10"}

        await eventually(converged)
        await eventually(lambda: _pending(tmp_path) == 0)
    assert during == [202, 202, 202]
    assert all(status != "running" for _, _, status in runs(tmp_path))
    assert any("delivered in this process only" in line for line in a.stderr + b.stderr)


def _pending(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "lore.db") as conn:
        return conn.execute("SELECT count(*) FROM webhook_events WHERE processed_at IS NULL").fetchone()[0]


# -- serve --workers ------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _workers_of(pid: int) -> list[int]:
    return [child for child in _children(pid)
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


async def test_serve_workers_runs_n_processes_on_one_port_and_stops_cleanly_on_sigterm(
    tmp_path: Path, gitlab_url: str, gateways
) -> None:
    env, token = await scaleout_env(tmp_path, gitlab_url, None)
    gateway = await gateways(env, "--workers", "2")
    workers = _workers_of(gateway.proc.pid)
    assert len(workers) == 2
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.get(f"{gateway.url}/api/v1/sync/status") as response:
            status = await response.json()
    assert any("rate limits are per process" in w for w in status["warnings"])
    assert await gateway.stop() == 0
    assert not any(_alive(pid) for pid in workers)


async def test_a_worker_that_dies_stops_the_others_and_serve_exits_1(tmp_path: Path, gitlab_url: str,
                                                                     gateways) -> None:
    env, _ = await scaleout_env(tmp_path, gitlab_url, None)
    gateway = await gateways(env, "--workers", "2")
    first, second = _workers_of(gateway.proc.pid)
    os.kill(first, signal.SIGKILL)
    assert await asyncio.wait_for(gateway.proc.wait(), SETTLE) == 1
    assert not _alive(second)
    assert any("exited with code -9" in line for line in gateway.stderr)
