"""The work-item status stage against the simulator's GraphQL: adaptive batches, degradation, bookkeeping."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import SystemClock
from sync.control.runner import SyncRunner
from sync.control.status import sync_status
from sync.events import EventBus
from sync.gitlab.workitems_graphql import BatchSizer
from sync.ingest.pipeline import SyncRequest
from sync.read.queries import work_item_status_filter_sql
from sync.store.db import Database
from tests.conftest import SIM_TOKEN, make_config

LARGEST_ACCEPTED = 40  # 5 + 6 * 40 = 245 <= 250 < 5 + 6 * 41


class ShiftedClock(SystemClock):
    """Real time plus an offset the test moves; sleeps (client retries) cost nothing."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return super().now() + self.offset

    async def sleep(self, seconds: float) -> None:
        return None


@pytest.fixture
def big_sim() -> GitLabSimulator:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=11)
    sim.add_project("acme/widgets", issues=300, notes_per_item=0)
    sim.add_project("acme/gadgets", issues=45, notes_per_item=0)
    return sim


@pytest.fixture
async def big_url(big_sim: GitLabSimulator, aiohttp_server) -> str:
    server = await aiohttp_server(big_sim.app())
    return str(server.make_url("")).rstrip("/")


def runner(db: Database, tmp_path: Path, url: str, clock: SystemClock | None = None) -> SyncRunner:
    config = make_config(tmp_path / "data", url, ("acme/widgets", "acme/gadgets"))
    return SyncRunner(db, EventBus(), clock or ShiftedClock(), config)


async def stored_statuses(db: Database) -> dict[tuple[int, int], dict | None]:
    rows = await db.fetchall("SELECT project_id, iid, work_item_status FROM issues")
    return {(r[0], r[1]): None if r[2] is None else orjson.loads(r[2]) for r in rows}


def expected_statuses(sim: GitLabSimulator) -> dict[tuple[int, int], dict | None]:
    assert sim.work_items is not None
    return {
        (p.id, iid): sim.work_items.status_of(p.id, issue)
        for p in sim.projects.values()
        for iid, issue in p.issues.items()
    }


def accepted_iids(sim: GitLabSimulator) -> Counter[tuple[str, int]]:
    assert sim.work_items is not None
    return Counter((b.project, i) for b in sim.work_items.batches if b.outcome == "ok" for i in b.iids)


# -- batch sizing -----------------------------------------------------------------------------------


def test_the_sizer_halves_on_a_complexity_error_and_settles_on_the_largest_accepted_size():
    sizer, tried = BatchSizer(), []
    for _ in range(30):
        size = sizer.size
        tried.append(size)
        if 5 + 6 * size > 250:
            sizer.too_complex(size)
        else:
            sizer.accepted(size)
    assert tried[:3] == [100, 50, 25]
    assert tried[-10:] == [LARGEST_ACCEPTED] * 10


def test_the_sizer_never_halves_below_a_size_already_accepted():
    sizer = BatchSizer()
    sizer.too_complex(100)
    sizer.accepted(50)
    sizer.accepted(62)
    sizer.too_complex(77)
    assert sizer.size == 62


def test_a_timeout_halves_and_growth_resumes_gradually_below_the_timed_out_size():
    sizer = BatchSizer()
    sizer.timed_out(100)
    assert sizer.size == 50
    sizes = []
    for _ in range(5):
        sizer.accepted(sizer.size)
        sizes.append(sizer.size)
    assert sizes == sorted(sizes) and max(sizes) < 100
    assert all(b - a <= max(1, a // 4) for a, b in zip([50, *sizes], sizes, strict=False))


def test_an_item_failing_alone_clears_the_timeouts_it_caused():
    sizer = BatchSizer()
    sizer.accepted(100)
    for size in (100, 50, 25, 12, 6, 3, 1):
        sizer.timed_out(size)
    sizer.item_failed()
    assert sizer.size == 50


# -- the stage against the simulator ----------------------------------------------------------------


async def test_under_a_complexity_limit_the_stage_settles_on_the_largest_accepted_size_and_fetches_each_once(
    big_sim, big_url, db, tmp_path
):
    big_sim.enable_work_items(complexity_per_item=6)
    run = await runner(db, tmp_path, big_url).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded", run.error_message
    assert not [w for w in run.warnings if w.startswith("work_item_status")]
    assert await stored_statuses(db) == expected_statuses(big_sim)
    fetched = accepted_iids(big_sim)
    assert set(fetched.values()) == {1} and len(fetched) == 345
    batches = big_sim.work_items.batches
    assert max(len(b.iids) for b in batches if b.outcome == "ok") == LARGEST_ACCEPTED
    widgets = [len(b.iids) for b in batches if b.project == "acme/widgets"]
    settled = widgets[widgets.index(LARGEST_ACCEPTED) : -1]  # the very last batch is the remainder
    assert len(settled) >= 2 and set(settled) == {LARGEST_ACCEPTED}
    assert {len(b.iids) for b in batches if b.project == "acme/gadgets"} == {LARGEST_ACCEPTED, 5}
    assert sum(b.outcome == "complexity" for b in batches) <= 5


async def test_timeouts_shrink_the_batches_and_every_status_is_still_fetched_exactly_once(
    big_sim, big_url, db, tmp_path
):
    big_sim.enable_work_items(timeout_above=30)
    run = await runner(db, tmp_path, big_url).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded"
    assert await stored_statuses(db) == expected_statuses(big_sim)
    assert set(accepted_iids(big_sim).values()) == {1}
    batches = big_sim.work_items.batches
    assert max(len(b.iids) for b in batches if b.outcome == "ok") <= 30
    assert sum(b.outcome == "timeout" for b in batches) <= sum(b.outcome == "ok" for b in batches) / 3


async def test_an_item_that_times_out_even_alone_is_recorded_skipped_and_not_asked_again(
    simulator, config_for, db
):
    work_items = simulator.enable_work_items()
    work_items.poisoned.add((1001, 7))
    sync = SyncRunner(db, EventBus(), ShiftedClock(), config_for())
    run = await sync.run(SyncRequest(profile="fast"))
    assert run.status == "succeeded"
    skipped = [w for w in run.warnings if "skipped 1 issue" in w]
    assert len(skipped) == 1 and "acme/widgets#7" in skipped[0]
    stored = await stored_statuses(db)
    assert stored[(1001, 7)] is None
    assert {k: v for k, v in stored.items() if k != (1001, 7)} == {
        k: v for k, v in expected_statuses(simulator).items() if k != (1001, 7)
    }
    assert await db.fetchval("SELECT error FROM work_item_statuses WHERE project_id = 1001 AND iid = 7")
    solo = [b for b in work_items.batches if b.iids == (7,)]
    assert len(solo) == 1

    work_items.batches.clear()
    again = await sync.run(SyncRequest(profile="fast"))
    assert again.status == "succeeded" and work_items.batches == []


async def test_a_gitlab_without_work_items_degrades_with_one_warning_and_the_sync_succeeds(
    simulator, config_for, db
):
    run = await SyncRunner(db, EventBus(), ShiftedClock(), config_for()).run(SyncRequest(profile="balanced"))
    assert run.status == "succeeded"
    notes = [w for w in run.warnings if w.startswith("work_item_status")]
    assert len(notes) == 1 and notes[0].startswith("work_item_status: unavailable:")
    assert "workItems" in notes[0]
    assert simulator.requests["graphql"] == 1
    assert await db.fetchval("SELECT count(*) FROM issues") == 50
    assert await db.fetchval("SELECT count(*) FROM issues WHERE work_item_status IS NOT NULL") == 0
    status = await sync_status(db, SystemClock(), config_for())
    assert notes[0] in status["last_sync"]["warnings"]


async def test_an_unavailable_gitlab_is_not_asked_again_for_a_day_but_every_run_says_so(
    simulator, config_for, db
):
    clock = ShiftedClock()
    sync = SyncRunner(db, EventBus(), clock, config_for())
    await sync.run(SyncRequest(profile="fast"))
    simulator.reset_counters()
    quiet = await sync.run(SyncRequest(profile="fast"))
    assert simulator.requests["graphql"] == 0
    assert [w for w in quiet.warnings if w.startswith("work_item_status: unavailable")]

    simulator.enable_work_items()
    clock.offset = 25 * 3600.0
    later = await sync.run(SyncRequest(profile="fast"))
    assert not [w for w in later.warnings if w.startswith("work_item_status")]
    assert await stored_statuses(db) == expected_statuses(simulator)


async def test_a_404_on_the_graphql_endpoint_is_unavailable_not_a_failed_run(simulator, config_for, db):
    simulator.enable_work_items()
    simulator.inject_fault(404, path_contains="/api/graphql", times=1)
    run = await SyncRunner(db, EventBus(), ShiftedClock(), config_for()).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded"
    assert [w for w in run.warnings if w.startswith("work_item_status: unavailable") and "404" in w]


async def test_a_namespace_without_the_status_widget_gets_one_warning_and_null_statuses(simulator, config_for, db):
    simulator.enable_work_items(widget=False)
    run = await SyncRunner(db, EventBus(), ShiftedClock(), config_for()).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded"
    notes = [w for w in run.warnings if w.startswith("work_item_status")]
    assert len(notes) == 1 and "acme/widgets" in notes[0] and "acme/gadgets" in notes[0]
    assert await db.fetchval("SELECT count(*) FROM issues WHERE work_item_status IS NOT NULL") == 0


async def test_a_gitlab_before_18_1_gives_statuses_without_a_category(simulator, config_for, db):
    simulator.enable_work_items(category=False)
    run = await SyncRunner(db, EventBus(), ShiftedClock(), config_for()).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded" and not [w for w in run.warnings if w.startswith("work_item_status")]
    stored = await stored_statuses(db)
    assert stored and all(v is None or v["category"] is None for v in stored.values())
    assert {k: v and v["name"] for k, v in stored.items()} == {
        k: v and v["name"] for k, v in expected_statuses(simulator).items()
    }


async def test_a_changed_status_is_fetched_alone_stored_and_announced_and_bumps_the_issue_version(
    simulator, config_for, db
):
    simulator.enable_work_items()
    bus = EventBus()
    sync = SyncRunner(db, bus, ShiftedClock(), config_for())
    await sync.run(SyncRequest(profile="fast"))
    version = await db.fetchval("SELECT version FROM data_versions WHERE project_id = 1001 AND resource = 'issues'")
    simulator.work_items.batches.clear()
    simulator.set_work_item_status(1001, 4, "Won't do")
    events = bus.subscribe(maxsize=1000)

    run = await sync.run(SyncRequest(profile="fast"))

    assert run.counts["work_item_statuses"] == 1
    assert [b.iids for b in simulator.work_items.batches] == [(4,)]
    assert (await stored_statuses(db))[(1001, 4)] == {"name": "Won't do", "category": "CANCELED"}
    after = await db.fetchval("SELECT version FROM data_versions WHERE project_id = 1001 AND resource = 'issues'")
    assert after > version
    changed = []
    while not events.queue.empty():
        event = events.queue.get_nowait()
        if event.name == "data.changed":
            changed.append((event.data["kind"], event.data["iids"]))
    assert ("issue", [4]) in changed


async def test_a_sync_with_nothing_changed_asks_graphql_nothing_and_bumps_no_version(simulator, config_for, db):
    simulator.enable_work_items()
    sync = SyncRunner(db, EventBus(), ShiftedClock(), config_for())
    await sync.run(SyncRequest(profile="fast"))
    versions = [tuple(r) for r in await db.fetchall("SELECT * FROM data_versions ORDER BY 1, 2")]
    simulator.reset_counters()
    run = await sync.run(SyncRequest(profile="fast"))
    assert simulator.requests["graphql"] == 0 and run.counts["work_item_statuses"] == 0
    assert [tuple(r) for r in await db.fetchall("SELECT * FROM data_versions ORDER BY 1, 2")] == versions


async def test_an_issue_rewritten_by_the_rest_listing_keeps_its_status(simulator, config_for, db):
    simulator.enable_work_items()
    sync = SyncRunner(db, EventBus(), ShiftedClock(), config_for())
    await sync.run(SyncRequest(profile="fast"))
    simulator.update_issue(1001, 3, title="Renamed, status untouched")
    simulator.inject_fault(503, path_contains="/api/graphql", times=100)  # GraphQL down for this run
    run = await sync.run(SyncRequest(profile="fast"))
    assert run.status == "succeeded" and [w for w in run.warnings if "incomplete" in w]
    assert (await stored_statuses(db))[(1001, 3)] == expected_statuses(simulator)[(1001, 3)] is not None


async def test_a_full_sync_asks_again_for_every_status(simulator, config_for, db):
    simulator.enable_work_items()
    sync = SyncRunner(db, EventBus(), ShiftedClock(), config_for())
    await sync.run(SyncRequest(profile="fast"))
    simulator.work_items.statuses[(1001, 1)] = "Duplicate"  # changed without touching the issue
    await sync.run(SyncRequest(profile="fast", full=True))
    assert (await stored_statuses(db))[(1001, 1)] == {"name": "Duplicate", "category": "CANCELED"}


# -- the read API's filter --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("in progress", {1, 3}), ("DONE", {2}), ("to_do", {4}), ("none", {5}), ("Nothing", set())],
)
async def test_the_status_filter_matches_names_and_categories_case_insensitively(db, value, expected):
    statuses = {
        1: '{"category":"IN_PROGRESS","name":"In progress"}',
        2: '{"category":"DONE","name":"Done"}',
        3: '{"category":"IN_PROGRESS","name":"In progress"}',
        4: '{"category":"TO_DO","name":"To do"}',
        5: None,
    }
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO projects VALUES (1, 'a/b', 'b', '', x'', 0)")
        for iid, status in statuses.items():
            await conn.execute(
                "INSERT INTO issues (project_id, iid, id, title, state, created_at, updated_at, raw, work_item_status)"
                " VALUES (1, ?, ?, 't', 'opened', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z', x'7b7d', ?)",
                (iid, iid, status),
            )
    condition, params = work_item_status_filter_sql(value)
    rows = await db.fetchall(f"SELECT iid FROM issues WHERE {condition}", params)
    assert {r[0] for r in rows} == expected
