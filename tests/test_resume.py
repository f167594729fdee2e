"""`lore-gateway resume` from the CLI reaches a running gateway in under 2 s (real processes, real time).

The scheduler used to re-read service_state only every 30 s, so a resumed gateway sat idle that long while
`status` already said idle. Here a real `serve` starts paused, the real CLI resumes it, and the first
request the gateway sends to GitLab afterwards is timed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway.simulator.gitlab import GitLabSimulator
from sync.store.db import Database
from tests.conftest import SIM_TOKEN
from tests.test_gateway_e2e import free_port, wait_for

SHORT_SECRET = "short-hook"  # under 32 bytes: serve warns about it at start


async def _paused_store(data_dir: Path) -> None:
    db = await Database.open(data_dir / "lore.db")
    try:
        async with db.transaction() as conn:
            await conn.execute("UPDATE service_state SET paused_reason = 'gitlab_forbidden: 403 Forbidden'"
                               " WHERE id = 1")
    finally:
        await db.close()


async def test_a_cli_resume_reaches_a_running_gateway_within_2_seconds(tmp_path: Path, aiohttp_server) -> None:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=3)
    sim.add_project("resume/one", issues=5, notes_per_item=0)
    first_request_at: list[float] = []

    @web.middleware
    async def timed(request: web.Request, handler):  # the moment the gateway asks GitLab for anything
        first_request_at.append(time.monotonic())
        return await handler(request)

    app = sim.app()
    app.middlewares.insert(0, timed)
    gitlab = await aiohttp_server(app)
    data_dir = tmp_path / "data"
    await _paused_store(data_dir)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORE_GATEWAY_")} | {
        "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir),
        "LORE_GATEWAY_GATEWAY_PORT": str(port),
        "LORE_GATEWAY_GITLAB_URL": str(gitlab.make_url("")).rstrip("/"),
        "LORE_GATEWAY_GITLAB_TOKEN": SIM_TOKEN,
        "LORE_GATEWAY_GITLAB_PROJECTS": "resume/one",
        "LORE_GATEWAY_WEBHOOK_SECRETS": SHORT_SECRET,
    }
    serve = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", "serve", env=env,
                                                 stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as session, \
                        session.get(f"http://127.0.0.1:{port}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await wait_for(ready, 30, interval=0.1)
        await asyncio.sleep(1.0)  # paused: nothing may reach GitLab, however long it waits
        assert first_request_at == []

        resume = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", "resume", env=env,
                                                      stdout=asyncio.subprocess.DEVNULL)
        assert await resume.wait() == 0
        resumed_at = time.monotonic()
        await wait_for(lambda: _true(bool(first_request_at)), 5, interval=0.02)
        assert first_request_at[0] - resumed_at < 2.0
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(serve.communicate(), 20)
    assert "warning: webhook.secrets: entry 1 is 10 bytes long" in err.decode()
    assert SHORT_SECRET not in err.decode()


async def _true(value: bool) -> bool:
    return value
