"""The sync pipeline against the GitLab simulator: completeness, incrementality, faults, targeting."""

from __future__ import annotations

import time

import pytest
from aiohttp import web

from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import SystemClock
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest.pipeline import SyncRequest
from sync.types import ItemRef


async def counts(db, table: str) -> int:
    return await db.fetchval(f"SELECT count(*) FROM {table}")


def runner_for(db, config, bus=None) -> SyncRunner:
    return SyncRunner(db, bus or EventBus(), SystemClock(), config)


def simulated_notes(sim: GitLabSimulator) -> int:
    return sum(
        len(d["notes"])
        for p in sim.projects.values()
        for d in [d for ds in p.discussions.values() for d in ds]
    )


async def test_initial_sync_mirrors_every_item_and_note_exactly_once(simulator, config_for, db):
    run = await runner_for(db, config_for()).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded", run.error_message
    assert await counts(db, "projects") == 2
    assert await counts(db, "issues") == 50
    assert await counts(db, "merge_requests") == 20
    assert await counts(db, "notes") == simulated_notes(simulator)
    assert run.counts["issues"] == 50 and run.counts["merge_requests"] == 20
    files = sum(len(v) for p in simulator.projects.values() for v in p.diffs.values())
    assert await counts(db, "mr_files") == files


async def test_requests_are_the_minimum_the_rest_api_allows(simulator, config_for, db):
    await runner_for(db, config_for()).run(SyncRequest(profile="fast"))
    items = sum(len(p.issues) + len(p.merge_requests) for p in simulator.projects.values())
    mrs = sum(len(p.merge_requests) for p in simulator.projects.values())
    list_pages = 2 * 2  # one page of <=100 per project and resource
    minimum = list_pages + items + mrs  # + one discussions request per item + one diffs request per MR
    made = simulator.request_count - simulator.requests["project"]
    assert minimum <= made <= minimum * 1.1


async def test_a_second_sync_with_nothing_changed_lists_once_and_writes_nothing(simulator, config_for, db):
    runner = runner_for(db, config_for())
    await runner.run(SyncRequest(profile="balanced"))
    versions = await db.fetchall("SELECT * FROM data_versions ORDER BY project_id, resource")
    simulator.reset_counters()
    run = await runner.run(SyncRequest(profile="balanced"))
    assert run.status == "succeeded"
    assert simulator.requests["issues_list"] <= 2 * 2 and simulator.requests["mrs_list"] <= 2 * 2
    assert simulator.requests["issue_discussions"] == simulator.requests["mr_diffs"] == 0
    assert (
        run.counts.get("issues", 0)
        == run.counts.get("merge_requests", 0)
        == run.counts.get("documents", 0)
        == 0
    )
    assert [
        tuple(r) for r in await db.fetchall("SELECT * FROM data_versions ORDER BY project_id, resource")
    ] == [tuple(r) for r in versions]


async def test_an_updated_issue_is_picked_up_with_its_new_note(simulator, config_for, db):
    runner = runner_for(db, config_for())
    await runner.run(SyncRequest(profile="balanced"))
    simulator.update_issue(1001, 3, title="Renamed by the sim")
    simulator.add_note(1001, "issue", 3, "a brand new comment about zeppelins")
    run = await runner.run(SyncRequest(profile="balanced"))
    assert run.counts["issues"] == 1
    assert (
        await db.fetchval("SELECT title FROM issues WHERE project_id = 1001 AND iid = 3")
        == "Renamed by the sim"
    )
    hits = await db.fetchall(
        "SELECT kind, iid FROM documents_fts JOIN documents d ON d.id = documents_fts.rowid"
        " WHERE documents_fts MATCH 'zeppelins'"
    )
    assert [(h[0], h[1]) for h in hits] == [("note", 3)]


async def test_a_500_in_the_middle_of_a_page_walk_is_retried_and_the_run_completes(simulator, config_for, db):
    simulator.inject_fault(500, path_contains="/discussions", after=5, times=1)
    run = await runner_for(db, config_for()).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded"
    assert await counts(db, "notes") == simulated_notes(simulator)


async def test_a_401_fails_the_run_as_permanent_and_leaves_every_cursor(simulator, config_for, db):
    runner = runner_for(db, config_for())
    await runner.run(SyncRequest(profile="fast"))
    before = [tuple(r) for r in await db.fetchall("SELECT * FROM sync_cursors ORDER BY 1, 2")]
    simulator.update_issue(1001, 1, title="changed")
    simulator.inject_fault(401, path_contains="/issues", times=100)
    run = await runner.run(SyncRequest(profile="fast"))
    assert run.status == "failed" and run.transient is False and run.error_code == "gitlab_unauthorized"
    assert [tuple(r) for r in await db.fetchall("SELECT * FROM sync_cursors ORDER BY 1, 2")] == before


async def test_a_failure_mid_walk_keeps_the_cursor_at_the_last_committed_page(db, tmp_path, aiohttp_server):
    from tests.conftest import SIM_TOKEN, make_config

    sim = GitLabSimulator(token=SIM_TOKEN, seed=3)
    sim.add_project("big/one", issues=250, notes_per_item=1)
    server = await aiohttp_server(sim.app())
    config = make_config(tmp_path / "data", str(server.make_url("")).rstrip("/"), ("big/one",))
    sim.inject_fault(403, path_contains="/issues?", after=1, times=1)  # the second list page
    run = await runner_for(db, config).run(SyncRequest(profile="fast"))
    assert run.status == "failed" and run.error_code == "gitlab_forbidden"
    assert await counts(db, "issues") == 100
    newest = await db.fetchval("SELECT max(updated_at) FROM issues")
    assert await db.fetchval("SELECT updated_after FROM sync_cursors WHERE resource = 'issues'") == newest
    sim.reset_counters()
    run = await runner_for(db, config).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded" and await counts(db, "issues") == 250
    assert sim.requests["issue_discussions"] == 150  # the first page is not fetched again


async def test_items_shifting_during_a_walk_are_not_missed(db, tmp_path, aiohttp_server):
    from tests.conftest import SIM_TOKEN, make_config

    sim = GitLabSimulator(token=SIM_TOKEN, seed=5)
    sim.add_project("shifty/one", issues=300)
    app = sim.app()
    lists = 0

    @web.middleware
    async def update_during_walk(request, handler):
        nonlocal lists
        if request.path.endswith("/issues"):
            lists += 1
            if lists == 2:  # after page 1 was served: an item on it jumps to the end
                oldest = min(sim.projects[1001].issues.values(), key=lambda i: i["updated_at"])
                sim.update_issue(1001, oldest["iid"], title="moved")
        return await handler(request)

    app.middlewares.insert(0, update_during_walk)
    server = await aiohttp_server(app)
    config = make_config(tmp_path / "data", str(server.make_url("")).rstrip("/"), ("shifty/one",))
    run = await runner_for(db, config).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded"
    assert await counts(db, "issues") == 300
    assert await db.fetchval("SELECT count(*) FROM issues WHERE title = 'moved'") == 1


async def test_a_targeted_run_fetches_only_the_named_items(simulator, config_for, db):
    runner = runner_for(db, config_for())
    await runner.run(SyncRequest(profile="fast"))
    simulator.update_issue(1002, 4, title="targeted title")
    simulator.update_merge_request(1001, 2, title="targeted mr")
    simulator.reset_counters()
    bus = EventBus()
    changes = bus.subscribe()
    # A reference with no kind names nothing to fetch (the inbox stores such events, the run skips them).
    targets = (ItemRef(1002, "issue", 4), ItemRef(1001, "merge_request", 2), ItemRef(9999, "issue", 1),
               ItemRef(1001, None, 3))
    run = await runner_for(db, config_for(), bus).run(
        SyncRequest(trigger="webhook", profile="fast", targets=targets)
    )
    assert run.status == "succeeded"
    assert simulator.requests["issues_list"] == simulator.requests["mrs_list"] == 0
    assert simulator.requests["issue"] == 1 and simulator.requests["mr"] == 1
    assert (
        await db.fetchval("SELECT title FROM issues WHERE project_id = 1002 AND iid = 4") == "targeted title"
    )
    changed = []
    while not changes.queue.empty():
        event = changes.queue.get_nowait()
        if event.name == "data.changed":
            changed.append((event.data["project_id"], event.data["kind"], event.data["iids"]))
    assert sorted(changed) == [(1001, "merge_request", [2]), (1002, "issue", [4])]


async def test_a_targeted_item_gitlab_no_longer_has_is_removed(simulator, config_for, db):
    runner = runner_for(db, config_for())
    await runner.run(SyncRequest(profile="balanced"))
    del simulator.projects[1001].issues[5]
    run = await runner.run(
        SyncRequest(trigger="webhook", profile="balanced", targets=(ItemRef(1001, "issue", 5),))
    )
    assert run.status == "succeeded" and run.counts["deleted"] == 1
    assert await db.fetchval("SELECT count(*) FROM issues WHERE project_id = 1001 AND iid = 5") == 0
    assert (
        await db.fetchval(
            "SELECT count(*) FROM documents WHERE project_id = 1001 AND iid = 5 AND parent_kind = 'issue'"
        )
        == 0
    )


async def test_a_changed_title_is_searchable_by_its_new_words_only(simulator, config_for, db):
    runner = runner_for(db, config_for())
    await runner.run(SyncRequest(profile="balanced"))
    simulator.update_issue(1001, 7, title="quokka migration plan")
    await runner.run(SyncRequest(profile="balanced"))
    simulator.update_issue(1001, 7, title="wombat migration plan")
    await runner.run(SyncRequest(profile="balanced"))

    async def matches(word: str) -> list:
        return await db.fetchall("SELECT rowid FROM documents_fts WHERE documents_fts MATCH ?", (word,))

    assert len(await matches("wombat")) == 1
    assert await matches("quokka") == []


async def test_progress_events_carry_the_run_id_and_end_at_total(simulator, config_for, db):
    bus = EventBus()
    sub = bus.subscribe(maxsize=10_000)
    run = await runner_for(db, config_for(), bus).run(SyncRequest(profile="balanced"))
    events = []
    while not sub.queue.empty():
        events.append(sub.queue.get_nowait())
    names = [e.name for e in events]
    assert names[0] == "sync.started" and names[-1] == "sync.finished"
    progress = [e.data for e in events if e.name == "sync.progress"]
    assert all(p["run_id"] == run.id for p in progress)
    issues = [p for p in progress if p["stage"] == "issues"]
    assert issues[-1]["done"] == issues[-1]["total"] == 50
    assert [e.id for e in events] == sorted(e.id for e in events)


async def test_the_full_profile_without_an_embeddings_url_says_the_stage_was_skipped(simulator, config_for, db):
    run = await runner_for(db, config_for()).run(SyncRequest(profile="full"))
    assert run.status == "succeeded"
    assert any(w.startswith("embeddings: skipped") for w in run.warnings)


async def test_an_unknown_project_fails_permanently(simulator, config_for, db, tmp_path):
    from tests.conftest import make_config

    config = config_for()
    bad = make_config(tmp_path / "data", config.gitlab.url, ("acme/nope",))
    run = await runner_for(db, bad).run(SyncRequest(profile="fast"))
    assert run.status == "failed" and run.error_code == "project_not_found" and run.transient is False


@pytest.mark.parametrize("profile", ["fast", "balanced"])
async def test_sync_runs_record_trigger_profile_and_timestamps(simulator, config_for, db, profile):
    run = await runner_for(db, config_for()).run(SyncRequest(trigger="manual", profile=profile))
    doc = run.to_json()
    assert doc["trigger"] == "manual" and doc["profile"] == profile and doc["status"] == "succeeded"
    assert doc["started_at"].endswith("Z") and doc["finished_at"].endswith("Z")


class RecordingClock(SystemClock):
    """Real time, but sleeps are recorded and skipped, so a Retry-After wait costs the test nothing."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


async def test_a_429_with_retry_after_waits_that_long_then_completes(simulator, config_for, db):
    simulator.inject_fault(429, path_contains="/issues?", retry_after=2, times=1)
    clock = RecordingClock()
    run = await SyncRunner(db, EventBus(), clock, config_for()).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded"
    assert 2.0 in clock.slept
    assert await counts(db, "issues") == 50


async def test_initial_sync_at_full_size_is_exact_and_a_quiet_resync_is_cheap(db, tmp_path, aiohttp_server):
    from tests.conftest import SIM_TOKEN, make_config

    sim = GitLabSimulator(token=SIM_TOKEN, seed=21, latency=0.015)
    for path in ("big/one", "big/two"):
        sim.add_project(path, issues=400, merge_requests=150, notes_per_item=3)
    server = await aiohttp_server(sim.app())
    config = make_config(tmp_path / "data", str(server.make_url("")).rstrip("/"), ("big/one", "big/two"))
    runner = runner_for(db, config)
    run = await runner.run(SyncRequest(profile="balanced"))
    assert run.status == "succeeded"
    assert await counts(db, "issues") == 800 and await counts(db, "merge_requests") == 300
    assert (
        await counts(db, "notes")
        == simulated_notes(sim)
        == await db.fetchval("SELECT count(DISTINCT id) FROM notes")
    )
    minimum = 2 * (4 + 2 + 400 + 2 * 150)  # list pages + discussions per item + diffs per MR
    assert minimum <= sim.request_count - sim.requests["project"] <= minimum * 1.1

    sim.reset_counters()
    started = time.perf_counter()
    quiet = await runner.run(SyncRequest(profile="balanced"))
    assert time.perf_counter() - started < 1.0
    assert sim.requests["issues_list"] <= 2 * 2 and sim.requests["mrs_list"] <= 2 * 2
    assert (
        sim.request_count - sim.requests["project"] == sim.requests["issues_list"] + sim.requests["mrs_list"]
    )
    assert quiet.counts.get("issues", 0) + quiet.counts.get("documents", 0) == 0
