"""Project webhooks: the simulator's hooks API as GitLab has it, and the engine that installs and checks them."""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import SystemClock
from sync.config import Config
from sync.errors import PermanentError
from sync.gitlab.client import GitLabClient, RetryPolicy
from sync.gitlab.hooks import (
    HealthStore,
    HookManager,
    Manifest,
    check_health,
    default_hook_url,
    wanted_hook,
)
from sync.gitlab.instance import Instance
from tests.conftest import SIM_TOKEN

GITLAB_18 = Instance("18.5.0-ee", "abc", True)
GITLAB_19 = Instance("19.0.0-ee", "abc", True)
HOOK_URL = "https://gateway.example/webhooks/gitlab"


@pytest.fixture
async def client(gitlab_url: str) -> AsyncIterator[GitLabClient]:
    async with GitLabClient(gitlab_url, SIM_TOKEN, retry=RetryPolicy(attempts=1)) as gl:
        yield gl


@pytest.fixture
def config(config_for: Callable[..., Config]) -> Config:
    return config_for(webhook_secrets="hook-secret-1", webhook_signing_tokens="whsec_" + "A" * 43 + "=")


def manager_for(client: GitLabClient, config: Config) -> HookManager:
    return HookManager(client, Manifest(config.gateway.data_dir, config.gitlab.url or ""))


async def api(gitlab_url: str, method: str, path: str, **kwargs) -> tuple[int, object]:
    async with aiohttp.ClientSession() as session, session.request(
            method, gitlab_url + "/api/v4" + path, headers={"PRIVATE-TOKEN": SIM_TOKEN}, **kwargs) as response:
        body = await response.json() if response.content_length != 0 and response.status != 204 else None
        return response.status, body


# -- the simulated GitLab ------------------------------------------------------------------------------


async def test_a_new_hook_has_gitlabs_defaults_and_never_shows_its_token(gitlab_url: str) -> None:
    status, hook = await api(gitlab_url, "POST", "/projects/1001/hooks", json={"url": HOOK_URL, "token": "s3cret"})

    assert status == 201
    assert hook["push_events"] is True and hook["issues_events"] is False and hook["note_events"] is False
    assert hook["enable_ssl_verification"] is True and hook["alert_status"] == "executable"
    assert hook["disabled_until"] is None
    assert "s3cret" not in str(hook) and "token" not in hook


async def test_signing_token_attributes_appear_only_on_a_gitlab_that_has_them(
        gitlab_url: str, simulator: GitLabSimulator) -> None:
    _, old = await api(gitlab_url, "POST", "/projects/1001/hooks", json={"url": HOOK_URL, "signing_token": "x"})
    simulator.hooks.signing_tokens = True
    signing = "whsec_" + "A" * 43 + "="
    _, new = await api(gitlab_url, "POST", "/projects/1001/hooks", json={"url": HOOK_URL, "signing_token": signing})
    bad, _ = await api(gitlab_url, "POST", "/projects/1001/hooks", json={"url": HOOK_URL, "signing_token": "x"})

    assert "signing_token_present" not in old  # GitLab before 19.0 ignores the attribute
    assert new["signing_token_present"] is True and new["token_present"] is False
    assert bad == 400


async def test_a_developer_token_cannot_manage_hooks(gitlab_url: str, simulator: GitLabSimulator) -> None:
    simulator.hooks.access_level = 30

    status, body = await api(gitlab_url, "GET", "/projects/1001/hooks")

    assert status == 403 and body == {"message": "403 Forbidden"}


async def test_editing_the_url_resets_the_secret_token(gitlab_url: str, simulator: GitLabSimulator) -> None:
    _, hook = await api(gitlab_url, "POST", "/projects/1001/hooks", json={"url": HOOK_URL, "token": "s3cret"})

    await api(gitlab_url, "PUT", f"/projects/1001/hooks/{hook['id']}", json={"url": HOOK_URL + "?v=2"})

    assert simulator.hooks.hooks[hook["id"]].token is None


async def test_delete_removes_the_hook(gitlab_url: str, simulator: GitLabSimulator) -> None:
    _, hook = await api(gitlab_url, "POST", "/projects/1001/hooks", json={"url": HOOK_URL})

    status, _ = await api(gitlab_url, "DELETE", f"/projects/1001/hooks/{hook['id']}")
    again, _ = await api(gitlab_url, "GET", f"/projects/1001/hooks/{hook['id']}")

    assert status == 204 and again == 404


async def test_four_failed_deliveries_disable_a_hook_for_a_while(
        gitlab_url: str, simulator: GitLabSimulator, aiohttp_server) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=500)

    refusing = web.Application()
    refusing.router.add_post("/hook", refuse)
    server = await aiohttp_server(refusing)
    _, hook = await api(gitlab_url, "POST", "/projects/1001/hooks",
                        json={"url": str(server.make_url("/hook")), "issues_events": True})

    for _ in range(4):
        await simulator.hooks.dispatch(simulator.update_issue(1001, 1, title="again"))
    after = await simulator.hooks.dispatch(simulator.update_issue(1001, 1, title="once more"))
    _, shown = await api(gitlab_url, "GET", f"/projects/1001/hooks/{hook['id']}")

    assert after == []  # no delivery while disabled
    assert shown["alert_status"] == "temporarily_disabled" and shown["disabled_until"] is not None


async def test_forty_failures_disable_a_hook_for_good(gitlab_url: str, simulator: GitLabSimulator) -> None:
    _, hook = await api(gitlab_url, "POST", "/projects/1001/hooks", json={"url": HOOK_URL})

    simulator.hooks.disable(hook["id"], permanently=True)
    _, shown = await api(gitlab_url, "GET", f"/projects/1001/hooks/{hook['id']}")

    assert shown["alert_status"] == "disabled" and shown["disabled_until"] is None


async def test_a_hook_receives_only_the_events_it_asked_for_with_its_token(
        gitlab_url: str, simulator: GitLabSimulator, aiohttp_server) -> None:
    seen: list[tuple[str, str | None]] = []

    async def receive(request: web.Request) -> web.Response:
        seen.append((request.headers["X-Gitlab-Event"], request.headers.get("X-Gitlab-Token")))
        return web.json_response({"accepted": True}, status=202)

    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    server = await aiohttp_server(receiver)
    await api(gitlab_url, "POST", "/projects/1001/hooks", json={
        "url": str(server.make_url("/hook")), "token": "s3cret", "issues_events": True, "push_events": False})

    await simulator.hooks.dispatch(simulator.update_issue(1001, 1, title="seen"))
    await simulator.hooks.dispatch(simulator.add_note(1001, "issue", 1, "not asked for"))
    await simulator.hooks.dispatch(simulator.update_issue(1002, 1, title="another project"))

    assert seen == [("Issue Hook", "s3cret")]


async def test_the_token_describes_its_scopes_and_expiry(gitlab_url: str, simulator: GitLabSimulator) -> None:
    simulator.personal_token.scopes = ("read_api",)
    simulator.personal_token.expires_at = "2030-01-31"

    status, body = await api(gitlab_url, "GET", "/personal_access_tokens/self")

    assert status == 200 and body["scopes"] == ["read_api"] and body["expires_at"] == "2030-01-31"


# -- the engine ----------------------------------------------------------------------------------------


async def test_install_creates_the_hook_the_mirror_needs(client: GitLabClient, config: Config,
                                                         simulator: GitLabSimulator) -> None:
    wanted = wanted_hook(config, HOOK_URL, GITLAB_18, push_events=False)

    result = await manager_for(client, config).install("acme/widgets", wanted)

    hook = simulator.hooks.of_project(1001)[0]
    assert result.action == "created" and result.auth == "token"
    assert hook.url == HOOK_URL and hook.token == "hook-secret-1" and hook.enable_ssl_verification
    assert {k for k, on in hook.triggers.items() if on} == {
        "issues_events", "confidential_issues_events", "merge_requests_events", "note_events",
        "confidential_note_events"}


async def test_a_second_install_changes_nothing(client: GitLabClient, config: Config,
                                                simulator: GitLabSimulator) -> None:
    wanted = wanted_hook(config, HOOK_URL, GITLAB_18, push_events=False)
    manager = manager_for(client, config)
    await manager.install("acme/widgets", wanted)
    manager.manifest.save()
    simulator.reset_counters()

    again = await manager_for(client, config).install("acme/widgets", wanted)

    assert again.action == "unchanged"
    assert [method for method, _ in simulator.request_log] == ["GET", "GET"]  # the project, its hooks


async def test_a_rotated_secret_updates_the_hook_in_place(client: GitLabClient, config: Config,
                                                          simulator: GitLabSimulator) -> None:
    manager = manager_for(client, config)
    await manager.install("acme/widgets", wanted_hook(config, HOOK_URL, GITLAB_18, push_events=False))
    rotated = dataclasses.replace(config, webhook=dataclasses.replace(config.webhook, secrets=("hook-secret-2",)))

    result = await manager.install("acme/widgets", wanted_hook(rotated, HOOK_URL, GITLAB_18, push_events=False))

    assert result.action == "updated" and len(simulator.hooks.of_project(1001)) == 1
    assert simulator.hooks.of_project(1001)[0].token == "hook-secret-2"


async def test_gitlab_19_gets_the_signing_token_and_no_plain_token(client: GitLabClient, config: Config,
                                                                   simulator: GitLabSimulator) -> None:
    simulator.hooks.signing_tokens = True

    result = await manager_for(client, config).install(
        "acme/widgets", wanted_hook(config, HOOK_URL, GITLAB_19, push_events=True))

    hook = simulator.hooks.of_project(1001)[0]
    assert result.auth == "signing_token" and hook.signing_token == config.webhook.signing_tokens[0]
    assert hook.token is None and hook.triggers["push_events"] is True


async def test_gitlab_19_without_its_signing_flag_gets_the_secret_token_instead(
        client: GitLabClient, config: Config, simulator: GitLabSimulator) -> None:
    simulator.hooks.signing_tokens, simulator.hooks.signing_flag = True, False
    manager = manager_for(client, config)
    wanted = wanted_hook(config, HOOK_URL, GITLAB_19, push_events=False)

    result = await manager.install("acme/widgets", wanted)
    again = await manager.install("acme/widgets", wanted)

    hook = simulator.hooks.of_project(1001)[0]
    assert result.auth == "token" and hook.token == "hook-secret-1" and hook.signing_token is None
    assert again.action == "unchanged"


async def test_without_maintainer_the_error_names_the_role(client: GitLabClient, config: Config,
                                                           simulator: GitLabSimulator) -> None:
    simulator.hooks.access_level = 30

    with pytest.raises(PermanentError) as raised:
        await manager_for(client, config).install(
            "acme/widgets", wanted_hook(config, HOOK_URL, GITLAB_18, push_events=False))

    assert raised.value.code == "hooks_forbidden" and "Maintainer" in raised.value.message


def test_a_gitlab_that_cannot_sign_needs_a_secret(config: Config) -> None:
    signing_only = dataclasses.replace(config, webhook=dataclasses.replace(config.webhook, secrets=()))

    with pytest.raises(PermanentError, match="cannot sign"):
        wanted_hook(signing_only, HOOK_URL, GITLAB_18, push_events=False)


def test_the_default_url_is_the_gateways_own(config: Config) -> None:
    assert default_hook_url(config) == "http://127.0.0.1:8080/webhooks/gitlab"


def test_webhook_url_names_where_gitlab_posts(config_for: Callable[..., Config]) -> None:
    config = config_for(webhook_url="https://gateway.example/webhooks/gitlab/")

    assert default_hook_url(config) == "https://gateway.example/webhooks/gitlab"


async def test_health_shows_a_disabled_hook_and_a_missing_one(client: GitLabClient, config: Config,
                                                              simulator: GitLabSimulator) -> None:
    manager = manager_for(client, config)
    result = await manager.install("acme/widgets", wanted_hook(config, HOOK_URL, GITLAB_18, push_events=False))
    simulator.hooks.disable(result.hook.id)

    health = await check_health(manager, ("acme/widgets", "acme/gadgets"), HOOK_URL, SystemClock())

    assert [h.state for h in health] == ["disabled", "missing"]
    assert health[0].hook.alert_status == "temporarily_disabled" and "timer" in health[0].message


async def test_health_without_rights_is_unknown_with_the_reason(client: GitLabClient, config: Config,
                                                                simulator: GitLabSimulator) -> None:
    simulator.hooks.access_level = 30

    health = await check_health(manager_for(client, config), ("acme/widgets",), HOOK_URL, SystemClock())

    assert health[0].state == "unknown" and "Maintainer" in health[0].message


async def test_the_manifest_and_the_health_file_are_private(client: GitLabClient, config: Config) -> None:
    manager = manager_for(client, config)
    await manager.install("acme/widgets", wanted_hook(config, HOOK_URL, GITLAB_18, push_events=False))
    manager.manifest.save()
    store = HealthStore(config.gateway.data_dir)
    store.save(await check_health(manager, ("acme/widgets",), HOOK_URL, SystemClock()))

    for path in (manager.manifest.path, store.path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "hook-secret-1" not in manager.manifest.path.read_text()
    assert store.load()[0]["state"] == "ok"
