"""`hooks install | status | uninstall`: the configured projects' webhooks in GitLab, through its API.

The engine (sync.gitlab.hooks) decides what a hook should look like and talks to GitLab; this module picks the
projects and the URL, prints one line a project, and keeps the manifest on disk whatever happens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.cli.base import Context, UsageError, json_flag
from sync import (
    GitLabClient,
    HealthStore,
    HookManager,
    HookResult,
    Manifest,
    SystemClock,
    default_hook_url,
    disabled_message,
    ensure_data_dir,
    health_of,
    read_instance,
    wanted_hook,
)

_URL_HELP = ("the URL GitLab posts to (default: webhook.url, else "
             "http://<gateway.host>:<gateway.port>/webhooks/gitlab)")


def register(commands: Any) -> None:
    hooks = commands.add_parser("hooks", help="install, check or remove the projects' webhooks in GitLab")
    actions = hooks.add_subparsers(dest="hooks_command", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("install", help="create or update each project's webhook (idempotent)")
    _common(p)
    p.add_argument("--push-events", action="store_true", help="also send push events (the mirror needs none)")
    p.set_defaults(handler=cmd_hooks_install)

    p = actions.add_parser("status", help="each project's webhook, its events, and whether GitLab disabled it")
    _common(p)
    p.set_defaults(handler=cmd_hooks_status)

    p = actions.add_parser("uninstall", help="remove the gateway's webhook from each project")
    _common(p)
    p.set_defaults(handler=cmd_hooks_uninstall)


def _common(parser: Any) -> None:
    parser.add_argument("--project", action="append", metavar="PATH",
                        help="only this configured project (repeatable; default: every one)")
    parser.add_argument("--url", metavar="URL", help=_URL_HELP)
    json_flag(parser)


async def cmd_hooks_install(ctx: Context) -> dict[str, Any]:
    async with _session(ctx) as session:
        instance = await read_instance(session.client)
        url = session.url
        if _loopback(url) and not _loopback(ctx.config.gitlab.url or ""):
            ctx.err(f"warning: GitLab at {ctx.config.gitlab.url} cannot reach {url}; pass --url with an address "
                    "it can reach (GitLab also refuses local addresses unless its admin allows them)")
        wanted = wanted_hook(ctx.config, url, instance, push_events=ctx.args.push_events)
        results = await _each(ctx, lambda project: session.manager.install(project, wanted))
    for result in results:
        ctx.out(_install_line(result))
    changed = any(r.action != "unchanged" for r in results)
    if not changed:
        ctx.out("Nothing to change: every webhook is already as wanted.")
    return {"url": url, "auth": wanted.auth, "gitlab_version": instance.version, "changed": changed,
            "projects": [r.to_json() for r in results]}


async def cmd_hooks_status(ctx: Context) -> dict[str, Any]:
    async with _session(ctx) as session:
        url = session.url
        results = await _each(ctx, lambda project: session.manager.status(project, url))
    now = SystemClock().now()
    health = [health_of(r, now) for r in results]
    if set(_projects(ctx)) == set(ctx.config.gitlab.projects):
        HealthStore(ctx.config.gateway.data_dir).save(health)  # fresher than the scheduler's last look
    for result, checked in zip(results, health, strict=True):
        ctx.out(_status_line(result))
        if checked.message:
            ctx.out(f"  {checked.message}")
    return {"url": url, "projects": [{**r.to_json(), "state": h.state, "message": h.message}
                                     for r, h in zip(results, health, strict=True)]}


async def cmd_hooks_uninstall(ctx: Context) -> dict[str, Any]:
    async with _session(ctx) as session:
        url = session.url
        results = await _each(ctx, lambda project: session.manager.uninstall(project, url))
    for result in results:
        ctx.out(f"{result.project}: " + (f"removed webhook #{result.hook.id} ({result.hook.url})"
                                         if result.hook else "no gateway webhook to remove"))
    return {"url": url, "projects": [r.to_json() for r in results]}


# -- helpers ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Session:
    manager: HookManager
    client: GitLabClient
    url: str


@asynccontextmanager
async def _session(ctx: Context) -> AsyncIterator[_Session]:
    """A client, the manager and the URL; the manifest is saved on the way out, also after a failure."""
    gitlab = ctx.config.gitlab
    if not gitlab.enabled:
        raise UsageError("hooks need gitlab.url and a token (gitlab.token_file or LORE_GATEWAY_GITLAB_TOKEN); "
                         "`lore-gateway init` writes them")
    _projects(ctx)  # usage errors before any request
    ensure_data_dir(ctx.config)
    url = ctx.args.url or default_hook_url(ctx.config)
    manifest = Manifest(ctx.config.gateway.data_dir, gitlab.url or "")
    async with GitLabClient(gitlab.url or "", gitlab.token or "", concurrency=gitlab.concurrency,
                            timeout=gitlab.timeout) as client:
        try:
            yield _Session(HookManager(client, manifest), client, url)
        finally:
            manifest.save()


def _projects(ctx: Context) -> tuple[str, ...]:
    configured = ctx.config.gitlab.projects
    if not configured:
        raise UsageError("no projects configured: set gitlab.projects (lore-gateway init --project PATH)")
    chosen = tuple(ctx.args.project or configured)
    unknown = [p for p in chosen if p not in configured]
    if unknown:
        raise UsageError(f"not a configured project: {', '.join(unknown)} (configured: {', '.join(configured)})")
    return chosen


async def _each(ctx: Context, act: Callable[[str], Awaitable[HookResult]]) -> list[HookResult]:
    return [await act(project) for project in _projects(ctx)]


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _install_line(result: HookResult) -> str:
    hook = result.hook
    assert hook is not None
    auth = "signing token" if result.auth == "signing_token" else "secret token"
    line = f"{result.project}: {result.action} webhook #{hook.id} -> {hook.url} ({auth}; {', '.join(hook.events())})"
    if hook.disabled:
        line += f"\n  {disabled_message(hook)}"
    return line


def _status_line(result: HookResult) -> str:
    hook = result.hook
    if hook is None:
        return f"{result.project}: no gateway webhook"
    state = f"DISABLED by GitLab ({hook.alert_status}" + (
        f" until {hook.disabled_until})" if hook.disabled_until else ")") if hook.disabled else "active"
    ssl = "" if hook.enable_ssl_verification else "; SSL verification OFF"
    return f"{result.project}: webhook #{hook.id} {state} -> {hook.url} (events: {', '.join(hook.events())}{ssl})"
