"""`POST /webhooks/gitlab`: authenticate, route and durably record a GitLab webhook, then answer 202.

Every check runs in the order of its cost to us, cheapest and least trusting first: the per-address rate
limit, the body size, authentication, JSON, routing, and only then the (group-committed) inbox write.
Whatever a client sends, the answer is a documented 4xx or a 202, never a 500: GitLab disables hooks that
keep failing, so an event we cannot route is stored with no kind rather than refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from gateway import ratelimit
from gateway.http import ApiError, json_response
from gateway.keys import BUS, CLOCK, CONFIG, DB
from sync.config import WebhookConfig
from sync.inbox import Accepted, Inbox, InboxError, InboxEvent

log = logging.getLogger("lore_gateway.webhooks")

PATH = "/webhooks/gitlab"
TIMESTAMP_TOLERANCE = 5 * 60  # seconds either side of now (Standard Webhooks)
_MAX_ID = 2**63 - 1  # SQLite's INTEGER


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


def signature_matches(creds: Credentials, headers: Mapping[str, str], body: bytes, now: float) -> bool:
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
    signed = f"{webhook_id}.{timestamp}.".encode("utf-8", "surrogateescape") + body
    matched = False
    for key in creds.signing_keys:
        expected = hmac.new(key, signed, hashlib.sha256).digest()
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


def authenticate(creds: Credentials, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    """Accept a matching X-Gitlab-Token or a valid signature; return the verified webhook-id (None when the
    request was not signed). Raises ApiError 401 otherwise."""
    if not creds.configured:
        raise ApiError(401, "unauthorized", "the webhook secret is not configured on this gateway "
                       "(set webhook.secrets or webhook.signing_tokens)")
    signed = "webhook-signature" in headers and bool(creds.signing_keys)
    if signed and signature_matches(creds, headers, body, now):
        return headers["webhook-id"]
    token = headers.get("X-Gitlab-Token")
    if token is not None and creds.token_digests and token_matches(creds, token):
        return None
    if signed:
        raise ApiError(401, "invalid_signature", "the webhook signature or its timestamp is not valid")
    raise ApiError(401, "unauthorized", "missing or wrong X-Gitlab-Token")


# -- routing ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    project_id: int | None
    kind: str | None  # issue | merge_request | project; None: stored, nothing to sync
    iid: int | None


_ITEM_KINDS = {"issue": "issue", "work_item": "issue", "merge_request": "merge_request"}
_ISSUE_HOOKS = frozenset({"Issue Hook", "Confidential Issue Hook"})
_NOTE_HOOKS = frozenset({"Note Hook", "Confidential Note Hook"})
_PROJECT_HOOKS = frozenset({"Push Hook", "Tag Push Hook", "Pipeline Hook"})
_NOTEABLES = {"Issue": ("issue", "issue"), "MergeRequest": ("merge_request", "merge_request")}


def route(event: str, payload: dict[str, Any]) -> Route | None:
    """What to sync for this event; None for an event kind we do not handle (answered, not stored)."""
    if event in _ISSUE_HOOKS:
        return _item_route(payload, expected=("issue", "work_item"))
    if event == "Merge Request Hook":
        return _item_route(payload, expected=("merge_request",))
    if event in _NOTE_HOOKS:
        return _note_route(payload)
    if event in _PROJECT_HOOKS:
        project_id = _project_id(payload)
        return Route(project_id, "project" if project_id is not None else None, None)
    if event == "System Hook":
        return _system_route(payload)
    return None


def _system_route(payload: dict[str, Any]) -> Route | None:
    # System hooks carry every kind under one header; only item and note events touch the mirror.
    kind = _text(payload.get("object_kind")) or _text(payload.get("event_name"))
    if kind in _ITEM_KINDS:
        return _item_route(payload, expected=(kind,))
    if kind == "note":
        return _note_route(payload)
    return None


def _item_route(payload: dict[str, Any], expected: tuple[str, ...]) -> Route:
    project_id = _project_id(payload)
    object_kind = _text(payload.get("object_kind"))
    kind = _ITEM_KINDS[object_kind] if object_kind in expected else None
    iid = _positive_int(_get(payload, "object_attributes", "iid"))
    return _complete(project_id, kind, iid)


def _note_route(payload: dict[str, Any]) -> Route:
    project_id = _project_id(payload)
    noteable = _NOTEABLES.get(_text(_get(payload, "object_attributes", "noteable_type")))
    if noteable is None:  # Commit and Snippet notes: stored, nothing in the mirror to refresh
        return Route(project_id, None, None)
    kind, parent = noteable
    return _complete(project_id, kind, _positive_int(_get(payload, parent, "iid")))


def _complete(project_id: int | None, kind: str | None, iid: int | None) -> Route:
    """A kind only with both a project and an iid: half a target cannot be synced."""
    if project_id is None or iid is None:
        kind = None
    return Route(project_id, kind, iid)


def _project_id(payload: dict[str, Any]) -> int | None:
    return _positive_int(_get(payload, "project", "id")) or _positive_int(payload.get("project_id"))


def _get(payload: dict[str, Any], outer: str, inner: str) -> object:
    value = payload.get(outer)
    return value.get(inner) if isinstance(value, dict) else None


def _text(value: object) -> str:
    """A routing field that must be a string: anything else (a list, an object) counts as missing."""
    return value if isinstance(value, str) else ""


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_ID:
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
        payload = _parse(body)
    except ApiError:
        app[STATS].rejected += 1
        raise
    target = route(event, payload)
    if target is None:
        app[STATS].ignored += 1
        return json_response({"accepted": True, "ignored": True}, status=202)
    accepted = await _store(app[INBOX], _dedupe_key(request, verified_id), event, target, body)
    _count(app[STATS], accepted)
    app[BUS].publish("webhook.received", {
        "event_id": str(accepted.event_id), "event": event, "project_id": target.project_id,
        "kind": target.kind, "iid": target.iid, "duplicate": accepted.duplicate,
    })
    return json_response({"accepted": True, "event_id": str(accepted.event_id),
                          "duplicate": accepted.duplicate}, status=202)


async def _admit(request: web.Request) -> tuple[str, bytes, str | None]:
    """Rate limit, size, authentication: the checks before we trust a byte of the body.

    Returns the event name, the raw body and the verified webhook-id (None when not signed)."""
    app = request.app
    decision = await app[ratelimit.LIMITER].hit(app[CONFIG].ratelimit.webhook, f"webhook:{request.remote}")
    if not decision.allowed:
        raise ApiError(429, "rate_limited", "too many webhook requests from this address",
                       ratelimit.headers(decision))
    body = await _read_body(request, app[CONFIG].webhook.max_body_bytes)
    verified_id = authenticate(app[CREDENTIALS], request.headers, body, app[CLOCK].now())
    return request.headers.get("X-Gitlab-Event", ""), body, verified_id


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The raw body (signatures cover exact bytes), refused as soon as it is known to exceed `limit`."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the body exceeds the limit of {limit} bytes")


def _parse(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)  # rejects invalid UTF-8 too
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return payload


def _dedupe_key(request: web.Request, verified_id: str | None) -> str | None:
    """A verified webhook-id, else Idempotency-Key (equal when GitLab signs), else none: no dedupe.

    Never X-Gitlab-Event-UUID: GitLab shares it across a chain of webhooks."""
    return verified_id or request.headers.get("Idempotency-Key") or None


async def _store(inbox: Inbox, key: str | None, event: str, target: Route, body: bytes) -> Accepted:
    # What processing needs is the route; the body is kept only when routing could not understand it,
    # for an operator to look at. Writing every ~2 KB body into the WAL cost a third of intake throughput.
    kept = body if target.kind is None else b""
    try:
        return await inbox.add(InboxEvent(key, event, target.project_id, target.kind, target.iid, kept))
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
    inbox = Inbox(app[DB], app[CLOCK], fsync=app[CONFIG].webhook.fsync)
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
