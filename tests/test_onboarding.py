"""From nothing to a live mirror: `init`, `hooks install|status|uninstall`, `doctor` and `serve`, in real
subprocesses against the GitLab simulator (every version profile for `doctor`)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import orjson
import pytest

from gateway.cli.base import UsageError
from gateway.cli.init_cmds import Asker, gather
from gateway.simulator.gitlab import PROFILES, GitLabSimulator
from sync.config import load_config
from sync.control.doctor import check_config, check_redis
from tests.conftest import SIM_TOKEN, make_config
from tests.redis_server import free_port as free_redis_port
from tests.redis_server import redis_url  # noqa: F401 (fixture)
from tests.test_gateway_e2e import free_port, wait_for

PROJECTS = ("acme/widgets", "acme/gadgets")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORE_GATEWAY_")}
    return env | {f"LORE_GATEWAY_{k.upper()}": v for k, v in extra.items()}


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


def token_file(tmp_path: Path, token: str = SIM_TOKEN) -> Path:
    path = tmp_path / "gitlab-token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


async def init(tmp_path: Path, gitlab_url: str, *extra: str) -> tuple[Path, dict[str, str]]:
    """`init` as a user runs it; the env every later command of the test uses."""
    config = tmp_path / "etc" / "config.toml"
    (tmp_path / "data").mkdir(mode=0o700)
    env = clean_env(gateway_data_dir=str(tmp_path / "data"))
    args = ["init", "--gitlab-url", gitlab_url, "--token-file", str(token_file(tmp_path)),
            "--config-out", str(config), *extra]
    for project in PROJECTS:
        args += ["--project", project]
    code, _, err = await cli(env, *args)
    assert code == 0, err
    return config, env | {"LORE_GATEWAY_CONFIG": str(config)}


# -- init ----------------------------------------------------------------------------------------------


async def test_init_writes_a_private_commented_config_that_loads(tmp_path: Path, gitlab_url: str) -> None:
    config_path, _ = await init(tmp_path, gitlab_url)

    config = load_config(config_path, env={})
    text = config_path.read_text()
    secrets_dir = config_path.parent / "secrets"
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in secrets_dir.iterdir()} == {0o600}
    assert text.startswith("# lore-gateway configuration")
    assert config.webhook.secrets[0] not in text and config.auth.signing_keys[0] not in text
    assert config.gitlab.url == gitlab_url and config.gitlab.projects == PROJECTS and config.gitlab.token == SIM_TOKEN
    assert len(base64.b64decode(config.webhook.signing_tokens[0].removeprefix("whsec_"))) == 32
    assert len(config.auth.signing_keys[0]) >= 32 and len(config.webhook.secrets[0]) >= 32


async def test_init_never_prints_the_secrets_it_made(tmp_path: Path, gitlab_url: str) -> None:
    config_path = tmp_path / "config.toml"
    env = clean_env()
    code, out, err = await cli(env, "--json", "init", "--gitlab-url", gitlab_url, "--token-file",
                               str(token_file(tmp_path)), "--project", "acme/widgets",
                               "--config-out", str(config_path))

    document = orjson.loads(out)
    config = load_config(config_path, env={})
    assert code == 0 and document["config"] == str(config_path)
    assert set(document["generated"]) == {"webhook.secrets_file", "webhook.signing_tokens_file",
                                          "auth.signing_keys_file"}
    for value in (config.webhook.secrets[0], config.webhook.signing_tokens[0], config.auth.signing_keys[0],
                  SIM_TOKEN):
        assert value not in out and value not in err


async def test_init_writes_where_lore_gateway_config_points_before_the_file_exists(
        tmp_path: Path, gitlab_url: str) -> None:
    target = tmp_path / "etc" / "lore-gateway.toml"
    env = clean_env() | {"LORE_GATEWAY_CONFIG": str(target)}

    code, _, err = await cli(env, "init", "--gitlab-url", gitlab_url, "--token-file", str(token_file(tmp_path)),
                             "--project", "acme/widgets")

    assert code == 0, err
    assert load_config(target, env={}).gitlab.projects == ("acme/widgets",)


async def test_init_refuses_to_overwrite_without_force(tmp_path: Path, gitlab_url: str) -> None:
    config_path, env = await init(tmp_path, gitlab_url)
    before = (config_path.parent / "secrets" / "webhook-secrets").read_text()
    args = ("init", "--gitlab-url", gitlab_url, "--token-file", str(tmp_path / "gitlab-token"),
            "--project", "acme/widgets", "--config-out", str(config_path))

    code, out, _ = await cli(env, "--json", *args)
    forced, _, _ = await cli(env, *args, "--force")

    assert code == 1 and orjson.loads(out)["error"]["code"] == "config_exists"
    assert forced == 0 and before != (config_path.parent / "secrets" / "webhook-secrets").read_text()


async def test_init_without_a_terminal_names_what_is_missing(tmp_path: Path) -> None:
    code, out, err = await cli(clean_env(), "--json", "init", "--config-out", str(tmp_path / "c.toml"),
                               "--project", "acme/widgets")

    assert code == 2 and "--gitlab-url" in err and "--token-file" in err and "--project" not in err
    assert orjson.loads(out)["error"]["code"] == "usage_error"
    assert not (tmp_path / "c.toml").exists()


class ScriptedAsker(Asker):
    def __init__(self, answers: list[str], secret: str) -> None:
        self.answers, self.secret_answer, self.asked = answers, secret, []

    def ask(self, question: str) -> str:
        self.asked.append(question)
        return self.answers.pop(0)

    def secret(self, question: str) -> str:
        self.asked.append(question)
        return self.secret_answer


def test_init_asks_on_a_terminal_and_keeps_the_token_it_is_given_private(tmp_path: Path) -> None:
    token_path = tmp_path / "tok"
    asker = ScriptedAsker(["https://gitlab.example.com/", str(token_path), "acme/widgets, acme/gadgets"], "glpat-x")

    answers = gather(None, None, None, ask=asker)

    assert answers.gitlab_url == "https://gitlab.example.com" and answers.projects == PROJECTS
    assert token_path.read_text() == "glpat-x\n" and stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert len(asker.asked) == 4


def test_init_rejects_a_token_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not a file"):
        gather("https://gitlab.example.com", str(tmp_path / "nope"), ["acme/widgets"], ask=None)


# -- hooks ---------------------------------------------------------------------------------------------


async def test_hooks_install_twice_creates_then_changes_nothing(tmp_path: Path, gitlab_url: str,
                                                                simulator: GitLabSimulator) -> None:
    _, env = await init(tmp_path, gitlab_url)
    url = "https://gateway.example/webhooks/gitlab"

    code, out, err = await cli(env, "--json", "hooks", "install", "--url", url)
    again_code, again_out, _ = await cli(env, "hooks", "install", "--url", url)
    json_code, json_again, _ = await cli(env, "--json", "hooks", "install", "--url", url)

    first = orjson.loads(out)
    assert code == 0, err
    assert [p["action"] for p in first["projects"]] == ["created", "created"] and first["auth"] == "token"
    assert again_code == 0 and "Nothing to change" in again_out
    assert json_code == 0 and orjson.loads(json_again)["changed"] is False
    assert [len(simulator.hooks.of_project(p)) for p in (1001, 1002)] == [1, 1]


async def test_hooks_status_shows_a_hook_gitlab_disabled(tmp_path: Path, gitlab_url: str,
                                                          simulator: GitLabSimulator) -> None:
    _, env = await init(tmp_path, gitlab_url)
    await cli(env, "hooks", "install", "--url", "https://gateway.example/webhooks/gitlab")
    simulator.hooks.disable(simulator.hooks.of_project(1001)[0].id)

    code, out, _ = await cli(env, "hooks", "status")
    json_code, json_out, _ = await cli(env, "--json", "hooks", "status")

    assert code == 0 and "acme/widgets: webhook #1 DISABLED by GitLab (temporarily_disabled until" in out
    projects = orjson.loads(json_out)["projects"]
    assert [(p["state"], p["disabled"]) for p in projects] == [("disabled", True), ("ok", False)]
    assert "issues" in projects[0]["hook"]["events"] and json_code == 0


async def test_hooks_uninstall_removes_them(tmp_path: Path, gitlab_url: str, simulator: GitLabSimulator) -> None:
    _, env = await init(tmp_path, gitlab_url)
    await cli(env, "hooks", "install", "--url", "https://gateway.example/webhooks/gitlab")

    code, out, _ = await cli(env, "hooks", "uninstall", "--project", "acme/gadgets")

    assert code == 0 and "acme/gadgets: removed webhook" in out
    assert simulator.hooks.of_project(1002) == [] and len(simulator.hooks.of_project(1001)) == 1


async def test_a_token_without_hook_rights_gets_an_error_naming_the_role(tmp_path: Path, gitlab_url: str,
                                                                         simulator: GitLabSimulator) -> None:
    _, env = await init(tmp_path, gitlab_url)
    simulator.hooks.access_level = 30  # Developer

    code, out, err = await cli(env, "--json", "hooks", "install", "--url", "https://gateway.example/hook")

    error = orjson.loads(out)["error"]
    assert code == 1 and error["code"] == "hooks_forbidden" and "Maintainer" in error["message"]
    assert "Maintainer" in err and "Traceback" not in err


async def test_hooks_refuse_a_project_that_is_not_configured(tmp_path: Path, gitlab_url: str) -> None:
    _, env = await init(tmp_path, gitlab_url)

    code, _, err = await cli(env, "hooks", "status", "--project", "other/thing")

    assert code == 2 and "not a configured project" in err


# -- doctor --------------------------------------------------------------------------------------------

DEGRADES = {
    "15.6": {"mr_diffs", "work_item_status", "signed_webhooks"},
    "17.5-ee": {"work_item_status", "signed_webhooks"},
    "18.5-ee": {"signed_webhooks"},
    "ce": {"work_item_status", "signed_webhooks"},
    "gitlab.com": {"signed_webhooks"},
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_doctor_names_what_degrades_on_each_gitlab(profile: str, tmp_path: Path, aiohttp_server) -> None:
    sim = GitLabSimulator(token=SIM_TOKEN, gitlab_version=profile)
    for path in PROJECTS:
        sim.add_project(path, issues=2)
    server = await aiohttp_server(sim.app())
    _, env = await init(tmp_path, str(server.make_url("")).rstrip("/"))
    await cli(env, "hooks", "install", "--url", "https://gateway.example/webhooks/gitlab")

    code, out, err = await cli(env, "--json", "doctor")

    checks = {c["name"]: c for c in orjson.loads(out)["checks"]}
    degraded = {name.removeprefix("feature ") for name, c in checks.items() if name.startswith("feature ")}
    assert code == 0, err
    assert degraded == DEGRADES[profile]
    assert checks["gitlab"]["status"] == "ok" and PROFILES[profile].version in checks["gitlab"]["message"]
    assert all(checks[f"feature {d}"]["status"] == "warn" and checks[f"feature {d}"]["fix"] for d in degraded)
    assert {checks[n]["status"] for n in ("config", "data directory", "token", "clock",
                                          "project acme/widgets", "webhook acme/widgets")} == {"ok"}


async def test_doctor_fails_on_a_disabled_hook_an_expired_token_and_an_open_config(
        tmp_path: Path, gitlab_url: str, simulator: GitLabSimulator) -> None:
    config_path, env = await init(tmp_path, gitlab_url)
    await cli(env, "hooks", "install", "--url", "https://gateway.example/webhooks/gitlab")
    simulator.hooks.disable(simulator.hooks.of_project(1001)[0].id, permanently=True)
    simulator.personal_token.expires_at = "2020-01-01"
    config_path.chmod(0o644)  # fine: it holds no secret
    secrets_file = config_path.parent / "secrets" / "webhook-secrets"
    secrets_file.chmod(0o644)

    code, out, err = await cli(env, "doctor")

    assert code == 1
    lines = out.splitlines()
    failed = {line.split()[1] + (" " + line.split()[2] if line.split()[1] in ("webhook", "project") else "")
              for line in lines if line.startswith("fail")}
    assert failed == {"webhook.secrets_file", "token", "webhook acme/widgets"}
    assert f"fix: chmod 600 {secrets_file}" in out and "3 check(s) failed" in err


async def test_doctor_warns_of_a_data_directory_others_can_read(tmp_path: Path, gitlab_url: str) -> None:
    _, env = await init(tmp_path, gitlab_url)
    (tmp_path / "data").chmod(0o755)

    _, out, _ = await cli(env, "--json", "doctor")

    check = next(c for c in orjson.loads(out)["checks"] if c["name"] == "data directory")
    assert check["status"] == "warn" and check["fix"] == f"chmod 700 {tmp_path / 'data'}"


async def test_doctor_without_gitlab_fails_with_the_fix(tmp_path: Path) -> None:
    code, out, _ = await cli(clean_env(gateway_data_dir=str(tmp_path / "d")), "--json", "doctor")

    document = orjson.loads(out)
    gitlab = next(c for c in document["checks"] if c["name"] == "gitlab")
    assert code == 1 and document["error"]["code"] == "doctor_failed"
    assert gitlab["status"] == "fail" and "lore-gateway init" in gitlab["fix"]


# -- the whole path --------------------------------------------------------------------------------------


async def test_init_hooks_install_serve_a_change_reaches_the_mirror_through_the_hook(
        tmp_path: Path, gitlab_url: str, simulator: GitLabSimulator) -> None:
    port = free_port()
    _, env = await init(tmp_path, gitlab_url)
    env |= {"LORE_GATEWAY_GATEWAY_PORT": str(port), "LORE_GATEWAY_SYNC_DEBOUNCE": "100ms"}
    code, _, err = await cli(env, "hooks", "install")  # the URL from the config: 127.0.0.1:<port>
    assert code == 0, err
    _, token_out, _ = await cli(env, "--json", "token", "create", "--name", "t", "--scope", "read")
    api_token = orjson.loads(token_out)["token"]
    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_token}"}) as session:
            async def title() -> str | None:
                try:
                    async with session.get(f"{base}/api/v1/projects/1001/issues/3") as response:
                        return (await response.json())["title"] if response.status == 200 else None
                except aiohttp.ClientConnectionError:
                    return None

            await wait_for(title, 30, interval=0.1)  # served, and the start-up run mirrored the issue
            deliveries = await simulator.hooks.dispatch(simulator.update_issue(1001, 3, title="Changed in GitLab"))

            assert [d.status for d in deliveries] == [202]
            await wait_for(lambda: _equals(title, "Changed in GitLab"), 30, interval=0.1)
    finally:
        serve.send_signal(signal.SIGTERM)
        await asyncio.wait_for(serve.wait(), 20)


async def _equals(read: Callable, wanted: str) -> bool:
    return await read() == wanted


def test_doctor_fails_a_readable_config_that_holds_a_secret_inline(tmp_path: Path) -> None:
    config_path = tmp_path / "config.toml"
    config_path.write_text('[webhook]\nsecrets = ["inline-secret"]\n')
    config_path.chmod(0o644)

    checks = check_config(load_config(config_path, env={}))

    assert (checks[0].name, checks[0].status, checks[0].fix) == ("config", "fail", f"chmod 600 {config_path}")
    assert "inline-secret" not in checks[0].message


async def test_doctor_checks_redis_only_when_configured(tmp_path: Path, redis_url: str) -> None:  # noqa: F811
    closed = f"redis://127.0.0.1:{free_redis_port()}/0"

    absent = await check_redis(make_config(tmp_path))
    up = await check_redis(make_config(tmp_path, redis_url=redis_url))
    down = await check_redis(make_config(tmp_path, redis_url=closed))

    assert absent is None and up is not None and up.status == "ok"
    assert down is not None and down.status == "fail" and "redis.url" in down.fix
