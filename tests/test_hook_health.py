"""Hook health and freshness in the status: the scheduler checks the webhooks after each pass, and
`GET /api/v1/sync/status` (and `lore-gateway status`) say when GitLab has disabled one."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.cli.sync_cmds import render_status
from gateway.keys import CLOCK, DB, SCHEDULER
from gateway.simulator.gitlab import GitLabSimulator, Webhook
from sync.config import Config
from sync.control.runs import RunLog
from sync.gitlab.client import GitLabClient
from sync.gitlab.hooks import HookManager, Manifest, default_hook_url, wanted_hook
from sync.gitlab.instance import Instance
from tests.conftest import SIM_TOKEN

SECRET = "health-secret"
PROJECTS = ("acme/widgets", "acme/gadgets")


async def install_hooks(config: Config) -> None:
    async with GitLabClient(config.gitlab.url or "", SIM_TOKEN) as client:
        manager = HookManager(client, Manifest(config.gateway.data_dir, config.gitlab.url or ""))
        wanted = wanted_hook(config, default_hook_url(config), Instance("18.5.0-ee", None, True), push_events=False)
        for project in PROJECTS:
            await manager.install(project, wanted)
        manager.manifest.save()


async def read_status(client: TestClient) -> dict:
    token = (await client.app[TOKENS].create("health", ["read"], None)).token
    response = await client.get("/api/v1/sync/status", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    return await response.json()


async def test_after_a_pass_status_says_gitlab_disabled_a_hook(
        config_for: Callable[..., Config], simulator: GitLabSimulator, aiohttp_client) -> None:
    config = config_for(webhook_secrets=SECRET)
    await install_hooks(config)
    simulator.hooks.disable(simulator.hooks.of_project(1001)[0].id)

    client = await aiohttp_client(create_app(config))
    await client.app[SCHEDULER].idle()  # the start-up run, then the hook check after it
    status = await read_status(client)

    by_project = {hook["project"]: hook for hook in status["webhooks"]}
    assert by_project["acme/widgets"]["state"] == "disabled"
    assert by_project["acme/widgets"]["alert_status"] == "temporarily_disabled"
    assert by_project["acme/gadgets"]["state"] == "ok"
    assert any("webhook of acme/widgets" in w and "timer" in w for w in status["warnings"])
    assert "acme/widgets: TEMPORARILY_DISABLED" not in render_status(status)
    assert "acme/widgets: DISABLED until" in render_status(status)


async def test_a_webhook_run_does_not_check_the_hooks(
        config_for: Callable[..., Config], simulator: GitLabSimulator, aiohttp_client) -> None:
    config = config_for(webhook_secrets=SECRET, sync_debounce="0s")
    await install_hooks(config)
    client = await aiohttp_client(create_app(config))
    await client.app[SCHEDULER].idle()
    simulator.reset_counters()

    hook = simulator.update_issue(1001, 1, title="by webhook")
    response = await client.post("/webhooks/gitlab", data=hook.body(), headers=hook.headers(secret=SECRET))
    assert response.status == 202
    await client.app[SCHEDULER].idle()

    runs = await RunLog(client.app[DB], client.app[CLOCK]).recent(1)
    assert runs[0].trigger == "webhook" and runs[0].status == "succeeded"
    assert simulator.requests["issue"] >= 1 and simulator.requests["hooks_list"] == 0


async def test_status_shows_each_projects_freshness_and_the_last_hours_intake(
        config_for: Callable[..., Config], simulator: GitLabSimulator, aiohttp_client) -> None:
    config = config_for(webhook_secrets=SECRET)
    client = await aiohttp_client(create_app(config))
    await client.app[SCHEDULER].idle()
    await client.app[SCHEDULER].stop()  # nothing processes the next event: it stays pending
    hook: Webhook = simulator.update_issue(1001, 1, title="pending")
    await client.post("/webhooks/gitlab", data=hook.body(), headers=hook.headers(secret=SECRET))

    status = await read_status(client)

    widgets = next(p for p in status["projects"] if p["path"] == "acme/widgets")
    assert widgets["items"] == {"issues": 30, "merge_requests": 12, "notes": widgets["items"]["notes"]}
    assert widgets["items"]["notes"] > 0 and widgets["last_synced_at"].endswith("Z")
    assert widgets["pending_events"] == 1 and widgets["lag_seconds"] >= 0
    assert status["webhook_intake"]["last_hour"] == 1 and len(status["webhook_intake"]["counts"]) == 12
    assert status["webhook_intake"]["counts"][-1] == 1
