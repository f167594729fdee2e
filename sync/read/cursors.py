"""Keyset cursors: opaque, signed positions in a list, checked before they reach SQL.

A cursor is the last key seen plus a fingerprint of the filters it belongs to, signed so a tampered or
foreign cursor is refused instead of silently restarting or mixing two walks (docs/api.md, pagination).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sync.read.filters import MAX_TEXT, RFC3339
from sync.types import MAX_ID

_MAX_CURSOR = 512


class InvalidCursor(ValueError):
    """A cursor that is malformed, tampered with, or belongs to another list or set of filters."""


class CursorCodec:
    """Opaque cursors: base64url(JSON [key, fingerprint]) "." base64url(HMAC). The first key signs,
    all verify, so rotating the gateway's signing keys keeps the cursors clients hold working."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a CursorCodec needs at least one key")
        self._keys = [hashlib.sha256(b"lore-gateway.cursor|" + k.encode()).digest() for k in keys]

    def encode(self, key: list[Any], fingerprint: str) -> str:
        body = orjson.dumps([key, _short_hash(fingerprint)])
        return f"{_b64(body)}.{_b64(self._mac(self._keys[0], body))}"

    def decode(self, text: str, fingerprint: str) -> list[Any]:
        """The key the cursor continues after; InvalidCursor if it is not one of ours for this list."""
        body = self._verified(text)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidCursor("malformed") from None
        if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[0], list)):
            raise InvalidCursor("malformed")
        if payload[1] != _short_hash(fingerprint):
            raise InvalidCursor("it belongs to another list or other filters: start again without it")
        return payload[0]

    def _verified(self, text: str) -> bytes:
        body_text, dot, mac_text = text.partition(".")
        if not dot or len(text) > _MAX_CURSOR or not text.isascii():
            raise InvalidCursor("malformed")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (binascii.Error, ValueError):
            raise InvalidCursor("malformed") from None
        if not any(hmac.compare_digest(mac, self._mac(k, body)) for k in self._keys):
            raise InvalidCursor("not a cursor this gateway issued")
        return body

    @staticmethod
    def _mac(key: bytes, body: bytes) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()[:16]


def _short_hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=9).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# Typed keys: a signed cursor is ours, but its key is still checked before it reaches SQL.


@dataclass(frozen=True)
class ItemKey:
    """Position in a list of issues or MRs, sorted by (updated_at desc, iid desc)."""

    updated_at: str
    iid: int

    def to_json(self) -> list[Any]:
        return [self.updated_at, self.iid]

    @classmethod
    def from_json(cls, key: list[Any]) -> ItemKey:
        if len(key) == 2 and isinstance(key[0], str) and _is_id(key[1]) and RFC3339.fullmatch(key[0]):
            return cls(key[0], key[1])
        raise InvalidCursor("malformed")


@dataclass(frozen=True)
class ThreadKey:
    """Position in an item's discussions: the last thread's place in GitLab's order, and its id, so a
    thread removed before it does not shift the walk."""

    seq: int
    discussion_id: str

    def to_json(self) -> list[Any]:
        return [self.seq, self.discussion_id]

    @classmethod
    def from_json(cls, key: list[Any]) -> ThreadKey:
        if len(key) == 2 and _is_id(key[0], low=0) and isinstance(key[1], str) and len(key[1]) <= MAX_TEXT:
            return cls(key[0], key[1])
        raise InvalidCursor("malformed")


def project_key_from_json(key: list[Any]) -> int:
    if len(key) == 1 and _is_id(key[0]):
        return key[0]
    raise InvalidCursor("malformed")


def _is_id(value: Any, *, low: int = 1) -> bool:
    return type(value) is int and low <= value <= MAX_ID
