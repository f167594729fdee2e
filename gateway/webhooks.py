"""`POST /webhooks/gitlab`: authenticate, route and durably record a GitLab webhook, then answer 202.

One module because it is one route whose checks are one ordered sequence: the order is the design, and
splitting it would hide it.

Every check runs in the order of its cost to us, cheapest and least trusting first: the per-address rate
limit, the body size, authentication, JSON, routing, and only then the (group-committed) inbox write.
Whatever a client sends, the answer is a documented 4xx or a 202, never a 500: GitLab disables hooks that
keep failing, so an event we cannot route is stored with no kind rather than refused. Which GitLab event
starts which work, and why, is docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestPayloadError

from gateway import ratelimit
from gateway.http import ApiError, BodyDeadline, json_response
from gateway.keys import BUS, CLOCK, CONFIG, DB, SCHEDULER
from gateway.proxies import client_address
from sync import MAX_ID, Accepted, Inbox, InboxError, InboxEvent, ItemRef, WebhookConfig, WebhookReceived

log = logging.getLogger("lore_gateway.webhooks")

PATH = "/webhooks/gitlab"
TIMESTAMP_TOLERANCE = 5 * 60  # seconds either side of now (Standard Webhooks)
Body = bytes | bytearray  # the raw body as read: one buffer, never copied to hand it on


# -- authentication --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """The configured secrets, prepared once: token digests (equal length, so comparing leaks no length)
    and decoded signing keys."""

    token_digests: tuple[bytes, ...] = field(repr=False)
    signing_keys: tuple[bytes, ...] = field(repr=False)

    @classmethod
    def from_config(cls, config: WebhookConfig) -> Credentials:
        return cls(
            token_digests=tuple(_digest(s.encode()) for s in config.secrets),
            signing_keys=tuple(base64.b64decode(t.removeprefix("whsec_")) for t in config.signing_tokens),
        )

    @property
    def configured(self) -> bool:
        return bool(self.token_digests or self.signing_keys)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def token_matches(creds: Credentials, token: str) -> bool:
    """Compares against EVERY secret without an early exit, so timing does not tell which one matched."""
    given = _digest(token.encode("utf-8", "surrogateescape"))
    matched = False
    for digest in creds.token_digests:
        matched |= hmac.compare_digest(given, digest)
    return matched


def signature_matches(creds: Credentials, headers: Mapping[str, str], body: Body, now: float) -> bool:
    """Standard Webhooks: any `v1,<base64>` in webhook-signature is HMAC-SHA256 of "{id}.{ts}.{body}"
    under any signing key, and the timestamp is within the tolerance of now."""
    webhook_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    # Bounded before int(): Python refuses to convert strings of more than 4300 digits.
    if not webhook_id or not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    if abs(now - int(timestamp)) > TIMESTAMP_TOLERANCE:
        return False
    given = _signatures(headers.get("webhook-signature", ""))
    prefix = f"{webhook_id}.{timestamp}.".encode("utf-8", "surrogateescape")
    matched = False
    for key in creds.signing_keys:
        mac = hmac.new(key, prefix, hashlib.sha256)
        mac.update(body)  # not prefix + body: that would copy a body of up to 25 MB once more
        expected = mac.digest()
        for signature in given:
            matched |= hmac.compare_digest(expected, signature)
    return matched


def _signatures(header: str) -> list[bytes]:
    found = []
    for part in header.split():
        version, _, encoded = part.partition(",")
        if version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def authenticate(creds: Credentials, headers: Mapping[str, str], body: Body, now: float, *,
                 token_ok: bool | None = None) -> str | None:
    """Accept a matching X-Gitlab-Token or a valid signature; return the verified webhook-id (None when the
    request was not signed). Raises ApiError 401 otherwise. `token_ok`: the caller already compared the
    X-Gitlab-Token (`token_matches`), so it is not hashed and compared twice."""
    if not creds.configured:
        raise ApiError(401, "unauthorized", "the webhook secret is not configured on this gateway "
                       "(set webhook.secrets or webhook.signing_tokens)")
    signed = "webhook-signature" in headers and bool(creds.signing_keys)
    if signed and signature_matches(creds, headers, body, now):
        return headers["webhook-id"]
    if token_ok is None:
        token = headers.get("X-Gitlab-Token")
        token_ok = token is not None and bool(creds.token_digests) and token_matches(creds, token)
    if token_ok:
        return None
    if signed:
        raise ApiError(401, "invalid_signature", "the webhook signature or its timestamp is not valid")
    raise ApiError(401, "unauthorized", "missing or wrong X-Gitlab-Token")


# -- routing ---------------------------------------------------------------------------------------
# docs/webhooks.md has the table of every GitLab webhook and system-hook event and what happens to it.

_ITEM_KINDS = {"issue": "issue", "work_item": "issue", "merge_request": "merge_request"}
_ISSUE_HOOKS = frozenset({"Issue Hook", "Confidential Issue Hook"})
_NOTE_HOOKS = frozenset({"Note Hook", "Confidential Note Hook"})
_NOTEABLES = {"Issue": ("issue", "issue"), "MergeRequest": ("merge_request", "merge_request")}
_UNMIRRORED_NOTEABLES = frozenset({"Commit", "Snippet"})
# Work item types REST's issue list never returns: group-level, so nothing in the mirror to refresh.
_UNMIRRORED_WORK_ITEMS = frozenset({"Epic"})
# Project events that change the mirrored project row (path, name, description, default branch,
# visibility), or end it (a configured project that is gone: the pass meets its 404 and says so at once).
_PROJECT_EVENTS = frozenset({"project_rename", "project_transfer", "project_update", "project_destroy"})
# What GitLab's commit-message parser turns into a cross-reference (doc/user/project/issues/
# crosslinking_issues.md): #12, !12, group/project#12, or a URL to an issue or MR. Each adds a system
# note to the item it names and touches it, and no Note Hook tells us. A false match costs one
# incremental pass; a miss waits for the timer.
_MENTION = re.compile(r"[#!]\d|/-/(?:issues|merge_requests|work_items)/\d")


def route(event: str, payload: dict[str, Any]) -> ItemRef | None:
    """What to sync for this event; None for an event that changes nothing mirrored (answered, not stored)."""
    if event in _ISSUE_HOOKS:
        if _text(_get(payload, "object_attributes", "type")) in _UNMIRRORED_WORK_ITEMS:
            return None
        return _item_route(payload, expected=("issue", "work_item"))
    if event == "Merge Request Hook":
        return _item_route(payload, expected=("merge_request",))
    if event in _NOTE_HOOKS:
        return _note_route(payload)
    if event == "Push Hook":
        return _push_route(payload)
    if event == "Project Hook":  # group webhooks: project_create (not configured yet) or project_destroy
        return _project_route(payload, _text(payload.get("event_name")))
    if event == "System Hook":
        return _system_route(payload)
    return None


_ROUTED_HEADERS = _ISSUE_HOOKS | _NOTE_HOOKS | {"Merge Request Hook", "Push Hook", "Project Hook", "System Hook"}


def routes_by_header(event: str) -> bool:
    """Whether this X-Gitlab-Event can start work at all; when not, its body is never parsed."""
    return event in _ROUTED_HEADERS


def _system_route(payload: dict[str, Any]) -> ItemRef | None:
    # One header for every kind. Newer events name themselves in object_kind, older ones (and push, which
    # has no object_kind in a system hook) in event_name. Issues and notes never come as system hooks.
    kind = _text(payload.get("object_kind")) or _text(payload.get("event_name"))
    if kind == "merge_request":
        return _item_route(payload, expected=(kind,))
    if kind == "push":
        return _push_route(payload)
    return _project_route(payload, kind)


def _project_route(payload: dict[str, Any], event_name: str) -> ItemRef | None:
    if event_name not in _PROJECT_EVENTS:
        return None
    project_id = _project_id(payload)
    return ItemRef(project_id, "project" if project_id is not None else None, None)


def _push_route(payload: dict[str, Any]) -> ItemRef | None:
    """A push changes nothing mirrored by itself (new commits on an MR come as a Merge Request Hook), but a
    commit message that mentions an issue or MR adds a system note to it. GitLab carries only the newest
    20 commits (system hooks none): with some left out, a mention may be among them."""
    commits = payload.get("commits")
    carried = commits if isinstance(commits, list) else []
    total = payload.get("total_commits_count")
    left_out = isinstance(total, int) and not isinstance(total, bool) and total > len(carried)
    if not left_out and not any(_mentions(commit) for commit in carried):
        return None
    project_id = _project_id(payload)
    return ItemRef(project_id, "project" if project_id is not None else None, None)


def _mentions(commit: object) -> bool:
    return isinstance(commit, dict) and bool(_MENTION.search(_text(commit.get("message"))))


def _item_route(payload: dict[str, Any], expected: tuple[str, ...]) -> ItemRef:
    project_id = _project_id(payload)
    object_kind = _text(payload.get("object_kind"))
    kind = _ITEM_KINDS[object_kind] if object_kind in expected else None
    iid = _positive_int(_get(payload, "object_attributes", "iid"))
    return _complete(project_id, kind, iid)


def _note_route(payload: dict[str, Any]) -> ItemRef | None:
    noteable_type = _text(_get(payload, "object_attributes", "noteable_type"))
    if noteable_type in _UNMIRRORED_NOTEABLES:  # the mirror keeps no commits or snippets
        return None
    project_id = _project_id(payload)
    noteable = _NOTEABLES.get(noteable_type)
    if noteable is None:  # missing or unknown: stored for an operator, nothing to refresh
        return ItemRef(project_id, None, None)
    kind, parent = noteable
    return _complete(project_id, kind, _positive_int(_get(payload, parent, "iid")))


def _complete(project_id: int | None, kind: str | None, iid: int | None) -> ItemRef:
    """A kind only with both a project and an iid: half a target cannot be synced."""
    if project_id is None or iid is None:
        kind = None
    return ItemRef(project_id, kind, iid)


def _project_id(payload: dict[str, Any]) -> int | None:
    return _positive_int(_get(payload, "project", "id")) or _positive_int(payload.get("project_id"))


def _get(payload: dict[str, Any], outer: str, inner: str) -> object:
    value = payload.get(outer)
    return value.get(inner) if isinstance(value, dict) else None


def _text(value: object) -> str:
    """A routing field that must be a string: anything else (a list, an object) counts as missing."""
    return value if isinstance(value, str) else ""


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID:
        return value
    return None


# -- the handler -----------------------------------------------------------------------------------

@dataclass
class WebhookStats:
    """Counters for /metrics; plain ints, only ever touched on the event loop."""

    accepted: int = 0
    duplicates: int = 0
    ignored: int = 0
    rejected: int = 0


INBOX = web.AppKey("inbox", Inbox)
STATS = web.AppKey("webhook_stats", WebhookStats)
CREDENTIALS = web.AppKey("webhook_credentials", Credentials)


async def receive(request: web.Request) -> web.Response:
    app = request.app
    try:
        event, body, verified_id = await _admit(request)
        target = route(event, _parse(body)) if routes_by_header(event) else None
    except ApiError:
        app[STATS].rejected += 1
        raise
    if target is None:
        app[STATS].ignored += 1
        return json_response({"accepted": True, "ignored": True}, status=202)
    kept = _kept(target, body)
    del body  # a routed event needs only its route: a large buffer goes before the inbox write is awaited
    accepted = await _store(app[INBOX], _dedupe_key(request, verified_id), event, target, kept)
    _count(app[STATS], accepted)
    app[BUS].emit(WebhookReceived(str(accepted.event_id), event, target.project_id, target.kind, target.iid,
                                  accepted.duplicate))
    return json_response({"accepted": True, "event_id": str(accepted.event_id),
                          "duplicate": accepted.duplicate}, status=202)


async def _admit(request: web.Request) -> tuple[str, Body, str | None]:
    """Rate limit, size, authentication: the checks before we trust a byte of the body.

    Authenticated and unauthenticated requests spend separate budgets of the client's address, so a flood
    of bad requests from behind the same proxy or NAT never gets GitLab's real deliveries refused. A
    request that cannot authenticate from its headers alone (no matching X-Gitlab-Token, no signature)
    spends before its body is read; a signed one only once its signature fails, since checking it needs
    the body. Returns the event name, the raw body and the verified webhook-id (None when not signed)."""
    app = request.app
    creds, headers = app[CREDENTIALS], request.headers
    budget = f"webhook:{client_address(request)}"
    token = headers.get("X-Gitlab-Token")
    token_ok = token is not None and bool(creds.token_digests) and token_matches(creds, token)
    may_pass = token_ok or ("webhook-signature" in headers and bool(creds.signing_keys))
    if not may_pass:
        await _spend(app, budget)
    body = await _read_body(request, app[CONFIG].webhook)
    try:
        verified_id = authenticate(creds, headers, body, app[CLOCK].now(), token_ok=token_ok)
    except ApiError:
        if may_pass:
            await _spend(app, budget)
        raise
    await _spend(app, f"{budget}:authenticated")
    return headers.get("X-Gitlab-Event", ""), body, verified_id


async def _spend(app: web.Application, budget: str) -> None:
    """Count one request against `budget` (ratelimit.webhook); ApiError 429 beyond it."""
    limiter = app[ratelimit.LIMITER]
    rate = app[CONFIG].ratelimit.webhook
    decision = limiter.hit_now(rate, budget) if limiter.counts_here else await limiter.hit(rate, budget)
    if not decision.allowed:
        raise ApiError(429, "rate_limited", "too many webhook requests from this address",
                       ratelimit.headers(decision))


# Content codings aiohttp decodes before the handler sees a byte (br and zstd only with their optional
# libraries; without them aiohttp answers 400 itself). GitLab sends none; anything else is refused.
_DECODED_CODINGS = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})


async def _read_body(request: web.Request, config: WebhookConfig) -> Body:
    """The raw body (signatures cover exact bytes), read chunk by chunk into one buffer and refused as soon
    as it is known to exceed webhook.max_body_bytes, or once webhook.body_timeout has passed before all of
    it came. aiohttp's client_max_size does not apply here: it guards only request.read(), and this
    endpoint alone takes bodies as large as GitLab sends (docs/webhooks.md)."""
    limit = config.max_body_bytes
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in _DECODED_CODINGS:
        raise ApiError(415, "unsupported_content_encoding",
                       "the Content-Encoding is not one this gateway decodes (GitLab sends none)")
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    # Only an encoded body's decoded size is unknown; an unknown size reserves the whole limit.
    known = request.content_length if coding in ("", "identity") else None
    reserved = _reservation(known, limit)
    if not reserved:  # a small body of known size (every GitLab hook): nothing to share, but it may stall
        async with BodyDeadline(request, config.body_timeout):
            return await _read_chunks(request, limit)
    budget = request.app[BODY_BUDGET]
    await budget.reserve(reserved)
    try:  # the deadline starts once memory is reserved: a wait for the budget is not the sender's fault
        async with BodyDeadline(request, config.body_timeout):
            return await _read_chunks(request, limit)
    finally:
        await budget.release(reserved)


async def _read_chunks(request: web.Request, limit: int) -> Body:
    body = bytearray()
    try:
        while chunk := await request.content.readany():
            if len(body) + len(chunk) > limit:  # counts decoded bytes: a gzip bomb stops here too
                raise _too_large(limit)
            body += chunk
    except RequestPayloadError as exc:
        raise _unreadable(exc) from None
    return body


# -- memory: large bodies share a budget while they are read ---------------------------------------------
# A body is read before it is authenticated (a signature covers it), so anyone who can connect can make the
# gateway hold up to `webhook.max_body_bytes` per connection. Bodies of this size or less go straight
# through (GitLab's are 2-20 KB); larger ones share a budget of twice the limit.
_SMALL_BODY_BYTES = 1024 * 1024


def _reservation(size: int | None, limit: int) -> int:
    if size is not None and size <= _SMALL_BODY_BYTES:
        return 0
    return limit if size is None else size


class BodyBudget:
    """The bytes large webhook bodies may hold while they are read, across all requests of one process.

    A request reserves all it may need before reading its first byte (its Content-Length, or the whole limit
    when the length is unknown), so a request that waits holds nothing and waiting never deadlocks. Parsing
    comes after reading and is synchronous: at most one parse at a time adds to this."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self.waiting = 0
        self._changed = asyncio.Condition()

    async def reserve(self, size: int) -> None:
        if not size:
            return
        async with self._changed:
            self.waiting += 1
            try:
                await self._changed.wait_for(lambda: self.free >= size)
            finally:
                self.waiting -= 1
            self.free -= size

    async def release(self, size: int) -> None:
        if not size:
            return
        async with self._changed:
            self.free += size
            self._changed.notify_all()


BODY_BUDGET = web.AppKey("webhook_body_budget", BodyBudget)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body exceeds the limit of {limit} bytes")


def _unreadable(exc: RequestPayloadError) -> ApiError:
    """A body aiohttp could not decode: its Content-Encoding lied, or its chunked framing broke."""
    if isinstance(exc.__cause__, ContentEncodingError):
        return ApiError(400, "invalid_content_encoding", "the body does not decode as its Content-Encoding says")
    return ApiError(400, "invalid_body", "the body could not be read as sent")


# orjson parses fastest, but it sizes its value pool for the worst case before it starts, so its peak is
# many times the body, which at webhook.max_body_bytes is too much for one request. Above this size the
# standard library's parser, which builds the objects as it goes, peaks several times lower
# (bench/webhook_memory_bench.py measures both, as a multiple of the body).
_ORJSON_MAX_BYTES = 256 * 1024  # typical hooks are 2-20 KB: they keep the fast path


def _parse(body: Body) -> dict[str, Any]:
    try:  # both reject invalid UTF-8
        payload = orjson.loads(body) if len(body) <= _ORJSON_MAX_BYTES else json.loads(body.decode())
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError; nesting too deep
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return payload


def _dedupe_key(request: web.Request, verified_id: str | None) -> str | None:
    """A verified webhook-id, else Idempotency-Key (equal when GitLab signs), else none: no dedupe.

    Never X-Gitlab-Event-UUID: GitLab shares it across a chain of webhooks."""
    return verified_id or request.headers.get("Idempotency-Key") or None


def _kept(target: ItemRef, body: Body) -> bytes:
    # What processing needs is the route; the body is kept only when routing could not understand it,
    # for an operator to look at. Writing every body into the WAL costs intake throughput
    # (bench/webhook_bench.py).
    return bytes(body) if target.kind is None else b""


async def _store(inbox: Inbox, key: str | None, event: str, target: ItemRef, kept: bytes) -> Accepted:
    try:
        return await inbox.add(InboxEvent(key, event, target, kept))
    except InboxError as exc:
        log.warning("webhook not stored: %s", exc)  # the reason is SQLite's, never the payload
        raise ApiError(503, "not_ready", "the event could not be stored; try again later") from None


def _count(stats: WebhookStats, accepted: Accepted) -> None:
    if accepted.duplicate:
        stats.duplicates += 1
    else:
        stats.accepted += 1


# -- wiring ----------------------------------------------------------------------------------------

async def _inbox_ctx(app: web.Application) -> AsyncIterator[None]:
    app[CREDENTIALS] = Credentials.from_config(app[CONFIG].webhook)
    app[BODY_BUDGET] = BodyBudget(2 * app[CONFIG].webhook.max_body_bytes)
    scheduler = app.get(SCHEDULER)  # started before the inbox, stopped after it (cleanup_ctx order)
    inbox = Inbox(app[DB], app[CLOCK], fsync=app[CONFIG].webhook.fsync,
                  on_new_events=scheduler.notify if scheduler is not None else None)
    await inbox.start()
    app[INBOX] = inbox
    yield
    await inbox.close()


def setup(app: web.Application) -> None:
    """The route, the limiter and the inbox (after the database, so it is closed, and flushed, first).
    Safe to call more than once."""
    if _inbox_ctx in app.cleanup_ctx:
        return
    ratelimit.setup(app)
    app[STATS] = WebhookStats()
    app.cleanup_ctx.append(_inbox_ctx)
    app.router.add_post(PATH, receive)
