"""A simulated GitLab for tests, benchmarks and `lore-gateway demo`.

One module because it is one server: its routes share the in-memory GitLab, the one middleware (latency,
faults, counting) and the webhooks each change returns.

It serves the slice of GitLab's REST API the sync engine reads (projects, issues, MRs, discussions, diffs)
with GitLab's pagination headers, auth, rate-limit headers and error bodies, as the chosen version profile
(gateway/simulator/profiles.py) serves them, and returns a webhook for each
change it is told to make. Latency, faults and counting live in one middleware, so a client sees them as it
would from a real server. Generated data lives in `gateway.simulator.data`, the GraphQL work-item statuses in
`gateway.simulator.graphql`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http
import json
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from gateway.simulator.data import (
    JSON,
    STATE_IDS,
    DataFactory,
    Person,
    Project,
    hook_time,
    hook_users,
    issue_hook_attrs,
    mr_hook_attrs,
    note_hook_attrs,
    parse_time_ms,
    random_sha,
    reformat,
    rest_time,
    ruby_time,
)
from gateway.simulator.graphql import (
    WORK_ITEM_STATUSES,
    GraphQLBatch,
    GraphQLReply,
    WorkItemsGraphQL,
    graphql_without_work_items,
)
from gateway.simulator.hooks import SimulatedHooks, SimulatedToken
from gateway.simulator.profiles import DEFAULT_PROFILE, PROFILES, VersionProfile, profile_named
from sync import Clock, SystemClock

__all__ = ["DEFAULT_PROFILE", "GITLAB_VERSION", "PROFILES", "GitLabSimulator", "GraphQLBatch", "Project",
           "VersionProfile", "Webhook", "WorkItemsGraphQL", "sign_webhook"]

GITLAB_VERSION = "18.5.0"
MAX_COUNT = 10_000  # above this many rows GitLab stops counting: no x-total, x-total-pages, rel="last"
ISSUE_STATES = ("opened", "closed")
MR_STATES = ("opened", "closed", "merged", "locked")
ISSUE_FIELDS = frozenset({"title", "description", "state", "labels", "assignees", "confidential",
                          "discussion_locked"})
MR_FIELDS = frozenset({"title", "description", "state", "labels", "assignees", "reviewers", "draft",
                       "discussion_locked", "target_branch"})
_MR_SIMPLE_FIELDS = ("id", "iid", "project_id", "title", "description", "state", "created_at", "updated_at",
                     "web_url")
NEW_ISSUE_FIELDS = frozenset({"title", "description", "labels", "assignees", "confidential", "author"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# GitLab's ThrottledTouch::TOUCH_INTERVAL (app/models/concerns/throttled_touch.rb): a note touches its
# issue or MR only when updated_at is more than this old, so notes within a minute leave it unchanged.
TOUCH_INTERVAL = 60.0


# -- webhooks --------------------------------------------------------------------------------------

def sign_webhook(signing_token: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks signature (base64, without the `v1,` prefix) of `{id}.{timestamp}.{body}`.

    Raises ValueError if the token is not `whsec_<base64>`.
    """
    if not signing_token.startswith("whsec_"):
        raise ValueError("signing token must start with 'whsec_'")
    key = base64.b64decode(signing_token.removeprefix("whsec_"), validate=True)
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


@dataclass(frozen=True)
class Webhook:
    """One event as GitLab would POST it. The body is serialised once, so a signature always matches it."""

    event: str
    payload: JSON
    idempotency_key: str = field(default_factory=lambda: str(uuid.uuid4()))
    # GitLab's recursion-detection id: shared by a chain of hooks, so deliberately not a dedupe key.
    event_uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    instance: str = "http://gitlab.sim"
    user_agent: str = f"GitLab/{GITLAB_VERSION}"
    send_idempotency_key: bool = True  # GitLab before 17.4 sends none

    @cached_property
    def _body(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()

    def body(self) -> bytes:
        """The exact bytes sent; mutate `payload` before the first call, not after."""
        return self._body

    def headers(self, *, secret: str | None = None, signing_token: str | None = None,
                timestamp: int | None = None) -> dict[str, str]:
        """Request headers; `timestamp` (Unix seconds) defaults to real time: GitLab signs at send time."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self.user_agent,
            "X-Gitlab-Event": self.event,
            "X-Gitlab-Instance": self.instance,
            "X-Gitlab-Webhook-UUID": str(uuid.uuid4()),
            "X-Gitlab-Event-UUID": self.event_uuid,
        }
        if self.send_idempotency_key:
            headers["Idempotency-Key"] = self.idempotency_key
        if secret is not None:
            headers["X-Gitlab-Token"] = secret
        if signing_token is not None:
            ts = int(time.time()) if timestamp is None else timestamp
            signature = sign_webhook(signing_token, self.idempotency_key, ts, self.body())
            headers.update({"webhook-id": self.idempotency_key, "webhook-timestamp": str(ts),
                            "webhook-signature": f"v1,{signature}"})
        return headers


# -- faults ----------------------------------------------------------------------------------------

@dataclass
class _Fault:
    status: int
    path_contains: str
    remaining: int
    skip: int
    retry_after: int | None

    def response(self) -> web.Response:
        headers = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        if self.status == 429:
            # GitLab's throttle answers in plain text and always says when to come back.
            headers.setdefault("Retry-After", "1")
            return web.Response(status=429, text="Retry later", headers=headers)
        return web.json_response({"message": _status_line(self.status)}, status=self.status, headers=headers)


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


class _BadParam(ValueError):
    """A query parameter GitLab would reject with 400 {"error": "<name> is invalid"}."""


# -- list queries ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ListQuery:
    """The filters and order of GET /projects/:id/issues or /merge_requests, parsed once."""

    states: tuple[str, ...]
    order_by: str
    descending: bool
    bounds: tuple[tuple[str, str, bool], ...]  # (field, formatted limit, is_lower_bound)
    labels: tuple[str, ...] | None
    iids: frozenset[int] | None
    author: str | None

    @classmethod
    def parse(cls, query: Mapping[str, str], iids: list[str], valid_states: tuple[str, ...]) -> _ListQuery:
        state = query.get("state", "all")
        if state != "all" and state not in valid_states:
            raise _BadParam("state does not have a valid value")
        order_by = query.get("order_by", "created_at")
        if order_by not in ("created_at", "updated_at"):
            raise _BadParam("order_by does not have a valid value")
        sort = query.get("sort", "desc")
        if sort not in ("asc", "desc"):
            raise _BadParam("sort does not have a valid value")
        labels = query.get("labels")
        return cls(
            states=valid_states if state == "all" else (state,), order_by=order_by, descending=sort == "desc",
            bounds=_time_bounds(query),
            labels=None if labels is None else tuple(x.strip() for x in labels.split(",") if x.strip()),
            iids=frozenset(_int_param("iids[]", v) for v in iids) if iids else None,
            author=query.get("author_username"),
        )

    def matches(self, item: JSON) -> bool:
        if item["state"] not in self.states or (self.iids is not None and item["iid"] not in self.iids):
            return False
        if self.author is not None and item["author"]["username"] != self.author:
            return False
        for name, limit, lower in self.bounds:
            if (item[name] < limit) if lower else (item[name] > limit):
                return False
        return self.labels is None or _labels_match(item["labels"], self.labels)

    def sort_key(self, item: JSON) -> tuple[str, int]:
        return item[self.order_by], item["id"]


def _time_bounds(query: Mapping[str, str]) -> tuple[tuple[str, str, bool], ...]:
    """GitLab's `*_after`/`*_before` are inclusive ("on or after"); stored strings compare like times."""
    bounds = []
    for name in ("updated_after", "updated_before", "created_after", "created_before"):
        if name in query:
            lower = name.endswith("_after")
            try:
                ms = parse_time_ms(query[name], ceil=lower)
            except ValueError:
                raise _BadParam(f"{name} is invalid") from None
            bounds.append((name.rsplit("_", 1)[0] + "_at", rest_time(ms), lower))
    return tuple(bounds)


def _labels_match(have: list[str], wanted: tuple[str, ...]) -> bool:
    if wanted in (("None",), ("none",)):
        return not have
    if wanted in (("Any",), ("any",)):
        return bool(have)
    return all(label in have for label in wanted)


def _int_param(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _BadParam(f"{name} is invalid") from None


# -- the simulator ---------------------------------------------------------------------------------

class GitLabSimulator:
    """A GitLab with seeded data, webhook-returning mutations, injectable faults and request counters."""

    def __init__(self, *, token: str = "sim-token", clock: Clock | None = None, seed: int = 1,
                 latency: float = 0.0, base_url: str = "http://gitlab.sim",
                 touch_interval: float = TOUCH_INTERVAL, gitlab_version: str = DEFAULT_PROFILE) -> None:
        """`touch_interval`: GitLab's throttled touch of a note's parent (0 = every note moves updated_at).
        `gitlab_version` names a profile of gateway.simulator.profiles (ValueError for an unknown one)."""
        self.profile: VersionProfile = profile_named(gitlab_version)
        self.token = token
        self.touch_interval = touch_interval
        self._vanishing: set[tuple[int, str, int]] = set()
        self.latency = latency
        self.base_url = base_url.rstrip("/")
        self.projects: dict[int, Project] = {}
        self.requests: Counter[str] = Counter()
        self.request_log: list[tuple[str, str]] = []
        self.ratelimit_remaining: int | None = None
        self.ratelimit_limit = 2000
        # Authenticated API requests a minute before a 429, in fixed clock-minute windows as Rack::Attack
        # counts them; None: unthrottled (self-managed GitLab's default).
        self.throttle: int | None = self.profile.default_throttle
        self._window: tuple[int, int] = (0, 0)  # (minute, requests counted in it)
        # Answers POST /api/graphql; the default is a GitLab without work items (an `errors` array, HTTP 200).
        self.graphql_handler: Callable[[JSON], GraphQLReply] = graphql_without_work_items
        self.work_items: WorkItemsGraphQL | None = None
        self._clock: Clock = clock or SystemClock()
        self._rng = random.Random(seed)
        self._data = DataFactory(seed, self.base_url)
        self._faults: list[_Fault] = []
        self._heads: dict[int, str] = {}
        self._last_ms = 0
        # Project webhooks (`await sim.hooks.dispatch(webhook)` delivers a change to them) and the token's self.
        self.hooks = SimulatedHooks(self._clock.now, self._now_ms)
        self.personal_token = SimulatedToken(created_ms=self._now_ms() - 30 * 86_400_000)

    # -- data --------------------------------------------------------------------------------------

    def add_project(self, path: str, *, issues: int = 0, merge_requests: int = 0, notes_per_item: int = 0,
                    files_per_mr: int = 3) -> Project:
        """A new project (ids 1001, 1002, ...) filled with seed-determined items from the last 90 days."""
        now_ms = self._now_ms()
        project_id = 1001 + len(self.projects)
        created = rest_time(now_ms - 400 * 86_400_000)
        project = Project(id=project_id, path=path, web_url=f"{self.base_url}/{path}", created_at=created,
                          last_activity_at=created)
        newest = self._data.populate(project, issues=issues, merge_requests=merge_requests,
                                     notes_per_item=notes_per_item, files_per_mr=files_per_mr, now_ms=now_ms)
        if newest:
            project.last_activity_at = rest_time(newest)
        self._last_ms = max(self._last_ms, newest)
        self.projects[project_id] = project
        return project

    # -- mutations ---------------------------------------------------------------------------------

    def update_issue(self, project_id: int, iid: int, *, actor: str | None = None, **fields: Any) -> Webhook:
        """Change an issue (title, description, state opened|closed, labels, assignees as usernames, ...)."""
        project = self._project(project_id)
        issue = _item(project.issues, iid, "issue")
        _check_fields("update_issue", fields, ISSUE_FIELDS, ISSUE_STATES)
        now, user = self._tick(), self._actor(actor)
        before = dict(issue)
        self._apply_fields(issue, fields)
        action = self._apply_state(issue, fields.get("state"), now, user)
        self._touch(project, issue, now)
        changes = _changes(self._data, project, before, issue, user)
        return self._issue_hook(project, issue, action, user, changes)

    def update_merge_request(self, project_id: int, iid: int, *, actor: str | None = None,
                             **fields: Any) -> Webhook:
        """Change an MR (title, description, state opened|closed|merged|locked, labels, reviewers...)."""
        project = self._project(project_id)
        mr = _item(project.merge_requests, iid, "merge request")
        _check_fields("update_merge_request", fields, MR_FIELDS, MR_STATES)
        now, user = self._tick(), self._actor(actor)
        before = dict(mr)
        self._apply_fields(mr, fields)
        if "draft" in fields:
            mr["work_in_progress"] = mr["draft"]
        action = self._apply_state(mr, fields.get("state"), now, user)
        self._touch(project, mr, now)
        changes = _changes(self._data, project, before, mr, user)
        return self._mr_hook(project, mr, action, user, changes)

    def add_issue(self, project_id: int, **fields: Any) -> Webhook:
        """Open a new issue with the next iid; fields as update_issue, plus `author` (a username)."""
        project = self._project(project_id)
        _check_fields("add_issue", fields, NEW_ISSUE_FIELDS, ISSUE_STATES)
        now = self._tick()
        author = fields.get("author") or self._rng.choice(sorted(self._data.people))
        iid = max(project.issues, default=0) + 1
        issue = self._data.issue(
            project, iid, title=fields.get("title", f"New issue {iid}"),
            description=fields.get("description", ""), author=author, created_ms=now, updated_ms=now,
            labels=fields.get("labels"), assignees=fields.get("assignees"),
            confidential=fields.get("confidential", False),
        )
        project.issues[iid] = issue
        project.discussions[("issue", iid)] = []
        project.last_activity_at = issue["updated_at"]
        created = {"id": issue["id"], "iid": iid, "title": issue["title"], "author_id": issue["author"]["id"],
                   "created_at": ruby_time(now), "updated_at": ruby_time(now)}
        changes = {name: {"previous": None, "current": value} for name, value in created.items()}
        return self._issue_hook(project, issue, "open", self._data.person(author), changes)

    def add_note(self, project_id: int, kind: str, iid: int, body: str, *,
                 author: str | None = None) -> Webhook:
        """A new comment (its own discussion) on an issue or MR; the parent's updated_at moves too."""
        project = self._project(project_id)
        if kind not in ("issue", "merge_request"):
            raise ValueError(f"kind must be 'issue' or 'merge_request', not {kind!r}")
        items = project.issues if kind == "issue" else project.merge_requests
        parent = _item(items, iid, kind.replace("_", " "))
        now = self._tick()
        user = self._actor(author)
        note = self._data.note(project, parent, kind, body=body, author=user.username, at_ms=now)
        discussion_id = random_sha(self._rng)
        project.discussions.setdefault((kind, iid), []).append(
            {"id": discussion_id, "individual_note": True, "notes": [note]})
        parent["user_notes_count"] += 1
        self._throttled_touch(project, parent, now)
        return self._note_hook(project, kind, parent, note, discussion_id, user)

    def edit_note(self, project_id: int, kind: str, iid: int, note_id: int, body: str) -> Webhook:
        """Edit a comment: its updated_at moves, its parent's only by the throttled touch (Note Hook, 16.11+)."""
        project, parent, discussion, note = self._find_note(project_id, kind, iid, note_id)
        now = self._tick()
        note.update(body=body, updated_at=rest_time(now))
        self._throttled_touch(project, parent, now)
        user = self._data.person(note["author"]["username"])
        return self._note_hook(project, kind, parent, note, discussion["id"], user)

    def delete_note(self, project_id: int, kind: str, iid: int, note_id: int) -> None:
        """Delete a comment. GitLab sends no webhook for it; the parent gets the throttled touch."""
        project, parent, discussion, note = self._find_note(project_id, kind, iid, note_id)
        discussion["notes"].remove(note)
        if not discussion["notes"]:
            project.discussions[(kind, iid)].remove(discussion)
        if not note["system"]:
            parent["user_notes_count"] -= 1
        self._throttled_touch(project, parent, self._tick())

    def delete_issue(self, project_id: int, iid: int) -> None:
        """Delete an issue with its notes. GitLab sends no webhook when an issue is deleted."""
        project = self._project(project_id)
        _item(project.issues, iid, "issue")
        self._remove(project, "issue", iid)

    def delete_merge_request(self, project_id: int, iid: int) -> None:
        """Delete an MR with its notes and diffs. GitLab sends no webhook when an MR is deleted."""
        project = self._project(project_id)
        _item(project.merge_requests, iid, "merge request")
        self._remove(project, "merge_request", iid)

    def vanish_after_listing(self, project_id: int, kind: str, iid: int) -> None:
        """The item stays in list pages until something asks for it, its discussions or its diffs by iid:
        that request, and every later one, answers 404 (deleted, moved or hidden between list and fetch)."""
        project = self._project(project_id)
        _item(project.issues if kind == "issue" else project.merge_requests, iid, kind.replace("_", " "))
        self._vanishing.add((project_id, kind, iid))

    def push_event(self, project_id: int, *, message: str = "Update README.md\n") -> Webhook:
        """A push of one commit to `main` (no item changes); a `message` that mentions an issue or MR
        (`Fixes #3`) is what makes the gateway look at the project (docs/webhooks.md)."""
        project = self._project(project_id)
        now = self._tick()
        user = self._actor(None)
        before = self._heads.get(project_id, "0" * 40)
        after = self._heads[project_id] = random_sha(self._rng)
        project.last_activity_at = rest_time(now)
        commit = {
            "id": after, "message": message, "title": message.partition("\n")[0],
            "timestamp": hook_time(now), "url": f"{project.web_url}/-/commit/{after}",
            "author": {"name": user.name, "email": "[REDACTED]"},
            "added": [], "modified": ["README.md"], "removed": [],
        }
        payload = {
            "object_kind": "push", "event_name": "push", "before": before, "after": after,
            "ref": "refs/heads/main", "ref_protected": True, "checkout_sha": after, "message": None,
            "user_id": user.id, "user_name": user.name, "user_username": user.username,
            "user_email": "[REDACTED]", "user_avatar": user.hook()["avatar_url"], "project_id": project.id,
            "project": project.hook(), "commits": [commit], "total_commits_count": 1,
            "push_options": {}, "repository": _push_repository(project),
        }
        return self._webhook("Push Hook", payload)

    # -- work items (GraphQL) ----------------------------------------------------------------------

    def enable_work_items(self, **options: Any) -> WorkItemsGraphQL:
        """Answer GraphQL like a Premium GitLab with work items; options as WorkItemsGraphQL.

        The status widget and its `category` are the profile's unless `options` say otherwise.
        """
        options.setdefault("status_widget", self.profile.status_widget)
        options.setdefault("category", self.profile.status_category)
        self.work_items = WorkItemsGraphQL(self, **options)
        self.graphql_handler = self.work_items
        return self.work_items

    def set_work_item_status(self, project_id: int, iid: int, name: str | None, *,
                             actor: str | None = None) -> Webhook:
        """Change an issue's status (a name from WORK_ITEM_STATUSES, or None); like GitLab, it touches the issue."""
        if self.work_items is None:
            raise RuntimeError("call enable_work_items() first")
        if name is not None and name not in WORK_ITEM_STATUSES:
            raise ValueError(f"unknown status {name!r}; known: {sorted(WORK_ITEM_STATUSES)}")
        project = self._project(project_id)
        issue = _item(project.issues, iid, "issue")
        now, user = self._tick(), self._actor(actor)
        before = dict(issue)
        self.work_items.statuses[(project_id, iid)] = name
        self._touch(project, issue, now)
        return self._issue_hook(project, issue, "update", user, _changes(self._data, project, before, issue, user))

    # -- faults and observation --------------------------------------------------------------------

    def inject_fault(self, status: int, *, path_contains: str = "", times: int = 1,
                     retry_after: int | None = None, after: int = 0) -> None:
        """Answer `status` to the next `times` API requests whose raw path contains `path_contains`,
        after letting `after` of them through. 429 always carries Retry-After (default 1 s)."""
        self._faults.append(_Fault(status, path_contains, times, after, retry_after))

    @property
    def request_count(self) -> int:
        return len(self.request_log)

    def reset_counters(self) -> None:
        self.requests.clear()
        self.request_log.clear()

    # -- webhook delivery --------------------------------------------------------------------------

    async def deliver(self, webhook: Webhook, url: str, *, secret: str | None = None,
                      signing_token: str | None = None, session: aiohttp.ClientSession | None = None) -> int:
        """POST the webhook as GitLab would (10 s timeout, signed at the simulator clock's time).

        Returns the response status; connection errors and timeouts propagate (GitLab: a failed delivery).
        """
        now = int(self._clock.now())
        headers = webhook.headers(secret=secret, signing_token=signing_token, timestamp=now)
        if session is not None:
            return await _post(session, url, webhook.body(), headers)
        async with aiohttp.ClientSession() as own:
            return await _post(own, url, webhook.body(), headers)

    # -- HTTP face ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The REST API under /api/v4 and GraphQL at /api/graphql."""
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._around(request, handler)

        app = web.Application(middlewares=[middleware])
        p = "/api/v4/projects/{id}"
        routes = (
            ("project", p, self._get_project),
            ("issues_list", p + "/issues", self._list_issues),
            ("issue", p + r"/issues/{iid:\d+}", self._get_issue),
            ("issue_discussions", p + r"/issues/{iid:\d+}/discussions", self._issue_discussions),
            ("mrs_list", p + "/merge_requests", self._list_mrs),
            ("mr", p + r"/merge_requests/{iid:\d+}", self._get_mr),
            ("mr_discussions", p + r"/merge_requests/{iid:\d+}/discussions", self._mr_discussions),
            ("mr_changes", p + r"/merge_requests/{iid:\d+}/changes", self._mr_changes),
            ("version", "/api/v4/version", self._metadata),
            ("metadata", "/api/v4/metadata", self._metadata),
        )
        if self.profile.mr_diffs:  # before 15.7 the route does not exist: Grape's bare 404
            routes += (("mr_diffs", p + r"/merge_requests/{iid:\d+}/diffs", self._mr_diffs),)
        for name, path, handler in routes:
            app.router.add_get(path, handler, name=name)
        app.router.add_post("/api/graphql", self._graphql, name="graphql")
        self.hooks.add_routes(app, self._find_project)
        app.router.add_get("/api/v4/personal_access_tokens/self", self.personal_token.handle, name="pat_self")
        app.router.add_route("*", "/api/{tail:.*}", self._unknown_route, name="unknown")
        return app

    async def _around(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count, delay, fault, authenticate, then handle: the order a client would observe them in."""
        if not request.path.startswith("/api/"):
            return await handler(request)
        self.requests[request.match_info.route.name or "unknown"] += 1
        self.request_log.append((request.method, request.raw_path))
        if self.latency > 0:
            # Real sleep, not the clock: HTTP tests run on the real event loop's time.
            await asyncio.sleep(self.latency)
        response = (self._take_fault(request.raw_path) or self._reject_token(request) or self._throttled()
                    or await handler(request))
        self._add_ratelimit_headers(response)
        return response

    def _throttled(self) -> web.Response | None:
        """Rack::Attack's authenticated API throttle: a 429 once this clock minute's requests exceed it."""
        if self.throttle is None:
            return None
        minute = int(self._clock.now() // 60)
        counted = self._window[1] + 1 if self._window[0] == minute else 1
        self._window = (minute, counted)
        if counted <= self.throttle:
            return None
        retry_after = max(1, (minute + 1) * 60 - math.ceil(self._clock.now()))
        return web.Response(status=429, text="Retry later", headers={"Retry-After": str(retry_after)})

    def _take_fault(self, raw_path: str) -> web.Response | None:
        response = None
        for fault in self._faults:
            if fault.path_contains not in raw_path:
                continue
            if fault.skip > 0:
                fault.skip -= 1
                continue
            fault.remaining -= 1
            response = fault.response()
            break
        self._faults = [f for f in self._faults if f.remaining > 0]
        return response

    def _reject_token(self, request: web.Request) -> web.Response | None:
        given = request.headers.get("PRIVATE-TOKEN")
        auth = request.headers.get("Authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        return web.json_response({"message": "401 Unauthorized"}, status=401)

    def _add_ratelimit_headers(self, response: web.StreamResponse) -> None:
        """RateLimit-* as GitLab sends them: on every answer from gitlab.com (or once `ratelimit_remaining`
        is set), and from self-managed GitLab only on the 429 its throttle answers with.

        With `ratelimit_remaining` set the headers count down from it and never enforce anything (inject a
        429 fault for that); otherwise they describe the `throttle` window.
        """
        reset = (int(self._clock.now()) // 60 + 1) * 60
        if self.ratelimit_remaining is not None:
            self.ratelimit_remaining = max(0, self.ratelimit_remaining - 1)
            limit, remaining = self.ratelimit_limit, self.ratelimit_remaining
            observed = max(0, limit - remaining)
        elif response.status == 429 or self.profile.ratelimit_headers == "always":
            limit = self.throttle if self.throttle is not None else self.ratelimit_limit
            observed = self._window[1] if self._window[0] == int(self._clock.now() // 60) else 0
            remaining = 0 if response.status == 429 else max(0, limit - observed)
        else:
            return
        response.headers.update({
            "RateLimit-Name": "throttle_authenticated_api",
            "RateLimit-Limit": str(limit),
            "RateLimit-Observed": str(observed),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset),  # a Unix time, as GitLab sends it
            "RateLimit-ResetTime": formatdate(reset, usegmt=True),
        })

    # handlers

    async def _get_project(self, request: web.Request) -> web.Response:
        project = self._find_project(request)
        return _not_found("Project") if project is None else web.json_response(project.rest())

    async def _list_issues(self, request: web.Request) -> web.Response:
        project = self._find_project(request)
        if project is None:
            return _not_found("Project")
        return self._list_items(request, project.issues, ISSUE_STATES)

    async def _list_mrs(self, request: web.Request) -> web.Response:
        project = self._find_project(request)
        if project is None:
            return _not_found("Project")
        return self._list_items(request, project.merge_requests, MR_STATES)

    async def _get_issue(self, request: web.Request) -> web.Response:
        project, item = self._find_item(request, "issue")
        if item is None:
            return _not_found("Project" if project is None else "Issue")
        return web.json_response({**item, "subscribed": False})

    async def _get_mr(self, request: web.Request) -> web.Response:
        project, item = self._find_item(request, "merge_request")
        if project is None or item is None:
            return _not_found("Project" if project is None else "Merge Request")
        return web.json_response(_mr_detail(project, item))

    async def _issue_discussions(self, request: web.Request) -> web.Response:
        return self._discussions(request, "issue", "Issue")

    async def _mr_discussions(self, request: web.Request) -> web.Response:
        return self._discussions(request, "merge_request", "Merge Request")

    async def _mr_diffs(self, request: web.Request) -> web.Response:
        project, item = self._find_item(request, "merge_request")
        if project is None or item is None:
            return _not_found("Project" if project is None else "Merge Request")
        return self._paginated(request, project.diffs.get(item["iid"], []))

    async def _mr_changes(self, request: web.Request) -> web.Response:
        """The MR with its files under `changes`, unpaginated (api/merge_requests.md, deprecated in 15.7)."""
        project, item = self._find_item(request, "merge_request")
        if project is None or item is None:
            return _not_found("Project" if project is None else "Merge Request")
        # /changes entries predate `generated_file` (added to /diffs in 16.9).
        changes = [{k: v for k, v in d.items() if k != "generated_file"} for d in project.diffs.get(item["iid"], [])]
        return web.json_response({**_mr_detail(project, item), "changes": changes, "overflow": False})

    async def _metadata(self, request: web.Request) -> web.Response:
        return web.json_response(self.profile.metadata())

    async def _graphql(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"errors": [{"message": "Invalid JSON"}]}, status=400)
        if len(str(body.get("query", ""))) > 10_000:
            return web.json_response({"errors": [{"message": "Query too large"}]}, status=422)
        reply = self.graphql_handler(body)
        status, document = reply if isinstance(reply, tuple) else (200, reply)
        return web.json_response(document, status=status)

    async def _unknown_route(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "404 Not Found"}, status=404)

    # handler helpers

    def _find_project(self, request: web.Request) -> Project | None:
        """By numeric id or by full path (aiohttp has already decoded `group%2Fproject`)."""
        ref = request.match_info["id"]
        if ref.isdigit():
            return self.projects.get(int(ref))
        return next((p for p in self.projects.values() if p.path.lower() == ref.lower()), None)

    def _find_item(self, request: web.Request, kind: str) -> tuple[Project | None, JSON | None]:
        project = self._find_project(request)
        if project is None:
            return None, None
        items = project.issues if kind == "issue" else project.merge_requests
        iid = int(request.match_info["iid"])
        if (project.id, kind, iid) in self._vanishing:
            self._remove(project, kind, iid)
        return project, items.get(iid)

    def _discussions(self, request: web.Request, kind: str, label: str) -> web.Response:
        project, item = self._find_item(request, kind)
        if project is None or item is None:
            return _not_found("Project" if project is None else label)
        return self._paginated(request, project.discussions.get((kind, item["iid"]), []))

    def _list_items(self, request: web.Request, items: dict[int, JSON],
                    states: tuple[str, ...]) -> web.Response:
        try:
            query = _ListQuery.parse(request.query, request.query.getall("iids[]", []), states)
        except _BadParam as exc:
            return web.json_response({"error": str(exc)}, status=400)
        rows = sorted((i for i in items.values() if query.matches(i)), key=query.sort_key,
                      reverse=query.descending)
        if states == MR_STATES and request.query.get("view") == "simple":
            # GitLab's MergeRequestSimple entity (api/merge_requests.md: `view=simple`).
            rows = [{k: r[k] for k in _MR_SIMPLE_FIELDS} for r in rows]
        return self._paginated(request, rows)

    def _paginated(self, request: web.Request, rows: list[JSON]) -> web.Response:
        """One page of rows with GitLab's offset-pagination headers (counts omitted above 10,000 rows)."""
        try:
            page = max(1, _int_param("page", request.query.get("page", "1")))
            per_page = _int_param("per_page", request.query.get("per_page", "20"))
        except _BadParam as exc:
            return web.json_response({"error": str(exc)}, status=400)
        per_page = 20 if per_page < 1 else min(per_page, 100)
        start = (page - 1) * per_page
        chunk = rows[start:start + per_page]
        counted = len(rows) <= MAX_COUNT
        total_pages = max(1, math.ceil(len(rows) / per_page))
        has_next = start + per_page < len(rows)
        has_prev = page > 1 and (page <= total_pages if counted else bool(chunk))
        headers = {
            "x-page": str(page), "x-per-page": str(per_page),
            "x-next-page": str(page + 1) if has_next else "",
            "x-prev-page": str(page - 1) if has_prev else "",
        }
        links = []
        if has_prev:
            links.append(f'<{_page_url(request, page - 1, per_page)}>; rel="prev"')
        if has_next:
            links.append(f'<{_page_url(request, page + 1, per_page)}>; rel="next"')
        links.append(f'<{_page_url(request, 1, per_page)}>; rel="first"')
        if counted:
            links.append(f'<{_page_url(request, total_pages, per_page)}>; rel="last"')
            headers.update({"x-total": str(len(rows)), "x-total-pages": str(total_pages)})
        headers["Link"] = ", ".join(links)
        return web.json_response(chunk, headers=headers)

    # -- mutation helpers --------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock.now() * 1000)

    def _tick(self) -> int:
        """A strictly increasing "now" in ms, so every change sorts after the one before it."""
        self._last_ms = max(self._now_ms(), self._last_ms + 1)
        return self._last_ms

    def _actor(self, username: str | None) -> Person:
        return self._data.person(username or self._rng.choice(sorted(self._data.people)))

    def _project(self, project_id: int) -> Project:
        if project_id not in self.projects:
            raise KeyError(f"no simulated project {project_id}")
        return self.projects[project_id]

    def _apply_fields(self, item: JSON, fields: Mapping[str, Any]) -> None:
        for name, value in fields.items():
            if name in ("assignees", "reviewers"):
                item[name] = [self._data.user_rest(u) for u in value]
                if name == "assignees":
                    item["assignee"] = item[name][0] if item[name] else None
            elif name == "labels":
                item[name] = sorted(value)
            elif name != "state":
                item[name] = value

    def _apply_state(self, item: JSON, state: str | None, now: int, user: Person) -> str:
        """Move to `state` with the side fields GitLab sets; returns the hook action."""
        if state is None or state == item["state"]:
            return "update"
        previous, item["state"] = item["state"], state
        user_json = self._data.user_rest(user.username)
        if state == "closed":
            item["closed_at"], item["closed_by"] = rest_time(now), user_json
            return "close"
        if state == "merged":
            item.update(merged_at=rest_time(now), merged_by=user_json, merge_user=user_json,
                        merge_commit_sha=random_sha(self._rng), detailed_merge_status="not_open")
            return "merge"
        if state == "opened":
            item["closed_at"], item["closed_by"] = None, None
            if "detailed_merge_status" in item:
                item["detailed_merge_status"] = "mergeable"
            return "reopen" if previous == "closed" else "update"
        return "update"

    def _touch(self, project: Project, item: JSON, now: int) -> None:
        item["updated_at"] = rest_time(now)
        project.last_activity_at = item["updated_at"]

    def _throttled_touch(self, project: Project, item: JSON, now: int) -> None:
        """GitLab's ThrottledTouch: `super if (Time.zone.now - updated_at) > TOUCH_INTERVAL`."""
        if now - parse_time_ms(item["updated_at"]) > self.touch_interval * 1000:
            self._touch(project, item, now)

    def _find_note(self, project_id: int, kind: str, iid: int, note_id: int) -> tuple[Project, JSON, JSON, JSON]:
        project = self._project(project_id)
        parent = _item(project.issues if kind == "issue" else project.merge_requests, iid, kind.replace("_", " "))
        for discussion in project.discussions.get((kind, iid), []):
            for note in discussion["notes"]:
                if note["id"] == note_id:
                    return project, parent, discussion, note
        raise KeyError(f"no note {note_id} on {kind} {iid}")

    def _remove(self, project: Project, kind: str, iid: int) -> None:
        (project.issues if kind == "issue" else project.merge_requests).pop(iid, None)
        project.discussions.pop((kind, iid), None)
        if kind == "merge_request":
            project.diffs.pop(iid, None)
            project.diff_refs.pop(iid, None)
        self._vanishing.discard((project.id, kind, iid))

    def _webhook(self, event: str, payload: JSON) -> Webhook:
        return Webhook(event=event, payload=payload, instance=self.base_url, user_agent=self.profile.user_agent,
                       send_idempotency_key=self.profile.idempotency_key)

    def _issue_hook(self, project: Project, issue: JSON, action: str, user: Person, changes: JSON) -> Webhook:
        attrs = {**issue_hook_attrs(self._data, project, issue, hook_time), "action": action,
                 "updated_by_id": user.id}
        confidential = issue["confidential"]
        payload = {
            "object_kind": "issue", "event_type": "confidential_issue" if confidential else "issue",
            "user": user.hook(), "project": project.hook(), "object_attributes": attrs,
            "labels": attrs["labels"], "changes": changes, "repository": project.repository(),
        }
        _add_people(payload, issue, ("assignees",))
        return self._webhook("Confidential Issue Hook" if confidential else "Issue Hook", payload)

    def _mr_hook(self, project: Project, mr: JSON, action: str, user: Person, changes: JSON) -> Webhook:
        attrs = {**mr_hook_attrs(self._data, project, mr, hook_time), "action": action,
                 "updated_by_id": user.id}
        payload = {
            "object_kind": "merge_request", "event_type": "merge_request", "user": user.hook(),
            "project": project.hook(), "object_attributes": attrs, "labels": attrs["labels"],
            "changes": changes, "repository": project.repository(),
        }
        _add_people(payload, mr, ("assignees", "reviewers"))
        return self._webhook("Merge Request Hook", payload)

    def _note_hook(self, project: Project, kind: str, parent: JSON, note: JSON, discussion_id: str,
                   user: Person) -> Webhook:
        confidential = bool(parent.get("confidential"))
        build = issue_hook_attrs if kind == "issue" else mr_hook_attrs
        payload = {
            "object_kind": "note", "event_type": "confidential_note" if confidential else "note",
            "user": user.hook(), "project_id": project.id, "project": project.hook(),
            "object_attributes": note_hook_attrs(project, note, discussion_id, parent["web_url"]),
            "repository": project.repository(), kind: build(self._data, project, parent, ruby_time),
        }
        return self._webhook("Confidential Note Hook" if confidential else "Note Hook", payload)


# -- module helpers --------------------------------------------------------------------------------

def _add_people(payload: JSON, item: JSON, roles: tuple[str, ...]) -> None:
    """`assignees` and `reviewers` go in only when there are some, as GitLab's IssuableBuilder does."""
    for role in roles:
        if item[role]:
            payload[role] = hook_users(item[role])


def _push_repository(project: Project) -> JSON:
    """A push carries more of the repository than an issue hook (GitLab's PushDataBuilder)."""
    hook = project.hook()
    return {**project.repository(), "git_http_url": hook["git_http_url"], "git_ssh_url": hook["git_ssh_url"],
            "visibility_level": hook["visibility_level"]}


def _item(items: dict[int, JSON], iid: int, what: str) -> JSON:
    if iid not in items:
        raise KeyError(f"no {what} with iid {iid}")
    return items[iid]


def _check_fields(method: str, fields: Mapping[str, Any], allowed: frozenset[str],
                  states: tuple[str, ...]) -> None:
    """Reject a bad call before anything changes, so a failed mutation leaves no half-applied item."""
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise TypeError(f"{method}() got unsupported fields {unknown}; allowed: {sorted(allowed)}")
    if fields.get("state", states[0]) not in states:
        raise ValueError(f"{method}(): state must be one of {states}, not {fields['state']!r}")


def _changes(factory: DataFactory, project: Project, before: JSON, after: JSON, user: Person) -> JSON:
    """The `changes` object of an Issue/MR hook: previous/current of each field that moved, GitLab-shaped."""
    changes: JSON = {"updated_by_id": {"previous": None, "current": user.id}}
    for name in ("title", "description", "confidential", "discussion_locked", "draft", "target_branch"):
        if name in after and before.get(name) != after[name]:
            changes[name] = {"previous": before.get(name), "current": after[name]}
    for name in ("assignees", "reviewers"):
        if name in after and before.get(name) != after[name]:
            changes[name] = {"previous": hook_users(before[name]), "current": hook_users(after[name])}
    if before["labels"] != after["labels"]:
        changes["labels"] = {"previous": [factory.label_hook(t, project.id) for t in before["labels"]],
                             "current": [factory.label_hook(t, project.id) for t in after["labels"]]}
    if before["state"] != after["state"]:
        changes["state_id"] = {"previous": STATE_IDS[before["state"]], "current": STATE_IDS[after["state"]]}
    for name in ("closed_at", "merged_at"):
        if name in after and before.get(name) != after[name]:
            changes[name] = {"previous": reformat(before.get(name), ruby_time),
                             "current": reformat(after[name], ruby_time)}
    changes["updated_at"] = {"previous": reformat(before["updated_at"], ruby_time),
                             "current": reformat(after["updated_at"], ruby_time)}
    return changes


def _mr_detail(project: Project, mr: JSON) -> JSON:
    """GET /merge_requests/:iid: the list entry plus the fields only the single MR carries."""
    iid = mr["iid"]
    return {**mr, "subscribed": False, "diff_refs": project.diff_refs.get(iid),
            "changes_count": str(len(project.diffs.get(iid, []))), "user": {"can_merge": True},
            "first_contribution": False, "merge_error": None, "latest_build_started_at": None,
            "latest_build_finished_at": None, "first_deployed_to_production_at": None, "pipeline": None,
            "head_pipeline": None}


def _not_found(what: str) -> web.Response:
    return web.json_response({"message": f"404 {what} Not Found"}, status=404)


def _page_url(request: web.Request, page: int, per_page: int) -> str:
    """Links point back at the server actually answering, so a client that follows them stays on it."""
    params = [(k, v) for k, v in request.query.items() if k not in ("page", "per_page")]
    params += [("page", str(page)), ("per_page", str(per_page))]
    path = request.raw_path.split("?", 1)[0]
    return f"{request.url.origin()}{path}?{urlencode(params)}"


async def _post(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> int:
    timeout = aiohttp.ClientTimeout(total=10)
    async with session.post(url, data=body, headers=headers, timeout=timeout) as response:
        await response.read()
        return response.status
