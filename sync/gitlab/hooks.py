"""Each configured project's webhook in GitLab: install it, read its health, remove it.

GitLab never shows a hook's tokens (doc/api/project_webhooks.md), so whether a hook still holds *our*
token cannot be read back: a small manifest in the data directory (`webhooks.json`, 0600) records per
project the hook's id and a fingerprint of the token installed. A hook that matches GitLab's view and the
manifest is left alone, which is what makes `hooks install` idempotent; anything else is (re)written.
Hook health (GitLab's `alert_status`, `disabled_until`) is what the scheduler stores in
`webhook-health.json` for status and the status page.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.clock import Clock, utc_iso
from sync.config import Config
from sync.errors import PermanentError, SyncError
from sync.gitlab.client import GitLabClient
from sync.gitlab.instance import Instance

WEBHOOK_PATH = "/webhooks/gitlab"
# What the mirror needs (doc/user/project/integrations/webhook_events.md); push events are optional.
WANTED_TRIGGERS = ("issues_events", "confidential_issues_events", "merge_requests_events", "note_events",
                   "confidential_note_events")
MANIFEST = "webhooks.json"
HEALTH = "webhook-health.json"
DISABLED = ("temporarily_disabled", "disabled")
MAINTAINER_NEEDED = ("managing a project's webhooks needs the Maintainer role on it (or Owner, or an "
                     "administrator), and a token with the api scope")


# -- what GitLab shows, and what we want -------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    """One project hook as GitLab's API shows it (never its tokens)."""

    id: int
    url: str
    triggers: Mapping[str, bool]
    enable_ssl_verification: bool
    alert_status: str
    disabled_until: str | None
    signing_token_present: bool | None  # None: a GitLab before 19.0 does not say

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Hook:
        triggers = {k: bool(v) for k, v in body.items() if k.endswith("_events") and isinstance(v, bool)}
        present = body.get("signing_token_present")
        return cls(int(body["id"]), str(body.get("url", "")), triggers,
                   bool(body.get("enable_ssl_verification", True)), str(body.get("alert_status") or "executable"),
                   body.get("disabled_until"), present if isinstance(present, bool) else None)

    @property
    def disabled(self) -> bool:
        return self.alert_status in DISABLED

    def events(self) -> list[str]:
        return sorted(name.removesuffix("_events") for name, on in self.triggers.items() if on)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "url": self.url, "events": self.events(),
                "enable_ssl_verification": self.enable_ssl_verification, "alert_status": self.alert_status,
                "disabled_until": self.disabled_until}


@dataclass(frozen=True)
class Wanted:
    """The hook `install` makes: the gateway's URL, the mirror's events, SSL verification on, one token."""

    url: str
    push_events: bool
    auth: str  # signing_token | token
    secret: str = field(repr=False)
    fallback: str | None = field(default=None, repr=False)  # the secret token, should GitLab keep no signing token

    def triggers(self) -> dict[str, bool]:
        return {**dict.fromkeys(WANTED_TRIGGERS, True), "push_events": self.push_events}

    def body(self) -> dict[str, Any]:
        # With a signing token the plain token is cleared: it would travel in clear beside the signature.
        tokens = {"signing_token": self.secret, "token": ""} if self.auth == "signing_token" else {"token": self.secret}
        return {"url": self.url, **self.triggers(), "enable_ssl_verification": True, **tokens}

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.auth}:{self.secret}".encode()).hexdigest()[:24]

    def matches(self, hook: Hook) -> bool:
        return (hook.url == self.url and hook.enable_ssl_verification
                and all(hook.triggers.get(name) == on for name, on in self.triggers().items()))


@dataclass(frozen=True)
class HookResult:
    """What happened to one project's hook (install, uninstall) or what it looks like (status)."""

    project: str
    action: str  # created | updated | unchanged | removed | absent | found | missing
    hook: Hook | None = None
    auth: str | None = None
    project_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"project": self.project, "project_id": self.project_id, "action": self.action,
                "auth": self.auth, "hook": self.hook.to_json() if self.hook else None,
                "disabled": bool(self.hook and self.hook.disabled)}


def default_hook_url(config: Config) -> str:
    """Where GitLab should POST: webhook.url, else the gateway's own host and port (a wildcard bind
    names this host)."""
    if config.webhook.url:
        return config.webhook.url
    host = config.gateway.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.gateway.port}{WEBHOOK_PATH}"


def wanted_hook(config: Config, url: str, instance: Instance | None, *, push_events: bool) -> Wanted:
    """The signing token where this GitLab takes one (19.0+), else the first webhook secret."""
    signing, secrets = config.webhook.signing_tokens, config.webhook.secrets
    if signing and instance is not None and instance.supports_signing_token:
        return Wanted(url, push_events, "signing_token", signing[0], secrets[0] if secrets else None)
    if secrets:
        return Wanted(url, push_events, "token", secrets[0])
    if signing:
        version = instance.version if instance is not None else "(version unknown)"
        raise PermanentError("webhook_secret_missing",
                             f"GitLab {version} cannot sign webhooks (19.0+) and webhook.secrets is empty: "
                             "add a secret (lore-gateway init writes one)")
    raise PermanentError("webhook_secret_missing",
                         "neither webhook.secrets nor webhook.signing_tokens is set: the gateway could not tell "
                         "GitLab's webhooks from anyone's (lore-gateway init writes both)")


# -- the manifest ----------------------------------------------------------------------------------


class Manifest:
    """Per project: the hook id, URL and token fingerprint `install` left in GitLab."""

    def __init__(self, data_dir: Path, gitlab_url: str) -> None:
        self.path = data_dir / MANIFEST
        self._gitlab = gitlab_url
        document = _read_json(self.path)
        same = isinstance(document, dict) and document.get("gitlab_url") == gitlab_url
        projects = document.get("projects") if same else None
        self.projects: dict[str, dict[str, Any]] = projects if isinstance(projects, dict) else {}

    def entry(self, project: str) -> dict[str, Any]:
        entry = self.projects.get(project)
        return entry if isinstance(entry, dict) else {}

    def record(self, project: str, hook: Hook, wanted: Wanted, *, signing_refused: bool = False) -> None:
        self.projects[project] = {"hook_id": hook.id, "url": hook.url, "auth": wanted.auth,
                                  "fingerprint": wanted.fingerprint(), "signing_refused": signing_refused}

    def forget(self, project: str) -> None:
        self.projects.pop(project, None)

    def save(self) -> None:
        write_private_json(self.path, {"gitlab_url": self._gitlab, "projects": self.projects})


def write_private_json(path: Path, document: Any) -> None:
    """Atomically, mode 0600 from the first byte: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable or torn: treated as unknown, and rewritten by the next install


# -- talking to GitLab -----------------------------------------------------------------------------


class HookManager:
    """The hooks API for the configured projects; every 403 becomes a `hooks_forbidden` naming the role."""

    def __init__(self, client: GitLabClient, manifest: Manifest) -> None:
        self._client = client
        self.manifest = manifest

    async def install(self, project: str, wanted: Wanted) -> HookResult:
        project_id, hooks = await self._hooks(project)
        current = self._ours(project, hooks, wanted.url)
        entry = self.manifest.entry(project)
        refused = wanted.auth == "signing_token" and entry.get("signing_refused") is True
        if refused:  # GitLab kept no signing token last time: the secret stands in (hooks uninstall retries)
            wanted = self._unsigned(project, wanted)
        if (current is not None and wanted.matches(current) and entry.get("hook_id") == current.id
                and entry.get("fingerprint") == wanted.fingerprint()):
            return HookResult(project, "unchanged", current, wanted.auth, project_id)
        base = f"/projects/{project_id}/hooks"
        if current is None:
            hook = await self._write(project, "POST", base, wanted.body())
            action = "created"
        else:
            hook = await self._write(project, "PUT", f"{base}/{current.id}", wanted.body())
            action = "updated"
        if wanted.auth == "signing_token" and hook.signing_token_present is False:
            # GitLab 19 with its webhook_signing_token feature flag off ignores the attribute.
            wanted, refused = self._unsigned(project, wanted), True
            hook = await self._write(project, "PUT", f"{base}/{hook.id}", wanted.body())
        self.manifest.record(project, hook, wanted, signing_refused=refused)
        return HookResult(project, action, hook, wanted.auth, project_id)

    def _unsigned(self, project: str, wanted: Wanted) -> Wanted:
        if wanted.fallback is None:
            raise PermanentError("signing_token_refused",
                                 f"GitLab kept no signing token on {project}'s webhook (its webhook_signing_token "
                                 "feature flag may be off) and webhook.secrets is empty: add a secret")
        return Wanted(wanted.url, wanted.push_events, "token", wanted.fallback)

    async def status(self, project: str, url: str) -> HookResult:
        project_id, hooks = await self._hooks(project)
        hook = self._ours(project, hooks, url)
        entry = self.manifest.entry(project)
        return HookResult(project, "found" if hook else "missing", hook, entry.get("auth") if hook else None,
                          project_id)

    async def uninstall(self, project: str, url: str) -> HookResult:
        project_id, hooks = await self._hooks(project)
        hook = self._ours(project, hooks, url)
        if hook is None:
            self.manifest.forget(project)
            return HookResult(project, "absent", None, None, project_id)
        await self._call(project, "DELETE", f"/projects/{project_id}/hooks/{hook.id}")
        self.manifest.forget(project)
        return HookResult(project, "removed", hook, None, project_id)

    def _ours(self, project: str, hooks: list[Hook], url: str) -> Hook | None:
        """The hook the manifest names, else the one posting to the gateway's URL."""
        entry = self.manifest.entry(project)
        return (next((h for h in hooks if h.id == entry.get("hook_id")), None)
                or next((h for h in hooks if h.url in (url, entry.get("url"))), None))

    async def _hooks(self, project: str) -> tuple[int, list[Hook]]:
        found = await self._client.project(project)
        project_id = int(found["id"])
        body, _ = await self._call(project, "GET", f"/projects/{project_id}/hooks")
        if not isinstance(body, list):
            raise PermanentError("gitlab_bad_response", f"GET /projects/{project_id}/hooks: expected a list")
        return project_id, [Hook.from_json(item) for item in body if isinstance(item, dict) and "id" in item]

    async def _write(self, project: str, method: str, path: str, body: dict[str, Any]) -> Hook:
        answer, _ = await self._call(project, method, path, body)
        if not isinstance(answer, dict) or "id" not in answer:
            raise PermanentError("gitlab_bad_response", f"{method} {path}: expected the hook")
        return Hook.from_json(answer)

    async def _call(self, project: str, method: str, path: str, body: dict[str, Any] | None = None
                    ) -> tuple[Any, Mapping[str, str]]:
        try:
            return await self._client.send(method, path, body)
        except PermanentError as error:
            if error.code == "gitlab_forbidden":
                raise PermanentError("hooks_forbidden", f"GitLab refused to manage {project}'s webhooks "
                                                        f"(HTTP 403): {MAINTAINER_NEEDED}") from error
            raise


# -- health ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookHealth:
    """One project's webhook as last checked: ok | disabled | missing | unknown (could not look)."""

    project: str
    state: str
    checked_at: float
    hook: Hook | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        hook = self.hook
        return {"project": self.project, "state": self.state, "checked_at": utc_iso(self.checked_at),
                "hook_id": hook.id if hook else None, "events": hook.events() if hook else [],
                "alert_status": hook.alert_status if hook else None,
                "disabled_until": hook.disabled_until if hook else None, "message": self.message}


def health_of(result: HookResult, now: float) -> HookHealth:
    hook = result.hook
    if hook is None:
        return HookHealth(result.project, "missing", now, None,
                          "no webhook posts to the gateway: run `lore-gateway hooks install`; the timer keeps "
                          "the mirror fresh meanwhile")
    if hook.disabled:
        return HookHealth(result.project, "disabled", now, hook, disabled_message(hook))
    return HookHealth(result.project, "ok", now, hook, "")


def disabled_fix(hook: Hook) -> str:
    """What to do about GitLab's auto-disabling of this hook (user/project/integrations/webhooks.md)."""
    if hook.alert_status == "temporarily_disabled":
        return "make the gateway reachable from GitLab; GitLab tries the hook again after the pause"
    return "make the gateway reachable, then re-enable the hook with Test in the project's Settings > Webhooks"


def disabled_message(hook: Hook) -> str:
    if hook.alert_status == "temporarily_disabled":
        until = f" until {hook.disabled_until}" if hook.disabled_until else ""
        what = f"GitLab paused it{until} after failed deliveries"
    else:
        what = "GitLab disabled it after 40 failed deliveries in a row"
    return f"{what}: {disabled_fix(hook)}. The timer keeps the mirror fresh meanwhile"


async def check_health(manager: HookManager, projects: tuple[str, ...], url: str, clock: Clock
                       ) -> list[HookHealth]:
    """Each project's hook health; a project that cannot be looked at is `unknown`, with the reason."""
    found = []
    for project in projects:
        try:
            found.append(health_of(await manager.status(project, url), clock.now()))
        except SyncError as error:
            found.append(HookHealth(project, "unknown", clock.now(), None, f"{error.code}: {error.message}"))
    return found


class HealthStore:
    """The last hook health check, in the data directory: every process sharing it reports the same."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / HEALTH

    def save(self, health: list[HookHealth]) -> None:
        write_private_json(self.path, {"webhooks": [h.to_json() for h in health]})

    def load(self) -> list[dict[str, Any]]:
        document = _read_json(self.path)
        items = document.get("webhooks") if isinstance(document, dict) else None
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


async def refresh_health(client: GitLabClient, config: Config, clock: Clock) -> list[HookHealth]:
    """Check every configured project's hook now and store the result (the scheduler's pass calls this)."""
    data_dir = config.gateway.data_dir
    manager = HookManager(client, Manifest(data_dir, config.gitlab.url or ""))
    health = await check_health(manager, config.gitlab.projects, default_hook_url(config), clock)
    HealthStore(data_dir).save(health)
    return health
