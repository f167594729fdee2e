"""The simulated GitLab's project webhooks: the hooks API, real deliveries, and GitLab's auto-disabling.

Modelled on GitLab's doc/api/project_webhooks.md (fields and defaults: `push_events` and
`enable_ssl_verification` on, every other trigger off; the tokens are write-only), doc/api/system_hooks.md
(`token_present`, `signing_token_present` and the `signing_token` attribute, GitLab 19.0+; older versions
ignore the attribute) and doc/user/project/integrations/webhooks.md "Auto-disabled webhooks": 4 failures
in a row disable a hook for 1 minute, doubling up to 24 hours; 40 disable it until someone re-enables it.
Managing hooks needs the Maintainer role; below it GitLab answers 403.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from gateway.simulator.data import JSON, rest_time

# doc/api/project_webhooks.md: every trigger attribute, with the database default GitLab creates it with.
TRIGGERS: dict[str, bool] = {
    "push_events": True, "tag_push_events": False, "issues_events": False, "confidential_issues_events": False,
    "merge_requests_events": False, "note_events": False, "confidential_note_events": False,
    "job_events": False, "pipeline_events": False, "wiki_page_events": False, "deployment_events": False,
    "releases_events": False, "feature_flag_events": False, "resource_access_token_events": False,
}
# X-Gitlab-Event -> the trigger that must be on for a hook to receive it.
EVENT_TRIGGERS = {
    "Push Hook": "push_events", "Tag Push Hook": "tag_push_events", "Issue Hook": "issues_events",
    "Confidential Issue Hook": "confidential_issues_events", "Merge Request Hook": "merge_requests_events",
    "Note Hook": "note_events", "Confidential Note Hook": "confidential_note_events",
}
MAINTAINER = 40  # GitLab's access level of the Maintainer role; Developer is 30
TEMPORARY_AFTER = 4  # failures in a row that disable a hook for a while
PERMANENT_AFTER = 40  # failures in a row that disable it for good
FIRST_BACKOFF = 60.0
MAX_BACKOFF = 86_400.0


@dataclass
class SimHook:
    """One project hook as GitLab stores it (tokens included, which its API never shows)."""

    id: int
    project_id: int
    url: str
    created_ms: int
    triggers: dict[str, bool] = field(default_factory=lambda: dict(TRIGGERS))
    enable_ssl_verification: bool = True
    token: str | None = field(default=None, repr=False)
    signing_token: str | None = field(default=None, repr=False)
    recent_failures: int = 0
    backoff_count: int = 0
    disabled_until: float | None = None

    def alert_status(self, now: float) -> str:
        if self.recent_failures >= PERMANENT_AFTER:
            return "disabled"
        if self.disabled_until is not None and now < self.disabled_until:
            return "temporarily_disabled"
        return "executable"

    def rest(self, now: float, *, signing: bool) -> JSON:
        status = self.alert_status(now)
        until = self.disabled_until if status == "temporarily_disabled" else None
        body: JSON = {
            "id": self.id, "url": self.url, "name": "", "description": "", "project_id": self.project_id,
            **self.triggers, "push_events_branch_filter": "", "branch_filter_strategy": "wildcard",
            "enable_ssl_verification": self.enable_ssl_verification, "repository_update_events": False,
            "alert_status": status, "disabled_until": None if until is None else rest_time(int(until * 1000)),
            "url_variables": [], "created_at": rest_time(self.created_ms), "custom_webhook_template": "",
            "custom_headers": [],
        }
        if signing:
            body.update(token_present=self.token is not None, signing_token_present=self.signing_token is not None)
        return body


@dataclass(frozen=True)
class Delivery:
    """One POST the simulated GitLab made to a hook, and what came of it."""

    hook_id: int
    event: str
    status: int | None  # None: no HTTP answer (refused, timed out)


class _Invalid(ValueError):
    """A request body GitLab would refuse; `args[0]` is GitLab's error document."""


class SimulatedHooks:
    """Project hooks of one simulated GitLab: its REST face, and the deliveries its changes make."""

    def __init__(self, now: Callable[[], float], now_ms: Callable[[], int]) -> None:
        self._now = now
        self._now_ms = now_ms
        self.hooks: dict[int, SimHook] = {}
        self.deliveries: list[Delivery] = []
        self.signing_tokens = False  # GitLab 19.0+ knows `signing_token`
        self.signing_flag = True  # ... and keeps it only with its webhook_signing_token feature flag on
        self.access_level = MAINTAINER  # the token's user's role on every project
        self._next_id = 1

    # -- for tests -----------------------------------------------------------------------------------

    def of_project(self, project_id: int) -> list[SimHook]:
        return [hook for hook in self.hooks.values() if hook.project_id == project_id]

    def disable(self, hook_id: int, *, permanently: bool = False) -> SimHook:
        """Put a hook where GitLab's auto-disabling would after 4 (or 40) failed deliveries in a row."""
        hook = self.hooks[hook_id]
        for _ in range((PERMANENT_AFTER if permanently else TEMPORARY_AFTER) - hook.recent_failures):
            self._failed(hook)
        return hook

    # -- delivery ------------------------------------------------------------------------------------

    async def dispatch(self, webhook: Any, session: aiohttp.ClientSession | None = None) -> list[Delivery]:
        """POST `webhook` (a simulator Webhook) to every executable hook of its project that wants its kind.

        Each outcome counts toward the hook's auto-disabling, as in GitLab; returns what was delivered.
        """
        project_id = _project_of(webhook.payload)
        trigger = EVENT_TRIGGERS.get(webhook.event)
        targets = [h for h in self.of_project(project_id)
                   if trigger is not None and h.triggers.get(trigger) and h.alert_status(self._now()) == "executable"]
        if not targets:
            return []
        if session is None:
            async with aiohttp.ClientSession() as own:
                return [await self._deliver(own, hook, webhook) for hook in targets]
        return [await self._deliver(session, hook, webhook) for hook in targets]

    async def _deliver(self, session: aiohttp.ClientSession, hook: SimHook, webhook: Any) -> Delivery:
        headers = webhook.headers(secret=hook.token, signing_token=hook.signing_token if self.signing_tokens else None,
                                  timestamp=int(self._now()))
        try:
            async with session.post(hook.url, data=webhook.body(), headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=10)) as response:
                await response.read()
                status: int | None = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = None
        if status is not None and 200 <= status < 300:
            hook.recent_failures = hook.backoff_count = 0
            hook.disabled_until = None
        else:
            self._failed(hook)
        delivery = Delivery(hook.id, webhook.event, status)
        self.deliveries.append(delivery)
        return delivery

    def _failed(self, hook: SimHook) -> None:
        hook.recent_failures += 1
        if TEMPORARY_AFTER <= hook.recent_failures < PERMANENT_AFTER:
            hook.backoff_count += 1
            backoff = min(MAX_BACKOFF, FIRST_BACKOFF * 2.0 ** min(hook.backoff_count - 1, 32))
            hook.disabled_until = self._now() + backoff
        elif hook.recent_failures >= PERMANENT_AFTER:
            hook.disabled_until = None

    # -- the REST API --------------------------------------------------------------------------------

    def add_routes(self, app: web.Application, find_project: Callable[[web.Request], Any]) -> None:
        self._find_project = find_project
        base = "/api/v4/projects/{id}/hooks"
        app.router.add_get(base, self._list, name="hooks_list")
        app.router.add_post(base, self._create, name="hooks_create")
        one = base + r"/{hook_id:\d+}"
        app.router.add_get(one, self._get, name="hook")
        app.router.add_put(one, self._edit, name="hook_edit")
        app.router.add_delete(one, self._delete, name="hook_delete")

    async def _list(self, request: web.Request) -> web.Response:
        project, refused = self._authorize(request)
        if refused is not None:
            return refused
        hooks = sorted(self.of_project(project.id), key=lambda h: h.id)
        return web.json_response([self._rest(h) for h in hooks])

    async def _get(self, request: web.Request) -> web.Response:
        hook, refused = self._hook(request)
        return refused if refused is not None else web.json_response(self._rest(hook))

    async def _create(self, request: web.Request) -> web.Response:
        project, refused = self._authorize(request)
        if refused is not None:
            return refused
        try:
            attrs = self._attributes(await _body(request), creating=True)
        except _Invalid as exc:
            return web.json_response(exc.args[0], status=400)
        hook = SimHook(id=self._next_id, project_id=project.id, url=attrs.pop("url"), created_ms=self._now_ms())
        self._next_id += 1
        self._apply(hook, attrs)
        self.hooks[hook.id] = hook
        return web.json_response(self._rest(hook), status=201)

    async def _edit(self, request: web.Request) -> web.Response:
        hook, refused = self._hook(request)
        if refused is not None:
            return refused
        try:
            attrs = self._attributes(await _body(request), creating=False)
        except _Invalid as exc:
            return web.json_response(exc.args[0], status=400)
        if "url" in attrs and attrs["url"] != hook.url and "token" not in attrs:
            hook.token = None  # project_webhooks.md: a new URL resets the secret token
        self._apply(hook, attrs)
        return web.json_response(self._rest(hook))

    async def _delete(self, request: web.Request) -> web.Response:
        hook, refused = self._hook(request)
        if refused is not None:
            return refused
        del self.hooks[hook.id]
        return web.Response(status=204)

    # helpers

    def _rest(self, hook: SimHook) -> JSON:
        return hook.rest(self._now(), signing=self.signing_tokens)

    def _authorize(self, request: web.Request) -> tuple[Any, web.Response | None]:
        project = self._find_project(request)
        if project is None:
            return None, web.json_response({"message": "404 Project Not Found"}, status=404)
        if self.access_level < MAINTAINER:
            return None, web.json_response({"message": "403 Forbidden"}, status=403)
        return project, None

    def _hook(self, request: web.Request) -> tuple[Any, web.Response | None]:
        project, refused = self._authorize(request)
        if refused is not None:
            return None, refused
        hook = self.hooks.get(int(request.match_info["hook_id"]))
        if hook is None or hook.project_id != project.id:
            return None, web.json_response({"message": "404 Not found"}, status=404)
        return hook, None

    def _attributes(self, body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
        url = body.get("url")
        if url is None:
            if creating:
                raise _Invalid({"error": "url is missing"})
        elif not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise _Invalid({"message": {"url": ["is blocked: Only allowed schemes are http, https"]}})
        attrs = {name: _flag(body[name], name) for name in (*TRIGGERS, "enable_ssl_verification") if name in body}
        if url is not None:
            attrs["url"] = url
        if "token" in body:
            attrs["token"] = str(body["token"]) or None
        if "signing_token" in body and self.signing_tokens:
            token = _signing_token(body["signing_token"])
            if self.signing_flag:
                attrs["signing_token"] = token
        return attrs

    def _apply(self, hook: SimHook, attrs: dict[str, Any]) -> None:
        for name, value in attrs.items():
            if name in TRIGGERS:
                hook.triggers[name] = value
            else:
                setattr(hook, name, value)


async def _body(request: web.Request) -> dict[str, Any]:
    """JSON or form parameters, as Grape accepts either."""
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise _Invalid({"error": "body is not valid JSON"}) from None
        if not isinstance(body, dict):
            raise _Invalid({"error": "body is not a JSON object"})
        return body
    return dict(await request.post())


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1"):
        return True
    if str(value).lower() in ("false", "0"):
        return False
    raise _Invalid({"error": f"{name} is invalid"})


def _signing_token(value: Any) -> str:
    """whsec_ and the base64 of a 32-byte key, as GitLab requires."""
    text = str(value)
    try:
        valid = text.startswith("whsec_") and len(base64.b64decode(text[6:], validate=True)) == 32
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise _Invalid({"error": "signing_token must be whsec_ followed by the base64 of 32 bytes"})
    return text


def _project_of(payload: JSON) -> int:
    project = payload.get("project") or {}
    return int(payload.get("project_id") or project.get("id") or 0)


@dataclass
class SimulatedToken:
    """What `GET /personal_access_tokens/self` says of the simulator's token (doc/api/personal_access_tokens.md).

    `expires_at` is a date (YYYY-MM-DD) or None, as GitLab shows it.
    """

    name: str = "lore-gateway"
    scopes: tuple[str, ...] = ("api",)
    expires_at: str | None = None
    created_ms: int = 0

    def rest(self) -> JSON:
        return {
            "id": 42, "name": self.name, "revoked": False, "created_at": rest_time(self.created_ms),
            "description": "", "scopes": list(self.scopes), "user_id": 1, "last_used_at": None, "active": True,
            "expires_at": self.expires_at,
        }

    async def handle(self, request: web.Request) -> web.Response:
        return web.json_response(self.rest())
