"""The scheduler: debounce, single flight, targeted runs, timer fallback, backoff and pause.

Time is a FakeClock moved by `Rig.step`, which waits for the scheduler's loop to settle after each move,
so every deadline is hit exactly. Runs go to a scripted fake runner that writes real `sync_runs` rows;
one test at the end drives the real SyncRunner against the GitLab simulator.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import FakeClock, utc_iso
from sync.config import Config, load_config
from sync.control import inbox
from sync.control.inbox_queries import PendingEvent, targets_for
from sync.control.runner import SyncRunner
from sync.control.scheduler import STATE_POLL, Scheduler, backoff_delay, resume_service
from sync.control.status import read_service_state, stored_scheduler_view
from sync.errors import PermanentError, SyncInProgress, TransientError
from sync.events import Event, EventBus
from sync.store.db import Database
from sync.types import ItemRef
from tests.conftest import FakeRunner

INTERVAL = 1800.0
DEBOUNCE = 2.0
MAX_WAIT = 10.0
BASE = 60.0
CAP = 240.0
SETTLE = 5.0  # a guard against a hung test, never a timing assumption


def make_config(data_dir: Path, url: str = "http://gitlab.invalid", **env: str) -> Config:
    values = {
        "LORE_GATEWAY_GITLAB_URL": url,
        "LORE_GATEWAY_GITLAB_TOKEN": "sim-token",
        "LORE_GATEWAY_GITLAB_PROJECTS": "acme/widgets",
        "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir),
        "LORE_GATEWAY_SYNC_INTERVAL": "30m",
        "LORE_GATEWAY_SYNC_DEBOUNCE": "2s",
        "LORE_GATEWAY_SYNC_MAX_WAIT": "10s",
        "LORE_GATEWAY_SYNC_BACKOFF_BASE": "1m",
        "LORE_GATEWAY_SYNC_BACKOFF_MAX": "4m",
    }
    values.update({f"LORE_GATEWAY_{k.upper()}": v for k, v in env.items()})
    return load_config(None, values)


class Rig:
    def __init__(self, db: Database, config: Config) -> None:
        self.db = db
        self.config = config
        self.clock = FakeClock()
        self.t0 = self.clock.now()
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.add_listener(self.events.append)
        self.runner = FakeRunner(db, self.clock)
        self.scheduler: Scheduler | None = None

    async def start(self, *, seed: int = 1) -> Scheduler:
        await self.stop()
        self.scheduler = Scheduler(self.db, self.runner, self.bus, self.clock, self.config,
                                   rng=random.Random(seed))
        await self.scheduler.start()
        return self.scheduler

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()

    async def settle(self) -> None:
        assert self.scheduler is not None
        await asyncio.wait_for(self.scheduler.idle(), SETTLE)

    async def step(self, seconds: float) -> None:
        await self.settle()
        await self.clock.advance(seconds)
        await self.settle()

    async def step_to(self, when: float) -> None:
        await self.step(when - self.clock.now())

    async def fresh_mirror(self, *, age: float = 0.0) -> None:
        """A succeeded incremental run that finished `age` seconds ago."""
        run_id = await self.runner.runs.start("manual", "balanced", "earlier")
        await self.runner.runs.finish(run_id, "succeeded", {}, [])
        async with self.db.transaction() as conn:
            await conn.execute("UPDATE sync_runs SET finished_at = ? WHERE id = ?",
                               (self.clock.now() - age, run_id))

    async def webhook(self, kind: str | None = "issue", iid: int | None = 1, project_id: int = 1001) -> int:
        """An inbox row as the webhook handler writes it."""
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO webhook_events (event, project_id, kind, iid, received_at, payload)"
                " VALUES ('Issue Hook', ?, ?, ?, ?, '{}')",
                (project_id, kind, iid, self.clock.now()),
            )
            return int(cur.lastrowid or 0)

    async def inbox(self) -> dict[int, tuple[float | None, int | None]]:
        rows = await self.db.fetchall("SELECT id, processed_at, run_id FROM webhook_events")
        return {r[0]: (r[1], r[2]) for r in rows}

    def offsets(self) -> list[float]:
        return [at - self.t0 for at in self.runner.started_at]

    def triggers(self) -> list[str]:
        return [r.trigger for r in self.runner.requests]

    def published(self, name: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.name == name]


@pytest.fixture
async def rig(db: Database, tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(db, make_config(tmp_path))
    yield r
    await r.stop()


@pytest.fixture
async def fresh(rig: Rig) -> Rig:
    """A started scheduler over a mirror that just synced: nothing is due."""
    await rig.fresh_mirror()
    await rig.start()
    await rig.settle()
    return rig


# -- debounce ---------------------------------------------------------------------------------------------


async def test_a_run_starts_debounce_after_the_last_event_of_a_burst(fresh: Rig) -> None:
    await fresh.webhook(iid=1)
    fresh.scheduler.notify()
    await fresh.step(1.5)
    await fresh.webhook(iid=2)
    fresh.scheduler.notify()
    await fresh.step(1.75)
    assert fresh.runner.requests == []
    await fresh.step(0.25)
    assert fresh.offsets() == [3.5]
    assert fresh.triggers() == ["webhook"]


async def test_the_scheduler_reports_debouncing_while_it_waits(fresh: Rig) -> None:
    await fresh.webhook()
    fresh.scheduler.notify()
    await fresh.settle()
    assert fresh.scheduler.state == "debouncing"
    assert fresh.scheduler.snapshot()["next_run_at"] == utc_iso(fresh.t0 + DEBOUNCE)
    await fresh.step(DEBOUNCE)
    assert fresh.scheduler.state == "idle"


async def test_status_reports_the_live_debounce_and_the_pending_events(fresh: Rig) -> None:
    await fresh.webhook()
    fresh.scheduler.notify()
    await fresh.settle()
    status = await fresh.scheduler.status()
    assert (status["scheduler_state"], status["pending_events"]) == ("debouncing", 1)
    assert status["next_run_at"] == utc_iso(fresh.t0 + DEBOUNCE)


async def test_a_steady_stream_of_events_runs_no_later_than_max_wait_after_the_first(fresh: Rig) -> None:
    for _ in range(12):
        await fresh.webhook()
        fresh.scheduler.notify()
        await fresh.step(1.0)
    assert fresh.offsets()[0] == MAX_WAIT


async def test_an_inbox_wired_to_notify_starts_the_debounce_when_it_stores_an_event(fresh: Rig) -> None:
    assert fresh.scheduler is not None
    box = inbox.Inbox(fresh.db, fresh.clock, on_new_events=fresh.scheduler.notify)
    await box.start()
    await box.add(inbox.InboxEvent("k1", "Issue Hook", ItemRef(1001, "issue", 1), b"{}"))
    await box.close()
    await fresh.step(DEBOUNCE)
    assert fresh.triggers() == ["webhook"]


async def test_a_webhook_received_event_on_the_bus_alone_wakes_no_run(fresh: Rig) -> None:
    await fresh.webhook()
    fresh.bus.publish("webhook.received", {"event_id": "x"})
    await fresh.step(DEBOUNCE)
    assert fresh.triggers() == []


# -- single flight ----------------------------------------------------------------------------------------


async def test_400_notifies_during_a_run_give_exactly_one_follow_up_run(fresh: Rig) -> None:
    fresh.runner.hold = True
    fresh.scheduler.request_run()
    await asyncio.wait_for(fresh.runner.entered.wait(), SETTLE)
    for iid in range(1, 401):
        await fresh.webhook(iid=iid)
        fresh.scheduler.notify()
    fresh.runner.hold = False
    fresh.runner.release()
    await fresh.step(DEBOUNCE)
    await fresh.step(INTERVAL / 2)
    assert fresh.triggers() == ["api", "webhook"]
    assert fresh.runner.requests[1].targets == (ItemRef(1001, "project"),)


async def test_api_requests_during_a_run_coalesce_and_keep_the_fullest_profile(fresh: Rig) -> None:
    fresh.runner.hold = True
    fresh.scheduler.request_run()
    await asyncio.wait_for(fresh.runner.entered.wait(), SETTLE)
    fresh.scheduler.request_run(profile="full")
    fresh.scheduler.request_run(profile="fast")
    fresh.runner.hold = False
    fresh.runner.release()
    await fresh.settle()
    assert [(r.trigger, r.profile) for r in fresh.runner.requests] == [("api", "balanced"), ("api", "full")]


# -- targeted runs and the inbox --------------------------------------------------------------------------


async def test_targets_come_from_pending_rows_which_a_successful_run_marks_with_its_id(fresh: Rig) -> None:
    ids = [
        await fresh.webhook("issue", 5),
        await fresh.webhook("merge_request", 7),
        await fresh.webhook("issue", 5),
        await fresh.webhook("project", None),
        await fresh.webhook(None, None),
    ]
    fresh.scheduler.notify()
    await fresh.step(DEBOUNCE)
    [request] = fresh.runner.requests
    assert request.targets == (
        ItemRef(1001, "issue", 5), ItemRef(1001, "merge_request", 7), ItemRef(1001, "project"),
    )
    run_id = await fresh.db.fetchval("SELECT max(id) FROM sync_runs")
    assert await fresh.inbox() == {i: (fresh.clock.now(), run_id) for i in ids}


async def test_a_row_that_arrives_during_a_run_is_left_for_the_follow_up(fresh: Rig) -> None:
    first = await fresh.webhook(iid=1)
    fresh.runner.hold = True
    fresh.scheduler.notify()
    await fresh.settle()
    await fresh.clock.advance(DEBOUNCE)
    await asyncio.wait_for(fresh.runner.entered.wait(), SETTLE)
    late = await fresh.webhook(iid=2)
    fresh.runner.hold = False
    fresh.runner.release()
    await fresh.settle()
    inbox = await fresh.inbox()
    assert inbox[first][1] == await fresh.db.fetchval("SELECT max(id) FROM sync_runs")
    assert inbox[late] == (None, None)


async def test_rows_of_a_failed_run_stay_pending_and_are_retried_after_the_backoff(fresh: Rig) -> None:
    row = await fresh.webhook(iid=9)
    fresh.runner.script = [TransientError("gitlab_unavailable", "502 Bad Gateway")]
    fresh.scheduler.notify()
    await fresh.step(DEBOUNCE)
    assert await fresh.inbox() == {row: (None, None)}
    state = await read_service_state(fresh.db)
    await fresh.step_to(state.next_retry_at + 0.25)
    assert fresh.triggers() == ["webhook", "webhook"]
    assert fresh.runner.requests[1].targets == (ItemRef(1001, "issue", 9),)
    assert (await fresh.inbox())[row][1] == await fresh.db.fetchval("SELECT max(id) FROM sync_runs")


async def test_events_that_name_nothing_to_fetch_are_marked_without_a_run(fresh: Rig) -> None:
    row = await fresh.webhook(None, None)
    fresh.scheduler.notify()
    await fresh.step(DEBOUNCE)
    assert fresh.runner.requests == []
    assert await fresh.inbox() == {row: (fresh.clock.now(), None)}


async def test_pending_rows_left_from_before_a_restart_are_processed(rig: Rig) -> None:
    await rig.fresh_mirror()
    row = await rig.webhook(iid=4)
    await rig.start()
    await rig.step(DEBOUNCE)
    assert rig.triggers() == ["webhook"]
    assert (await rig.inbox())[row][0] is not None


async def test_an_incremental_run_also_covers_the_pending_rows(fresh: Rig) -> None:
    row = await fresh.webhook(iid=4)
    fresh.scheduler.notify()
    fresh.scheduler.request_run()
    await fresh.step(DEBOUNCE * 10)
    assert [(r.trigger, r.targets) for r in fresh.runner.requests] == [("api", ())]
    assert (await fresh.inbox())[row][1] is not None


async def test_processed_rows_older_than_retention_are_deleted_after_a_successful_run(fresh: Rig) -> None:
    old = await fresh.webhook(iid=1)
    async with fresh.db.transaction() as conn:
        week = fresh.config.webhook.retention
        await conn.execute("UPDATE webhook_events SET processed_at = ? WHERE id = ?",
                           (fresh.clock.now() - week - 1, old))
    recent = await fresh.webhook(iid=2)
    fresh.scheduler.notify()
    await fresh.step(DEBOUNCE)
    assert list(await fresh.inbox()) == [recent]


async def test_change_feed_entries_older_than_retention_are_pruned_after_a_successful_run(fresh: Rig) -> None:
    now, retention = fresh.clock.now(), fresh.config.changes.retention
    async with fresh.db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO changes (kind, project_id, iid, parent_kind, action, at) VALUES ('issue', 1, ?, 'issue',"
            " 'deleted', ?)",
            [(1, utc_iso(now - retention - 1)), (2, utc_iso(now - retention + 60))],
        )
    await fresh.webhook(iid=3)
    fresh.scheduler.notify()
    await fresh.step(DEBOUNCE)
    assert [r[0] for r in await fresh.db.fetchall("SELECT iid FROM changes")] == [2]
    assert await fresh.db.fetchval("SELECT through_seq FROM changes_pruned") == 1


def test_many_items_of_one_project_become_one_incremental_pass() -> None:
    events = [PendingEvent(i, ItemRef(1001, "issue", i)) for i in range(1, 60)] + [
        PendingEvent(99, ItemRef(1002, "issue", 3))]
    assert targets_for(events) == (ItemRef(1002, "issue", 3), ItemRef(1001, "project"))


# -- timer fallback and start-up --------------------------------------------------------------------------


async def test_a_timer_run_starts_when_nothing_succeeded_for_the_interval(fresh: Rig) -> None:
    await fresh.step(INTERVAL - 1)
    assert fresh.runner.requests == []
    await fresh.step(1.5)
    assert [(r.trigger, r.targets) for r in fresh.runner.requests] == [("timer", ())]


async def test_a_webhook_run_does_not_reset_the_timer(fresh: Rig) -> None:
    await fresh.step(100)
    await fresh.webhook()
    fresh.scheduler.notify()
    await fresh.step(DEBOUNCE)
    await fresh.step_to(fresh.t0 + INTERVAL + 0.5)
    assert fresh.triggers() == ["webhook", "timer"]


async def test_startup_runs_at_once_when_the_mirror_is_empty(rig: Rig) -> None:
    await rig.start()
    await rig.settle()
    assert [(r.trigger, r.targets) for r in rig.runner.requests] == [("startup", ())]
    assert rig.offsets() == [0.0]


async def test_startup_runs_at_once_when_the_last_success_is_older_than_the_interval(rig: Rig) -> None:
    await rig.fresh_mirror(age=INTERVAL + 60)
    await rig.start()
    await rig.settle()
    assert rig.triggers() == ["startup"]


async def test_no_startup_run_when_the_mirror_is_fresh(rig: Rig) -> None:
    await rig.fresh_mirror(age=INTERVAL - 60)
    await rig.start()
    await rig.step(59)
    assert rig.runner.requests == []
    await rig.step(1.5)
    assert rig.triggers() == ["timer"]


async def test_no_run_at_all_while_gitlab_is_not_configured(db: Database, tmp_path: Path) -> None:
    rig = Rig(db, load_config(None, {"LORE_GATEWAY_GATEWAY_DATA_DIR": str(tmp_path)}))
    scheduler = await rig.start()
    await rig.webhook()
    scheduler.notify()
    await rig.step(INTERVAL * 2)
    with pytest.raises(PermanentError):
        scheduler.request_run()
    await rig.stop()
    assert rig.runner.requests == []


# -- backoff and pause ------------------------------------------------------------------------------------


async def test_transient_failures_back_off_exponentially_with_jitter_and_a_cap(rig: Rig) -> None:
    rig.runner.script = [TransientError("gitlab_unavailable", "503")] * 5
    mirror = random.Random(7)
    await rig.start(seed=7)
    await rig.settle()
    for n in range(1, 6):
        failures, next_retry_at, failed_at = await rig.db.fetchone(
            "SELECT consecutive_failures, next_retry_at, updated_at FROM service_state")
        nominal = min(BASE * 2 ** (n - 1), CAP)  # 60, 120, 240, 240, 240
        assert failures == n
        assert next_retry_at - failed_at == pytest.approx(nominal * mirror.uniform(0.8, 1.2))
        assert 0.8 * nominal <= next_retry_at - failed_at <= 1.2 * nominal
        await rig.step_to(next_retry_at - 0.5)
        assert len(rig.runner.requests) == n  # nothing before next_retry_at
        await rig.step(1.0)
    assert len(rig.runner.requests) == 6
    assert rig.scheduler.state == "idle"
    assert (await read_service_state(rig.db)).consecutive_failures == 0  # the sixth run succeeded


async def test_the_scheduler_reports_backoff_while_it_waits_to_retry(rig: Rig) -> None:
    rig.runner.script = [TransientError("gitlab_unavailable", "503")]
    await rig.start()
    await rig.settle()
    assert rig.scheduler.state == "backoff"
    status = await rig.scheduler.status()
    assert status["scheduler_state"] == "backoff"
    assert status["backoff"]["consecutive_failures"] == 1


def test_backoff_delay_is_capped_even_after_a_very_long_outage() -> None:
    config = make_config(Path("/nonexistent")).sync
    assert backoff_delay(5000, config, random.Random(1)) <= CAP * 1.2


async def test_a_permanent_failure_pauses_and_nothing_runs_until_resume(rig: Rig) -> None:
    rig.runner.script = [PermanentError("gitlab_unauthorized", "401 Unauthorized: check the token")]
    await rig.start()
    await rig.settle()
    assert rig.scheduler.state == "paused"
    reason = (await read_service_state(rig.db)).paused_reason
    assert reason == "gitlab_unauthorized: 401 Unauthorized: check the token"
    await rig.webhook()
    rig.scheduler.notify()
    await rig.step(INTERVAL * 3)
    assert len(rig.runner.requests) == 1
    await rig.scheduler.resume()
    await rig.settle()
    assert rig.triggers() == ["startup", "timer"]
    assert (await rig.inbox())[1][0] is not None
    assert rig.scheduler.state == "idle"


async def test_a_process_without_a_scheduler_sees_the_same_paused_view_from_the_database(rig: Rig) -> None:
    rig.runner.script = [PermanentError("gitlab_forbidden", "403 Forbidden")]
    await rig.start()
    await rig.settle()
    assert rig.scheduler is not None
    stored = await stored_scheduler_view(rig.db, rig.clock, rig.config)
    assert stored == rig.scheduler.view()
    assert stored.to_json()["state"] == "paused"


async def test_an_idle_scheduler_and_its_stored_view_agree_on_the_next_timer_run(fresh: Rig) -> None:
    assert fresh.scheduler is not None
    assert await stored_scheduler_view(fresh.db, fresh.clock, fresh.config) == fresh.scheduler.view()


async def test_a_resume_by_another_process_is_noticed_within_the_state_poll(rig: Rig) -> None:
    rig.runner.script = [PermanentError("gitlab_forbidden", "403 Forbidden")]
    await rig.start()
    await rig.settle()
    await resume_service(rig.db, rig.clock.now())  # `lore-gateway resume`, from another process
    await rig.step(STATE_POLL)
    assert rig.triggers() == ["startup", "timer"]


async def test_paused_state_survives_a_restart(rig: Rig) -> None:
    rig.runner.script = [PermanentError("gitlab_forbidden", "403 Forbidden")]
    await rig.start()
    await rig.settle()
    restarted = await rig.start()  # a new Scheduler on the same database
    assert restarted.state == "paused"
    await rig.step(INTERVAL * 2)
    assert rig.triggers() == ["startup"]


async def test_backoff_survives_a_restart(rig: Rig) -> None:
    rig.runner.script = [TransientError("gitlab_unavailable", "503")]
    await rig.start()
    await rig.settle()
    next_retry_at = (await read_service_state(rig.db)).next_retry_at
    restarted = await rig.start()
    assert restarted.state == "backoff"
    await rig.step_to(next_retry_at - 0.5)
    assert rig.triggers() == ["startup"]
    await rig.step(1.0)
    assert rig.triggers() == ["startup", "startup"]  # the restarted gateway's own start-up run


async def test_request_run_ignores_the_pause_and_its_success_clears_it(rig: Rig) -> None:
    rig.runner.script = [PermanentError("gitlab_forbidden", "403 Forbidden")]
    await rig.start()
    await rig.settle()
    rig.scheduler.request_run()
    await rig.settle()
    assert rig.triggers() == ["startup", "api"]
    assert (await read_service_state(rig.db)).paused_reason is None
    assert rig.scheduler.state == "idle"


async def test_request_run_ignores_backoff(rig: Rig) -> None:
    rig.runner.script = [TransientError("gitlab_unavailable", "503")]
    await rig.start()
    await rig.settle()
    rig.scheduler.request_run(profile="fast")
    await rig.settle()
    assert [(r.trigger, r.profile) for r in rig.runner.requests] == [("startup", "balanced"), ("api", "fast")]
    assert rig.offsets() == [0.0, 0.0]


async def test_another_process_holding_the_lock_is_retried_soon_without_backoff(fresh: Rig) -> None:
    fresh.runner.script = [SyncInProgress("cli:42"), SyncInProgress("cli:42")]
    fresh.scheduler.request_run()
    await fresh.settle()
    assert fresh.scheduler.state == "running"
    await fresh.step(DEBOUNCE)
    await fresh.step(DEBOUNCE)
    assert fresh.offsets() == [0.0, DEBOUNCE, 2 * DEBOUNCE]
    assert fresh.triggers() == ["api", "api", "api"]
    state = await read_service_state(fresh.db)
    assert (state.consecutive_failures, state.next_retry_at) == (0, None)


async def test_a_webhook_run_blocked_by_another_process_keeps_its_events_for_the_retry(fresh: Rig) -> None:
    row = await fresh.webhook(iid=3)
    fresh.runner.script = [SyncInProgress("cli:42")]
    fresh.scheduler.notify()
    await fresh.step(DEBOUNCE)
    assert await fresh.inbox() == {row: (None, None)}
    await fresh.step(DEBOUNCE)
    assert [(r.trigger, r.targets) for r in fresh.runner.requests] == [
        ("webhook", (ItemRef(1001, "issue", 3),)), ("webhook", (ItemRef(1001, "issue", 3),)),
    ]
    assert (await fresh.inbox())[row][1] is not None


async def test_a_zero_debounce_still_waits_a_second_before_retrying_a_held_lock(
    db: Database, tmp_path: Path
) -> None:
    rig = Rig(db, make_config(tmp_path, sync_debounce="0s"))
    await rig.fresh_mirror()
    rig.runner.script = [SyncInProgress("cli:42")]
    scheduler = await rig.start()
    scheduler.request_run()
    await rig.step(0.75)
    assert len(rig.runner.requests) == 1
    await rig.step(0.25)
    await rig.stop()
    assert rig.offsets() == [0.0, 1.0]


# -- events and stopping ----------------------------------------------------------------------------------


async def test_state_changes_and_queued_runs_are_published_on_the_bus(fresh: Rig) -> None:
    await fresh.webhook()
    fresh.scheduler.notify()
    fresh.scheduler.notify()
    await fresh.step(DEBOUNCE)
    assert fresh.published("sync.queued") == [{"run_id": None, "trigger": "webhook"}]
    states = [s["state"] for s in fresh.published("scheduler.state")]
    assert states == ["idle", "debouncing", "running", "idle"]
    assert set(fresh.published("scheduler.state")[0]) == {
        "state", "next_run_at", "paused_reason", "consecutive_failures",
    }


async def test_stop_during_a_run_cancels_it(fresh: Rig) -> None:
    fresh.runner.hold = True
    fresh.scheduler.request_run()
    await asyncio.wait_for(fresh.runner.entered.wait(), SETTLE)
    await fresh.scheduler.stop()
    await fresh.scheduler.stop()
    assert fresh.runner.cancelled


# -- the real runner against the simulated GitLab ---------------------------------------------------------


async def test_with_the_real_runner_webhooks_sync_their_items_and_stop_interrupts_a_run(
    db: Database, tmp_path: Path, aiohttp_server: Any
) -> None:
    sim = GitLabSimulator(token="sim-token", seed=3)
    project = sim.add_project("acme/widgets", issues=6, merge_requests=2, notes_per_item=1)
    gate = asyncio.Event()
    gate.set()

    @web.middleware
    async def hold_while_gate_is_closed(request: web.Request, handler: Any) -> web.StreamResponse:
        await gate.wait()
        return await handler(request)

    app = sim.app()
    app.middlewares.append(hold_while_gate_is_closed)
    server = await aiohttp_server(app)
    config = make_config(tmp_path, str(server.make_url("")).rstrip("/"))
    clock = FakeClock()
    bus = EventBus()
    scheduler = Scheduler(db, SyncRunner(db, bus, clock, config), bus, clock, config, rng=random.Random(1))

    await scheduler.start()  # the mirror is empty: a start-up run, then idle
    await asyncio.wait_for(scheduler.idle(), 30)
    assert await db.fetchval("SELECT count(*) FROM issues") == 6

    sim.update_issue(project.id, 2, title="Renamed while the gateway watched")
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO webhook_events (event, project_id, kind, iid, received_at, payload)"
            " VALUES ('Issue Hook', ?, 'issue', 2, ?, '{}')", (project.id, clock.now()))
    sim.reset_counters()
    scheduler.notify()
    await asyncio.wait_for(scheduler.idle(), SETTLE)
    await clock.advance(DEBOUNCE)
    await asyncio.wait_for(scheduler.idle(), 30)
    title = await db.fetchval("SELECT title FROM issues WHERE project_id = ? AND iid = 2", (project.id,))
    assert title == "Renamed while the gateway watched"
    assert sim.requests["issues_list"] == 0  # targeted: fetched directly, not re-listed
    run_id, trigger = await db.fetchone("SELECT id, trigger FROM sync_runs ORDER BY id DESC LIMIT 1")
    assert trigger == "webhook"
    assert await db.fetchval("SELECT run_id FROM webhook_events") == run_id

    gate.clear()  # the next run stays in flight until it is cancelled
    started = bus.subscribe()
    scheduler.request_run()
    while (await asyncio.wait_for(started.get(), 30)).name != "sync.started":
        pass
    await scheduler.stop()
    gate.set()
    last = await db.fetchone("SELECT status, error_code FROM sync_runs ORDER BY id DESC LIMIT 1")
    assert tuple(last) == ("interrupted", "interrupted")
    assert await db.fetchval("SELECT count(*) FROM locks") == 0
