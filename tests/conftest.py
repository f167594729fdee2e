"""Shared fixtures: a GitLab simulator on a real socket, configs pointing at it, a database, a scripted runner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import FakeClock
from sync.config import Config, load_config
from sync.control.runs import Run, RunLog
from sync.errors import SyncError, SyncInProgress
from sync.gitlab.client import _HAS_DIFFS
from sync.ingest.pipeline import SyncRequest
from sync.store.db import Database
from tests.skip_policy import pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary  # noqa: F401

SIM_TOKEN = "sim-token"


def make_config(
    data_dir: Path, gitlab_url: str | None = None, projects: tuple[str, ...] = (), **env: str
) -> Config:
    """A Config from env-style overrides (e.g. sync_stale_lock="1s"), the way operators write them."""
    values = {"LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir)}
    if gitlab_url:
        values["LORE_GATEWAY_GITLAB_URL"] = gitlab_url
        values["LORE_GATEWAY_GITLAB_TOKEN"] = SIM_TOKEN
        values["LORE_GATEWAY_GITLAB_PROJECTS"] = ",".join(projects)
    values.update({f"LORE_GATEWAY_{k.upper()}": v for k, v in env.items()})
    return load_config(None, values)


@pytest.fixture(autouse=True)
def _forget_gitlab_instances() -> None:
    """Each test starts knowing no GitLab: the client remembers per process and base URL whether `/diffs`
    exists, and a later test's simulator can get an earlier one's port (and so its base URL)."""
    _HAS_DIFFS.clear()


@pytest.fixture
def simulator() -> GitLabSimulator:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=7)
    sim.add_project("acme/widgets", issues=30, merge_requests=12, notes_per_item=3)
    sim.add_project("acme/gadgets", issues=20, merge_requests=8, notes_per_item=2)
    return sim


@pytest.fixture
async def gitlab_url(simulator: GitLabSimulator, aiohttp_server) -> str:
    server = await aiohttp_server(simulator.app())
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def config_for(tmp_path: Path, gitlab_url: str) -> Callable[..., Config]:
    def build(**env: str) -> Config:
        return make_config(tmp_path / "data", gitlab_url, ("acme/widgets", "acme/gadgets"), **env)

    return build


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "data" / "lore.db")
    yield database
    await database.close()


class FakeRunner:
    """Records requests and answers from a script: "ok", a SyncError to fail with, or SyncInProgress to raise.

    With `hold` set, each run waits for `release()` (a long run); `cancelled` tells whether one was cancelled.
    """

    def __init__(self, db: Database, clock: FakeClock) -> None:
        self.runs = RunLog(db, clock)
        self.clock = clock
        self.script: list[str | SyncError] = []
        self.requests: list[SyncRequest] = []
        self.started_at: list[float] = []
        self.hold = False
        self.entered = asyncio.Event()
        self.cancelled = False
        self._release = asyncio.Event()

    def release(self) -> None:
        self._release.set()

    async def run(self, request: SyncRequest, *, wait: bool = False) -> Run:
        self.requests.append(request)
        self.started_at.append(self.clock.now())
        outcome = self.script.pop(0) if self.script else "ok"
        if isinstance(outcome, SyncInProgress):
            raise outcome
        run_id = await self.runs.start(request.trigger, request.profile, "fake")
        self.entered.set()
        if self.hold:
            try:
                await self._release.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
            self._release.clear()
        if isinstance(outcome, SyncError):
            await self.runs.finish(run_id, "failed", {}, [], outcome)
        else:
            await self.runs.finish(run_id, "succeeded", {"issues": 1}, [])
        run = await self.runs.get(run_id)
        assert run is not None
        return run
