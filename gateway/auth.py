"""Bearer-token authentication for the API: who is calling, and may they do this.

Handlers declare what they need with `@requires(scope)`; the token store (gateway.tokens) decides
whether a token is valid. EventSource cannot send headers, so SSE routes opt in to a short-lived
`?ticket=` from `POST /api/v1/events/ticket` rather than accepting long-lived tokens in URLs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.http import ApiError, Handler, json_response
from gateway.keys import CLOCK, CONFIG, DB, SIGNING_KEYS
from gateway.tokens import SCOPES, Principal, TokenStore, UnknownToken, signing_keys
from sync import utc_iso

TOKENS = web.AppKey("tokens", TokenStore)
PRINCIPAL = web.RequestKey("principal", Principal)  # the caller, set by @requires

_REALM = 'Bearer realm="lore-gateway"'
log = logging.getLogger("lore_gateway.auth")


async def tokens_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the signing keys (read once here, for every user: tokens, API cursors), and the
    token store on the app's database and clock."""
    keys = await asyncio.to_thread(signing_keys, app[CONFIG])  # may create the key file
    app[SIGNING_KEYS] = keys
    app[TOKENS] = TokenStore(app[DB], app[CLOCK], keys)
    if legacy := await app[TOKENS].legacy_count():
        log.warning("%d live API token(s) were made before tokens had a random part, so the signing key and the "
                    "database together can recreate them: replace them (`token list` marks them legacy; "
                    "docs/operations.md, \"Tokens\")", legacy)
    yield


def _unauthorized(message: str, *, invalid_token: bool) -> ApiError:
    challenge = f'{_REALM}, error="invalid_token"' if invalid_token else _REALM
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def _bearer(request: web.Request) -> str | None:
    """The credentials of an `Authorization: Bearer ...` header, or None without one."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


async def authenticate(request: web.Request) -> Principal:
    """The caller's Principal from `Authorization: Bearer <token>`; ApiError 401 otherwise."""
    token = _bearer(request)
    if token is None:
        raise _unauthorized("authentication required: send Authorization: Bearer <token>",
                            invalid_token=False)
    principal = await request.app[TOKENS].verify(token)
    if principal is None:
        raise _unauthorized("the bearer token is invalid, expired or revoked", invalid_token=True)
    return principal


async def _from_ticket(request: web.Request, ticket: str) -> Principal:
    principal = await request.app[TOKENS].verify_ticket(ticket)
    if principal is None:
        raise _unauthorized("the ticket is invalid or expired; get a new one from POST /api/v1/events/ticket",
                            invalid_token=True)
    return principal


def requires(scope: str, *, allow_ticket: bool = False) -> Callable[[Handler], Handler]:
    """Decorate a handler: authenticate, check `scope`, set request[PRINCIPAL], record the use.

    With `allow_ticket`, a `?ticket=` is accepted when no Authorization header is sent (SSE only).
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}: use {', '.join(SCOPES)}")

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            ticket = request.query.get("ticket") if allow_ticket else None
            if ticket is not None and "Authorization" not in request.headers:
                principal = await _from_ticket(request, ticket)
            else:
                principal = await authenticate(request)
            if not principal.allows(scope):
                challenge = f'{_REALM}, error="insufficient_scope", scope="{scope}"'
                raise ApiError(403, "forbidden", f"this token lacks the '{scope}' scope",
                               headers={"WWW-Authenticate": challenge})
            request[PRINCIPAL] = principal
            await request.app[TOKENS].touch(principal)
            return await handler(request)

        return guarded

    return decorate


@requires("read")
async def create_ticket(request: web.Request) -> web.Response:
    """`POST /api/v1/events/ticket`: 201 {"ticket", "expires_at"}, for `GET /api/v1/events?ticket=`."""
    try:
        ticket, expires_at = await request.app[TOKENS].issue_ticket(request[PRINCIPAL])
    except UnknownToken:  # the token's row was deleted since it was verified
        raise _unauthorized("the bearer token is invalid, expired or revoked", invalid_token=True) from None
    return json_response({"ticket": ticket, "expires_at": utc_iso(expires_at)}, status=201,
                         headers={"Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    """Call after create_app's own contexts are added: the store needs the database."""
    app.cleanup_ctx.append(tokens_ctx)
    app.router.add_post("/api/v1/events/ticket", create_ticket)
