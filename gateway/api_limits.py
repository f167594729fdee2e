"""Rate limits for `/api/v1`: one budget per token, one per address for everyone else.

The limit is decided in the middleware (gateway.front), before authentication, so even a flood of bad tokens costs a
budget: a bearer token counts as its own only once it has verified (remembered for a few seconds, so
the store is not asked every request); a missing or bad one is charged to the caller's address (the
forwarded one behind a trusted proxy: gateway/proxies.py). The
RateLimit-* headers go on in `on_response_prepare` (gateway.front), so every response carries them: errors, 304s and
streams whose headers were sent by the handler.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import ratelimit
from gateway.auth import TOKENS
from gateway.http import ApiError
from gateway.keys import CLOCK, CONFIG
from gateway.proxies import client_address
from gateway.ratelimit import LIMITER, Decision
from sync import Clock

PREFIX = "/api/v1"
IDENTITY_TTL = 5.0  # seconds a verified token is known by its id without asking the token store again
MAX_IDENTITIES = 4096

DECISION = web.RequestKey("ratelimit_decision", Decision)


class Identities:
    """Bearer token text -> the verified token's budget name, for a short while; only verified tokens are
    kept, so made-up tokens cannot fill it. The name is kept, not built per request: a string made once
    also hashes once, and the limiter looks it up on every hit."""

    def __init__(self, clock: Clock, *, ttl: float = IDENTITY_TTL, max_entries: int = MAX_IDENTITIES) -> None:
        self._clock = clock
        self._ttl = ttl
        self._max = max_entries
        self._known: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def get(self, token: str) -> str | None:
        entry = self._known.get(token)
        if entry is None or self._clock.monotonic() - entry[0] >= self._ttl:
            return None
        return entry[1]

    def remember(self, token: str, token_id: int) -> str:
        budget = f"api-token:{token_id}"
        self._known[token] = (self._clock.monotonic(), budget)
        self._known.move_to_end(token)
        while len(self._known) > self._max:
            self._known.popitem(last=False)
        return budget


IDENTITIES = web.AppKey("api_identities", Identities)


def _bearer(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    token = credentials.strip()
    return token if scheme.lower() == "bearer" and token else None


async def bucket(request: web.Request) -> str:
    """Whose budget this request spends: its token's, or its address's."""
    token = _bearer(request)
    if token is not None:
        app = request.app
        identities = app[IDENTITIES]
        known = identities.get(token)
        if known is not None:
            return known
        principal = await app[TOKENS].verify(token)
        if principal is not None:
            return identities.remember(token, principal.token_id)
    return f"api-addr:{client_address(request)}"


def is_api(path: str) -> bool:
    return path.startswith(PREFIX) and (len(path) == len(PREFIX) or path[len(PREFIX)] == "/")


def spend_now(request: web.Request) -> bool:
    """`spend` without an await, for the common case: a token verified in the last few seconds, counted
    in this process. False when that is not the case and `spend` must be awaited instead (nothing spent)."""
    app = request.app
    limiter = app[LIMITER]
    token = _bearer(request)
    budget = app[IDENTITIES].get(token) if token is not None else None
    if budget is None or not limiter.counts_here:
        return False
    _decide(request, limiter.hit_now(app[CONFIG].ratelimit.api, budget))
    return True


async def spend(request: web.Request) -> None:
    """Spend one hit of the caller's budget (gateway.front, for every is_api path that `spend_now` could
    not); ApiError 429 past it. The decision is kept on the request: gateway.front puts its headers on
    whatever answers."""
    app = request.app
    limiter = app[LIMITER]
    budget = await bucket(request)
    rate = app[CONFIG].ratelimit.api
    _decide(request, limiter.hit_now(rate, budget) if limiter.counts_here else await limiter.hit(rate, budget))


def _decide(request: web.Request, decision: Decision) -> None:
    request[DECISION] = decision
    if not decision.allowed:
        raise ApiError(429, "rate_limited",
                       f"rate limit exceeded; retry in {decision.reset_after} s",
                       headers=ratelimit.headers(decision))


async def _identities_ctx(app: web.Application) -> AsyncIterator[None]:
    app[IDENTITIES] = Identities(app[CLOCK])
    yield


def setup(app: web.Application) -> None:
    """The limiter (shared with the webhooks) and the identities; gateway.front spends and adds the
    headers. Safe to call twice."""
    if _identities_ctx in app.cleanup_ctx:
        return
    ratelimit.setup(app)
    app.cleanup_ctx.append(_identities_ctx)
