"""`service install|uninstall|status`, and the hidden `service run` and `service wait-ready` the units call.

Thin on purpose: gateway/ops/service.py renders, plans and applies; this module finds the executable, turns
flags into a ServiceSpec, prints what happened (or would), and maps a ServiceError to exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from gateway.cli.base import CommandFailed, Context, Parser, UsageError, json_flag, open_database
from gateway.cli.sync_cmds import describe_run
from gateway.ops.attempt import Attempt, scheduled_attempt
from gateway.ops.commands import CommandRunner, SubprocessRunner
from gateway.ops.service import (
    InstallPlan,
    ServiceError,
    ServiceSpec,
    Systemctl,
    UninstallPlan,
    apply_install,
    apply_uninstall,
    build_spec,
    check_dirs,
    duration_text,
    install_warnings,
    manifest_path,
    plan_install,
    plan_uninstall,
    read_manifest,
    service_status,
)
from sync import PROFILES, SYNC_DISABLED, EventBus, SyncRunner, SystemClock, parse_duration, utc_iso

# The seam tests replace: every systemctl call goes through the runner this returns.
RUNNER_FACTORY: Callable[[], CommandRunner] = SubprocessRunner
READY_POLL = 0.25


def register(commands: Any) -> None:
    p = commands.add_parser("service", help="install, remove or inspect the systemd units")
    sub = p.add_subparsers(
        dest="service_command", metavar="{install,uninstall,status}", parser_class=Parser
    )
    sub.required = True

    p = sub.add_parser("install", help="render and install the systemd units for this configuration")
    p.add_argument("--user", action="store_true", help="a user service (systemctl --user)")
    p.add_argument(
        "--interval", type=_duration, metavar="DURATION", help="sync interval, e.g. 30m (default: sync.interval)"
    )
    p.add_argument("--profile", choices=PROFILES, help="sync profile (default: sync.profile)")
    _dir_flags(p)
    p.add_argument("--no-start", action="store_true", help="write the files only; call no systemctl")
    p.add_argument("--dry-run", action="store_true", help="show what would change; write nothing")
    p.add_argument(
        "--embed-secrets", action="store_true", help="put the secrets in the unit (not recommended)"
    )
    p.add_argument(
        "--timer-only",
        action="store_true",
        help="install the scheduled one-shot sync (lore-gateway-sync.timer) instead of the gateway daemon",
    )
    p.add_argument("--executable", metavar="PATH", help="the lore-gateway the units run (default: this one)")
    json_flag(p)
    p.set_defaults(handler=cmd_install)

    p = sub.add_parser("uninstall", help="stop, disable and remove what `service install` installed")
    p.add_argument("--user", action="store_true", help=argparse.SUPPRESS)  # the manifest knows the scope
    _dir_flags(p)
    p.add_argument("--no-stop", action="store_true", help="remove the files only; call no systemctl")
    p.add_argument("--dry-run", action="store_true", help="show what would be removed; change nothing")
    json_flag(p)
    p.set_defaults(handler=cmd_uninstall)

    p = sub.add_parser("status", help="installed?, drifted files, active?")
    p.add_argument("--user", action="store_true", help="ask the user manager when nothing is installed")
    _dir_flags(p)
    json_flag(p)
    p.set_defaults(handler=cmd_status)

    # Hidden: what the units run, not commands for people.
    p = sub.add_parser("run")
    json_flag(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("wait-ready")
    p.add_argument("--timeout", type=_duration, default=60.0)
    json_flag(p)
    p.set_defaults(handler=cmd_wait_ready)


def _dir_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unit-dir", type=Path, metavar="DIR", help="default /etc/systemd/system (--user: ~/.config/systemd/user)"
    )
    p.add_argument(
        "--env-dir", type=Path, metavar="DIR", help="default /etc/lore-gateway (--user: ~/.config/lore-gateway)"
    )


def _duration(text: str) -> float:
    return parse_duration(text)  # ConfigError is a ValueError: argparse reports it as a usage error


# --- install ---------------------------------------------------------------------------------------


async def cmd_install(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    spec = _failing_as_command(lambda: _spec(ctx))
    plan = _failing_as_command(lambda: plan_install(spec, manifest_path(ctx.config), start=not args.no_start))
    warnings = install_warnings(spec, ctx.config)
    for warning in warnings:
        ctx.err(f"warning: {warning}")
    if not args.dry_run:
        systemctl = Systemctl(RUNNER_FACTORY(), user=spec.user) if plan.systemctl else None
        try:
            await apply_install(plan, systemctl)
        except ServiceError as err:
            raise CommandFailed(err.code, err.message, err.extra) from None
    ctx.out(_install_text(plan, args.dry_run))
    return _install_document(plan, args.dry_run, warnings)


def _spec(ctx: Context) -> ServiceSpec:
    args = ctx.args
    if args.user and os.geteuid() == 0 and args.unit_dir is None:
        ctx.err("warning: --user as root installs into root's own user manager")
    return build_spec(
        ctx.config,
        os.environ,
        command=lore_gateway_command(args.executable),
        user=args.user,
        timer_only=args.timer_only,
        interval=args.interval,
        profile=args.profile,
        unit_dir=args.unit_dir,
        env_dir=args.env_dir,
        embed_secrets=args.embed_secrets,
    )


def lore_gateway_command(
    executable: str | None = None,
    *,
    argv0: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> tuple[str, ...]:
    """The argv prefix that runs this lore-gateway: an explicit path, the script we were started as,
    the one on PATH, or (run as `python -m gateway.cli`) this interpreter with -m."""
    if executable is not None:
        path = Path(executable).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UsageError(f"--executable {executable}: not an executable file")
        return (str(path.resolve()),)
    started_as = Path(argv0 if argv0 is not None else sys.argv[0])
    if started_as.name == "lore-gateway" and started_as.is_file():
        return (str(started_as.resolve()),)
    found = which("lore-gateway")
    if found:
        return (str(Path(found).resolve()),)
    # Not resolved: a virtualenv's python is a symlink, and following it would leave the virtualenv.
    return (os.path.abspath(sys.executable), "-m", "gateway.cli")


def _install_document(plan: InstallPlan, dry_run: bool, warnings: list[str]) -> dict[str, Any]:
    spec = plan.spec
    return {
        "no_change": plan.no_change,
        "dry_run": dry_run,
        "scope": spec.scope,
        "mode": spec.mode,
        "units": list(spec.units),
        "token_source": spec.token_source,
        "secrets": [name for name, _ in spec.secrets],  # names only, never a value
        "files": [{"path": str(c.path), "action": c.action} for c in plan.changes],
        "drift": list(plan.drift),
        "systemctl": [_argv(spec.user, call) for call in plan.systemctl],
        "started": plan.start and not dry_run and not plan.no_change,
        "command": list(spec.invocation),
        "data_dir": str(spec.data_dir),
        "env_file": str(spec.env_file),
        "manifest": str(plan.manifest_file),
        "interval": duration_text(spec.interval),
        "profile": spec.profile,
        "warnings": warnings,
    }


def _install_text(plan: InstallPlan, dry_run: bool) -> str:
    spec = plan.spec
    if plan.no_change:
        return f"no change: {', '.join(spec.units)} ({spec.scope}) is installed exactly as rendered"
    lines = [f"{'would install' if dry_run else 'installed'} {', '.join(spec.units)} ({spec.scope})"]
    fix = "the install would put it back" if dry_run else "put back"
    lines += [f"  drift: {path} was edited or removed; {fix}" for path in plan.drift]
    lines += [f"  {change.action:<9} {change.path}" for change in plan.changes]
    lines += [f"  {' '.join(_argv(spec.user, call))}" for call in plan.systemctl]
    if not plan.start:
        lines.append("  --no-start: no systemctl call; run `systemctl daemon-reload` and enable the unit yourself")
    where = "in the unit (--embed-secrets)" if spec.embed_secrets else f"in {spec.env_file} (mode 0600)"
    lines.append(f"  secrets: {', '.join(n for n, _ in spec.secrets) or 'none configured'} {where}")
    return "\n".join(lines)


def _argv(user: bool, call: Sequence[str]) -> list[str]:
    return ["systemctl", *(["--user"] if user else []), *call]


# --- uninstall and status ----------------------------------------------------------------------------


async def cmd_uninstall(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    path = manifest_path(ctx.config)
    manifest = _failing_as_command(lambda: read_manifest(path))
    if manifest is None:
        ctx.out(f"nothing to uninstall: no install manifest at {path}")
        return {"uninstalled": False, "removed": [], "systemctl": [], "dry_run": args.dry_run}
    _failing_as_command(lambda: check_dirs(manifest, args.unit_dir, args.env_dir))
    plan = plan_uninstall(manifest, path, stop=not args.no_stop)
    if not args.dry_run:
        systemctl = Systemctl(RUNNER_FACTORY(), user=manifest.scope == "user") if plan.systemctl else None
        try:
            await apply_uninstall(plan, systemctl)
        except ServiceError as err:
            raise CommandFailed(err.code, err.message, err.extra) from None
    ctx.out(_uninstall_text(plan, args.dry_run))
    return {
        "uninstalled": not args.dry_run,
        "dry_run": args.dry_run,
        "units": list(manifest.units),
        "removed": [str(p) for p in (*plan.remove, path)],
        "systemctl": [_argv(manifest.scope == "user", call) for call in plan.systemctl],
    }


def _uninstall_text(plan: UninstallPlan, dry_run: bool) -> str:
    user = plan.manifest.scope == "user"
    lines = [f"{'would uninstall' if dry_run else 'uninstalled'} {', '.join(plan.manifest.units)}"]
    lines += [f"  {' '.join(_argv(user, call))}" for call in plan.systemctl]
    lines += [f"  remove {path}" for path in (*plan.remove, plan.manifest_file)]
    return "\n".join(lines)


async def cmd_status(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    status = await _failing_as_command_async(
        service_status(
            manifest_path(ctx.config), RUNNER_FACTORY(), user=args.user, unit_dir=args.unit_dir, env_dir=args.env_dir
        )
    )
    active = {True: "yes", False: "no", None: "unknown (systemctl is not available here)"}[status.active]
    if status.manifest is None:
        ctx.out(f"installed: no (no install manifest at {manifest_path(ctx.config)})\nactive: {active}")
    else:
        m = status.manifest
        ctx.out(f"installed: yes ({m.scope}, {', '.join(m.units)}; every {duration_text(m.interval)}, {m.profile})")
        ctx.out(f"active: {active}")
        if status.drift:
            ctx.out("drift (edited or removed since the install; `service install` puts them back):")
            ctx.out("\n".join(f"  {path}" for path in status.drift))
        else:
            ctx.out("drift: none")
    return status.to_json()


# --- what the units run --------------------------------------------------------------------------------


async def cmd_run(ctx: Context) -> dict[str, Any]:
    """One scheduled attempt under the service policy; a failed sync is exit 1 after it is recorded."""
    config, clock = ctx.config, SystemClock()
    async with open_database(ctx) as db:
        runner = SyncRunner(db, EventBus(), clock, config)
        attempt = await scheduled_attempt(db, runner, clock, config, random.Random())
    document = _attempt_document(attempt)
    if attempt.skipped is not None:
        ctx.out(f"skipped: {_skip_reason(attempt)}")
        return document
    if attempt.error is not None:
        raise CommandFailed(attempt.error.code, f"scheduled sync failed: {attempt.error.message}", document)
    assert attempt.run is not None
    ctx.out(describe_run(attempt.run))
    return document


def _attempt_document(attempt: Attempt) -> dict[str, Any]:
    state = attempt.state
    return {
        "ran": attempt.skipped is None,
        "skipped": attempt.skipped,
        "run": attempt.run.to_json() if attempt.run else None,
        "paused_reason": state.paused_reason,
        "consecutive_failures": state.consecutive_failures,
        "next_retry_at": utc_iso(state.next_retry_at),
    }


def _skip_reason(attempt: Attempt) -> str:
    state = attempt.state
    return {
        "paused": f"the scheduler is paused ({state.paused_reason}); run `lore-gateway resume` once fixed",
        "backoff": f"backing off after {state.consecutive_failures} failures until {utc_iso(state.next_retry_at)}",
        "sync_in_progress": "another sync is running",
        "sync_disabled": SYNC_DISABLED,
    }[attempt.skipped or ""]


async def cmd_wait_ready(ctx: Context) -> dict[str, Any]:
    """Poll /readyz until it answers 200: what makes the daemon's start honest (ExecStartPost)."""
    url = readiness_url(ctx.config.gateway.host, ctx.config.gateway.port)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ctx.args.timeout
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        ctx.out(f"ready: {url}")
                        return {"ready": True, "url": url}
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as err:
                last = type(err).__name__
            if loop.time() >= deadline:
                raise CommandFailed("not_ready", f"{url} did not answer 200 within {ctx.args.timeout:g}s ({last})")
            await asyncio.sleep(READY_POLL)


def readiness_url(host: str, port: int) -> str:
    """The /readyz URL of a gateway listening on host:port; a wildcard address is asked on loopback."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}/readyz"


# --- errors ---------------------------------------------------------------------------------------------


def _failing_as_command(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except ServiceError as err:
        raise CommandFailed(err.code, err.message, err.extra) from None


async def _failing_as_command_async(awaitable: Any) -> Any:
    try:
        return await awaitable
    except ServiceError as err:
        raise CommandFailed(err.code, err.message, err.extra) from None
