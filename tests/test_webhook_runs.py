"""The whole gateway, its scheduler and the simulator: an event that changes nothing mirrored starts no run and
asks GitLab nothing, while one that does starts a run. The scheduler runs on a fake clock, so "the debounce
has long passed" is a step of the clock, not a wait."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from gateway.app import create_app
from gateway.keys import DB
from gateway.simulator.gitlab import GitLabSimulator, Webhook
from sync.clock import FakeClock
from sync.store.db import Database
from tests.conftest import SIM_TOKEN, make_config

SECRET = "runs-webhook-secret"
FIXTURES = Path(__file__).parent / "fixtures" / "gitlab"
DEBOUNCE = 2.0


def documented(name: str, **payload: object) -> Webhook:
    """GitLab's documented example, moved onto the simulated project."""
    data = json.loads((FIXTURES / name).read_text())
    return Webhook(event=data["x_gitlab_event"], payload={**data["payload"], **payload})


async def until(predicate: Any, clock: FakeClock, step: float = 0.5, tries: int = 200) -> None:
    """Step the fake clock (and let the loop run real I/O) until `predicate` holds."""
    for _ in range(tries):
        if await predicate():
            return
        await clock.advance(step)
        await asyncio.sleep(0.01)  # the run's requests to the simulator are real I/O
    raise AssertionError("condition not met")


async def succeeded_runs(db: Database) -> int:
    return await db.fetchval("SELECT count(*) FROM sync_runs WHERE status = 'succeeded'")


async def _hooks_checked(sim: GitLabSimulator) -> bool:
    return sim.requests["hooks_list"] > 0


async def test_events_that_change_nothing_mirrored_start_no_run_and_ask_gitlab_nothing(
    tmp_path: Path, aiohttp_server: Any, aiohttp_client: Any
) -> None:
    clock = FakeClock()
    sim = GitLabSimulator(token=SIM_TOKEN, seed=5, clock=clock)
    sim.add_project("acme/widgets", issues=3, merge_requests=2, notes_per_item=1)
    gitlab = await aiohttp_server(sim.app())
    config = make_config(tmp_path / "data", str(gitlab.make_url("")).rstrip("/"), ("acme/widgets",),
                         webhook_secrets=SECRET, sync_debounce="2s", sync_max_wait="10s")
    client = await aiohttp_client(create_app(config, clock=clock))
    db = client.server.app[DB]
    project = {"id": 1001, "path_with_namespace": "acme/widgets"}
    nothing_to_do = [
        documented("webhooks/pipeline.json", project=project),
        documented("webhooks/job.json", project_id=1001, project=project),
        documented("webhooks/emoji.json", project_id=1001, project=project),
        documented("webhooks/milestone.json", project=project),
        sim.push_event(1001, message="Tidy the README\n"),
        documented("system_hooks/project_update.json", project_id=4242),  # not a mirrored project
    ]
    await until(lambda: succeeded_runs(db), clock)  # the startup run
    await until(lambda: _hooks_checked(sim), clock)  # and the hook-health check that follows a pass
    runs_before, asked_before = await db.fetchval("SELECT count(*) FROM sync_runs"), sum(sim.requests.values())

    for hook in nothing_to_do:
        response = await client.post("/webhooks/gitlab", data=hook.body(), headers=hook.headers(secret=SECRET))
        assert response.status == 202
    for _ in range(10):
        await clock.advance(DEBOUNCE)
        await asyncio.sleep(0.01)

    assert await db.fetchval("SELECT count(*) FROM sync_runs") == runs_before
    assert sum(sim.requests.values()) == asked_before

    # The control: the same steps see a run when an event does name mirrored data.
    note = sim.add_note(1001, "issue", 2, "a new comment")
    await client.post("/webhooks/gitlab", data=note.body(), headers=note.headers(secret=SECRET))
    await until(lambda: _more_than(db, runs_before), clock)


async def _more_than(db: Database, count: int) -> bool:
    return await succeeded_runs(db) > count
