"""The whole gateway, end to end: webhook bursts become few targeted runs, and a killed `serve` converges.

These use real time (short debounce) because what they check is latency as a person sees it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time

import aiohttp

from gateway.app import create_app
from gateway.server import running
from gateway.simulator.gitlab import GitLabSimulator
from sync.store.db import Database
from tests.conftest import SIM_TOKEN, make_config

SECRET = "e2e-webhook-secret"


async def wait_for(predicate, within: float, interval: float = 0.05):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if result := await predicate():
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {within} s")


async def test_a_burst_of_400_webhooks_for_40_issues_gives_few_runs_and_fresh_titles(tmp_path, aiohttp_server):
    sim = GitLabSimulator(token=SIM_TOKEN, seed=4)
    sim.add_project("burst/one", issues=60, notes_per_item=1)
    gitlab = await aiohttp_server(sim.app())
    debounce = 0.5
    config = make_config(tmp_path / "data", str(gitlab.make_url("")).rstrip("/"), ("burst/one",),
                         webhook_secrets=SECRET, sync_debounce=f"{int(debounce * 1000)}ms", sync_max_wait="5s")
    app = create_app(config)
    async with running(app, "127.0.0.1", 0) as url:
        db = await Database.open(config.db_path, migrate_first=False)
        try:
            await wait_for(lambda: db.fetchval("SELECT count(*) FROM sync_runs WHERE status = 'succeeded'"), 10)
            first_webhook_run = await db.fetchval("SELECT coalesce(max(id), 0) FROM sync_runs")
            hooks = []
            for round_ in range(10):
                for iid in range(1, 41):
                    hooks.append((iid, sim.update_issue(1001, iid, title=f"burst {round_} of issue {iid}")))
            async with aiohttp.ClientSession() as session:
                statuses = await asyncio.gather(*(
                    sim.deliver(hook, f"{url}/webhooks/gitlab", secret=SECRET, session=session) for _, hook in hooks
                ))
            last_webhook = time.monotonic()
            assert statuses == [202] * 400

            async def all_fresh() -> bool:
                rows = await db.fetchall("SELECT iid, title FROM issues WHERE iid <= 40")
                return all(title == f"burst 9 of issue {iid}" for iid, title in rows)

            await wait_for(all_fresh, debounce + 3)
            assert time.monotonic() - last_webhook <= debounce + 3
            runs = await db.fetchval("SELECT count(*) FROM sync_runs WHERE id > ?", (first_webhook_run,))
            assert 1 <= runs <= 3
            await wait_for(lambda: _no_pending(db), 5)
        finally:
            await db.close()


async def _no_pending(db: Database) -> bool:
    return await db.fetchval("SELECT count(*) FROM webhook_events WHERE processed_at IS NULL") == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_kill_9_of_serve_during_a_run_then_restart_converges(tmp_path, aiohttp_server):
    sim = GitLabSimulator(token=SIM_TOKEN, seed=8, latency=0.03)
    sim.add_project("crash/one", issues=300, notes_per_item=1)
    gitlab = await aiohttp_server(sim.app())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORE_GATEWAY_")} | {
        "LORE_GATEWAY_GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "LORE_GATEWAY_GATEWAY_PORT": str(port),
        "LORE_GATEWAY_GITLAB_URL": str(gitlab.make_url("")).rstrip("/"),
        "LORE_GATEWAY_GITLAB_TOKEN": SIM_TOKEN,
        "LORE_GATEWAY_GITLAB_PROJECTS": "crash/one",
        "LORE_GATEWAY_GITLAB_CONCURRENCY": "2",
        "LORE_GATEWAY_WEBHOOK_SECRETS": SECRET,
        "LORE_GATEWAY_SYNC_DEBOUNCE": "200ms",
        "LORE_GATEWAY_SYNC_STALE_LOCK": "2s",
    }

    async def serve() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )

    first = await serve()

    async def ready() -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as r:
                return r.status == 200
        except aiohttp.ClientConnectionError:
            return False

    await wait_for(ready, 20, interval=0.1)
    db = await Database.open(tmp_path / "data" / "lore.db", migrate_first=False)
    try:
        await wait_for(lambda: db.fetchval("SELECT count(*) FROM issues"), 20)  # the start-up run is under way
        hook = sim.update_issue(1001, 299, title="changed while the gateway died")
        async with aiohttp.ClientSession() as session:
            assert await sim.deliver(hook, f"http://127.0.0.1:{port}/webhooks/gitlab", secret=SECRET,
                                     session=session) == 202
        first.send_signal(signal.SIGKILL)
        await first.wait()
        assert await db.fetchval("SELECT status FROM sync_runs ORDER BY id LIMIT 1") == "running"
        assert await db.fetchval("SELECT count(*) FROM webhook_events WHERE processed_at IS NULL") == 1

        second = await serve()
        try:
            async def converged() -> bool:
                done = await db.fetchval("SELECT count(*) FROM issues") == 300
                title = await db.fetchval("SELECT title FROM issues WHERE iid = 299")
                return done and title == "changed while the gateway died" and await _no_pending(db)

            await wait_for(converged, 40, interval=0.2)
            first_run = await db.fetchone("SELECT status, error_code FROM sync_runs ORDER BY id LIMIT 1")
            assert tuple(first_run) == ("interrupted", "interrupted")
            assert await db.fetchval("SELECT count(DISTINCT iid) FROM issues") == 300
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), 20)
        assert second.returncode == 0
    finally:
        await db.close()
