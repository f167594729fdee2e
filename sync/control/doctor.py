"""`doctor`'s checks: everything that makes a gateway silently fail, each found before it bites.

A check never raises: what it finds is a `Check` (ok, warn or fail) with a one-line fix, so one broken
thing never hides the others. The order is the order of dependency: the config, the data directory, then
GitLab (reachable, version, token, projects, hooks, clock), then Redis.
"""

from __future__ import annotations

import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from sync.clock import Clock
from sync.config import Config, ConfigError, ensure_data_dir
from sync.errors import SyncError
from sync.gitlab.client import GitLabClient, RetryPolicy
from sync.gitlab.hooks import (
    MAINTAINER_NEEDED,
    HookManager,
    Manifest,
    default_hook_url,
    disabled_fix,
    health_of,
)
from sync.gitlab.instance import Instance, degraded_features, read_instance
from sync.scaleout.redis_bus import redis_client

SKEW_WARN = 30.0  # seconds
SKEW_FAIL = 300.0  # the signing-token window is +-5 minutes (docs/api.md, webhooks)
EXPIRY_WARN_DAYS = 14
OK, WARN, FAIL = "ok", "warn", "fail"
_INLINE_SECRETS = (("gitlab", "token"), ("webhook", "secrets"), ("webhook", "signing_tokens"), ("auth", "signing_keys"))


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    message: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "message": self.message, "fix": self.fix}


# -- local checks ----------------------------------------------------------------------------------


def _mode_problem(path: Path) -> str | None:
    mode = stat.S_IMODE(path.stat().st_mode)
    return f"mode {mode:04o}: readable by others" if mode & 0o077 else None


def check_config(config: Config) -> list[Check]:
    source = config.source
    if source is None:
        return [Check("config", WARN, "no config file: built-in defaults and environment variables only",
                      "lore-gateway init --gitlab-url URL --token-file FILE --project PATH")]
    document = _toml(source)
    inline = [f"{section}.{key}" for section, key in _INLINE_SECRETS if key in document.get(section, {})]
    checks = [_file_mode("config", source) if inline else Check("config", OK, f"{source} (holds no secret)")]
    for key, path in _secret_files(document):
        checks.append(_file_mode(key, path))
    if not config.webhook.secrets and not config.webhook.signing_tokens:
        checks.append(Check("webhook secrets", FAIL, "no webhook.secrets or webhook.signing_tokens: every webhook "
                            "is refused", "lore-gateway init writes both; or set webhook.secrets"))
    if not config.auth.signing_keys:
        checks.append(Check("auth signing keys", WARN, "no auth.signing_keys: API tokens are signed with a key "
                            "kept in the data directory", "set auth.signing_keys (lore-gateway init writes one)"))
    return checks


def _file_mode(name: str, path: Path) -> Check:
    try:
        problem = _mode_problem(path)
    except OSError as err:
        return Check(name, FAIL, f"cannot read {path}: {err.strerror or err}", f"check that {path} exists")
    if problem:
        return Check(name, FAIL, f"{path}: {problem}, and it holds secrets", f"chmod 600 {path}")
    return Check(name, OK, f"{path} (mode 0600 or stricter)")


def _toml(source: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    return {name: table for name, table in document.items() if isinstance(table, dict)}


def _secret_files(document: dict[str, Any]) -> list[tuple[str, Path]]:
    """The `*_file` keys of the config file: each names a file holding a secret."""
    found = []
    for section, table in document.items():
        for key, value in (table.items() if isinstance(table, dict) else ()):
            if key.endswith("_file") and isinstance(value, str):
                found.append((f"{section}.{key}", Path(value).expanduser()))
    return found


def check_data_dir(config: Config) -> Check:
    data_dir = config.gateway.data_dir
    try:
        ensure_data_dir(config)
    except ConfigError as err:
        return Check("data directory", FAIL, str(err), f"mkdir -p {data_dir} && chmod 700 {data_dir}")
    problem = _mode_problem(data_dir)
    if problem:
        return Check("data directory", WARN, f"{data_dir}: {problem}", f"chmod 700 {data_dir}")
    database = config.db_path
    if database.exists() and _mode_problem(database):
        return Check("data directory", WARN, f"{database}: {_mode_problem(database)}", f"chmod 600 {database}")
    return Check("data directory", OK, f"{data_dir} (writable, private)")


# -- GitLab ----------------------------------------------------------------------------------------


@dataclass
class _GitLab:
    """What the GitLab checks learn as they go: later checks skip what an earlier failure made moot."""

    client: GitLabClient
    instance: Instance | None = None
    date_header: str | None = None


async def check_gitlab(config: Config, clock: Clock, client: GitLabClient) -> list[Check]:
    gitlab = _GitLab(client)
    checks = [await _reachable(config, gitlab)]
    if gitlab.instance is None:
        return checks
    checks += _degraded(gitlab.instance)
    checks.append(await _token(client, clock))
    checks += await _projects(config, client)
    checks += await _hooks(config, client)
    checks.append(_skew(gitlab.date_header, clock))
    return checks


async def _reachable(config: Config, gitlab: _GitLab) -> Check:
    try:
        _, headers = await gitlab.client.send("GET", "/version")
        gitlab.date_header = headers.get("Date")
        gitlab.instance = await read_instance(gitlab.client)
    except SyncError as err:
        fix = ("check gitlab.url and the network" if err.transient else
               "check the token in gitlab.token_file (api scope, not expired)")
        return Check("gitlab", FAIL, f"{config.gitlab.url}: {err.message}", fix)
    instance = gitlab.instance
    return Check("gitlab", OK, f"{config.gitlab.url}: GitLab {instance.version} ({instance.edition})")


def _degraded(instance: Instance) -> list[Check]:
    found = degraded_features(instance)
    if not found:
        return [Check("features", OK, f"everything the gateway mirrors is available on GitLab {instance.version}")]
    return [Check(f"feature {d.feature}", WARN, d.reason, "upgrade GitLab for it, or live without it")
            for d in found]


async def _token(client: GitLabClient, clock: Clock) -> Check:
    try:
        body = await client.get("/personal_access_tokens/self")
    except SyncError as err:
        if err.code == "gitlab_not_found":
            return Check("token", WARN, "this GitLab cannot describe its tokens (/personal_access_tokens/self "
                         "came in 15.5): scopes and expiry unchecked", "make sure the token has the api scope")
        return Check("token", FAIL, err.message, "create a token with the api scope and put it in gitlab.token_file")
    scopes = (body.get("scopes") or []) if isinstance(body, dict) else []
    expires = body.get("expires_at") if isinstance(body, dict) else None
    if "api" not in scopes:
        level = WARN if "read_api" in scopes else FAIL
        return Check("token", level, f"scopes {', '.join(scopes) or 'none'}: without api the gateway cannot manage "
                     "webhooks" + ("" if level == WARN else " nor read the API"),
                     "create a token with the api scope")
    if expires:
        days = (datetime.fromisoformat(str(expires)).replace(tzinfo=UTC).timestamp() - clock.now()) / 86_400
        if days < 0:
            return Check("token", FAIL, f"the token expired on {expires}", "create a new token (api scope)")
        if days < EXPIRY_WARN_DAYS:
            return Check("token", WARN, f"the token expires on {expires} (in {int(days)} days)",
                         "create a new token before then and put it in gitlab.token_file")
    return Check("token", OK, f"scopes {', '.join(scopes)}; expires {expires or 'never'}")


async def _projects(config: Config, client: GitLabClient) -> list[Check]:
    if not config.gitlab.projects:
        return [Check("projects", FAIL, "no projects configured", "set gitlab.projects")]
    checks = []
    for project in config.gitlab.projects:
        try:
            await client.project(project)
        except SyncError as err:
            checks.append(Check(f"project {project}", FAIL, err.message,
                                "check the path and that the token's user is a member of the project"))
            continue
        checks.append(Check(f"project {project}", OK, "visible to the token"))
    return checks


async def _hooks(config: Config, client: GitLabClient) -> list[Check]:
    manager = HookManager(client, Manifest(config.gateway.data_dir, config.gitlab.url or ""))
    url = default_hook_url(config)
    checks = []
    for project in config.gitlab.projects:
        name = f"webhook {project}"
        try:
            health = health_of(await manager.status(project, url), 0.0)
        except SyncError as err:
            if err.code == "hooks_forbidden":
                checks.append(Check(name, WARN, "cannot read the project's webhooks", MAINTAINER_NEEDED))
            else:
                checks.append(Check(name, WARN, f"cannot read the project's webhooks: {err.message}", ""))
            continue
        if health.state == "missing":
            checks.append(Check(name, WARN, "no webhook posts to the gateway: only the timer keeps the mirror "
                                "fresh", "lore-gateway hooks install --url URL"))
        elif health.state == "disabled":
            hook = health.hook
            assert hook is not None
            until = f" until {hook.disabled_until}" if hook.disabled_until else ""
            checks.append(Check(name, FAIL, f"#{hook.id} disabled by GitLab ({hook.alert_status}{until})",
                                disabled_fix(hook)))
        else:
            checks.append(Check(name, OK, f"#{health.hook.id if health.hook else '?'} active"))
    return checks


def _skew(date_header: str | None, clock: Clock) -> Check:
    if not date_header:
        return Check("clock", WARN, "GitLab sent no Date header: clock skew unchecked", "")
    try:
        theirs = parsedate_to_datetime(date_header).timestamp()
    except (TypeError, ValueError):
        return Check("clock", WARN, f"GitLab's Date header is unreadable ({date_header[:40]!r})", "")
    skew = clock.now() - theirs
    text = f"this host is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} GitLab"
    if abs(skew) > SKEW_FAIL:
        return Check("clock", FAIL, text + ": signed webhooks (+-5 min window) are refused",
                     "enable NTP (timedatectl set-ntp true)")
    if abs(skew) > SKEW_WARN:
        return Check("clock", WARN, text, "enable NTP (timedatectl set-ntp true)")
    return Check("clock", OK, text if abs(skew) >= 1 else "in step with GitLab")


# -- Redis -----------------------------------------------------------------------------------------


async def check_redis(config: Config) -> Check | None:
    url = config.redis.url
    if url is None:
        return None
    client = redis_client(url)
    try:
        await client.ping()
    except (RedisError, OSError) as err:
        return Check("redis", FAIL, f"cannot reach Redis: {type(err).__name__}", "start Redis, or check redis.url")
    finally:
        await client.aclose()
    return Check("redis", OK, "reachable")


# -- all of them -----------------------------------------------------------------------------------


async def run_checks(config: Config, clock: Clock,
                     client_factory: Callable[[], GitLabClient] | None = None) -> list[Check]:
    """Every check, in order; `client_factory` makes the GitLab client (tests pass a simulator's)."""
    checks = [*check_config(config), check_data_dir(config)]
    if not config.gitlab.enabled:
        checks.append(Check("gitlab", FAIL, "gitlab.url or the token is not set: sync is disabled",
                            "lore-gateway init --gitlab-url URL --token-file FILE --project PATH"))
    else:
        factory = client_factory or (lambda: _client(config))
        async with factory() as client:
            checks += await check_gitlab(config, clock, client)
    redis = await check_redis(config)
    if redis is not None:
        checks.append(redis)
    return checks


def _client(config: Config) -> GitLabClient:
    # Two quick tries: a doctor should answer in seconds, not back off for a minute.
    return GitLabClient(config.gitlab.url or "", config.gitlab.token or "", concurrency=4,
                        timeout=min(config.gitlab.timeout, 10.0), retry=RetryPolicy(attempts=2, base=0.2))
