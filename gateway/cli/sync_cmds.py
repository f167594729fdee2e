"""`migrate`, `sync` and `status`: the engine's commands."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, TextIO

from gateway.cli.base import CommandFailed, Context, UsageError, json_flag, open_database
from sync import (
    PROFILES,
    SYNC_DISABLED,
    EventBus,
    Run,
    SyncProgress,
    SyncRequest,
    SyncRunner,
    SystemClock,
    ensure_data_dir,
    migrate,
    sync_status,
)


def register(commands: Any) -> None:
    p = commands.add_parser("migrate", help="apply pending database migrations and exit")
    json_flag(p)
    p.set_defaults(handler=cmd_migrate)

    p = commands.add_parser("sync", help="sync now (ignores backoff and pause)")
    p.add_argument("--profile", choices=PROFILES, help="default: sync.profile")
    p.add_argument(
        "--project", action="append", metavar="PATH", help="only this configured project (repeatable)"
    )
    p.add_argument("--full", action="store_true", help="ignore cursors and re-list everything")
    p.add_argument(
        "--reconcile", action="store_true",
        help="also list every iid, delete what GitLab no longer has and fetch what the mirror lacks",
    )
    p.add_argument("--wait", action="store_true", help="wait for a running sync to finish instead of failing")
    json_flag(p)
    p.set_defaults(handler=cmd_sync)

    p = commands.add_parser("status", help="scheduler state, last runs, backoff, paused reason")
    json_flag(p)
    p.set_defaults(handler=cmd_status)


async def cmd_migrate(ctx: Context) -> dict[str, Any]:
    ensure_data_dir(ctx.config)
    applied = await asyncio.to_thread(migrate, ctx.config.db_path)
    ctx.out(f"applied {', '.join(applied)}" if applied else "the database is up to date")
    return {"database": str(ctx.config.db_path), "applied": applied}


async def cmd_sync(ctx: Context) -> dict[str, Any]:
    args, config = ctx.args, ctx.config
    if not config.gitlab.enabled:
        raise UsageError(
            f"{SYNC_DISABLED} (gitlab.token_file or LORE_GATEWAY_GITLAB_TOKEN)"
        )
    request = SyncRequest(
        trigger="manual",
        profile=args.profile or config.sync.profile,
        projects=tuple(args.project) if args.project else None,
        full=args.full,
        reconcile=args.reconcile,
    )
    async with open_database(ctx) as db:
        bus = EventBus()
        runner = SyncRunner(db, bus, SystemClock(), config)
        async with show_progress(bus, sys.stderr):
            run = await runner.run(request, wait=args.wait)
    document = run.to_json()
    if run.status != "succeeded":
        raise CommandFailed(
            run.error_code or "sync_failed", f"sync #{run.id} failed: {run.error_message}", {"run": document}
        )
    ctx.out(describe_run(run))
    for warning in run.warnings:
        ctx.err(f"warning: {warning}")
    return document


async def cmd_status(ctx: Context) -> dict[str, Any]:
    async with open_database(ctx) as db:
        status = await sync_status(db, SystemClock(), ctx.config)
    ctx.out(render_status(status))
    return status


def describe_run(run: Run) -> str:
    took = f" in {run.finished_at - run.started_at:.1f}s" if run.finished_at else ""
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in run.counts.items()) or "nothing changed"
    line = f"sync #{run.id} {run.status} ({run.trigger}, {run.profile}){took}: {counts}"
    if run.error_code:
        line += f"\n  error {run.error_code}: {run.error_message}"
    return line


def render_status(status: dict[str, Any]) -> str:
    lines = [f"scheduler: {status['scheduler_state']}"]
    lines += [f"  note: {w}" for w in status["warnings"]]
    if status["paused_reason"]:
        lines.append(f"paused: {status['paused_reason']} (run `lore-gateway resume` once fixed)")
    if status["backoff"]:
        b = status["backoff"]
        lines.append(
            f"backoff: {b['consecutive_failures']} consecutive failures, next retry at {b['next_retry_at']}"
        )
    last = status["last_sync"]
    if last:
        lines.append(f"last sync: #{last['id']} {last['status']} ({last['trigger']}, {last['profile']})"
                     f" at {last['finished_at']}")
        lines += [f"  warning: {w}" for w in last.get("warnings") or []]
    lines.append(f"last success: {status['last_success_at'] or 'never'}")
    lines.append(f"next run: {status['next_run_at'] or 'not scheduled'}")
    lines.append(f"pending webhook events: {status['pending_events']}")
    lines.append(_gitlab_requests_line(status["gitlab_requests"]))
    lines += _webhook_lines(status.get("webhooks") or [])
    if status["recent_runs"]:
        lines.append("recent runs:")
        for run in status["recent_runs"]:
            counts = " ".join(f"{k}={v}" for k, v in run["counts"].items())
            error = f" error={run['error_code']}" if run["error_code"] else ""
            lines.append(
                f"  #{run['id']} {run['status']:<11} {run['trigger']:<8} {run['profile']:<8} "
                f"{run['started_at']} {counts}{error}"
            )
    return "\n".join(lines)


def _webhook_lines(webhooks: list[dict[str, Any]]) -> list[str]:
    """Each project's webhook as the scheduler's last check found it."""
    if not webhooks:
        return []
    lines = ["webhooks (checked after each timer or manual run):"]
    for hook in webhooks:
        state = hook["state"].upper() if hook["state"] != "ok" else "ok"
        until = f" until {hook['disabled_until']}" if hook.get("disabled_until") else ""
        lines.append(f"  {hook['project']}: {state}{until} (checked {hook['checked_at']})")
    return lines


def _gitlab_requests_line(usage: dict[str, Any]) -> str:
    line = f"GitLab requests in the last hour: {usage['last_hour']}"
    if usage["requests_per_minute"] is None:
        return line + " (no budget: gitlab.requests_per_minute is 0)"
    return line + f"; budget {usage['requests_per_minute']}/minute, {usage['remaining_this_minute']} left this minute"


@asynccontextmanager
async def show_progress(bus: EventBus, stream: TextIO) -> AsyncIterator[None]:
    """Follow sync.progress on `stream`: a redrawn bar on a terminal, plain lines otherwise."""
    subscription = bus.subscribe(maxsize=10_000)
    task = asyncio.create_task(_print_progress(subscription, stream, stream.isatty()))
    try:
        yield
    finally:
        await asyncio.sleep(0)  # let the last events reach the printer
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        subscription.close()
        if stream.isatty():
            stream.write("\n")


async def _print_progress(subscription: Any, stream: TextIO, tty: bool) -> None:
    while True:
        event = await subscription.get()
        if event.name != SyncProgress.name:
            continue
        stage, done, total = event.data["stage"], event.data["done"], event.data["total"]
        if tty:
            width = 30
            filled = int(width * done / total) if total else 0
            stream.write(f"\r{stage:<15} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}   ")
        elif done == total or done == 0:
            stream.write(f"{stage}: {done}/{total}\n")
        stream.flush()
