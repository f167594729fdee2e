"""Configuration: one TOML file, overridden key by key by `LORE_GATEWAY_<SECTION>_<KEY>` env vars.

One module because the records, the key set and the loader that checks them change together: a new key
touches all three, and every check fails through the one ConfigError path.

This module owns the whole key set, its defaults and its validation, so every bad value fails at
start-up as one `ConfigError` naming the key (the CLI turns it into exit 2), never later in a run.
Secrets come from env, `*_file` keys or inline TOML, and never appear in an error message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import math
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from limits import parse_many

_MINUTE = 60.0
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR


class ConfigError(ValueError):
    """A bad configuration value: a one-line sentence naming the key, never a secret's value.

    A ValueError, so it also works as an argparse `type=` failure (e.g. `--ttl 30x`).
    """


# --- the records -------------------------------------------------------------------------------


def _default_data_dir() -> Path:
    return Path("~/.local/share/lore-gateway").expanduser()


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# What every surface says when `gitlab.enabled` is false (CLI, status, /readyz, the scheduler, the runner).
SYNC_DISABLED = "sync is disabled until gitlab.url and a token are set"


@dataclass(frozen=True)
class GitLabConfig:
    url: str | None = None
    token: str | None = field(default=None, repr=False)
    projects: tuple[str, ...] = ()
    concurrency: int = 8
    timeout: float = 30.0
    touch_interval: float = _MINUTE  # GitLab's ThrottledTouch::TOUCH_INTERVAL
    requests_per_minute: int = 0  # a budget across stages and processes (sync/gitlab/budget.py); 0 = none

    @property
    def enabled(self) -> bool:
        """Sync needs both a GitLab URL and a token; without them the gateway only serves (SYNC_DISABLED)."""
        return bool(self.url and self.token)


@dataclass(frozen=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=_default_data_dir)
    log_level: str = "info"
    # Proxies whose X-Forwarded-For / Forwarded name the client (gateway/proxies.py); none by default.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    max_sse_clients: int = 5000  # open event streams in this process; beyond: 503
    max_sse_per_token: int = 50  # open event streams per token (tickets count toward it); beyond: 429
    # Closes a connection that has not sent a complete request head this long after it opened or after
    # its last response: aiohttp's keepalive_timeout, which is both the idle and the header-read limit.
    keepalive_timeout: float = 75.0


@dataclass(frozen=True)
class WebhookConfig:
    secrets: tuple[str, ...] = field(default=(), repr=False)
    signing_tokens: tuple[str, ...] = field(default=(), repr=False)
    max_body_bytes: int = 26214400  # GitLab sends up to 25 MB (docs/webhooks.md)
    # The whole body must arrive this long after the request head (also for POST /mcp and /sync): GitLab
    # gives up on a delivery after 10 s by default, so only a stalled or hostile sender takes longer
    # (docs/webhooks.md).
    body_timeout: float = 30.0
    retention: float = 7 * _DAY
    fsync: bool = False  # inbox commits with synchronous=FULL: an accepted webhook survives a power cut
    url: str | None = None  # where GitLab posts (`hooks install`, the hook health check)


@dataclass(frozen=True)
class SyncConfig:
    interval: float = 30 * _MINUTE
    debounce: float = 2.0
    max_wait: float = 30.0
    profile: str = "balanced"
    backoff_base: float = _MINUTE
    backoff_max: float = 4 * _HOUR
    stale_lock: float = 10 * _MINUTE
    reconcile_interval: float = 6 * _HOUR


@dataclass(frozen=True)
class AuthConfig:
    signing_keys: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class RateLimitConfig:
    storage: str = "memory://"
    api: str = "600/minute"
    webhook: str = "6000/minute"
    fail_open: bool = True
    strict: bool = False  # with Redis: every hit a round trip (exact), not local counts flushed (bounded)

    def __repr__(self) -> str:
        # A redis:// storage URL may carry a password.
        return (
            f"RateLimitConfig(storage={redact_url(self.storage)!r}, api={self.api!r}, "
            f"webhook={self.webhook!r}, fail_open={self.fail_open!r}, strict={self.strict!r})"
        )


@dataclass(frozen=True)
class RedisConfig:
    url: str | None = None

    def __repr__(self) -> str:
        return f"RedisConfig(url={redact_url(self.url)!r})"


@dataclass(frozen=True)
class ExpertsConfig:
    mr_author_weight: float = 1.0
    mr_author_half_life: float = 180 * _DAY
    diff_note_weight: float = 0.5
    diff_note_half_life: float = 90 * _DAY
    review_weight: float = 0.7
    review_half_life: float = 90 * _DAY
    stale_after: float = 180 * _DAY


@dataclass(frozen=True)
class EmbeddingsConfig:
    url: str | None = None
    model: str = "nomic-embed-text"
    batch_size: int = 32


@dataclass(frozen=True)
class McpConfig:
    max_result_tokens: int = 8000  # every MCP tool result stays under this, at about 4 characters a token


@dataclass(frozen=True)
class ChangesConfig:
    retention: float = 30 * _DAY  # change-feed rows (tombstones included); older cursors are expired


@dataclass(frozen=True)
class Config:
    gitlab: GitLabConfig = field(default_factory=GitLabConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    embeddings: EmbeddingsConfig = field(default_factory=EmbeddingsConfig)
    mcp: McpConfig = field(default_factory=McpConfig)
    changes: ChangesConfig = field(default_factory=ChangesConfig)
    source: Path | None = None

    @property
    def db_path(self) -> Path:
        return self.gateway.data_dir / "lore.db"


# --- the key set -------------------------------------------------------------------------------

_KEYS: dict[str, frozenset[str]] = {
    "gitlab": frozenset({"url", "token", "token_file", "projects", "concurrency", "timeout",
                         "touch_interval", "requests_per_minute"}),
    "gateway": frozenset(
        {"host", "port", "data_dir", "log_level", "trusted_proxies", "max_sse_clients", "max_sse_per_token",
         "keepalive_timeout"}
    ),
    "webhook": frozenset(
        {"secrets", "secrets_file", "signing_tokens", "signing_tokens_file", "max_body_bytes", "body_timeout",
         "retention", "fsync", "url"}
    ),
    "sync": frozenset(
        {"interval", "debounce", "max_wait", "profile", "backoff_base", "backoff_max", "stale_lock",
         "reconcile_interval"}
    ),
    "auth": frozenset({"signing_keys", "signing_keys_file"}),
    "ratelimit": frozenset({"storage", "api", "webhook", "fail_open", "strict"}),
    "redis": frozenset({"url"}),
    "experts": frozenset(
        {
            "mr_author_weight",
            "mr_author_half_life",
            "diff_note_weight",
            "diff_note_half_life",
            "review_weight",
            "review_half_life",
            "stale_after",
        }
    ),
    "embeddings": frozenset({"url", "model", "batch_size"}),
    "mcp": frozenset({"max_result_tokens"}),
    "changes": frozenset({"retention"}),
}

ENV_PREFIX = "LORE_GATEWAY_"
CONFIG_ENV = "LORE_GATEWAY_CONFIG"
_ENV_NAMES: dict[str, tuple[str, str]] = {
    f"{ENV_PREFIX}{section.upper()}_{key.upper()}": (section, key)
    for section, keys in _KEYS.items()
    for key in keys
}
# LORE_GATEWAY_GITLAB_TOKEN needs no entry here: it is simply the env form of gitlab.token.
_ENV_NOT_KEYS = frozenset({CONFIG_ENV})

_LOG_LEVELS = ("debug", "info", "warning", "error")
_PROFILES = ("fast", "balanced", "full")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_PROJECT = re.compile(r"\d+|[\w.-]+(/[\w.-]+)+")
_MAX_BODY_LIMIT = 64 * 1024 * 1024
_MAX_SSE = 1_000_000  # far beyond any descriptor limit; a typo of a few zeros still fails
# A signing key, webhook secret or whsec_ key shorter than this is guessable or below what GitLab itself
# makes: GitLab's signing tokens are whsec_ + base64 of 32 random bytes (gitlab-org/gitlab!231325).
MIN_SECRET_BYTES = 32


# --- durations ---------------------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": _MINUTE, "h": _HOUR, "d": _DAY}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_DURATION_HINT = "use e.g. 500ms, 2s, 30m, 12h, 30d"


def parse_duration(text: str | int | float) -> float:
    """'500ms', '2s', '30m', '12h', '30d' (or a bare number, from TOML or a string) -> seconds."""
    if isinstance(text, str):
        match = _DURATION.fullmatch(text.strip())
        if match is None:
            raise ConfigError(f"{text!r} is not a duration ({_DURATION_HINT})")
        seconds = float(match[1]) * _UNITS[match[2] or "s"]
    elif isinstance(text, int | float) and not isinstance(text, bool):
        try:
            seconds = float(text)
        except OverflowError:
            seconds = math.inf
    else:
        raise ConfigError(f"{_show(text)} is not a duration ({_DURATION_HINT})")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{text!r} is not a duration ({_DURATION_HINT})")
    return seconds


# --- reading one section -----------------------------------------------------------------------

_MISSING: Any = object()


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _env_var(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def _pair_of(key: str) -> str:
    return key.removesuffix("_file") if key.endswith("_file") else f"{key}_file"


class _Section:
    """One section's values (TOML, with env on top) and typed readers whose errors name the key."""

    def __init__(self, name: str, toml: Mapping[str, object], env: Mapping[str, str]) -> None:
        self.name = name
        self._env = dict(env)
        # Setting either of `x` / `x_file` in env replaces both in the file, so an env token
        # overrides a file's token_file instead of clashing with it.
        shadowed = {_pair_of(key) for key in self._env} | set(self._env)
        self._toml = {key: value for key, value in toml.items() if key not in shadowed}

    def has(self, key: str) -> bool:
        return key in self._env or key in self._toml

    def label(self, key: str) -> str:
        dotted = f"{self.name}.{key}"
        return f"{dotted} (env {_env_var(self.name, key)})" if key in self._env else dotted

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.label(key)}: {problem}")

    def _get(self, key: str) -> tuple[Any, bool]:
        if key not in _KEYS[self.name]:
            raise KeyError(f"{self.name}.{key} is not in the key set")
        if key in self._env:
            return self._env[key], True
        return self._toml.get(key, _MISSING), False

    def string(self, key: str, default: str | None, *, secret: bool = False) -> str | None:
        value, _ = self._get(key)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            self.fail(key, "expected a string" + ("" if secret else f", got {_show(value)}"))
        value = value.strip()
        if not value:
            self.fail(key, "must not be empty (leave the key out to use the default)")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = (self.string(key, default) or default).lower()
        if value not in choices:
            self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value, from_env = self._get(key)
        if value is _MISSING:
            return default
        if from_env:
            try:
                value = int(value.strip())
            except ValueError:
                self.fail(key, f"expected an integer, got {_show(value)}")
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {_show(value)}")
        if not low <= value <= high:
            self.fail(key, f"{value} is out of range ({low}..{high})")
        return value

    def number(self, key: str, default: float, low: float = 0.0) -> float:
        value, from_env = self._get(key)
        if value is _MISSING:
            return default
        if from_env:
            try:
                value = float(value.strip())
            except ValueError:
                self.fail(key, f"expected a number, got {_show(value)}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"expected a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number) or number < low:
            self.fail(key, f"{_show(value)} is not a finite number of at least {low}")
        return number

    def boolean(self, key: str, default: bool) -> bool:
        value, from_env = self._get(key)
        if value is _MISSING:
            return default
        if from_env and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {_show(value)}")
        return value

    def duration(self, key: str, default: float, *, allow_zero: bool = False) -> float:
        value, _ = self._get(key)
        if value is _MISSING:
            return default
        try:
            seconds = parse_duration(value)
        except ConfigError as err:
            self.fail(key, str(err))
        if seconds == 0 and not allow_zero:
            self.fail(key, "must be longer than zero")
        return seconds

    def items(self, key: str, *, secret: bool = False) -> tuple[object, ...] | None:
        """A TOML array, or a comma-separated env string."""
        value, from_env = self._get(key)
        if value is _MISSING:
            return None
        if from_env:
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if not isinstance(value, list):
            hint = "" if secret else f", got {_show(value)}"
            self.fail(key, f'expected a list such as ["a", "b"]{hint}')
        return tuple(value)

    def strings(self, key: str, *, secret: bool = False) -> tuple[str, ...]:
        values = self.items(key, secret=secret) or ()
        for number, value in enumerate(values, 1):
            if not isinstance(value, str) or not value.strip():
                shown = "" if secret else f": {_show(value)}"
                self.fail(key, f"entry {number} is not a non-empty string{shown}")
        return tuple(str(value).strip() for value in values)

    def path(self, key: str) -> Path | None:
        text = self.string(key, None)
        return None if text is None else Path(text).expanduser()


# --- secrets -----------------------------------------------------------------------------------


def _read_text(section: _Section, key: str) -> str:
    path = section.path(key)
    assert path is not None
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        section.fail(key, f"cannot read {path}: {err.strerror or err}")
    except UnicodeDecodeError:
        section.fail(key, f"cannot read {path}: not UTF-8 text")


def _only_one(section: _Section, key: str) -> None:
    file_key = f"{key}_file"
    if section.has(key) and section.has(file_key):
        section.fail(key, f"set {section.name}.{key} or {section.name}.{file_key}, not both")


def _secret_list(section: _Section, key: str) -> tuple[str, ...]:
    """Inline list / env comma list, or `<key>_file` with one secret per non-empty line."""
    _only_one(section, key)
    file_key = f"{key}_file"
    if not section.has(file_key):
        return section.strings(key, secret=True)
    lines = _read_text(section, file_key).splitlines()
    values = tuple(line.strip() for line in lines if line.strip())
    if not values:
        section.fail(file_key, f"{section.path(file_key)} holds no {key}")
    return values


def _token(section: _Section) -> str | None:
    _only_one(section, "token")
    if not section.has("token_file"):
        return section.string("token", None, secret=True)
    token = _read_text(section, "token_file").strip()
    if not token or any(char.isspace() for char in token):
        section.fail("token_file", f"{section.path('token_file')} must hold one token and nothing else")
    return token


def short_secret(value: str) -> int | None:
    """The byte length of a secret shorter than MIN_SECRET_BYTES, or None when it is long enough."""
    size = len(value.encode("utf-8"))
    return size if size < MIN_SECRET_BYTES else None


def signing_token_key_bytes(token: str) -> int:
    """How many bytes the key of a (validated) whsec_ signing token decodes to."""
    return len(base64.b64decode(token.partition("_")[2]))


def _check_signing_keys(section: _Section, keys: tuple[str, ...]) -> None:
    key = "signing_keys_file" if section.has("signing_keys_file") else "signing_keys"
    for number, value in enumerate(keys, 1):
        if (size := short_secret(value)) is not None:
            section.fail(key, f"entry {number} is {size} bytes long; a signing key needs at least "
                              f"{MIN_SECRET_BYTES} (make one with: python3 -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))')")


def _check_signing_tokens(section: _Section, tokens: tuple[str, ...]) -> None:
    key = "signing_tokens_file" if section.has("signing_tokens_file") else "signing_tokens"
    for number, token in enumerate(tokens, 1):
        prefix, _, encoded = token.partition("_")
        try:
            valid = prefix == "whsec" and len(base64.b64decode(encoded, validate=True)) > 0
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            section.fail(key, f"entry {number} is not a signing token (expected whsec_ followed by base64)")


# --- URLs --------------------------------------------------------------------------------------


def redact_url(url: str | None) -> str | None:
    """The URL with any user:password replaced by ***, safe for logs and status output."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _http_url(section: _Section, key: str) -> str | None:
    url = section.string(key, None)
    if url is None:
        return None
    # A value with an "@" may hold a password, whatever shape it has: never echo it.
    shown = "the URL" if "@" in url else _show(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it is what validates the port
    except ValueError:
        section.fail(key, f"{shown} is not a valid URL")
    if "@" in parts.netloc:
        section.fail(key, "must not contain credentials (use the token settings instead)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        section.fail(key, f"{shown} needs an http:// or https:// scheme and a host")
    return url.rstrip("/")


def _store_url(section: _Section, key: str, schemes: tuple[str, ...]) -> str | None:
    """A memory:// or redis:// URL; never echoed, since a redis URL may carry a password."""
    url = section.string(key, None, secret=True)
    if url is None:
        return None
    allowed = tuple(f"{scheme}://" for scheme in schemes)
    if not url.startswith(allowed):
        section.fail(key, f"must start with {' or '.join(allowed)}")
    try:
        urlsplit(url).port  # noqa: B018 - reading it is what validates the port
    except ValueError:
        section.fail(key, "the URL has an invalid port")
    return url


def _rate(section: _Section, key: str, default: str) -> str:
    rate = section.string(key, default) or default
    try:
        items = parse_many(rate)
    except ValueError:
        items = []
    if len(items) != 1 or items[0].amount < 1:
        section.fail(key, f"{rate!r} is not a rate limit (use e.g. 600/minute or 10/second)")
    return rate


# --- building each section ---------------------------------------------------------------------


def _projects(section: _Section) -> tuple[str, ...]:
    """Paths ("group/sub/project") or numeric ids, as strings, duplicates dropped, order kept."""
    projects: list[str] = []
    for value in section.items("projects") or ():
        valid = isinstance(value, str | int) and not isinstance(value, bool)
        text = str(value).strip().strip("/")
        if not valid or not _PROJECT.fullmatch(text):
            section.fail("projects", f"{_show(value)} is not a project path (group/project) or numeric id")
        if text not in projects:
            projects.append(text)
    return tuple(projects)


def _gitlab(section: _Section) -> GitLabConfig:
    default = GitLabConfig()
    return GitLabConfig(
        url=_http_url(section, "url"),
        token=_token(section),
        projects=_projects(section),
        concurrency=section.integer("concurrency", default.concurrency, 1, 64),
        timeout=section.duration("timeout", default.timeout),
        touch_interval=section.duration("touch_interval", default.touch_interval, allow_zero=True),
        requests_per_minute=section.integer("requests_per_minute", default.requests_per_minute, 0, 1_000_000),
    )


def _gateway(section: _Section) -> GatewayConfig:
    default = GatewayConfig()
    return GatewayConfig(
        host=section.string("host", default.host) or default.host,
        port=section.integer("port", default.port, 1, 65535),
        data_dir=section.path("data_dir") or default.data_dir,
        log_level=section.choice("log_level", default.log_level, _LOG_LEVELS),
        trusted_proxies=_networks(section, "trusted_proxies"),
        max_sse_clients=section.integer("max_sse_clients", default.max_sse_clients, 1, _MAX_SSE),
        max_sse_per_token=section.integer("max_sse_per_token", default.max_sse_per_token, 1, _MAX_SSE),
        keepalive_timeout=section.duration("keepalive_timeout", default.keepalive_timeout),
    )


def _networks(section: _Section, key: str) -> tuple[IPNetwork, ...]:
    """CIDRs ("10.0.0.0/8", "::1/128") or bare addresses (one host each)."""
    networks = []
    for number, text in enumerate(section.strings(key), 1):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            section.fail(key, f"entry {number} is not an IP address or CIDR: {_show(text)}")
    return tuple(networks)


def _webhook(section: _Section) -> WebhookConfig:
    default = WebhookConfig()
    signing_tokens = _secret_list(section, "signing_tokens")
    _check_signing_tokens(section, signing_tokens)
    return WebhookConfig(
        secrets=_secret_list(section, "secrets"),
        signing_tokens=signing_tokens,
        max_body_bytes=section.integer("max_body_bytes", default.max_body_bytes, 1, _MAX_BODY_LIMIT),
        body_timeout=section.duration("body_timeout", default.body_timeout),
        retention=section.duration("retention", default.retention),
        fsync=section.boolean("fsync", default.fsync),
        url=_http_url(section, "url"),
    )


def _sync(section: _Section) -> SyncConfig:
    default = SyncConfig()
    config = SyncConfig(
        interval=section.duration("interval", default.interval),
        debounce=section.duration("debounce", default.debounce, allow_zero=True),
        max_wait=section.duration("max_wait", default.max_wait),
        profile=section.choice("profile", default.profile, _PROFILES),
        backoff_base=section.duration("backoff_base", default.backoff_base),
        backoff_max=section.duration("backoff_max", default.backoff_max),
        stale_lock=section.duration("stale_lock", default.stale_lock),
        reconcile_interval=section.duration("reconcile_interval", default.reconcile_interval),
    )
    if config.backoff_max < config.backoff_base:
        section.fail("backoff_max", "must not be shorter than sync.backoff_base")
    return config


def _auth(section: _Section) -> AuthConfig:
    keys = _secret_list(section, "signing_keys")
    _check_signing_keys(section, keys)
    return AuthConfig(signing_keys=keys)


def _ratelimit(section: _Section) -> RateLimitConfig:
    default = RateLimitConfig()
    return RateLimitConfig(
        storage=_store_url(section, "storage", ("memory", "redis", "rediss")) or default.storage,
        api=_rate(section, "api", default.api),
        webhook=_rate(section, "webhook", default.webhook),
        fail_open=section.boolean("fail_open", default.fail_open),
        strict=section.boolean("strict", default.strict),
    )


def _redis(section: _Section) -> RedisConfig:
    return RedisConfig(url=_store_url(section, "url", ("redis", "rediss")))


def _experts(section: _Section) -> ExpertsConfig:
    default = ExpertsConfig()
    return ExpertsConfig(
        mr_author_weight=section.number("mr_author_weight", default.mr_author_weight),
        mr_author_half_life=section.duration("mr_author_half_life", default.mr_author_half_life),
        diff_note_weight=section.number("diff_note_weight", default.diff_note_weight),
        diff_note_half_life=section.duration("diff_note_half_life", default.diff_note_half_life),
        review_weight=section.number("review_weight", default.review_weight),
        review_half_life=section.duration("review_half_life", default.review_half_life),
        stale_after=section.duration("stale_after", default.stale_after),
    )


def _embeddings(section: _Section) -> EmbeddingsConfig:
    default = EmbeddingsConfig()
    return EmbeddingsConfig(
        url=_http_url(section, "url"),
        model=section.string("model", default.model) or default.model,
        batch_size=section.integer("batch_size", default.batch_size, 1, 1024),
    )


def _mcp(section: _Section) -> McpConfig:
    # Below 1,000 tokens a single condensed note or thread header would not fit; Claude Code refuses
    # tool results over 25,000 tokens, so a larger budget only produces results a client drops.
    return McpConfig(max_result_tokens=section.integer("max_result_tokens", McpConfig.max_result_tokens,
                                                       1000, 25000))


def _changes(section: _Section) -> ChangesConfig:
    return ChangesConfig(retention=section.duration("retention", ChangesConfig().retention))


# --- loading -----------------------------------------------------------------------------------


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if path is None:
        path = env.get(CONFIG_ENV) or None
    return None if path is None else Path(path).expanduser().absolute()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    except tomllib.TOMLDecodeError as err:
        # tomllib's messages give the line and column and never quote the file's content.
        raise ConfigError(f"{path}: invalid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML: the file is not UTF-8 text") from None


def _toml_sections(document: Mapping[str, Any]) -> dict[str, Mapping[str, object]]:
    sections: dict[str, Mapping[str, object]] = {}
    for name, table in document.items():
        if name not in _KEYS and isinstance(table, dict):
            raise ConfigError(f"unknown section [{name}]{_suggest(name, list(_KEYS))}")
        if name not in _KEYS:
            homes = " or ".join(f"[{section}]" for section, keys in _KEYS.items() if name in keys)
            where = f", here {homes}" if homes else ""
            raise ConfigError(f"unknown key {name}: keys belong in a section{where}")
        if not isinstance(table, dict):
            raise ConfigError(f"{name}: expected a table, written [{name}]")
        for key in table:
            if key not in _KEYS[name]:
                known = [f"{name}.{known}" for known in _KEYS[name]]
                raise ConfigError(f"unknown key {name}.{key}{_suggest(f'{name}.{key}', known)}")
        sections[name] = table
    return sections


def _env_sections(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {name: {} for name in _KEYS}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var in _ENV_NOT_KEYS:
            continue
        if var not in _ENV_NAMES:
            hint = _suggest(var, list(_ENV_NAMES))
            raise ConfigError(f"unknown setting {var}: it names no configuration key{hint}")
        # An empty variable counts as unset, as in most shells' and systemd's conventions.
        if value.strip():
            section, key = _ENV_NAMES[var]
            sections[section][key] = value
    return sections


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (or $LORE_GATEWAY_CONFIG, or nothing), apply env overrides, validate every key."""
    env = os.environ if env is None else env
    source = _config_path(path, env)
    toml = _toml_sections(_read_toml(source)) if source is not None else {}
    overrides = _env_sections(env)
    sections = {name: _Section(name, toml.get(name, {}), overrides[name]) for name in _KEYS}
    return Config(
        gitlab=_gitlab(sections["gitlab"]),
        gateway=_gateway(sections["gateway"]),
        webhook=_webhook(sections["webhook"]),
        sync=_sync(sections["sync"]),
        auth=_auth(sections["auth"]),
        ratelimit=_ratelimit(sections["ratelimit"]),
        redis=_redis(sections["redis"]),
        experts=_experts(sections["experts"]),
        embeddings=_embeddings(sections["embeddings"]),
        mcp=_mcp(sections["mcp"]),
        changes=_changes(sections["changes"]),
        source=source,
    )


def ensure_data_dir(config: Config) -> Path:
    """Create the data directory if needed and prove it writable; the store cannot start otherwise."""
    data_dir = config.gateway.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # private: sync.store.db.make_private
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".write-check-"):
            pass
    except FileExistsError:
        raise ConfigError(f"gateway.data_dir: {data_dir} exists and is not a directory") from None
    except OSError as err:
        raise ConfigError(f"gateway.data_dir: {data_dir} is not writable: {err.strerror or err}") from None
    return data_dir


def config_warnings(config: Config) -> tuple[str, ...]:
    """Weak but working settings, one sentence each (never a secret's value): `serve` prints them."""
    notes = []
    for number, secret in enumerate(config.webhook.secrets, 1):
        if (size := short_secret(secret)) is not None:
            notes.append(f"webhook.secrets: entry {number} is {size} bytes long; use at least "
                         f"{MIN_SECRET_BYTES} random bytes' worth (e.g. python3 -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")
    for number, token in enumerate(config.webhook.signing_tokens, 1):
        if (size := signing_token_key_bytes(token)) < MIN_SECRET_BYTES:
            notes.append(f"webhook.signing_tokens: entry {number} holds a {size}-byte key; GitLab makes "
                         f"{MIN_SECRET_BYTES}-byte ones (whsec_ + base64 of {MIN_SECRET_BYTES} random bytes)")
    return tuple(notes)
