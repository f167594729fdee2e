"""`serve` and `resume`: running the gateway and steering its scheduler (`demo` is in demo_cmds.py)."""

from __future__ import annotations

from typing import Any

from gateway.app import PER_PROCESS_LIMITS, create_app
from gateway.cli import demo_cmds
from gateway.cli.base import CommandFailed, Context, UsageError, json_flag, listening, open_database
from gateway.cli.sync_cmds import render_status
from gateway.server import configure_logging, wait_for_stop_signal
from gateway.workers import SupervisorError, serve_workers
from sync import (
    SYNC_DISABLED,
    SystemClock,
    config_warnings,
    ensure_data_dir,
    refuse_network_data_dir,
    resume_service,
    sync_status,
)


def register(commands: Any) -> None:
    p = commands.add_parser("serve", help="run the gateway (applies migrations first)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes serving the port (SO_REUSEPORT); share state through [redis] url (default 1)")
    json_flag(p)
    p.set_defaults(handler=cmd_serve)

    demo_cmds.register(commands)

    p = commands.add_parser("resume", help="clear a paused or backed-off scheduler")
    json_flag(p)
    p.set_defaults(handler=cmd_resume)


async def cmd_serve(ctx: Context) -> None:
    config = ctx.config
    workers = ctx.args.workers
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    refuse_network_data_dir(ensure_data_dir(config))
    configure_logging(config.gateway.log_level)
    for warning in config_warnings(config):
        ctx.err(f"lore-gateway: warning: {warning}")
    if workers > 1:
        await _serve_workers(ctx, workers)
        return
    app = create_app(config)
    async with listening(app, config.gateway.host, config.gateway.port) as url:
        ctx.err(f"lore-gateway: serving on {url} (data in {config.gateway.data_dir})")
        if not config.gitlab.enabled:
            ctx.err(f"lore-gateway: {SYNC_DISABLED}")
        await wait_for_stop_signal()
    ctx.err("lore-gateway: stopped")


async def _serve_workers(ctx: Context, workers: int) -> None:
    config = ctx.config
    if not config.redis.url:
        ctx.err(f"lore-gateway: {PER_PROCESS_LIMITS}; sync runs stay single through the database lock")
    if not config.gitlab.enabled:
        ctx.err(f"lore-gateway: {SYNC_DISABLED}")
    try:
        await serve_workers(config, workers, ctx.err)
    except SupervisorError as exc:
        raise CommandFailed(exc.code, exc.message) from exc
    ctx.err("lore-gateway: stopped")


async def cmd_resume(ctx: Context) -> dict[str, Any]:
    async with open_database(ctx) as db:
        clock = SystemClock()
        await resume_service(db, clock.now())
        status = await sync_status(db, clock, ctx.config)
    ctx.out("resumed: automatic syncs may run again (a running `serve` notices within a second)")
    ctx.out(render_status(status))
    return status
