"""`/api/v1/sync/...`: the status document, the run log, POST /sync (202, coalescing) and resume.

The scheduler is the real one on a FakeClock; its runs go to a scripted fake runner that writes real
`sync_runs` rows, so backoff and pause come from the scheduler's own policy, not from hand-written state.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.keys import BUS, CLOCK, CONFIG, DB, SCHEDULER
from sync.clock import FakeClock, utc_iso
from sync.config import Config, load_config
from sync.control.runs import RunLog
from sync.control.scheduler import Scheduler
from sync.errors import PermanentError, TransientError
from sync.store.db import Database
from tests.conftest import FakeRunner

SETTLE = 5.0  # a guard against a hung test, never a timing assumption
STATUS_FIELDS = {"scheduler_state", "last_sync", "last_success_at", "recent_runs", "next_run_at", "backoff",
                 "paused_reason", "pending_events"}
RUN_FIELDS = {"id", "trigger", "profile", "status", "stage", "counts", "error_code", "error_message",
              "transient", "started_at", "finished_at"}


def gateway_config(data_dir: Path, *, gitlab: bool = True) -> Config:
    values = {
        "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir),
        "LORE_GATEWAY_AUTH_SIGNING_KEYS": "test-key-0123456789abcdef0123456789abcdef",
        "LORE_GATEWAY_SYNC_BACKOFF_BASE": "1m",
    }
    if gitlab:  # never contacted: runs go to the fake runner
        values.update({"LORE_GATEWAY_GITLAB_URL": "http://gitlab.invalid", "LORE_GATEWAY_GITLAB_TOKEN": "t",
                       "LORE_GATEWAY_GITLAB_PROJECTS": "acme/widgets"})
    return load_config(None, values)


@dataclass
class Gateway:
    client: TestClient
    runner: FakeRunner | None
    clock: FakeClock

    @property
    def app(self) -> web.Application:
        return self.client.app

    @property
    def scheduler(self) -> Scheduler:
        return self.app[SCHEDULER]

    async def token(self, *scopes: str) -> dict[str, str]:
        created = await self.app[TOKENS].create("test", list(scopes), None)
        return {"Authorization": f"Bearer {created.token}"}

    async def settle(self) -> None:
        await asyncio.wait_for(self.scheduler.idle(), SETTLE)

    async def status(self) -> dict[str, Any]:
        response = await self.client.get("/api/v1/sync/status", headers=await self.token("read"))
        assert response.status == 200
        return await response.json()

    async def post_sync(self, **kwargs: Any) -> Any:
        return await self.client.post("/api/v1/sync", headers=await self.token("sync"), **kwargs)


async def a_fresh_mirror(db: Database, clock: FakeClock) -> None:
    """A succeeded run that just finished: the scheduler has nothing due at start-up."""
    runs = RunLog(db, clock)
    await runs.finish(await runs.start("manual", "balanced", "earlier"), "succeeded", {}, [])


def with_fake_scheduler(app: web.Application, runner_box: list[FakeRunner]) -> None:
    """A real Scheduler on the app's database and clock, whose runs go to a FakeRunner."""

    async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
        clock = app[CLOCK]
        assert isinstance(clock, FakeClock)
        await a_fresh_mirror(app[DB], clock)
        runner = FakeRunner(app[DB], clock)
        runner_box.append(runner)
        scheduler = Scheduler(app[DB], runner, app[BUS], clock, app[CONFIG], rng=random.Random(1))
        app[SCHEDULER] = scheduler
        await scheduler.start()
        yield
        await scheduler.stop()

    app.cleanup_ctx.append(scheduler_ctx)


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
def gateway_for(aiohttp_client: Any, tmp_path: Path) -> GatewayFactory:
    async def build(*, gitlab: bool = True, scheduler: bool = True) -> Gateway:
        clock = FakeClock()
        app = create_app(gateway_config(tmp_path / "data", gitlab=gitlab), clock=clock, scheduler=False)
        box: list[FakeRunner] = []
        if scheduler:
            with_fake_scheduler(app, box)
        client = await aiohttp_client(app)
        gateway = Gateway(client, box[0] if box else None, clock)
        if scheduler:
            await gateway.settle()
        return gateway

    return build


@pytest.fixture
async def gw(gateway_for: GatewayFactory) -> Gateway:
    return await gateway_for()


# -- GET /api/v1/sync/status ------------------------------------------------------------------------------


async def test_status_has_every_documented_field_with_rfc3339_utc_timestamps(gw: Gateway) -> None:
    status = await gw.status()
    assert set(status) >= STATUS_FIELDS
    assert status["scheduler_state"] == "idle"
    assert set(status["last_sync"]) >= RUN_FIELDS
    assert status["last_success_at"] == utc_iso(gw.clock.now())
    assert status["next_run_at"].endswith("Z")
    assert (status["backoff"], status["paused_reason"], status["pending_events"]) == (None, None, 0)


async def test_status_needs_a_token_with_the_read_scope(gw: Gateway) -> None:
    assert (await gw.client.get("/api/v1/sync/status")).status == 401
    assert (await gw.client.get("/api/v1/sync/status", headers=await gw.token("sync"))).status == 403


async def test_status_carries_an_etag_and_an_unchanged_status_is_304(gw: Gateway) -> None:
    headers = await gw.token("read")
    first = await gw.client.get("/api/v1/sync/status", headers=headers)
    etag = first.headers["ETag"]
    again = await gw.client.get("/api/v1/sync/status", headers={**headers, "If-None-Match": etag})
    assert again.status == 304
    gw.scheduler.request_run()
    await gw.settle()
    changed = await gw.client.get("/api/v1/sync/status", headers={**headers, "If-None-Match": etag})
    assert changed.status == 200


async def test_transient_failures_show_as_backoff_with_failures_and_the_next_retry(gw: Gateway) -> None:
    assert gw.runner is not None
    gw.runner.script = [TransientError("gitlab_unavailable", "502 Bad Gateway")] * 2
    for _ in range(2):
        assert (await gw.post_sync()).status == 202
        await gw.settle()
    status = await gw.status()
    assert status["scheduler_state"] == "backoff"
    assert status["backoff"]["consecutive_failures"] == 2
    assert status["backoff"]["next_retry_at"] > utc_iso(gw.clock.now())
    assert status["last_sync"]["status"] == "failed"
    assert status["last_sync"]["error_code"] == "gitlab_unavailable"


async def test_a_permanent_failure_shows_as_paused_with_its_reason(gw: Gateway) -> None:
    assert gw.runner is not None
    gw.runner.script = [PermanentError("gitlab_unauthorized", "401 Unauthorized: check the token")]
    await gw.post_sync()
    await gw.settle()
    status = await gw.status()
    assert status["scheduler_state"] == "paused"
    assert status["paused_reason"] == "gitlab_unauthorized: 401 Unauthorized: check the token"
    assert (status["backoff"], status["next_run_at"]) == (None, None)


async def test_without_a_scheduler_status_is_read_from_the_database(gateway_for: GatewayFactory) -> None:
    gw = await gateway_for(scheduler=False)
    async with gw.app[DB].transaction() as conn:  # as a scheduler in another process left it
        await conn.execute("UPDATE service_state SET paused_reason = 'gitlab_forbidden: 403' WHERE id = 1")
    status = await gw.status()
    assert set(status) >= STATUS_FIELDS
    assert (status["scheduler_state"], status["paused_reason"]) == ("paused", "gitlab_forbidden: 403")


# -- GET /api/v1/sync/runs --------------------------------------------------------------------------------


async def test_runs_are_listed_newest_first_twenty_by_default(gw: Gateway) -> None:
    runs = RunLog(gw.app[DB], gw.clock)
    for _ in range(24):
        await runs.finish(await runs.start("timer", "fast", "x"), "succeeded", {"issues": 0}, [])
    response = await gw.client.get("/api/v1/sync/runs", headers=await gw.token("read"))
    body = await response.json()
    assert body["next_cursor"] is None
    ids = [run["id"] for run in body["items"]]
    assert ids == list(range(25, 5, -1))
    assert set(body["items"][0]) >= RUN_FIELDS


async def test_runs_limit_caps_the_list(gw: Gateway) -> None:
    response = await gw.client.get("/api/v1/sync/runs", params={"limit": "1"}, headers=await gw.token("read"))
    assert len((await response.json())["items"]) == 1


@pytest.mark.parametrize("limit", ["0", "101", "abc", "-1", " 5", "+5", "1_0", ""])
async def test_a_bad_limit_is_400_invalid_parameter(gw: Gateway, limit: str) -> None:
    response = await gw.client.get("/api/v1/sync/runs", params={"limit": limit}, headers=await gw.token("read"))
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "invalid_parameter"


# -- POST /api/v1/sync ------------------------------------------------------------------------------------


async def test_post_sync_is_202_queued_and_the_scheduler_runs_it(gw: Gateway) -> None:
    response = await gw.post_sync()
    assert response.status == 202
    assert await response.json() == {"queued": True, "run_id": None}
    await gw.settle()
    assert gw.runner is not None
    assert [(r.trigger, r.profile) for r in gw.runner.requests] == [("api", "balanced")]


async def test_two_posts_during_a_run_coalesce_into_one_follow_up_run(gw: Gateway) -> None:
    assert gw.runner is not None
    gw.runner.hold = True
    await gw.post_sync()
    await asyncio.wait_for(gw.runner.entered.wait(), SETTLE)
    assert [(await gw.post_sync()).status for _ in range(2)] == [202, 202]
    gw.runner.hold = False  # the follow-up run goes straight through
    gw.runner.release()
    await gw.settle()
    assert [r.trigger for r in gw.runner.requests] == ["api", "api"]


@pytest.mark.parametrize("kwargs", [{"json": {"profile": "fast"}}, {"params": {"profile": "fast"}},
                                    {"json": {"profile": "fast"}, "params": {"profile": "fast"}}])
async def test_the_profile_comes_from_the_body_or_the_query(gw: Gateway, kwargs: dict[str, Any]) -> None:
    assert (await gw.post_sync(**kwargs)).status == 202
    await gw.settle()
    assert gw.runner is not None
    assert [r.profile for r in gw.runner.requests] == ["fast"]


@pytest.mark.parametrize(("kwargs", "code"), [
    ({"json": {"profile": "turbo"}}, "invalid_parameter"),
    ({"params": {"profile": "turbo"}}, "invalid_parameter"),
    ({"json": {"profile": 3}}, "invalid_parameter"),
    ({"json": {"profile": "fast"}, "params": {"profile": "full"}}, "invalid_parameter"),
    ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, "invalid_json"),
    ({"json": ["fast"]}, "invalid_json"),
])
async def test_a_bad_profile_or_body_is_400_and_queues_nothing(gw: Gateway, kwargs: dict[str, Any],
                                                               code: str) -> None:
    headers = {**kwargs.pop("headers", {}), **await gw.token("sync")}
    response = await gw.client.post("/api/v1/sync", headers=headers, **kwargs)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == code
    await gw.settle()
    assert gw.runner is not None and gw.runner.requests == []


async def test_post_sync_needs_the_sync_scope(gw: Gateway) -> None:
    assert (await gw.client.post("/api/v1/sync")).status == 401
    response = await gw.client.post("/api/v1/sync", headers=await gw.token("read"))
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "forbidden"


async def test_post_sync_while_sync_is_disabled_is_503_not_ready_saying_why(gateway_for: GatewayFactory
                                                                            ) -> None:
    gw = await gateway_for(gitlab=False)
    response = await gw.post_sync()
    assert response.status == 503
    error = (await response.json())["error"]
    assert error == {"code": "not_ready", "message": "sync is disabled until gitlab.url and a token are set"}


async def test_post_sync_without_a_scheduler_is_503_not_ready(gateway_for: GatewayFactory) -> None:
    gw = await gateway_for(scheduler=False)
    response = await gw.post_sync()
    assert response.status == 503
    assert "without a scheduler" in (await response.json())["error"]["message"]


# -- POST /api/v1/sync/resume -----------------------------------------------------------------------------


async def test_resume_clears_a_pause_and_answers_with_the_new_status(gw: Gateway) -> None:
    assert gw.runner is not None
    gw.runner.script = [PermanentError("gitlab_forbidden", "403 Forbidden")]
    await gw.post_sync()
    await gw.settle()
    response = await gw.client.post("/api/v1/sync/resume", headers=await gw.token("admin"))
    assert response.status == 200
    status = await response.json()
    assert set(status) >= STATUS_FIELDS
    assert (status["paused_reason"], status["backoff"]) == (None, None)
    await gw.settle()
    assert (await gw.status())["scheduler_state"] == "idle"


async def test_resume_clears_a_backoff(gw: Gateway) -> None:
    assert gw.runner is not None
    gw.runner.script = [TransientError("gitlab_unavailable", "503")]
    await gw.post_sync()
    await gw.settle()
    response = await gw.client.post("/api/v1/sync/resume", headers=await gw.token("admin"))
    status = await response.json()
    assert (status["scheduler_state"], status["backoff"]) == ("idle", None)


@pytest.mark.parametrize("scope", ["read", "sync"])
async def test_resume_needs_the_admin_scope(gw: Gateway, scope: str) -> None:
    response = await gw.client.post("/api/v1/sync/resume", headers=await gw.token(scope))
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "forbidden"


async def test_without_a_scheduler_resume_clears_the_persisted_pause(gateway_for: GatewayFactory) -> None:
    gw = await gateway_for(scheduler=False)
    async with gw.app[DB].transaction() as conn:
        await conn.execute("UPDATE service_state SET paused_reason = 'gitlab_forbidden: 403',"
                           " consecutive_failures = 3, next_retry_at = ? WHERE id = 1", (gw.clock.now() + 60,))
    response = await gw.client.post("/api/v1/sync/resume", headers=await gw.token("admin"))
    status = await response.json()
    assert (status["scheduler_state"], status["paused_reason"], status["backoff"]) == ("idle", None, None)
