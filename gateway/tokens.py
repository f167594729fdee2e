"""API tokens: the api_tokens store, the signing keys, and short-lived SSE tickets.

One module because tokens, their signing keys and the tickets made from them share one secret-handling
policy (hashes stored, keys derived, rows cached) that reads best in one place.

A token is `lgw_` + an itsdangerous-signed {"id", "s", "r"} payload, "r" being 128 random bits that are
never stored: only the token's sha256 is, so neither the signing key nor the database, nor both, can
recreate a token. The signature turns away forgeries before any read; the row, cached for at most
ROW_CACHE_SECONDS, makes expiry and revocation authoritative. A ticket carries an HMAC keyed by its
token's hash, so only a token's holder (or the database) can have one made for that token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import math
import os
import secrets
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from itsdangerous import BadData, Serializer, URLSafeSerializer, URLSafeTimedSerializer

from sync import MAX_ID, MIN_SECRET_BYTES, Clock, Config, ConfigError, Database, short_secret, utc_iso

log = logging.getLogger("lore_gateway.tokens")

# Scopes are independent, except that "admin" implies every other one: a "sync" token cannot read,
# so a deploy hook that only triggers syncs leaks nothing if it leaks.
SCOPES: tuple[str, ...] = ("read", "sync", "admin")
TOKEN_PREFIX = "lgw_"
TICKET_PREFIX = "lgt_"
TOKEN_SALT = "lore-gateway.api-token"
TICKET_SALT = "lore-gateway.sse-ticket"
TICKET_TTL = 60.0
ROW_CACHE_SECONDS = 5.0
TOUCH_INTERVAL = 60.0
KEY_FILE_NAME = "signing.key"
RANDOM_BYTES = 16  # 128 bits per token

_MAX_TEXT = 4096  # longer input is not one of ours: refuse it before any work
_MAX_NAME = 200
_MAX_TTL = 100 * 365 * 86400.0
_MAX_REMEMBERED = 4096  # verified token texts kept in memory
_ROW_COLUMNS = "id, name, scopes, secret_hash, expires_at, revoked_at"
_INFO_COLUMNS = "id, name, scopes, created_at, expires_at, revoked_at, last_used_at, random_bits"


class BadTokenRequest(ValueError):
    """A token cannot be made as asked (unknown scope, empty name, bad ttl); the message says why."""


class UnknownToken(LookupError):
    def __init__(self, token_id: int) -> None:
        super().__init__(f"no token with id {token_id}")
        self.token_id = token_id


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's id, name and scopes (never the token itself)."""

    token_id: int
    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in SCOPES and (scope in self.scopes or "admin" in self.scopes)


@dataclass(frozen=True)
class CreatedToken:
    """The one moment the token text exists outside its holder's hands; kept out of the repr."""

    id: int
    name: str
    scopes: tuple[str, ...]
    expires_at: float | None
    token: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "scopes": list(self.scopes),
                "expires_at": utc_iso(self.expires_at), "token": self.token}


@dataclass(frozen=True)
class TokenInfo:
    """A token as `list` shows it: everything but the secret."""

    id: int
    name: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    legacy: bool = False  # made before tokens had a random part: the key and the database recreate it

    def status(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if _expired(self.expires_at, now) else "active"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": utc_iso(self.created_at),
            "expires_at": utc_iso(self.expires_at),
            "revoked_at": utc_iso(self.revoked_at),
            "last_used_at": utc_iso(self.last_used_at),
            "legacy": self.legacy,
        }


@dataclass(frozen=True)
class _Row:
    id: int
    name: str
    scopes: frozenset[str]
    secret_hash: str = field(repr=False)
    expires_at: float | None
    revoked_at: float | None

    @functools.cached_property
    def principal(self) -> Principal:
        """The caller this row names, with the token's own scopes: made once per row read, since rows
        are cached (ROW_CACHE_SECONDS) and every request of the token would otherwise make its own."""
        return Principal(self.id, self.name, self.scopes)


@dataclass(frozen=True)
class _Claims:
    """A signed payload that passed its signature check and has the expected shape."""

    token_id: int
    scopes: frozenset[str]
    expires_at: float | None = None
    binding: str | None = None  # a ticket's tie to its token (see _binding)


# --- scopes and validation ---------------------------------------------------------------------


def normalize_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes deduplicated, in SCOPES order; BadTokenRequest for an unknown one or none."""
    if isinstance(scopes, str):
        raise BadTokenRequest("scopes must be a list of scope names, not one string")
    wanted = set()
    for scope in scopes:
        if scope not in SCOPES:
            raise BadTokenRequest(f"unknown scope {scope!r}: use {', '.join(SCOPES)}")
        wanted.add(scope)
    if not wanted:
        raise BadTokenRequest(f"a token needs at least one scope ({', '.join(SCOPES)})")
    return tuple(scope for scope in SCOPES if scope in wanted)


def _clean_name(name: str) -> str:
    text = name.strip()
    if not text or len(text) > _MAX_NAME or not text.isprintable():
        raise BadTokenRequest(f"a token name is 1 to {_MAX_NAME} printable characters")
    return text


def _check_ttl(ttl_seconds: float | None) -> None:
    if ttl_seconds is None:
        return
    if not (math.isfinite(ttl_seconds) and 0 < ttl_seconds <= _MAX_TTL):
        raise BadTokenRequest("the time to live must be more than 0s and at most 36500d")


def _expired(expires_at: float | None, now: float) -> bool:
    return expires_at is not None and expires_at < now


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _binding(secret_hash: str, expires_at: float) -> str:
    """What ties a ticket to its token: an HMAC keyed by the token's hash, which a signing key alone
    cannot produce."""
    message = repr(float(expires_at)).encode()
    return hmac.new(secret_hash.encode(), message, hashlib.sha256).hexdigest()[:32]


def _scope_set(raw: object) -> frozenset[str]:
    return frozenset(s for s in raw if s in SCOPES) if isinstance(raw, list) else frozenset()


# --- signing keys ------------------------------------------------------------------------------


def signing_keys(config: Config) -> tuple[str, ...]:
    """The configured keys (the first signs, all verify), or else the data dir's own key file.

    The key file lets `token create` from the CLI and `serve` agree without any configuration.
    ConfigError if it cannot be read or created.
    """
    if config.auth.signing_keys:
        return config.auth.signing_keys
    return (_key_from_file(config.gateway.data_dir / KEY_FILE_NAME),)


def _key_from_file(path: Path) -> str:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the data directory: private
        if not path.exists():
            _create_key_file(path)
        key = path.read_text(encoding="ascii").strip()
    except OSError as err:
        raise ConfigError(f"auth: cannot use the signing key file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"auth: the signing key file {path} is not ASCII text") from None
    if not key or any(char.isspace() for char in key):
        raise ConfigError(f"auth: the signing key file {path} must hold one key "
                          "(delete it to make a new one)")
    if (size := short_secret(key)) is not None:
        raise ConfigError(f"auth: the key in the signing key file {path} is {size} bytes long; a signing "
                          f"key needs at least {MIN_SECRET_BYTES} (delete the file to have a new one made)")
    return key


def _create_key_file(path: Path) -> None:
    """Write a fresh key to a private temp file (O_EXCL, 0600), then hard-link it into place.

    The link is atomic and fails if the file exists, so a reader never sees a half-written key, and a
    process that loses the race to another one simply uses the winner's key. Safe to call concurrently.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            pass  # another process created it first: its key is the one
    finally:
        temp.unlink(missing_ok=True)


# --- signed payloads ---------------------------------------------------------------------------


def _load(serializer: Serializer, text: object, prefix: str) -> dict[str, Any] | None:
    """The signed payload behind `prefix`, or None for anything malformed, tampered or foreign."""
    if not isinstance(text, str) or len(text) > _MAX_TEXT or not text.startswith(prefix):
        return None
    try:
        payload = serializer.loads(text[len(prefix):])
    except BadData:
        return None
    return payload if isinstance(payload, dict) else None


def _claims(payload: dict[str, Any] | None) -> _Claims | None:
    if payload is None:
        return None
    token_id, scopes = payload.get("id"), payload.get("s")
    if type(token_id) is not int or not 1 <= token_id <= MAX_ID or not isinstance(scopes, list):
        return None
    expires_at = payload.get("exp")
    if expires_at is not None and (type(expires_at) not in (int, float) or not math.isfinite(expires_at)):
        return None
    binding = payload.get("b")
    if binding is not None and not isinstance(binding, str):
        return None
    return _Claims(token_id, _scope_set(scopes), expires_at, binding)


# --- the store ---------------------------------------------------------------------------------


class TokenStore:
    """Creates, lists, revokes and verifies API tokens; issues and checks SSE tickets.

    One instance per process. It remembers tokens it revoked (effective at once here) and caches
    rows for ROW_CACHE_SECONDS (revocations by other processes apply within that).
    """

    def __init__(self, db: Database, clock: Clock, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a TokenStore needs at least one signing key")
        verify_order = list(reversed(keys))  # itsdangerous signs with the last key; ours is the first
        self._db = db
        self._clock = clock
        self._tokens = URLSafeTimedSerializer(verify_order, salt=TOKEN_SALT)
        self._tickets = URLSafeSerializer(verify_order, salt=TICKET_SALT)
        self._rows: dict[int, tuple[float, _Row]] = {}
        self._revoked_here: set[int] = set()
        self._touched: dict[int, float] = {}
        self._good_signatures: dict[str, tuple[_Claims, str]] = {}

    # -- management --

    async def create(self, name: str, scopes: Iterable[str], ttl_seconds: float | None) -> CreatedToken:
        """A new token; its text is returned here once and never stored."""
        name, chosen = _clean_name(name), normalize_scopes(scopes)
        _check_ttl(ttl_seconds)
        now = self._clock.now()
        expires_at = None if ttl_seconds is None else now + ttl_seconds
        async with self._db.transaction() as conn:
            cursor = await conn.execute(
                "INSERT INTO api_tokens (name, scopes, secret_hash, created_at, expires_at, random_bits)"
                " VALUES (?, ?, '', ?, ?, ?)",
                (name, orjson.dumps(chosen).decode(), now, expires_at, RANDOM_BYTES * 8),
            )
            token_id = cursor.lastrowid
            assert token_id is not None
            payload = {"id": token_id, "s": list(chosen), "r": secrets.token_urlsafe(RANDOM_BYTES)}
            token = TOKEN_PREFIX + self._tokens.dumps(payload)
            await conn.execute("UPDATE api_tokens SET secret_hash = ? WHERE id = ?",
                               (_digest(token), token_id))
        return CreatedToken(token_id, name, chosen, expires_at, token)

    async def list(self) -> list[TokenInfo]:
        """Every token, revoked and expired ones included, oldest first."""
        rows = await self._db.fetchall(f"SELECT {_INFO_COLUMNS} FROM api_tokens ORDER BY id")
        return [_info(row) for row in rows]

    async def revoke(self, token_id: int) -> TokenInfo:
        """Revoke at once; revoking twice keeps the first time. UnknownToken if there is no such id."""
        if not 1 <= token_id <= MAX_ID:
            raise UnknownToken(token_id)
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (self._clock.now(), token_id),
            )
            rows = list(await conn.execute_fetchall(f"SELECT {_INFO_COLUMNS} FROM api_tokens WHERE id = ?",
                                                    (token_id,)))
        if not rows:
            raise UnknownToken(token_id)
        # Remembered, not just evicted: a verify() that read the row before this commit cannot re-cache it.
        self._revoked_here.add(token_id)
        self._rows.pop(token_id, None)
        return _info(rows[0])

    # -- requests --

    async def verify(self, token: str) -> Principal | None:
        """The token's principal; None if it is malformed, tampered, foreign, unknown, expired or revoked."""
        verified = self._signed(token)
        if verified is None:
            return None
        claims, digest = verified
        row = self._cached(claims.token_id) or await self._row(claims.token_id)  # a hit awaits nothing
        # Both are hex digests (ASCII), which compare_digest takes as they are.
        if row is None or not hmac.compare_digest(row.secret_hash, digest):
            return None
        return self._principal(row, row.scopes)

    def _signed(self, token: str) -> tuple[_Claims, str] | None:
        """The claims and digest of a token whose signature checks out, remembered per token text.

        A signature that verified once always will (the keys are fixed for the store's life), and
        checking it was a quarter of a cached request's cost. Only good signatures are remembered, so
        garbage cannot grow the memo; revocation and expiry are still checked on every call.
        """
        known = self._good_signatures.get(token)
        if known is None:
            claims = _claims(_load(self._tokens, token, TOKEN_PREFIX))
            if claims is None:
                return None
            if len(self._good_signatures) >= _MAX_REMEMBERED:
                self._good_signatures.clear()
            known = self._good_signatures[token] = (claims, _digest(token))
        return known

    async def touch(self, principal: Principal) -> None:
        """Record that the token was used: at most one write per token per TOUCH_INTERVAL."""
        now = self._clock.monotonic()
        last = self._touched.get(principal.token_id)
        if last is not None and now - last < TOUCH_INTERVAL:
            return
        self._touched[principal.token_id] = now
        try:
            async with self._db.transaction() as conn:
                await conn.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?",
                                   (self._clock.now(), principal.token_id))
        except sqlite3.OperationalError as err:
            # Bookkeeping only: a busy database must not fail the request that was already allowed.
            log.warning("could not record the use of token %d: %s", principal.token_id, err)

    async def issue_ticket(self, principal: Principal) -> tuple[str, float]:
        """A ticket for `?ticket=` (EventSource cannot send headers), valid TICKET_TTL seconds.

        UnknownToken if the principal's token is gone (deleted from the database since it was verified).
        """
        row = await self._row(principal.token_id)
        if row is None:
            raise UnknownToken(principal.token_id)
        expires_at = self._clock.now() + TICKET_TTL
        payload = {"id": principal.token_id, "s": sorted(principal.scopes), "exp": expires_at,
                   "b": _binding(row.secret_hash, expires_at)}
        return TICKET_PREFIX + self._tickets.dumps(payload), expires_at

    async def verify_ticket(self, ticket: str) -> Principal | None:
        """The principal a ticket was issued to; None if it is malformed, tampered, expired, not bound
        to its token (forged with a signing key), or its token has since been revoked or has expired."""
        claims = _claims(_load(self._tickets, ticket, TICKET_PREFIX))
        if claims is None or claims.expires_at is None or claims.expires_at < self._clock.now():
            return None
        row = await self._row(claims.token_id)
        if row is None or claims.binding is None:
            return None
        expected = _binding(row.secret_hash, claims.expires_at)
        if not hmac.compare_digest(claims.binding.encode(), expected.encode()):
            return None
        return self._principal(row, claims.scopes & row.scopes)

    async def legacy_count(self) -> int:
        """Live tokens made before tokens had a random part (see docs/operations.md, "Tokens")."""
        return int(await self._db.fetchval(
            "SELECT count(*) FROM api_tokens WHERE random_bits = 0 AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at >= ?)", (self._clock.now(),)) or 0)

    # -- internals --

    def _principal(self, row: _Row, scopes: frozenset[str]) -> Principal | None:
        if row.id in self._revoked_here or row.revoked_at is not None:
            return None
        if _expired(row.expires_at, self._clock.now()):
            return None
        if scopes is row.scopes:  # a token's own principal: one per row read, not one per request
            return row.principal
        return Principal(row.id, row.name, scopes)

    def _cached(self, token_id: int) -> _Row | None:
        entry = self._rows.get(token_id)
        if entry is None or self._clock.monotonic() - entry[0] >= ROW_CACHE_SECONDS:
            return None
        return entry[1]

    async def _row(self, token_id: int) -> _Row | None:
        """The token's row, read at most once per ROW_CACHE_SECONDS; misses are not cached (a token
        just created by the CLI must work at once)."""
        cached = self._cached(token_id)
        if cached is not None:
            return cached
        read_at = self._clock.monotonic()
        record = await self._db.fetchone(f"SELECT {_ROW_COLUMNS} FROM api_tokens WHERE id = ?", (token_id,))
        if record is None:
            self._rows.pop(token_id, None)
            return None
        row = _Row(record["id"], record["name"], _scope_set(orjson.loads(record["scopes"])),
                   record["secret_hash"], record["expires_at"], record["revoked_at"])
        self._rows[token_id] = (read_at, row)
        return row


def _info(record: sqlite3.Row) -> TokenInfo:
    scopes = _scope_set(orjson.loads(record["scopes"]))
    return TokenInfo(
        id=record["id"],
        name=record["name"],
        scopes=tuple(scope for scope in SCOPES if scope in scopes),
        created_at=record["created_at"],
        expires_at=record["expires_at"],
        revoked_at=record["revoked_at"],
        last_used_at=record["last_used_at"],
        legacy=record["random_bits"] == 0,
    )
