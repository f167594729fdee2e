"""What GitLab does not announce reaches the mirror: vanished items, throttled notes, deletions.

Against the simulator, which behaves like GitLab here: a note within a minute of the item's last update
leaves `updated_at` alone (ThrottledTouch), deleting an issue or MR sends no webhook, and an item can
vanish between the list page and the fetch of its details.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.keys import BUS, DB
from gateway.simulator.gitlab import TOUCH_INTERVAL, GitLabSimulator
from sync.clock import FakeClock, SystemClock
from sync.control.runner import SyncRunner
from sync.control.scheduler import Scheduler
from sync.control.status import read_service_state
from sync.events import EventBus
from sync.ingest import mirror
from sync.ingest.pipeline import SyncRequest
from sync.store.db import Database
from sync.types import ItemRef
from tests.conftest import SIM_TOKEN, FakeRunner, make_config
from tests.test_cli_sync import cli, cli_env
from tests.test_scheduler import Rig
from tests.test_sse import Stream

SETTLE = 30.0  # a guard against a hung test, never a timing assumption


def data_changes(subscription: Any) -> list[dict]:
    found = []
    while not subscription.queue.empty():
        event = subscription.queue.get_nowait()
        if event.name == "data.changed":
            found.append(event.data)
    return found


async def item_count(db: Database, table: str, project_id: int, iid: int) -> int:
    return await db.fetchval(f"SELECT count(*) FROM {table} WHERE project_id = ? AND iid = ?", (project_id, iid))


class Rigged:
    """A simulated GitLab and the real runner sharing one FakeClock."""

    def __init__(self, db: Database, sim: GitLabSimulator, url: str, data_dir: Path, clock: FakeClock,
                 **env: str) -> None:
        self.db, self.sim, self.clock = db, sim, clock
        self.config = make_config(data_dir, url, tuple(p.path for p in sim.projects.values()), **env)
        self.bus = EventBus()
        self.changes = self.bus.subscribe(maxsize=10_000)
        self.runner = SyncRunner(db, self.bus, clock, self.config)

    async def sync(self, **request: Any) -> Any:
        run = await self.runner.run(SyncRequest(profile=request.pop("profile", "fast"), **request))
        assert run.status == "succeeded", run.error_message
        return run


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rigged(db: Database, tmp_path: Path, aiohttp_server: Any, clock: FakeClock) -> Rigged:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=11, clock=clock)
    sim.add_project("acme/widgets", issues=12, merge_requests=6, notes_per_item=2)
    server = await aiohttp_server(sim.app())
    return Rigged(db, sim, str(server.make_url("")).rstrip("/"), tmp_path / "data", clock)


# -- the simulator behaves like GitLab ----------------------------------------------------------------------


async def test_the_simulator_touches_a_notes_parent_at_most_once_a_minute(clock: FakeClock) -> None:
    sim = GitLabSimulator(clock=clock)
    project = sim.add_project("acme/touchy", issues=1)
    sim.update_issue(project.id, 1, title="just edited")  # a real edit always moves updated_at
    edited = project.issues[1]["updated_at"]
    await clock.advance(TOUCH_INTERVAL - 1)
    sim.add_note(project.id, "issue", 1, "inside the window")
    assert project.issues[1]["updated_at"] == edited
    await clock.advance(2)
    sim.add_note(project.id, "issue", 1, "after the window")
    assert project.issues[1]["updated_at"] > edited


async def test_the_simulator_deletes_items_without_a_webhook(clock: FakeClock) -> None:
    sim = GitLabSimulator(clock=clock)
    project = sim.add_project("acme/gone", issues=2, merge_requests=2, notes_per_item=1)
    assert sim.delete_issue(project.id, 1) is None  # type: ignore[func-returns-value]
    assert sim.delete_merge_request(project.id, 2) is None  # type: ignore[func-returns-value]
    assert 1 not in project.issues and ("issue", 1) not in project.discussions
    assert 2 not in project.merge_requests and 2 not in project.diffs


# -- item-level failures stay item-level -------------------------------------------------------------------


async def test_a_404_on_one_items_discussions_mid_run_removes_it_and_the_scheduler_goes_on(
    db: Database, tmp_path: Path, aiohttp_server: Any, clock: FakeClock
) -> None:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=5, clock=clock)
    project = sim.add_project("acme/widgets", issues=8, merge_requests=3, notes_per_item=2)
    server = await aiohttp_server(sim.app())
    config = make_config(tmp_path / "data", str(server.make_url("")).rstrip("/"), ("acme/widgets",))
    bus = EventBus()
    scheduler = Scheduler(db, SyncRunner(db, bus, clock, config), bus, clock, config, rng=random.Random(1))
    await scheduler.start()  # the start-up run fills the mirror
    await _settle(scheduler)
    assert await item_count(db, "issues", project.id, 3) == 1
    sim.update_issue(project.id, 3, title="then hidden from the token")
    sim.update_issue(project.id, 4, title="an ordinary edit")
    sim.inject_fault(404, path_contains="/issues/3/discussions", times=10)
    try:
        await clock.advance(config.sync.interval)  # the timer pass
        await _settle(scheduler)
        last = await db.fetchone("SELECT status, counts FROM sync_runs ORDER BY id DESC LIMIT 1")
        assert last[0] == "succeeded"
        assert await item_count(db, "issues", project.id, 3) == 0
        assert await db.fetchval(
            "SELECT count(*) FROM notes WHERE project_id = ? AND noteable_iid = 3 AND noteable_kind = 'issue'",
            (project.id,)) == 0
        assert await db.fetchval("SELECT title FROM issues WHERE iid = 4") == "an ordinary edit"
        assert scheduler.state == "idle"
        assert (await read_service_state(db)).paused_reason is None
    finally:
        await scheduler.stop()


async def test_an_item_that_vanishes_between_list_and_fetch_is_left_out_and_the_run_succeeds(
    rigged: Rigged,
) -> None:
    project = next(iter(rigged.sim.projects.values()))
    rigged.sim.vanish_after_listing(project.id, "merge_request", 2)
    run = await rigged.sync()
    assert run.counts["merge_requests"] == len(project.merge_requests)  # the others, all of them
    assert await item_count(rigged.db, "merge_requests", project.id, 2) == 0
    assert 2 not in project.merge_requests  # and GitLab no longer lists it either


async def test_a_targeted_item_whose_diffs_404_is_deleted_at_once(rigged: Rigged) -> None:
    project = next(iter(rigged.sim.projects.values()))
    await rigged.sync()
    rigged.sim.inject_fault(404, path_contains="/merge_requests/4/diffs", times=10)
    run = await rigged.sync(trigger="webhook", targets=(ItemRef(project.id, "merge_request", 4),))
    assert run.counts["deleted"] == 1
    assert await item_count(rigged.db, "merge_requests", project.id, 4) == 0
    assert await rigged.db.fetchval("SELECT count(*) FROM mr_files WHERE mr_iid = 4") == 0
    [change] = data_changes(rigged.changes)[-1:]
    assert change["kind"] == "merge_request" and change["deleted"] == [4] and change["iids"] == [4]


async def test_a_project_that_vanishes_mid_run_pauses_instead_of_emptying_the_mirror(
    db: Database, tmp_path: Path, aiohttp_server: Any, clock: FakeClock
) -> None:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=5, clock=clock)
    project = sim.add_project("acme/widgets", issues=8, notes_per_item=1)
    project_gone = False

    @web.middleware
    async def project_answers_404_once_gone(request: web.Request, handler: Any) -> web.StreamResponse:
        if project_gone and request.path == f"/api/v4/projects/{project.id}":
            return web.json_response({"message": "404 Project Not Found"}, status=404)
        return await handler(request)

    app = sim.app()
    app.middlewares.append(project_answers_404_once_gone)
    server = await aiohttp_server(app)
    rig = Rigged(db, sim, str(server.make_url("")).rstrip("/"), tmp_path / "data", clock)
    await rig.sync()
    for iid in (1, 2, 3):
        sim.update_issue(project.id, iid, title=f"edited {iid}")
    sim.inject_fault(404, path_contains="/discussions", times=100)
    project_gone = True  # GitLab lets the run resolve the project, then it is gone
    run = await rig.runner.run(SyncRequest(profile="fast", targets=(ItemRef(project.id, "issue", 1),)))
    assert run.status == "failed" and run.transient is False and run.error_code == "project_not_found"
    assert await db.fetchval("SELECT count(*) FROM issues") == 8


async def test_a_403_on_a_configured_project_still_pauses_the_scheduler(
    db: Database, tmp_path: Path, aiohttp_server: Any, clock: FakeClock
) -> None:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=5, clock=clock)
    project = sim.add_project("acme/widgets", issues=3)
    server = await aiohttp_server(sim.app())
    config = make_config(tmp_path / "data", str(server.make_url("")).rstrip("/"), ("acme/widgets",))
    sim.inject_fault(403, path_contains=f"/projects/{project.id}", times=1000)
    bus = EventBus()
    scheduler = Scheduler(db, SyncRunner(db, bus, clock, config), bus, clock, config, rng=random.Random(1))
    await scheduler.start()
    try:
        await _settle(scheduler)
        assert scheduler.state == "paused"
        assert (await read_service_state(db)).paused_reason.startswith("gitlab_forbidden")
    finally:
        await scheduler.stop()


# -- notes GitLab's throttled touch hides ------------------------------------------------------------------


@pytest.mark.parametrize("change", ["create", "edit", "delete"])
async def test_a_throttled_note_whose_webhook_was_lost_arrives_with_the_first_pass_after_the_window(
    rigged: Rigged, clock: FakeClock, change: str
) -> None:
    sim, project = rigged.sim, next(iter(rigged.sim.projects.values()))
    await rigged.sync()
    await clock.advance(600)
    sim.update_issue(project.id, 2, title="edited a moment ago")
    touched = project.issues[2]["updated_at"]
    await clock.advance(5)
    await rigged.sync()  # the edit is mirrored inside the touch window
    await clock.advance(10)
    note = project.discussions[("issue", 2)][0]["notes"][0]
    if change == "create":
        sim.add_note(project.id, "issue", 2, "a comment whose webhook was lost")
    elif change == "edit":
        sim.edit_note(project.id, "issue", 2, note["id"], "an edit whose webhook was lost")
    else:
        sim.delete_note(project.id, "issue", 2, note["id"])
    assert project.issues[2]["updated_at"] == touched  # GitLab's throttled touch: no listing shows it
    expected = [(n["id"], n["body"]) for d in project.discussions[("issue", 2)] for n in d["notes"]]

    await clock.advance(10)
    sim.reset_counters()
    await rigged.sync()  # still inside the window: fetching now could miss a later note too
    assert sim.requests["issue_discussions"] == 0
    assert await _mirrored_notes(rigged.db, project.id, 2) != expected

    await clock.advance(TOUCH_INTERVAL)
    sim.reset_counters()
    data_changes(rigged.changes)  # drained: only the reconcile's announcements are left to look at
    run = await rigged.sync()
    assert await _mirrored_notes(rigged.db, project.id, 2) == expected
    assert sim.requests["issue_discussions"] == 1 and sim.requests["mr_discussions"] == 0
    assert run.counts["rechecked"] == 1
    assert [c["iids"] for c in data_changes(rigged.changes)] == [[2]]

    sim.reset_counters()
    await rigged.sync()  # the window is closed and checked: nothing more to fetch
    assert sim.requests["issue_discussions"] == 0


async def test_an_item_mirrored_after_its_touch_window_costs_no_extra_request(
    rigged: Rigged, clock: FakeClock
) -> None:
    sim, project = rigged.sim, next(iter(rigged.sim.projects.values()))
    await rigged.sync()  # seeded items were last updated long ago
    await clock.advance(3600)
    sim.reset_counters()
    await rigged.sync()
    assert sim.requests["issue_discussions"] == sim.requests["mr_discussions"] == 0
    assert await rigged.db.fetchval("SELECT count(*) FROM discussion_rechecks") == 0
    assert project.issues


async def _mirrored_notes(db: Database, project_id: int, iid: int) -> list[tuple[int, str]]:
    rows = await db.fetchall(
        "SELECT id, json_extract(CAST(raw AS TEXT), '$.body') FROM notes WHERE project_id = ?"
        " AND noteable_kind = 'issue' AND noteable_iid = ? ORDER BY discussion_seq, note_seq",
        (project_id, iid),
    )
    return [(r[0], r[1]) for r in rows]


# -- deletions ---------------------------------------------------------------------------------------------


async def test_a_deletion_without_a_webhook_is_gone_after_one_reconcile_from_rest_sse_and_search(
    simulator: GitLabSimulator, config_for: Any, aiohttp_client: Any
) -> None:
    simulator.update_issue(1001, 7, title="Quixotic zeppelin hangar")
    config = config_for(auth_signing_keys="test-key-0123456789abcdef0123456789abcdef")
    app = create_app(config, scheduler=False)
    client = await aiohttp_client(app)
    runner = SyncRunner(app[DB], app[BUS], SystemClock(), config)
    assert (await runner.run(SyncRequest(profile="balanced"))).status == "succeeded"
    token = (await app[TOKENS].create("reader", ["read"], None)).token
    auth = {"Authorization": f"Bearer {token}"}

    async def get(path: str, **params: str) -> Any:
        return await client.get(f"/api/v1{path}", headers=auth, params=params)

    assert len((await (await get("/search", q="zeppelin")).json())["items"]) == 1
    etag = (await get("/projects/1001/issues", per_page="100")).headers["ETag"]
    simulator.delete_issue(1001, 7)
    simulator.delete_merge_request(1002, 3)
    stream = Stream(await get("/events"))
    assert (await stream.next()).event == "scheduler.state"

    run = await runner.run(SyncRequest(profile="balanced", reconcile=True))
    assert run.status == "succeeded" and run.counts["deleted"] == 2

    assert (await get("/projects/1001/issues/7")).status == 404
    assert (await get("/projects/1001/issues/7/discussions")).status == 404
    assert (await get("/projects/1002/merge_requests/3")).status == 404
    listing = await get("/projects/1001/issues", per_page="100")
    assert listing.headers["ETag"] != etag
    assert 7 not in [i["iid"] for i in (await listing.json())["items"]]
    assert (await (await get("/search", q="zeppelin")).json())["items"] == []
    deleted = set()
    for event in await stream.until("sync.finished"):
        if event.event == "data.changed" and event.data["deleted"]:
            deleted |= {(event.data["project_id"], event.data["kind"], i) for i in event.data["deleted"]}
    assert deleted == {(1001, "issue", 7), (1002, "merge_request", 3)}
    stream.close()


async def test_a_reconcile_lists_each_kind_in_ceil_items_over_100_requests(
    db: Database, tmp_path: Path, aiohttp_server: Any, clock: FakeClock
) -> None:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=2, clock=clock)
    project = sim.add_project("big/one", issues=250, merge_requests=101)
    server = await aiohttp_server(sim.app())
    rig = Rigged(db, sim, str(server.make_url("")).rstrip("/"), tmp_path / "data", clock)
    await rig.sync()
    sim.reset_counters()
    run = await rig.sync(reconcile=True)
    assert sim.requests["issues_list"] == 1 + 3  # the incremental pass's one page, then ceil(250 / 100)
    assert sim.requests["mrs_list"] == 1 + 2
    assert run.counts.get("deleted", 0) == 0
    assert await db.fetchval("SELECT project_id FROM reconciles") == project.id


async def test_an_item_deleted_during_the_reconcile_walk_takes_no_live_item_with_it(
    db: Database, tmp_path: Path, aiohttp_server: Any, clock: FakeClock
) -> None:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=2, clock=clock)
    project = sim.add_project("big/one", issues=250)
    by_age = sorted(project.issues.values(), key=lambda i: (i["created_at"], i["id"]))
    doomed = by_age[5]["iid"]

    @web.middleware
    async def delete_while_walking(request: web.Request, handler: Any) -> web.StreamResponse:
        walking = request.query.get("order_by") == "created_at" and request.query.get("page") == "2"
        if walking and doomed in project.issues:
            sim.delete_issue(project.id, doomed)  # every later item moves back one place
        return await handler(request)

    app = sim.app()
    app.middlewares.append(delete_while_walking)
    server = await aiohttp_server(app)
    rig = Rigged(db, sim, str(server.make_url("")).rstrip("/"), tmp_path / "data", clock)
    await rig.sync()
    run = await rig.sync(reconcile=True)
    # The doomed item was on page 1 before it went; the one that slipped from page 2 to page 1 unseen was
    # asked about by name, found alive and kept.
    assert run.counts.get("deleted", 0) == 0
    mirrored = {r[0] for r in await db.fetchall("SELECT iid FROM issues")}
    assert mirrored == set(project.issues) | {doomed}
    assert sum("iids%5B%5D" in path for _, path in sim.request_log) == 1
    run = await rig.sync(reconcile=True)
    assert run.counts["deleted"] == 1
    assert {r[0] for r in await db.fetchall("SELECT iid FROM issues")} == set(project.issues)


async def mirrored_rows(db: Database, project_id: int, kind: str, iid: int) -> tuple[int, int, int]:
    """The item's row, its notes and (an MR's) files in the mirror."""
    table = "issues" if kind == "issue" else "merge_requests"
    return (await item_count(db, table, project_id, iid),
            await db.fetchval("SELECT count(*) FROM notes WHERE project_id = ? AND noteable_kind = ? "
                              "AND noteable_iid = ?", (project_id, kind, iid)),
            await db.fetchval("SELECT count(*) FROM mr_files WHERE project_id = ? AND mr_iid = ?",
                              (project_id, iid)) if kind == "merge_request" else 0)


async def test_a_reconcile_fetches_items_gitlab_lists_but_the_mirror_lost_with_their_notes_and_diffs(
    rigged: Rigged, db: Database
) -> None:
    await rigged.sync()
    pid = next(iter(rigged.sim.projects))
    whole = {ref: await mirrored_rows(db, pid, *ref) for ref in (("issue", 5), ("merge_request", 3))}
    async with db.transaction() as conn:  # a lost page: the rows are gone, the cursors have moved past them
        await mirror.delete_item(conn, pid, "issue", 5)
        await mirror.delete_item(conn, pid, "merge_request", 3)
    await rigged.sync()
    assert await mirrored_rows(db, pid, "issue", 5) == (0, 0, 0)  # an incremental pass never sees them again
    rigged.sim.reset_counters()
    data_changes(rigged.changes)  # drained: only the reconcile's announcements are left to look at

    run = await rigged.sync(reconcile=True)

    assert {ref: await mirrored_rows(db, pid, *ref) for ref in whole} == whole
    assert all(notes > 0 for _, notes, _ in whole.values()) and whole[("merge_request", 3)][2] > 0
    assert run.counts["recovered"] == 2 and run.counts.get("deleted", 0) == 0
    assert run.counts["issues"] == 1 and run.counts["merge_requests"] == 1
    assert {(c["kind"], tuple(c["iids"])) for c in data_changes(rigged.changes)} == {
        ("issue", (5,)), ("merge_request", (3,))}
    # The incremental pass's one page and the reconcile's ceil(items / 100) per kind, then per lost item
    # the fetch a targeted run makes: the item, its discussions, an MR's diffs.
    requests = rigged.sim.requests
    assert (requests["issues_list"], requests["issue"], requests["issue_discussions"]) == (1 + 1, 1, 1)
    assert (requests["mrs_list"], requests["mr"], requests["mr_discussions"]) == (1 + 1, 1, 1)
    assert requests["mr_diffs"] + requests["mr_changes"] == 1


async def test_an_issue_created_behind_the_cursor_appears_after_one_reconcile(
    rigged: Rigged, db: Database
) -> None:
    """GitLab's clock behind the gateway's cursor (skew between nodes): the new issue's updated_at is
    older than the cursor, so no updated_after listing returns it."""
    await rigged.sync()
    pid = next(iter(rigged.sim.projects))
    async with db.transaction() as conn:
        await mirror.set_cursor(conn, pid, "issues", "2999-01-01T00:00:00.000Z")
    hook = rigged.sim.add_issue(pid, title="made while the clocks disagreed")
    iid = orjson.loads(hook.body())["object_attributes"]["iid"]
    rigged.sim.add_note(pid, "issue", iid, "and a first comment")
    await rigged.sync()
    assert await item_count(db, "issues", pid, iid) == 0

    run = await rigged.sync(reconcile=True)

    assert await mirrored_rows(db, pid, "issue", iid) == (1, 1, 0)
    assert run.counts["recovered"] == 1
    run = await rigged.sync(reconcile=True)  # nothing lacking now: nothing fetched
    assert run.counts.get("recovered", 0) == 0


async def test_sync_reconcile_on_the_command_line_deletes_what_gitlab_lost(
    tmp_path: Path, gitlab_url: str, simulator: GitLabSimulator
) -> None:
    env = cli_env(tmp_path, gitlab_url)
    code, _, err = await cli(env, "sync", "--json")
    assert code == 0, err
    simulator.delete_issue(1002, 4)
    code, out, err = await cli(env, "sync", "--json")
    assert code == 0, err
    db = await Database.open(tmp_path / "lore.db")
    try:
        assert await item_count(db, "issues", 1002, 4) == 1  # no reconcile asked for: still there
        code, out, err = await cli(env, "sync", "--reconcile", "--json")
        assert code == 0, err
        assert '"deleted": 1' in out
        assert await item_count(db, "issues", 1002, 4) == 0
    finally:
        await db.close()


# -- the scheduler's reconcile timer -----------------------------------------------------------------------


class ReconcilingRunner(FakeRunner):
    """A FakeRunner that records a reconcile of every project, as the pipeline does."""

    def __init__(self, db: Database, clock: FakeClock) -> None:
        super().__init__(db, clock)
        self.db = db

    async def run(self, request: SyncRequest, *, wait: bool = False) -> Any:
        run = await super().run(request, wait=wait)
        if request.reconcile:
            async with self.db.transaction() as conn:
                await conn.execute("INSERT OR REPLACE INTO reconciles SELECT id, ? FROM projects",
                                   (self.clock.now(),))
        return run


async def test_the_scheduler_reconciles_every_reconcile_interval(db: Database, tmp_path: Path) -> None:
    from tests.test_scheduler import make_config as scheduler_config

    rig = Rig(db, scheduler_config(tmp_path, sync_reconcile_interval="45m"))
    rig.runner = ReconcilingRunner(db, rig.clock)
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO projects (id, path_with_namespace, name, web_url, raw, synced_at)"
                           " VALUES (1001, 'acme/widgets', 'widgets', '', '{}', 0)")
        await conn.execute("INSERT INTO reconciles VALUES (1001, ?)", (rig.clock.now(),))
    await rig.fresh_mirror()
    await rig.start()
    try:
        for _ in range(20):
            await rig.step(5 * 60)
        passes = [(round(at / 60), r.reconcile) for at, r in zip(rig.offsets(), rig.runner.requests, strict=True)]
        assert passes == [(30, False), (45, True), (75, False), (90, True)]  # then 105 and 120: the 20th step
    finally:
        await rig.stop()


async def _settle(scheduler: Scheduler) -> None:
    import asyncio

    await asyncio.wait_for(scheduler.idle(), SETTLE)


async def test_a_projects_first_sync_counts_as_its_reconcile_so_none_follows_at_once(
    db: Database, tmp_path: Path, aiohttp_server: Any, clock: FakeClock
) -> None:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=5, clock=clock)
    sim.add_project("acme/widgets", issues=5, merge_requests=2)
    server = await aiohttp_server(sim.app())
    config = make_config(tmp_path / "data", str(server.make_url("")).rstrip("/"), ("acme/widgets",))
    bus = EventBus()
    scheduler = Scheduler(db, SyncRunner(db, bus, clock, config), bus, clock, config, rng=random.Random(1))
    await scheduler.start()
    try:
        await _settle(scheduler)
        assert [tuple(r) for r in await db.fetchall("SELECT trigger, status FROM sync_runs")] == [
            ("startup", "succeeded")]
        assert await db.fetchval("SELECT reconciled_at FROM reconciles") == clock.now()
    finally:
        await scheduler.stop()


@pytest.mark.parametrize(("age_hours", "reconcile"), [(5.9, False), (6.1, True)])
async def test_a_timer_only_install_reconciles_once_the_interval_has_passed(
    db: Database, tmp_path: Path, age_hours: float, reconcile: bool
) -> None:
    from gateway.ops.attempt import scheduled_attempt
    from tests.test_service import policy_config

    clock = FakeClock()
    async with db.transaction() as conn:
        await conn.execute("INSERT INTO projects (id, path_with_namespace, name, web_url, raw, synced_at)"
                           " VALUES (1001, 'acme/widgets', 'widgets', '', '{}', 0)")
        await conn.execute("INSERT INTO reconciles VALUES (1001, ?)", (clock.now() - age_hours * 3600,))
    runner = FakeRunner(db, clock)
    attempt = await scheduled_attempt(db, runner, clock, policy_config(tmp_path / "data"), random.Random(1))
    assert attempt.succeeded and runner.requests[0].reconcile is reconcile


def test_touch_and_reconcile_intervals_default_to_gitlabs_minute_and_six_hours(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    assert (config.gitlab.touch_interval, config.sync.reconcile_interval) == (60.0, 6 * 3600.0)
    config = make_config(tmp_path, gitlab_touch_interval="0s", sync_reconcile_interval="30m")
    assert (config.gitlab.touch_interval, config.sync.reconcile_interval) == (0.0, 1800.0)


@pytest.mark.parametrize("key", ["gitlab_touch_interval", "sync_reconcile_interval"])
def test_a_bad_interval_is_refused_naming_its_key(tmp_path: Path, key: str) -> None:
    from sync.config import ConfigError

    with pytest.raises(ConfigError, match=key.replace("_", ".", 1)):
        make_config(tmp_path, **{key: "soon"})
