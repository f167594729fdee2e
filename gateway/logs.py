"""Structured logs: one JSON object per line, a request id on every request, and no secrets.

The hot path formats nothing: there is no access log (it halved throughput here); a request is logged
only when it answers 5xx or is slow, or at debug level. The request id lives in a ContextVar set by the
middleware (gateway.front): aiohttp runs each request in a task of its own, so the id follows that request, the tasks it
starts, and aiohttp's own "Error handling request" line. Secrets are kept out by what we log (never
headers or query strings) and, as a second line, by scrubbing every line for token-shaped text.
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from aiohttp import web

HEADER = "X-Request-Id"
SLOW_REQUEST = 1.0  # seconds; a plain request slower than this is logged at warning level
REDACTED = "[redacted]"

REQUEST_ID: ContextVar[str | None] = ContextVar("lore_gateway_request_id", default=None)
REQUEST_ID_KEY = web.RequestKey("request_id", str)

log = logging.getLogger("lore_gateway.requests")

# An incoming id is kept only if it is short and plain, so it cannot forge log lines or carry a payload.
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# What a log line must never carry, whatever a library put into a message or an exception text.
_SCRUB = (
    (re.compile(r"\b(lg[wt]_)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),  # our API tokens and SSE tickets
    (re.compile(r"\b(whsec_)[A-Za-z0-9+/=_-]+"), r"\1" + REDACTED),  # webhook signing keys
    (re.compile(r"(?i)\b(bearer\s+)[^\s,;\"']+"), r"\1" + REDACTED),
    (re.compile(r"(?i)\b((?:private-token|x-gitlab-token|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s,;\"']+"),
     r"\1" + REDACTED),
    (re.compile(r"(?i)([?&](?:ticket|token|private_token|access_token|secret)=)[^&\s\"'#]+"), r"\1" + REDACTED),
)
_SENSITIVE_FIELD = re.compile(r"(?i)authorization|secret|password|passwd|cookie|signature|(^|_)(token|ticket|key)$")

_MUTED = {"aiohttp.access": logging.WARNING, "aiosqlite": logging.INFO}

# LogRecord's own attributes: everything else on a record came in through `extra=` and is emitted as a field.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName", "request_id",
}


def scrub(text: str) -> str:
    """`text` with anything token-shaped replaced by [redacted]."""
    for pattern, replacement in _SCRUB:
        text = pattern.sub(replacement, text)
    return text


def _timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds and a `Z`, like every timestamp the gateway emits."""
    ms = round(created * 1000)
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: ts, level, logger, msg, request_id (in a request), extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        line.update(_extras(record))
        if record.exc_info:
            line["exc"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = scrub(self.formatStack(record.stack_info))
        return orjson.dumps(line, default=str).decode()


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, value in record.__dict__.items():
        if name in _RECORD_FIELDS or name.startswith("_"):
            continue
        if _SENSITIVE_FIELD.search(name):
            fields[name] = REDACTED
        elif isinstance(value, str):
            fields[name] = scrub(value)
        else:
            fields[name] = value
    return fields


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours, so configuring twice replaces it instead of printing every line twice."""


def configure(level: str, stream: TextIO | None = None) -> None:
    """JSON lines on `stream` (stderr: journald keeps it) at `level` (debug|info|warning|error)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(handler)
    handler = _JsonHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # Never wanted, whatever the level: aiohttp's access log formats a line per request, and aiosqlite's
    # debug lines repeat every statement with its parameters (webhook bodies, token digests).
    for name, floor in _MUTED.items():
        logging.getLogger(name).setLevel(floor)


# -- the request id ---------------------------------------------------------------------------------


# A random prefix per process and a counter: unique across processes and restarts, and far cheaper per
# request than reading the OS's random source. A request id is a label, not a secret.
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def request_id_from(header: str | None) -> str:
    """The caller's X-Request-Id when it is sane (so ids correlate across proxies), else a new one."""
    if header is not None and _SANE_ID.fullmatch(header):
        return header
    return new_request_id()


def log_request(request: web.Request, status: int, elapsed: float, *, plain: bool) -> None:
    """5xx and slow plain requests at warning; everything at debug. Never headers, never the query.
    `plain` is False for streams, which are long by design (and for requests the client left)."""
    if status >= 500 or (plain and elapsed >= SLOW_REQUEST):
        level = logging.WARNING
    elif log.isEnabledFor(logging.DEBUG):
        level = logging.DEBUG
    else:
        return
    log.log(level, "%s %s -> %d in %.1f ms", request.method, request.path, status, elapsed * 1000,
            extra={"method": request.method, "route": route_of(request), "path": request.path,
                   "status": status, "duration_ms": round(elapsed * 1000, 1)})


def route_of(request: web.Request) -> str:
    """The matched route's canonical path ("/api/v1/projects/{id}"), never the raw URL."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "<unmatched>"

