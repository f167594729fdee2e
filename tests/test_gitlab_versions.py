"""The gateway against each GitLab version profile: what an older or smaller GitLab lacks degrades, never pauses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import FakeClock, SystemClock
from sync.control.runner import SyncRunner
from sync.control.scheduler import Scheduler
from sync.control.status import read_service_state
from sync.errors import PermanentError
from sync.events import EventBus
from sync.gitlab.client import GitLabClient
from sync.ingest.pipeline import SyncRequest
from sync.store.db import Database
from tests.conftest import SIM_TOKEN, make_config

PROJECTS = ("acme/widgets", "acme/gadgets")


def versioned_simulator(version: str) -> GitLabSimulator:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=7, gitlab_version=version)
    sim.add_project("acme/widgets", issues=12, merge_requests=25, notes_per_item=2)
    sim.add_project("acme/gadgets", issues=5, merge_requests=4, notes_per_item=1)
    return sim


async def serve(sim: GitLabSimulator, aiohttp_server: Any) -> str:
    server = await aiohttp_server(sim.app())
    return str(server.make_url("")).rstrip("/")


def diffs_requests(sim: GitLabSimulator) -> int:
    return sum(1 for _, path in sim.request_log if path.split("?")[0].endswith("/diffs"))


async def test_gitlab_15_6_syncs_mr_files_from_changes_and_probes_diffs_once(aiohttp_server, tmp_path: Path,
                                                                              db: Database) -> None:
    sim = versioned_simulator("15.6")
    config = make_config(tmp_path / "data", await serve(sim, aiohttp_server), PROJECTS)
    scheduler = Scheduler(db, SyncRunner(db, EventBus(), SystemClock(), config), EventBus(), SystemClock(), config)

    await scheduler.start()  # an empty mirror: a run at start-up
    await scheduler.idle()
    await scheduler.stop()

    status = await scheduler.status()
    assert status["last_sync"]["status"] == "succeeded", status["last_sync"]["error_message"]
    assert status["scheduler_state"] == "idle" and (await read_service_state(db)).paused_reason is None
    files = sum(len(v) for p in sim.projects.values() for v in p.diffs.values())
    assert await db.fetchval("SELECT count(*) FROM mr_files") == files
    assert diffs_requests(sim) == 1  # the one probe; every MR then went to /changes
    assert sim.requests["mr_changes"] == 29


async def test_a_gitlab_with_diffs_never_asks_for_changes(aiohttp_server, tmp_path: Path, db: Database) -> None:
    sim = versioned_simulator("18.5-ee")
    config = make_config(tmp_path / "data", await serve(sim, aiohttp_server), PROJECTS)

    run = await SyncRunner(db, EventBus(), SystemClock(), config).run(SyncRequest(profile="fast"))

    assert run.status == "succeeded"
    assert sim.requests["mr_diffs"] == 29 and sim.requests["mr_changes"] == 0


async def test_a_vanished_merge_request_is_not_found_even_on_an_old_gitlab(aiohttp_server) -> None:
    sim = versioned_simulator("15.6")
    async with GitLabClient(await serve(sim, aiohttp_server), SIM_TOKEN, clock=FakeClock()) as client:
        assert await client.merge_request_files(1001, 1)  # learns that /diffs is missing
        del sim.projects[1001].merge_requests[2]

        with pytest.raises(PermanentError) as raised:
            await client.merge_request_files(1001, 2)

    assert raised.value.code == "gitlab_not_found"
    assert diffs_requests(sim) == 1  # the second MR went straight to /changes


async def test_a_missing_mr_on_an_unprobed_gitlab_leaves_the_question_open(aiohttp_server) -> None:
    sim = versioned_simulator("15.6")
    async with GitLabClient(await serve(sim, aiohttp_server), SIM_TOKEN, clock=FakeClock()) as client:
        with pytest.raises(PermanentError):
            await client.merge_request_files(1001, 999)  # /diffs 404, /changes 404: nothing learnt
        await client.merge_request_files(1001, 1)

    assert diffs_requests(sim) == 2 and sim.requests["mr_changes"] == 2


@pytest.mark.parametrize(("version", "reason"), [
    ("17.5-ee", "verification status (a String: EE before 17.8)"),
    ("ce", "No such type WorkItemWidgetStatus"),
    ("15.6", "No such type WorkItemWidgetStatus"),
])
async def test_an_edition_without_the_status_object_costs_one_graphql_request_and_a_warning(
    aiohttp_server, tmp_path: Path, db: Database, version: str, reason: str
) -> None:
    sim = versioned_simulator(version)
    sim.enable_work_items()
    config = make_config(tmp_path / "data", await serve(sim, aiohttp_server), PROJECTS)

    run = await SyncRunner(db, EventBus(), SystemClock(), config).run(SyncRequest(profile="fast"))

    assert run.status == "succeeded"
    assert sim.requests["graphql"] == 1
    assert [w for w in run.warnings if w.startswith("work_item_status: unavailable")] == [
        next(w for w in run.warnings if reason in w)
    ]


async def test_ee_18_5_fetches_every_status_in_full_batches(aiohttp_server, tmp_path: Path, db: Database) -> None:
    sim = versioned_simulator("18.5-ee")
    sim.enable_work_items()
    config = make_config(tmp_path / "data", await serve(sim, aiohttp_server), PROJECTS)

    run = await SyncRunner(db, EventBus(), SystemClock(), config).run(SyncRequest(profile="fast"))

    assert run.status == "succeeded" and not run.warnings
    assert sim.requests["graphql"] == 2  # one batch per project
    assert await db.fetchval("SELECT count(*) FROM issues WHERE work_item_status IS NOT NULL") == 17
