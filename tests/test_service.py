"""`service install|uninstall|status|run`: rendered units, the 0600 env file, idempotency, drift, systemctl.

systemctl never runs here: a FakeCommands records every argv and answers from a script. Unit, env and
data dirs are temporary. The timer's `service run` is checked against the scheduler's policy with a
FakeClock, and once end to end against the GitLab simulator.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import shlex
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pytest

from gateway.cli import main, service_cmds
from gateway.cli.service_cmds import lore_gateway_command, readiness_url
from gateway.ops.attempt import scheduled_attempt
from gateway.ops.commands import CommandNotFound, CommandResult, CommandTimeout, SubprocessRunner
from gateway.ops.service import (
    DAEMON_UNIT,
    ENV_FILE_NAME,
    SYNC_UNIT,
    TIMER_UNIT,
    InstallPlan,
    ServiceError,
    ServiceSpec,
    Systemctl,
    apply_install,
    apply_uninstall,
    build_spec,
    install_warnings,
    manifest_path,
    plan_install,
    plan_uninstall,
    read_manifest,
    service_status,
)
from sync.clock import FakeClock, utc_iso
from sync.config import Config, ConfigError, load_config
from sync.control.runner import SyncRunner
from sync.control.status import read_service_state
from sync.errors import PermanentError, TransientError
from sync.events import EventBus
from sync.store.db import Database
from tests.conftest import FakeRunner

SIGNING_TOKEN = "whsec_" + base64.b64encode(b"standard-webhooks-signing-key!").decode()
SECRET_ENV = {
    "LORE_GATEWAY_GITLAB_TOKEN": 'glpat-Sup3r$ecret"token`x',
    "LORE_GATEWAY_WEBHOOK_SECRETS": "hook-secret-one,hook-secret-two",
    "LORE_GATEWAY_WEBHOOK_SIGNING_TOKENS": SIGNING_TOKEN,
    "LORE_GATEWAY_AUTH_SIGNING_KEYS": "auth-key-first-AAAA-0123456789abcdef0123456789abcdef,"
                                      "auth-key-second-BBBB-0123456789abcdef0123456789abcdef",
}
SECRET_VALUES = [
    'glpat-Sup3r$ecret"token`x', "hook-secret-one", "hook-secret-two", SIGNING_TOKEN,
    "auth-key-first-AAAA-0123456789abcdef0123456789abcdef", "auth-key-second-BBBB-0123456789abcdef0123456789abcdef",
]


class FakeCommands:
    """A CommandRunner for systemctl (the sync runner's fake is tests/conftest.py's FakeRunner).

    Records argv; answers 0 (and "active" to is-active) unless told otherwise for a subcommand."""

    def __init__(self, results: dict[str, CommandResult] | None = None, *, missing: bool = False) -> None:
        self.results = results or {}
        self.missing = missing
        self.calls: list[list[str]] = []
        self.timeouts: list[float] = []

    async def run(self, argv: Sequence[str], *, timeout: float) -> CommandResult:  # noqa: ASYNC109
        self.calls.append(list(argv))
        self.timeouts.append(timeout)
        if self.missing:
            raise CommandNotFound(argv, "systemctl: No such file or directory")
        for subcommand, result in self.results.items():
            if subcommand in argv:
                return result
        return CommandResult(0, "active\n" if "is-active" in argv else "", "")

    def mutating(self) -> list[list[str]]:
        return [c for c in self.calls if "is-active" not in c]


class Rig:
    """A config file and an executable under paths with spaces, temporary unit/env/data dirs."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.unit_dir = tmp / "units"
        self.env_dir = tmp / "etc" / "lore gateway"
        self.data_dir = tmp / "data"
        self.exe = tmp / "opt dir" / "bin" / "lore-gateway"
        self.exe.parent.mkdir(parents=True)
        self.exe.write_text("#!/bin/sh\nexit 0\n")
        self.exe.chmod(0o755)
        self.config_path = tmp / "conf dir" / "config.toml"
        self.config_path.parent.mkdir()
        self.config_path.write_text('[gitlab]\nurl = "https://gitlab.example.com"\nprojects = ["acme/widgets"]\n')
        self.env = {"LORE_GATEWAY_GATEWAY_DATA_DIR": str(self.data_dir), **SECRET_ENV}
        self.runner = FakeCommands()

    def config(self) -> Config:
        return load_config(self.config_path, self.env)

    def spec(self, **options: object) -> ServiceSpec:
        return build_spec(
            self.config(), self.env, command=(str(self.exe),), unit_dir=self.unit_dir, env_dir=self.env_dir,
            **options,  # type: ignore[arg-type]
        )

    @property
    def manifest(self) -> Path:
        return manifest_path(self.config())

    async def install(self, *, start: bool = True, **options: object) -> InstallPlan:
        spec = self.spec(**options)
        plan = plan_install(spec, self.manifest, start=start)
        await apply_install(plan, Systemctl(self.runner, user=spec.user))
        return plan

    def unit_files(self) -> list[Path]:
        return sorted(p for p in self.unit_dir.iterdir() if p.is_file())

    def cli_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in list(os.environ):
            if name.startswith("LORE_GATEWAY_"):
                monkeypatch.delenv(name)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(service_cmds, "RUNNER_FACTORY", lambda: self.runner)

    def install_args(self, *extra: str) -> list[str]:
        return ["--config", str(self.config_path), "--json", "service", "install", "--unit-dir", str(self.unit_dir),
                "--env-dir", str(self.env_dir), "--executable", str(self.exe), *extra]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, orjson.loads(captured.out) if captured.out.strip() else {}, captured.err


def exec_words(unit: Path, key: str = "ExecStart") -> list[str]:
    """A command line read back the way systemd reads it (quotes and C escapes, then %% and $$)."""
    line = next(line for line in unit.read_text().splitlines() if line.startswith(f"{key}="))
    words = shlex.split(line.split("=", 1)[1])  # POSIX double quotes unescape \" and \\ as systemd does
    return [words[0].replace("%%", "%")] + [w.replace("%%", "%").replace("$$", "$") for w in words[1:]]


# --- install: what it writes -----------------------------------------------------------------------


async def test_first_install_writes_the_unit_and_env_file_then_reloads_and_enables(rig: Rig) -> None:
    plan = await rig.install()
    assert [p.name for p in rig.unit_files()] == [DAEMON_UNIT]
    assert (rig.env_dir / ENV_FILE_NAME).exists()
    assert rig.runner.calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", DAEMON_UNIT]]
    assert all(timeout > 0 for timeout in rig.runner.timeouts)
    assert {c.action for c in plan.changes} == {"create"} and not plan.no_change


async def test_the_unit_runs_the_real_executable_with_the_config_path_even_with_spaces(rig: Rig) -> None:
    await rig.install()
    unit = rig.unit_dir / DAEMON_UNIT
    assert exec_words(unit) == [str(rig.exe), "--config", str(rig.config_path), "serve"]
    assert exec_words(unit, "ExecStartPost")[-4:] == ["service", "wait-ready", "--timeout", "60s"]
    assert f"EnvironmentFile={rig.env_dir / ENV_FILE_NAME}\n" in unit.read_text()


async def test_dollar_and_percent_in_paths_are_escaped_for_systemd(rig: Rig, tmp_path: Path) -> None:
    odd = tmp_path / "we$ird 100%" / "config.toml"
    odd.parent.mkdir()
    odd.write_text(rig.config_path.read_text())
    rig.config_path = odd
    await rig.install()
    line = next(li for li in (rig.unit_dir / DAEMON_UNIT).read_text().splitlines() if li.startswith("ExecStart="))
    assert '"' + str(odd).replace("$", "$$").replace("%", "%%") + '"' in line
    assert exec_words(rig.unit_dir / DAEMON_UNIT)[2] == str(odd)


def test_a_program_path_systemd_refuses_is_an_error_before_anything_is_written(rig: Rig) -> None:
    with pytest.raises(ServiceError) as caught:
        build_spec(rig.config(), rig.env, command=('/opt/we"ird/lore-gateway',), unit_dir=rig.unit_dir)
    assert caught.value.code == "unrepresentable_path"


async def test_the_env_file_is_0600_and_holds_every_secret_and_the_service_data_dir(rig: Rig) -> None:
    result = await rig.install()
    env_file = rig.env_dir / ENV_FILE_NAME
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    text = env_file.read_text()
    for name in SECRET_ENV:
        assert f"{name}=" in text
    assert 'LORE_GATEWAY_GATEWAY_DATA_DIR="/var/lib/lore-gateway"' in text
    assert result.spec.token_source == "env_file"


async def test_the_env_file_is_private_before_its_first_byte_lands(rig: Rig, monkeypatch) -> None:
    modes: dict[str, int] = {}
    real_replace = os.replace

    def spy(source: str | Path, target: str | Path) -> None:
        modes[Path(target).name] = stat.S_IMODE(os.stat(source).st_mode)  # the temp file, written, not yet renamed
        real_replace(source, target)

    monkeypatch.setattr("gateway.ops.service.os.replace", spy)
    await rig.install()
    assert modes[ENV_FILE_NAME] == 0o600


async def test_an_unwritable_unit_dir_is_a_clear_error_not_a_traceback(rig: Rig) -> None:
    (rig.tmp / "not-a-dir").write_text("")
    rig.unit_dir = rig.tmp / "not-a-dir" / "units"
    with pytest.raises(ServiceError) as caught:
        await rig.install()
    assert caught.value.code == "write_failed" and "not-a-dir" in caught.value.message


async def test_the_env_file_reads_back_exactly_in_a_posix_shell(rig: Rig) -> None:
    # systemd's EnvironmentFile= parser unescapes the same four characters in double quotes as sh.
    await rig.install()
    script = f'set -a; . "{rig.env_dir / ENV_FILE_NAME}"; printf "%s" "$LORE_GATEWAY_GITLAB_TOKEN"'
    shown = await SubprocessRunner().run(["sh", "-c", script], timeout=10)
    assert shown.stdout == SECRET_ENV["LORE_GATEWAY_GITLAB_TOKEN"]


async def test_no_secret_value_appears_in_any_unit_file_the_manifest_or_a_command_line(rig: Rig) -> None:
    plan = await rig.install()
    await rig.install(timer_only=True)  # and the timer units too
    written = [*rig.unit_files(), rig.manifest]
    for path in written:
        text = path.read_text()
        leaked = [v for v in SECRET_VALUES if v in text]
        assert not leaked, f"{path.name} contains a secret"
    assert not any(v in " ".join(plan.spec.invocation) for v in SECRET_VALUES)
    assert not any(v in " ".join(call) for call in rig.runner.calls for v in SECRET_VALUES)


async def test_embed_secrets_puts_them_in_a_0600_unit_and_says_token_source_unit(rig: Rig) -> None:
    plan = await rig.install(embed_secrets=True)
    unit = rig.unit_dir / DAEMON_UNIT
    assert plan.spec.token_source == "unit"
    assert stat.S_IMODE(unit.stat().st_mode) == 0o600
    assert 'Environment="LORE_GATEWAY_WEBHOOK_SECRETS=hook-secret-one,hook-secret-two"' in unit.read_text()
    assert "hook-secret-one" not in (rig.env_dir / ENV_FILE_NAME).read_text()


def test_embed_secrets_prints_a_warning(rig: Rig, monkeypatch, capsys) -> None:
    rig.cli_env(monkeypatch)
    code, document, err = cli(rig.install_args("--embed-secrets", "--no-start"), capsys)
    assert code == 0 and document["token_source"] == "unit"
    assert "warning: --embed-secrets" in err


def test_install_json_says_token_source_env_file_and_names_no_secret_value(rig: Rig, monkeypatch, capsys) -> None:
    rig.cli_env(monkeypatch)
    code, document, _ = cli(rig.install_args(), capsys)
    assert code == 0
    assert document["token_source"] == "env_file" and document["no_change"] is False
    assert sorted(document["secrets"]) == sorted(SECRET_ENV)
    assert not any(v in orjson.dumps(document).decode() for v in SECRET_VALUES)


async def test_a_secret_with_a_comma_is_refused_without_showing_it(rig: Rig) -> None:
    rig.env["LORE_GATEWAY_AUTH_SIGNING_KEYS"] = "fine-key-0123456789abcdef0123456789abcdef"
    rig.config_path.write_text(rig.config_path.read_text() + '[webhook]\nsecrets = ["a,b-secret"]\n')
    rig.env.pop("LORE_GATEWAY_WEBHOOK_SECRETS")
    with pytest.raises(ServiceError) as caught:
        rig.spec()
    assert caught.value.code == "unrepresentable_secret" and "a,b-secret" not in caught.value.message


async def test_the_installing_shells_settings_travel_to_the_env_file(rig: Rig) -> None:
    rig.env["LORE_GATEWAY_GATEWAY_PORT"] = "9123"
    await rig.install()
    text = (rig.env_dir / ENV_FILE_NAME).read_text()
    assert 'LORE_GATEWAY_GATEWAY_PORT="9123"' in text
    assert "LORE_GATEWAY_CONFIG" not in text  # the config travels by path, on the command line


def test_an_interval_under_a_minute_is_a_usage_error(rig: Rig, monkeypatch, capsys) -> None:
    rig.cli_env(monkeypatch)
    code, document, _ = cli(rig.install_args("--interval", "30s"), capsys)
    assert code == 2 and document["error"]["code"] == "config_error"


# --- idempotency and drift -----------------------------------------------------------------------------


async def test_a_second_identical_install_reports_no_change_and_calls_no_systemctl(rig: Rig) -> None:
    await rig.install()
    calls = len(rig.runner.calls)
    second = await rig.install()
    assert second.no_change
    assert len(rig.runner.calls) == calls


def test_install_twice_through_the_cli_gives_no_change(rig: Rig, monkeypatch, capsys) -> None:
    rig.cli_env(monkeypatch)
    assert cli(rig.install_args(), capsys)[1]["no_change"] is False
    code, document, _ = cli(rig.install_args(), capsys)
    assert code == 0 and document["no_change"] is True and document["systemctl"] == []
    assert len(rig.runner.calls) == 2


async def test_a_changed_interval_rewrites_the_env_file_and_restarts_the_service(rig: Rig) -> None:
    await rig.install()
    plan = await rig.install(interval=3600.0)
    assert [c.action for c in plan.changes] == ["unchanged", "update"]
    assert 'LORE_GATEWAY_SYNC_INTERVAL="1h"' in (rig.env_dir / ENV_FILE_NAME).read_text()
    assert rig.runner.calls[-1] == ["systemctl", "restart", DAEMON_UNIT]


async def test_a_hand_edited_unit_is_reported_as_drift(rig: Rig) -> None:
    await rig.install()
    unit = rig.unit_dir / DAEMON_UNIT
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=no"))
    status = await service_status(rig.manifest, rig.runner)
    assert status.installed and status.drift == (str(unit),)


async def test_the_next_install_reconciles_drift_and_restarts(rig: Rig) -> None:
    first = await rig.install()
    unit = rig.unit_dir / DAEMON_UNIT
    rendered = unit.read_bytes()
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    plan = await rig.install()
    assert plan.drift == (str(unit),) and not plan.no_change
    assert unit.read_bytes() == rendered
    assert rig.runner.calls[-3:] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", DAEMON_UNIT],
        ["systemctl", "restart", DAEMON_UNIT],
    ]
    assert (await service_status(rig.manifest, rig.runner)).drift == ()
    assert read_manifest(rig.manifest) == first.manifest


async def test_a_loosened_env_file_mode_is_drift_and_is_put_back_to_0600(rig: Rig) -> None:
    await rig.install()
    env_file = rig.env_dir / ENV_FILE_NAME
    env_file.chmod(0o644)
    assert (await service_status(rig.manifest, rig.runner)).drift == (str(env_file),)
    await rig.install()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def test_status_json_reports_drift_with_the_contract_fields(rig: Rig, monkeypatch, capsys) -> None:
    rig.cli_env(monkeypatch)
    cli(rig.install_args(), capsys)
    (rig.unit_dir / DAEMON_UNIT).write_text("edited")
    code, document, _ = cli(["--config", str(rig.config_path), "--json", "service", "status"], capsys)
    assert code == 0
    assert document["installed"] is True and document["active"] is True
    assert document["drift"] == [str(rig.unit_dir / DAEMON_UNIT)]


async def test_an_install_from_a_shell_without_a_secret_refuses_to_drop_it(rig: Rig) -> None:
    await rig.install()
    del rig.env["LORE_GATEWAY_GITLAB_TOKEN"]
    with pytest.raises(ServiceError) as caught:
        plan_install(rig.spec(), rig.manifest, start=True)
    assert caught.value.code == "secrets_would_be_dropped"
    assert caught.value.extra["dropped"] == ["LORE_GATEWAY_GITLAB_TOKEN"]


# --- --dry-run, --no-start, systemctl failures ---------------------------------------------------------


def test_dry_run_writes_nothing_and_calls_nothing(rig: Rig, monkeypatch, capsys) -> None:
    rig.cli_env(monkeypatch)
    code, document, _ = cli(rig.install_args("--dry-run"), capsys)
    assert code == 0 and document["dry_run"] is True and document["no_change"] is False
    assert {f["action"] for f in document["files"]} == {"create"}
    assert document["systemctl"] == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", DAEMON_UNIT]]
    assert not rig.unit_dir.exists() and not rig.env_dir.exists() and not rig.manifest.exists()
    assert rig.runner.calls == []


async def test_no_start_writes_the_files_and_calls_no_systemctl(rig: Rig) -> None:
    plan = await rig.install(start=False)
    assert (rig.unit_dir / DAEMON_UNIT).exists() and (rig.env_dir / ENV_FILE_NAME).exists()
    assert plan.systemctl == () and rig.runner.calls == []
    assert read_manifest(rig.manifest).managed is False  # type: ignore[union-attr]


async def test_a_no_start_update_of_a_running_service_is_restarted_by_the_next_install(rig: Rig) -> None:
    await rig.install()
    await rig.install(start=False, interval=3600.0)
    plan = await rig.install(interval=3600.0)
    assert not plan.no_change and rig.runner.calls[-1] == ["systemctl", "restart", DAEMON_UNIT]


async def test_an_install_after_no_start_enables_and_starts(rig: Rig) -> None:
    await rig.install(start=False)
    plan = await rig.install()
    assert not plan.no_change and {c.action for c in plan.changes} == {"unchanged"}
    assert rig.runner.calls == [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", DAEMON_UNIT]]


def test_a_systemctl_failure_exits_1_with_its_stderr(rig: Rig, monkeypatch, capsys) -> None:
    rig.runner.results["enable"] = CommandResult(1, "", "Failed to enable unit: Access denied\n")
    rig.cli_env(monkeypatch)
    code, document, err = cli(rig.install_args(), capsys)
    assert code == 1
    assert document["error"]["code"] == "systemctl_failed"
    assert "Access denied" in document["error"]["message"] and "Access denied" in err
    assert document["systemctl"]["stderr"] == "Failed to enable unit: Access denied"


async def test_a_failed_start_is_retried_by_the_next_install(rig: Rig) -> None:
    rig.runner.results["enable"] = CommandResult(1, "", "Job failed")
    with pytest.raises(ServiceError):
        await rig.install()
    rig.runner.results.clear()
    plan = await rig.install()
    assert not plan.no_change and ["systemctl", "enable", "--now", DAEMON_UNIT] in rig.runner.calls[-2:]
    assert read_manifest(rig.manifest).started is True  # type: ignore[union-attr]


async def test_a_missing_systemctl_is_a_clear_error(rig: Rig) -> None:
    rig.runner.missing = True
    with pytest.raises(ServiceError) as caught:
        await rig.install()
    assert caught.value.code == "systemctl_unavailable" and "--no-start" in caught.value.message


def test_status_without_systemctl_says_active_null_and_exits_0(rig: Rig, monkeypatch, capsys) -> None:
    rig.cli_env(monkeypatch)
    rig.runner.missing = True
    code, document, _ = cli(["--json", "service", "status"], capsys)
    assert code == 0 and document == {"installed": False, "drift": [], "active": None}


async def test_status_where_systemd_is_not_running_says_active_null(rig: Rig) -> None:
    not_booted = CommandResult(1, "", "System has not been booted with systemd as init system (PID 1).\n")
    status = await service_status(rig.manifest, FakeCommands({"is-active": not_booted}))
    assert status.active is None


async def test_status_of_a_stopped_unit_says_active_false(rig: Rig) -> None:
    await rig.install()
    status = await service_status(rig.manifest, FakeCommands({"is-active": CommandResult(3, "inactive\n", "")}))
    assert status.active is False


# --- timer mode, user mode, uninstall ---------------------------------------------------------------


async def test_timer_only_installs_the_sync_service_and_timer_and_enables_the_timer(rig: Rig) -> None:
    await rig.install(timer_only=True, interval=7200.0)
    assert [p.name for p in rig.unit_files()] == [SYNC_UNIT, TIMER_UNIT]
    assert "OnUnitActiveSec=2h\n" in (rig.unit_dir / TIMER_UNIT).read_text()
    assert exec_words(rig.unit_dir / SYNC_UNIT)[-2:] == ["service", "run"]
    assert "Type=oneshot" in (rig.unit_dir / SYNC_UNIT).read_text()
    assert rig.runner.calls[-1] == ["systemctl", "enable", "--now", TIMER_UNIT]


async def test_switching_to_timer_only_disables_and_removes_the_daemon_unit(rig: Rig) -> None:
    await rig.install()
    plan = await rig.install(timer_only=True)
    assert ["systemctl", "disable", "--now", DAEMON_UNIT] == rig.runner.calls[2]
    assert not (rig.unit_dir / DAEMON_UNIT).exists()
    assert ("remove" in {c.action for c in plan.changes})


async def test_a_user_install_uses_systemctl_user_and_leaves_out_what_needs_privileges(rig: Rig) -> None:
    await rig.install(user=True)
    text = (rig.unit_dir / DAEMON_UNIT).read_text()
    assert rig.runner.calls[0] == ["systemctl", "--user", "daemon-reload"]
    assert "DynamicUser" not in text and "ProtectSystem" not in text and "@SYSTEM@" not in text
    assert "NoNewPrivileges=yes" in text and "WantedBy=default.target" in text
    assert f'LORE_GATEWAY_GATEWAY_DATA_DIR="{rig.data_dir}"' in (rig.env_dir / ENV_FILE_NAME).read_text()


async def test_uninstall_disables_then_removes_every_installed_file(rig: Rig) -> None:
    await rig.install(timer_only=True)
    manifest = read_manifest(rig.manifest)
    assert manifest is not None
    plan = plan_uninstall(manifest, rig.manifest, stop=True)
    await apply_uninstall(plan, Systemctl(rig.runner, user=False))
    assert rig.runner.calls[-3:] == [
        ["systemctl", "disable", "--now", TIMER_UNIT], ["systemctl", "stop", SYNC_UNIT], ["systemctl", "daemon-reload"]
    ]
    assert rig.unit_files() == [] and not (rig.env_dir / ENV_FILE_NAME).exists() and not rig.manifest.exists()


def test_uninstall_through_the_cli_and_again_is_harmless(rig: Rig, monkeypatch, capsys) -> None:
    rig.cli_env(monkeypatch)
    cli(rig.install_args(), capsys)
    code, document, _ = cli(["--config", str(rig.config_path), "--json", "service", "uninstall"], capsys)
    assert code == 0 and document["uninstalled"] is True
    assert ["systemctl", "disable", "--now", DAEMON_UNIT] in document["systemctl"]
    code, document, _ = cli(["--config", str(rig.config_path), "--json", "service", "uninstall"], capsys)
    assert code == 0 and document["uninstalled"] is False


def test_service_run_and_wait_ready_are_hidden_from_help(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["service", "--help"])
    out = capsys.readouterr().out
    assert "install" in out and "wait-ready" not in out and " run " not in out.replace("{", " ").replace(",", " ")


def test_a_system_install_warns_about_what_its_sandbox_will_not_let_the_service_read(rig: Rig) -> None:
    rig.config_path.chmod(0o600)
    in_home = "/home/someone/.venv/bin/lore-gateway"  # ProtectHome=yes hides it from the service
    spec = build_spec(rig.config(), rig.env, command=(in_home,), unit_dir=rig.unit_dir, env_dir=rig.env_dir)
    notes = install_warnings(spec, rig.config())
    assert any(in_home in n and "cannot see" in n for n in notes)
    assert any("cannot read" in n and str(rig.config_path) in n for n in notes)
    assert any("/var/lib/lore-gateway" in n and "data_dir" in n for n in notes)


@pytest.fixture
def open_rig() -> Iterator[Rig]:
    """A Rig whose directories every local user may enter (pytest's tmp_path is under a 0700 directory)."""
    top = Path(tempfile.mkdtemp(prefix="lore-gateway-service-test-"))
    top.chmod(0o755)
    try:
        yield Rig(top)
    finally:
        shutil.rmtree(top)


def _config_with_inline_secrets(rig: Rig, mode: int) -> None:
    for name in ("LORE_GATEWAY_GITLAB_TOKEN", "LORE_GATEWAY_AUTH_SIGNING_KEYS"):
        rig.env.pop(name)
    key = "inline-signing-key-" + "k" * 32
    rig.config_path.write_text('[gitlab]\nurl = "https://gitlab.example.com"\ntoken = "glpat-inline-secret"\n'
                               f'projects = ["acme/widgets"]\n[auth]\nsigning_keys = ["{key}"]\n')
    rig.config_path.chmod(mode)
    rig.config_path.parent.chmod(0o755)


def _config_notes(rig: Rig, **options: object) -> list[str]:
    notes = install_warnings(rig.spec(**options), rig.config())
    assert not any("glpat-inline-secret" in n or "inline-signing-key" in n for n in notes)
    return [n for n in notes if str(rig.config_path) in n and "cannot see" not in n]  # tmp_path is in /tmp


def test_a_world_readable_config_with_inline_secrets_is_warned_about_naming_the_keys(open_rig: Rig) -> None:
    rig = open_rig
    _config_with_inline_secrets(rig, 0o644)
    [note] = _config_notes(rig)
    assert "readable by every local user" in note and "gitlab.token, auth.signing_keys" in note
    assert "delete them from it" in note and str(rig.spec().env_file) in note


def test_a_private_config_with_inline_secrets_is_not_advised_to_become_world_readable(rig: Rig) -> None:
    _config_with_inline_secrets(rig, 0o600)
    [note] = _config_notes(rig)
    assert "cannot read" in note and "do not make it world-readable as it is" in note
    assert "delete them from" in note and "gitlab.token, auth.signing_keys" in note


def test_a_private_config_without_secrets_is_advised_to_become_world_readable(rig: Rig) -> None:
    rig.config_path.chmod(0o600)
    [note] = _config_notes(rig)
    assert "holds no secrets" in note and "chmod o+r" in note


def test_a_user_install_asks_for_chmod_600_on_a_readable_config_with_secrets_and_accepts_a_private_one(
        open_rig: Rig) -> None:
    rig = open_rig
    _config_with_inline_secrets(rig, 0o644)
    [note] = _config_notes(rig, user=True)
    assert f"chmod 600 {rig.config_path}" in note
    rig.config_path.chmod(0o600)
    assert _config_notes(rig, user=True) == []


# --- executable, readiness --------------------------------------------------------------------------


def test_the_command_is_the_script_we_were_started_as_resolved(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "lore-gateway"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    link = tmp_path / "lore-gateway"
    link.symlink_to(script)
    assert lore_gateway_command(argv0=str(link)) == (str(script),)


def test_without_a_lore_gateway_script_the_command_is_python_dash_m(tmp_path: Path) -> None:
    command = lore_gateway_command(argv0=str(tmp_path / "__main__.py"), which=lambda name: None)
    assert command[1:] == ("-m", "gateway.cli") and Path(command[0]).is_absolute()


@pytest.mark.parametrize(
    ("host", "url"),
    [("0.0.0.0", "http://127.0.0.1:8080/readyz"), ("::", "http://[::1]:8080/readyz"),
     ("fd00::5", "http://[fd00::5]:8080/readyz"), ("gw.internal", "http://gw.internal:8080/readyz")],
)
def test_readiness_is_asked_on_an_address_that_reaches_the_listener(host: str, url: str) -> None:
    assert readiness_url(host, 8080) == url


def test_wait_ready_fails_with_not_ready_when_nothing_answers(tmp_path, monkeypatch, capsys) -> None:
    for name in list(os.environ):
        if name.startswith("LORE_GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LORE_GATEWAY_GATEWAY_PORT", "9")  # discard: nothing listens there
    code, document, _ = cli(["--json", "service", "wait-ready", "--timeout", "300ms"], capsys)
    assert code == 1 and document["error"]["code"] == "not_ready"


# --- the real runner -----------------------------------------------------------------------------------


async def test_the_subprocess_runner_passes_argv_without_a_shell() -> None:
    result = await SubprocessRunner().run(["printf", "%s", "a b; $(echo x) `y`"], timeout=5)
    assert result.ok and result.stdout == "a b; $(echo x) `y`"


async def test_the_subprocess_runner_captures_stderr_and_the_exit_status() -> None:
    result = await SubprocessRunner().run([sys.executable, "-c", "import sys; sys.exit('boom')"], timeout=5)
    assert result.returncode == 1 and "boom" in result.stderr


async def test_the_subprocess_runner_kills_a_command_past_its_timeout() -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(CommandTimeout):
        await SubprocessRunner().run(["sleep", "10"], timeout=0.2)
    assert asyncio.get_running_loop().time() - started < 5


async def test_the_subprocess_runner_reports_a_missing_program() -> None:
    with pytest.raises(CommandNotFound):
        await SubprocessRunner().run(["/nonexistent/systemctl", "is-active", "x"], timeout=5)


# --- `service run`: the timer's one attempt under the scheduler's policy ----------------------------


def policy_config(data_dir: Path, url: str = "http://gitlab.invalid", **env: str) -> Config:
    values = {
        "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir), "LORE_GATEWAY_GITLAB_URL": url,
        "LORE_GATEWAY_GITLAB_TOKEN": "sim-token", "LORE_GATEWAY_GITLAB_PROJECTS": "acme/widgets,acme/gadgets",
        "LORE_GATEWAY_SYNC_BACKOFF_BASE": "1m", "LORE_GATEWAY_SYNC_BACKOFF_MAX": "4m",
    }
    return load_config(None, values | {f"LORE_GATEWAY_{k.upper()}": v for k, v in env.items()})


async def set_state(db: Database, failures: int = 0, next_retry_at: float | None = None, paused: str | None = None):
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE service_state SET consecutive_failures = ?, next_retry_at = ?, paused_reason = ? WHERE id = 1",
            (failures, next_retry_at, paused),
        )


async def test_service_run_does_nothing_while_paused(db: Database, tmp_path: Path) -> None:
    clock = FakeClock()
    runner = FakeRunner(db, clock)
    await set_state(db, paused="gitlab_unauthorized: 401")
    attempt = await scheduled_attempt(db, runner, clock, policy_config(tmp_path / "data"), random.Random(1))
    assert attempt.skipped == "paused" and runner.requests == []


async def test_service_run_does_nothing_before_the_backoff_retry_time(db: Database, tmp_path: Path) -> None:
    clock = FakeClock()
    runner = FakeRunner(db, clock)
    await set_state(db, failures=2, next_retry_at=clock.now() + 30)
    attempt = await scheduled_attempt(db, runner, clock, policy_config(tmp_path / "data"), random.Random(1))
    assert attempt.skipped == "backoff" and runner.requests == []
    assert (await read_service_state(db)).consecutive_failures == 2


async def test_service_run_after_the_backoff_runs_a_timer_sync_and_a_success_clears_it(db, tmp_path) -> None:
    clock = FakeClock()
    runner = FakeRunner(db, clock)
    await set_state(db, failures=2, next_retry_at=clock.now() - 1)
    attempt = await scheduled_attempt(db, runner, clock, policy_config(tmp_path / "data"), random.Random(1))
    assert attempt.succeeded and runner.requests[0].trigger == "timer"
    state = await read_service_state(db)
    assert (state.consecutive_failures, state.next_retry_at, state.paused_reason) == (0, None, None)


async def test_a_transient_failure_backs_off_exactly_like_the_scheduler(db: Database, tmp_path: Path) -> None:
    clock = FakeClock()
    runner = FakeRunner(db, clock)
    runner.script.append(TransientError("gitlab_unavailable", "502"))
    await set_state(db, failures=1, next_retry_at=clock.now() - 1)
    attempt = await scheduled_attempt(db, runner, clock, policy_config(tmp_path / "data"), random.Random(1))
    state = await read_service_state(db)
    assert attempt.error is not None and attempt.error.code == "gitlab_unavailable"
    assert state.consecutive_failures == 2
    assert 0.8 * 120 <= state.next_retry_at - clock.now() <= 1.2 * 120  # base 1m * 2^(2-1), +-20%


async def test_a_successful_service_run_prunes_change_feed_entries_older_than_retention(db, tmp_path) -> None:
    clock = FakeClock()
    config = policy_config(tmp_path / "data", changes_retention="1d")
    async with db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO changes (kind, project_id, iid, parent_kind, action, at) VALUES ('issue', 1, ?, 'issue',"
            " 'deleted', ?)", [(1, utc_iso(clock.now() - 86_401)), (2, utc_iso(clock.now() - 60))])
    await scheduled_attempt(db, FakeRunner(db, clock), clock, config, random.Random(1))
    assert [r[0] for r in await db.fetchall("SELECT iid FROM changes")] == [2]


async def test_a_permanent_failure_pauses(db: Database, tmp_path: Path) -> None:
    clock = FakeClock()
    runner = FakeRunner(db, clock)
    runner.script.append(PermanentError("gitlab_unauthorized", "401 Unauthorized"))
    await scheduled_attempt(db, runner, clock, policy_config(tmp_path / "data"), random.Random(1))
    assert (await read_service_state(db)).paused_reason == "gitlab_unauthorized: 401 Unauthorized"


async def test_service_run_against_the_simulator_syncs_and_records_success(db, tmp_path, gitlab_url) -> None:
    clock = FakeClock()
    config = policy_config(tmp_path / "data", gitlab_url)
    await set_state(db, failures=3, next_retry_at=clock.now() - 1)
    attempt = await scheduled_attempt(db, SyncRunner(db, EventBus(), clock, config), clock, config, random.Random(1))
    assert attempt.succeeded and attempt.run is not None
    assert attempt.run.trigger == "timer" and attempt.run.counts["issues"] == 50
    assert (await read_service_state(db)).consecutive_failures == 0


def test_service_run_cli_while_paused_exits_0_and_says_so(tmp_path, monkeypatch, capsys) -> None:
    data = tmp_path / "data"

    async def pause() -> None:
        database = await Database.open(data / "lore.db")
        await set_state(database, paused="gitlab_unauthorized: 401")
        await database.close()

    asyncio.run(pause())
    for name in list(os.environ):
        if name.startswith("LORE_GATEWAY_"):
            monkeypatch.delenv(name)
    for name, value in {"GATEWAY_DATA_DIR": str(data), "GITLAB_URL": "http://gitlab.invalid",
                        "GITLAB_TOKEN": "t", "GITLAB_PROJECTS": "acme/widgets"}.items():
        monkeypatch.setenv(f"LORE_GATEWAY_{name}", value)
    code, document, _ = cli(["--json", "service", "run"], capsys)
    assert code == 0 and document["ran"] is False and document["skipped"] == "paused"
    assert document["paused_reason"] == "gitlab_unauthorized: 401"


def test_an_interval_that_is_not_whole_seconds_is_refused(rig: Rig) -> None:
    with pytest.raises(ConfigError):
        rig.spec(interval=90.5)


def test_install_warns_about_a_short_webhook_secret_without_showing_it(rig: Rig) -> None:
    rig.env["LORE_GATEWAY_WEBHOOK_SECRETS"] = "short-hook"
    notes = install_warnings(rig.spec(), rig.config())
    assert any(n.startswith("webhook.secrets: entry 1 is 10 bytes long") for n in notes)
    assert not any("short-hook" in n for n in notes)
