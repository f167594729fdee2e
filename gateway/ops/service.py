"""Running lore-gateway under systemd: render the units, install them idempotently, detect drift.

One module because rendering, the manifest and the install are one idempotent operation: the manifest
records exactly what rendering produced and the install wrote.

The units in systemd/ are templates, because only the install knows the real executable and config
paths. An install renders them, writes only what differs, and records every file's sha256 in a
manifest, so a second identical install changes nothing and a hand-edited file shows up as drift.
Secrets go to a 0600 env file, never into a unit or a command line; systemctl runs through a
CommandRunner. The one attempt the optional timer runs (`service run`) is gateway/ops/attempt.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from secrets import token_hex
from typing import Any, Literal

import orjson

from gateway.ops.commands import CommandNotFound, CommandRunner, CommandTimeout
from sync import (
    ENV_PREFIX,
    SYNC_DISABLED,
    Config,
    ConfigError,
    config_warnings,
    fsync_dir,
)

DAEMON_UNIT = "lore-gateway.service"
SYNC_UNIT = "lore-gateway-sync.service"
TIMER_UNIT = "lore-gateway-sync.timer"
ENV_FILE_NAME = "lore-gateway.env"
MANIFEST_NAME = "service-manifest.json"
MANIFEST_VERSION = 1
# StateDirectory=lore-gateway: the only place a system install's sandbox may write.
SYSTEM_DATA_DIR = Path("/var/lib/lore-gateway")
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_ENV_DIR = Path("/etc/lore-gateway")


def _template_dir() -> Path:
    """systemd/ of a source checkout, or its copy inside the wheel (force-included as gateway/ops/systemd)."""
    here = Path(__file__).resolve().parent
    packaged = here / "systemd"
    return packaged if packaged.is_dir() else here.parent.parent / "systemd"


TEMPLATE_DIR = _template_dir()
MIN_INTERVAL = 60.0  # a timer's default accuracy is one minute

# The configuration secrets, as (section, key); each travels as LORE_GATEWAY_<SECTION>_<KEY>.
SECRET_KEYS: tuple[tuple[str, str], ...] = (
    ("gitlab", "token"),
    ("webhook", "secrets"),
    ("webhook", "signing_tokens"),
    ("auth", "signing_keys"),
)
# Paths a system unit's sandbox hides (ProtectHome=yes, PrivateTmp=yes).
_HIDDEN_PREFIXES = (Path("/home"), Path("/root"), Path("/run/user"), Path("/tmp"), Path("/var/tmp"))
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")
_SYSTEM_ONLY = "@SYSTEM@"

# How long each systemctl call may take; starting waits for readiness (ExecStartPost, up to 60 s).
_TIMEOUTS = {"daemon-reload": 60.0, "enable": 150.0, "restart": 150.0, "disable": 150.0, "stop": 150.0}
IS_ACTIVE_TIMEOUT = 10.0


class ServiceError(Exception):
    """An install, uninstall or status that cannot go on: a stable code, a message, details for --json."""

    def __init__(self, code: str, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra or {}


# --- what an install is made of -------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceSpec:
    """Everything an install depends on: two equal specs render byte-identical files."""

    command: tuple[str, ...]  # what runs lore-gateway: (executable,) or (python, "-m", "gateway.cli")
    config_path: Path | None
    unit_dir: Path
    env_dir: Path
    user: bool
    timer_only: bool
    interval: float
    profile: str
    data_dir: Path  # where the service keeps lore.db
    # Other LORE_GATEWAY_* values for the env file (a redis:// URL may hold a password: no repr).
    settings: tuple[tuple[str, str], ...] = field(repr=False)
    secrets: tuple[tuple[str, str], ...] = field(repr=False)
    embed_secrets: bool = False

    @property
    def scope(self) -> Literal["system", "user"]:
        return "user" if self.user else "system"

    @property
    def mode(self) -> Literal["daemon", "timer"]:
        return "timer" if self.timer_only else "daemon"

    @property
    def units(self) -> tuple[str, ...]:
        return (SYNC_UNIT, TIMER_UNIT) if self.timer_only else (DAEMON_UNIT,)

    @property
    def primary_unit(self) -> str:
        """The unit that is enabled and started; the timer's service is started by the timer."""
        return TIMER_UNIT if self.timer_only else DAEMON_UNIT

    @property
    def env_file(self) -> Path:
        return self.env_dir / ENV_FILE_NAME

    @property
    def token_source(self) -> Literal["env_file", "unit"]:
        return "unit" if self.embed_secrets else "env_file"

    @property
    def invocation(self) -> tuple[str, ...]:
        """The command line every unit starts with: the executable and the config path, no secret."""
        config = ("--config", str(self.config_path)) if self.config_path is not None else ()
        return (*self.command, *config)


@dataclass(frozen=True)
class RenderedFile:
    path: Path
    content: bytes = field(repr=False)
    mode: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


def default_unit_dir(user: bool) -> Path:
    return Path("~/.config/systemd/user").expanduser() if user else SYSTEM_UNIT_DIR


def default_env_dir(user: bool) -> Path:
    return Path("~/.config/lore-gateway").expanduser() if user else SYSTEM_ENV_DIR


def secret_env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def build_spec(
    config: Config,
    env: Mapping[str, str],
    *,
    command: Sequence[str],
    user: bool = False,
    timer_only: bool = False,
    interval: float | None = None,
    profile: str | None = None,
    unit_dir: Path | None = None,
    env_dir: Path | None = None,
    embed_secrets: bool = False,
) -> ServiceSpec:
    """The install this configuration asks for: the config file by path, the secrets and the
    LORE_GATEWAY_* settings of `env` (the installing shell) copied into the env file."""
    interval = config.sync.interval if interval is None else interval
    if interval < MIN_INTERVAL or interval != int(interval):
        raise ConfigError(f"--interval / sync.interval: {interval:g}s must be whole seconds, at least 1m")
    spec = ServiceSpec(
        command=tuple(command),
        config_path=config.source,
        unit_dir=_absolute(unit_dir or default_unit_dir(user)),
        env_dir=_absolute(env_dir or default_env_dir(user)),
        user=user,
        timer_only=timer_only,
        interval=float(interval),
        profile=profile or config.sync.profile,
        data_dir=_absolute(config.gateway.data_dir) if user else SYSTEM_DATA_DIR,
        settings=_settings_from(env),
        secrets=_secrets_from(config),
        embed_secrets=embed_secrets,
    )
    for word in (*spec.invocation, str(spec.unit_dir), str(spec.env_dir), str(spec.data_dir)):
        _check_unit_safe(word)
    if any(char in spec.command[0] for char in "\"'\\"):
        # systemd refuses such a program path outright ("contains special characters").
        raise ServiceError(
            "unrepresentable_path",
            f"systemd cannot run a program whose path has quotes or backslashes: {spec.command[0]}",
        )
    return spec


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


def _secret_env_names() -> frozenset[str]:
    names = {secret_env_name(section, key) for section, key in SECRET_KEYS}
    return frozenset(names | {f"{name}_FILE" for name in names})


# Set by the install itself, so a value from the installing shell must not be copied as well.
_PINNED = frozenset({f"{ENV_PREFIX}CONFIG", f"{ENV_PREFIX}GATEWAY_DATA_DIR", f"{ENV_PREFIX}SYNC_INTERVAL",
                     f"{ENV_PREFIX}SYNC_PROFILE"})


def _settings_from(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The non-secret LORE_GATEWAY_* overrides of the installing shell, so the service sees what it sees."""
    skip = _PINNED | _secret_env_names()
    pairs = [(k, v.strip()) for k, v in env.items() if k.startswith(ENV_PREFIX) and k not in skip and v.strip()]
    for name, value in pairs:
        if _unsafe_chars(value):
            raise ServiceError("unrepresentable_setting", f"{name} holds a control character; an env file cannot")
    return tuple(sorted(pairs))


def _secrets_from(config: Config) -> tuple[tuple[str, str], ...]:
    """Each configured secret as one env value (lists comma-separated, as the config reads them back)."""
    found: list[tuple[str, str]] = []
    for section, key in SECRET_KEYS:
        value = getattr(getattr(config, section), key)
        values = (value,) if isinstance(value, str) else tuple(value or ())
        for number, item in enumerate(values, 1):
            if _unsafe_chars(item) or (key != "token" and "," in item):
                # Never the value itself: only which entry cannot travel through the environment.
                raise ServiceError(
                    "unrepresentable_secret",
                    f"{section}.{key}: entry {number} contains a comma or a control character, which "
                    "the environment's comma-separated form cannot carry",
                )
        if values:
            found.append((secret_env_name(section, key), ",".join(values)))
    return tuple(found)


def _unsafe_chars(text: str) -> bool:
    return any(ord(char) < 32 or ord(char) == 127 for char in text)


def _check_unit_safe(word: str) -> None:
    if _unsafe_chars(word):
        raise ServiceError("unrepresentable_path", f"{word!r} contains a control character; a unit file cannot")


# --- rendering ------------------------------------------------------------------------------------


def exec_word(word: str, *, program: bool = False) -> str:
    """One ExecStart= word per systemd.syntax: `%` doubled (specifiers), `$` doubled in arguments only
    (systemd never expands variables in the program path), quoted with C escapes where needed."""
    escaped = word.replace("%", "%%")
    if not program:
        escaped = escaped.replace("$", "$$")
    if word and not re.search(r"[\s\"'\\;]", word):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def environment_line(name: str, value: str) -> str:
    """`Environment="NAME=value"`: C escapes inside the quotes, `%` doubled (no `$` expansion there)."""
    text = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'Environment="{text}"'


def env_file_line(name: str, value: str) -> str:
    """`NAME="value"`, escaped so systemd's EnvironmentFile= parser and a POSIX shell both read `value`."""
    escaped = re.sub(r'(["\\`$])', r"\\\1", value)
    return f'{name}="{escaped}"'


def duration_text(seconds: float) -> str:
    """Whole seconds in a form both systemd and our config read: 30m, 2h, 1d, 90s."""
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def render(spec: ServiceSpec) -> tuple[RenderedFile, ...]:
    """Every file this install writes, units first, then the env file."""
    program, *arguments = spec.invocation
    command = " ".join([exec_word(program, program=True), *(exec_word(word) for word in arguments)])
    embedded = [environment_line(n, v) for n, v in spec.secrets] if spec.embed_secrets else []
    values = {
        "@COMMAND@": command,
        "@ENV_FILE@": str(spec.env_file).replace("%", "%%"),
        "@WANTED_BY@": "default.target" if spec.user else "multi-user.target",
        "@INTERVAL@": duration_text(spec.interval),
    }
    # A unit with an inline secret must not be world-readable (the warning says the rest).
    unit_mode = 0o600 if spec.embed_secrets else 0o644
    files = [
        RenderedFile(
            spec.unit_dir / unit,
            render_template(_template(unit), values, embedded, system=not spec.user, name=unit).encode(),
            unit_mode,
        )
        for unit in spec.units
    ]
    files.append(RenderedFile(spec.env_file, render_env_file(spec).encode(), 0o600))
    return tuple(files)


def _template(unit: str) -> str:
    path = TEMPLATE_DIR / unit
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ServiceError(
            "templates_missing", f"cannot read the unit template {path}: {err.strerror or err}"
        ) from None


def render_template(
    template: str, values: Mapping[str, str], embedded: Sequence[str], *, system: bool, name: str
) -> str:
    """Fill a template: its header comment replaced, @SYSTEM@ lines kept only for a system install."""
    lines = [f"# {name}: rendered by `lore-gateway service install` from systemd/{name}.",
             "# Do not edit: `lore-gateway service status` reports edits as drift, and the next",
             "# `lore-gateway service install` puts this file back."]
    body = template[template.index("\n[") + 1:] if "\n[" in template else template
    for line in body.splitlines():
        if line.startswith(_SYSTEM_ONLY):
            if not system:
                continue
            line = line.removeprefix(_SYSTEM_ONLY)
        if line.strip() == "@EMBEDDED_SECRETS@":
            lines.extend(embedded)
            continue
        for placeholder, value in values.items():
            line = line.replace(placeholder, value)
        lines.append(line)
    text = "\n".join(lines) + "\n"
    if leftover := _PLACEHOLDER.search(text):
        raise ServiceError("template_error", f"systemd/{name}: unknown placeholder {leftover[0]}")
    return text


def render_env_file(spec: ServiceSpec) -> str:
    lines = [
        "# Written by `lore-gateway service install`: the service's settings and secrets (mode 0600).",
        "# Do not edit: `service status` reports edits as drift and the next install replaces them.",
        "# To change a value, change its source (the config file, a *_file secret, or the environment",
        "# the install ran in) and run `lore-gateway service install` again.",
        env_file_line(f"{ENV_PREFIX}GATEWAY_DATA_DIR", str(spec.data_dir)),
        env_file_line(f"{ENV_PREFIX}SYNC_INTERVAL", duration_text(spec.interval)),
        env_file_line(f"{ENV_PREFIX}SYNC_PROFILE", spec.profile),
    ]
    lines += [env_file_line(name, value) for name, value in spec.settings]
    if not spec.embed_secrets:
        lines += [env_file_line(name, value) for name, value in spec.secrets]
    return "\n".join(lines) + "\n"


# --- the manifest ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str
    mode: int


@dataclass(frozen=True)
class Manifest:
    """What an install wrote and how it manages it; equal manifests mean nothing to do."""

    scope: str
    mode: str
    unit_dir: str
    env_dir: str
    units: tuple[str, ...]
    primary_unit: str
    interval: float
    profile: str
    command: tuple[str, ...]
    config: str | None
    data_dir: str
    token_source: str
    files: tuple[FileRecord, ...]
    managed: bool  # systemctl enables and starts these units (the install ran without --no-start)
    started: bool  # the last systemctl sequence for these files completed
    platform: str = "systemd"
    version: int = MANIFEST_VERSION

    def to_json(self) -> dict[str, Any]:
        document = {k: v for k, v in self.__dict__.items() if k != "files"}
        document["files"] = [{"path": f.path, "sha256": f.sha256, "mode": f"{f.mode:04o}"} for f in self.files]
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Manifest:
        files = tuple(FileRecord(f["path"], f["sha256"], int(f["mode"], 8)) for f in document["files"])
        fields = {k: v for k, v in document.items() if k != "files" and k in cls.__dataclass_fields__}
        fields["units"] = tuple(fields["units"])
        fields["command"] = tuple(fields["command"])
        return cls(files=files, **fields)


def manifest_path(config: Config) -> Path:
    return _absolute(config.gateway.data_dir) / MANIFEST_NAME


def read_manifest(path: Path) -> Manifest | None:
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ServiceError("manifest_unreadable", f"cannot read {path}: {err.strerror or err}") from None
    try:
        return Manifest.from_json(document)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ServiceError(
            "manifest_invalid", f"{path} is not an install manifest ({err}); remove it and install again"
        ) from None


def manifest_for(spec: ServiceSpec, files: Sequence[RenderedFile], *, managed: bool, started: bool) -> Manifest:
    return Manifest(
        scope=spec.scope,
        mode=spec.mode,
        unit_dir=str(spec.unit_dir),
        env_dir=str(spec.env_dir),
        units=spec.units,
        primary_unit=spec.primary_unit,
        interval=spec.interval,
        profile=spec.profile,
        command=spec.command,
        config=str(spec.config_path) if spec.config_path is not None else None,
        data_dir=str(spec.data_dir),
        token_source=spec.token_source,
        files=tuple(FileRecord(str(f.path), f.sha256, f.mode) for f in files),
        managed=managed,
        started=started,
    )


def drift(manifest: Manifest) -> list[str]:
    """The recorded files that are missing, or differ from what the install wrote (content or mode)."""
    return [record.path for record in manifest.files if not _matches(Path(record.path), record.sha256, record.mode)]


def _matches(path: Path, sha256: str, mode: int) -> bool:
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError:
        return False
    return stat.S_IMODE(info.st_mode) == mode and hashlib.sha256(data).hexdigest() == sha256


# --- systemctl --------------------------------------------------------------------------------------


class Systemctl:
    """systemctl through a CommandRunner: every call with a timeout, every failure a ServiceError."""

    def __init__(self, runner: CommandRunner, *, user: bool) -> None:
        self._runner = runner
        self._user = user
        self.calls: list[list[str]] = []

    def argv(self, *args: str) -> list[str]:
        return ["systemctl", *(["--user"] if self._user else []), *args]

    async def call(self, *args: str) -> None:
        argv = self.argv(*args)
        self.calls.append(argv)
        try:
            result = await self._runner.run(argv, timeout=_TIMEOUTS.get(args[0], 60.0))
        except CommandNotFound as err:
            raise ServiceError(
                "systemctl_unavailable", f"cannot run systemctl ({err.message}); use --no-start to write files only"
            ) from None
        except CommandTimeout as err:
            raise ServiceError("systemctl_timeout", err.message, {"systemctl": {"argv": argv}}) from None
        if not result.ok:
            stderr = result.stderr.strip()
            raise ServiceError(
                "systemctl_failed",
                f"`{' '.join(argv)}` failed (exit {result.returncode}): {stderr or 'no message'}",
                {"systemctl": {"argv": argv, "returncode": result.returncode, "stderr": stderr}},
            )

    async def is_active(self, unit: str) -> bool | None:
        """True or False as systemd says; None where there is no systemd to ask."""
        try:
            result = await self._runner.run(self.argv("is-active", unit), timeout=IS_ACTIVE_TIMEOUT)
        except (CommandNotFound, CommandTimeout):
            return None
        state = result.stdout.strip()
        if result.ok:
            return True
        known = {"inactive", "failed", "activating", "deactivating", "reloading", "maintenance", "refreshing"}
        return False if state in known else None


# --- install ----------------------------------------------------------------------------------------


Action = Literal["create", "update", "unchanged", "remove"]


@dataclass(frozen=True)
class FileChange:
    path: Path
    action: Action


@dataclass(frozen=True)
class InstallPlan:
    spec: ServiceSpec
    files: tuple[RenderedFile, ...]
    changes: tuple[FileChange, ...]
    drift: tuple[str, ...]  # files of the previous install that were edited or removed by hand
    previous: Manifest | None
    manifest: Manifest  # what the manifest will say once the install has completed
    manifest_file: Path
    start: bool
    systemctl: tuple[tuple[str, ...], ...]  # the systemctl calls this install makes, in order

    @property
    def no_change(self) -> bool:
        return all(c.action == "unchanged" for c in self.changes) and self.previous == self.manifest


def plan_install(spec: ServiceSpec, manifest_file: Path, *, start: bool) -> InstallPlan:
    """Compare what this install would write with what is on disk and in the previous manifest."""
    files = render(spec)
    previous = read_manifest(manifest_file)
    changes = [FileChange(f.path, _action(f)) for f in files]
    wanted = {f.path for f in files}
    stale = [Path(r.path) for r in (previous.files if previous else ()) if Path(r.path) not in wanted]
    changes += [FileChange(path, "remove") for path in stale if path.exists()]
    _refuse_dropping_secrets(spec, previous)
    changed = any(c.action != "unchanged" for c in changes)
    if start:
        managed, started = True, True
    else:
        managed = previous.managed if previous else False
        started = bool(previous and previous.started and not changed)
    manifest = manifest_for(spec, files, managed=managed, started=started)
    plan = InstallPlan(
        spec, files, tuple(changes), tuple(drift(previous)) if previous else (), previous, manifest,
        manifest_file, start, (),
    )
    calls = _install_calls(plan) if start and not plan.no_change else ()
    return replace(plan, systemctl=calls)


def _action(file: RenderedFile) -> Action:
    if not file.path.exists():
        return "create"
    return "unchanged" if _matches(file.path, file.sha256, file.mode) else "update"


def _install_calls(plan: InstallPlan) -> tuple[tuple[str, ...], ...]:
    previous, spec = plan.previous, plan.spec
    calls: list[tuple[str, ...]] = []
    if previous and previous.managed:
        if previous.primary_unit not in spec.units:
            calls.append(("disable", "--now", previous.primary_unit))
    calls.append(("daemon-reload",))
    calls.append(("enable", "--now", spec.primary_unit))
    if previous and previous.managed and spec.primary_unit in previous.units:
        # enable --now leaves a running unit on its old files (also after a --no-start update).
        calls.append(("restart", spec.primary_unit))
    return tuple(calls)


def _refuse_dropping_secrets(spec: ServiceSpec, previous: Manifest | None) -> None:
    """An install from a shell that lacks a secret must not silently strip it from a working service."""
    if previous is None or previous.token_source != "env_file" or spec.embed_secrets:
        return
    installed = _env_names(Path(previous.env_dir) / ENV_FILE_NAME)
    secret_names = {secret_env_name(s, k) for s, k in SECRET_KEYS}
    dropped = sorted((installed & secret_names) - {name for name, _ in spec.secrets})
    if dropped:
        raise ServiceError(
            "secrets_would_be_dropped",
            f"the installed service has {', '.join(dropped)} but this install has no value for "
            f"{'it' if len(dropped) == 1 else 'them'}: provide {'it' if len(dropped) == 1 else 'them'} "
            "(config *_file keys or the environment), or run `service uninstall` first",
            {"dropped": dropped},
        )


def _env_names(path: Path) -> set[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return set()
    return {line.split("=", 1)[0].strip() for line in text.splitlines() if "=" in line and not line.startswith("#")}


async def apply_install(plan: InstallPlan, systemctl: Systemctl | None) -> None:
    """Write what changed (atomically, modes set before any byte is written), then run systemctl.

    Units the new install drops are disabled first, while their files still exist. The manifest is
    written before the starting calls with `started` false, so a failed start is retried by the next
    install instead of looking done.
    """
    if plan.no_change:
        return
    stopping = [call for call in plan.systemctl if call[0] == "disable"]
    starting = [call for call in plan.systemctl if call[0] != "disable"]
    await _run(systemctl, stopping)
    with _writing():
        _prepare_dirs(plan.spec, plan.manifest_file)
        for file, change in zip(plan.files, plan.changes, strict=False):
            if change.action != "unchanged":
                write_atomic(file.path, file.content, file.mode)
        for change in plan.changes[len(plan.files):]:
            change.path.unlink(missing_ok=True)
        if starting:
            write_manifest(plan.manifest_file, replace(plan.manifest, started=False))
    await _run(systemctl, starting)
    with _writing():
        write_manifest(plan.manifest_file, plan.manifest)


async def _run(systemctl: Systemctl | None, calls: Sequence[tuple[str, ...]]) -> None:
    if calls and systemctl is None:
        raise ValueError("this plan calls systemctl, but none was given")
    for call in calls:
        await systemctl.call(*call)  # type: ignore[union-attr]


@contextmanager
def _writing() -> Iterator[None]:
    """File system errors as a ServiceError that says what to do, not a traceback."""
    try:
        yield
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        raise ServiceError(
            "write_failed",
            f"cannot write{where}: {err.strerror or err} (a system install needs root; or use --user)",
        ) from None


def _prepare_dirs(spec: ServiceSpec, manifest_file: Path) -> None:
    spec.unit_dir.mkdir(parents=True, exist_ok=True)
    if not spec.env_dir.exists():
        # A system install's env dir often holds the config too, which the service user must read.
        spec.env_dir.mkdir(parents=True, mode=0o700 if spec.user else 0o755)
    manifest_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def write_manifest(path: Path, manifest: Manifest) -> None:
    # 0600: the env file's checksum must not help anyone guess a weak webhook secret offline.
    document = orjson.dumps(manifest.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    write_atomic(path, document, 0o600)


def write_atomic(path: Path, content: bytes, mode: int) -> None:
    """Create a temp file with its final mode (O_EXCL), fsync it, rename it over `path`.

    The mode is set before the first byte is written, so a secret is never readable by others,
    not even briefly, and a reader never sees half a file.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.{token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed it; never widens past `mode`
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# --- warnings about the environment the service will run in -------------------------------------


def install_warnings(spec: ServiceSpec, config: Config) -> list[str]:
    """Things that will not stop the install but will stop the service (or surprise its operator)."""
    notes: list[str] = []
    if spec.embed_secrets and spec.secrets:
        notes.append(
            "--embed-secrets: the secrets are written into the unit files, where `systemctl show` displays "
            "them to any local user; prefer the 0600 env file (the default)"
        )
    if not spec.user and _absolute(config.gateway.data_dir) != SYSTEM_DATA_DIR:
        notes.append(
            f"the service keeps its data in {SYSTEM_DATA_DIR}, but this configuration's gateway.data_dir is "
            f"{config.gateway.data_dir}: set data_dir = \"{SYSTEM_DATA_DIR}\" in the config file so `status`, "
            "`token`, `backup` and `service status` see the service's database"
        )
    if not spec.user:
        notes += [_hidden_note(path) for path in _paths_the_service_reads(spec) if _is_hidden(path)]
    if spec.config_path is not None:
        notes += _config_file_notes(spec, spec.config_path)
    if not config.gitlab.enabled:
        notes.append(f"{SYNC_DISABLED} (the service will only serve)")
    notes += config_warnings(config)  # weak secrets: the install is when to replace them
    return notes


def _config_file_notes(spec: ServiceSpec, path: Path) -> list[str]:
    """Who can read the config file, against who must and what it holds.

    A system unit runs as a dynamic user (DynamicUser=yes: a UID allocated at start), so only the file's
    "other" bits can let it read the config; that is why it must be world-readable, and why it then must
    not hold secrets. The install copies every secret into the 0600 env file (or the units), so the
    config file never needs them: the advice is to delete them from it, never to widen a file that has them.
    """
    inline = inline_secret_keys(path)
    readable = _world_readable(path)
    where = "the units" if spec.embed_secrets else f"the 0600 env file {spec.env_file}"
    held = ", ".join(inline)
    if readable and inline:
        fix = ("delete them from it" if not spec.user
               else f"delete them from it, or chmod 600 {path} (the service runs as you)")
        return [f"{path} is readable by every local user and holds secrets written in it ({held}): this install "
                f"copied them into {where}, which is all the service reads them from, so {fix}"]
    if readable or spec.user:
        return []
    if inline:
        return [f"the service's dynamic user cannot read {path}, and it holds secrets ({held}): do not make it "
                f"world-readable as it is. This install copied them into {where}: delete them from {path}, "
                "then make it and its directories world-readable (chmod o+r on it, o+x on its directories)"]
    return [f"the service's dynamic user cannot read {path}: it holds no secrets (they are in {where}), so make "
            "it and its directories world-readable (chmod o+r on it, o+x on its directories)"]


def inline_secret_keys(path: Path) -> tuple[str, ...]:
    """The secret keys (SECRET_KEYS) written directly in the TOML file, as section.key; () if unreadable."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return ()
    return tuple(f"{section}.{key}" for section, key in SECRET_KEYS
                 if isinstance(document.get(section), dict) and key in document[section])


def _paths_the_service_reads(spec: ServiceSpec) -> list[Path]:
    paths = [Path(spec.command[0])]
    interpreter = _shebang(Path(spec.command[0]))
    if interpreter is not None:
        paths.append(interpreter)
    if spec.config_path is not None:
        paths.append(spec.config_path)
    return paths


def _shebang(path: Path) -> Path | None:
    try:
        with path.open("rb") as handle:
            first = handle.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    return Path(words[0]) if words and words[0].startswith("/") else None


def _is_hidden(path: Path) -> bool:
    """Under a hidden prefix, itself or once symlinks are followed (a virtualenv's python often is)."""
    candidates = {path, path.resolve()}
    return any(p == prefix or prefix in p.parents for p in candidates for prefix in _HIDDEN_PREFIXES)


def _hidden_note(path: Path) -> str:
    shown = f"{path} (-> {path.resolve()})" if path.resolve() != path else str(path)
    return (
        f"{shown} is under a directory the system service cannot see (ProtectHome=yes, PrivateTmp=yes): "
        "install lore-gateway and its config outside /home, /root and /tmp (e.g. a virtualenv in /opt)"
    )


def _world_readable(path: Path) -> bool:
    try:
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
        return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in path.parents)
    except OSError:
        return False


# --- uninstall and status -------------------------------------------------------------------------


@dataclass(frozen=True)
class UninstallPlan:
    manifest: Manifest
    manifest_file: Path
    remove: tuple[Path, ...]
    systemctl: tuple[tuple[str, ...], ...]


def plan_uninstall(manifest: Manifest, manifest_file: Path, *, stop: bool) -> UninstallPlan:
    calls: list[tuple[str, ...]] = []
    if stop and manifest.managed:
        calls.append(("disable", "--now", manifest.primary_unit))
        if SYNC_UNIT in manifest.units:
            calls.append(("stop", SYNC_UNIT))  # a sync the timer started may still be running
    present = tuple(Path(r.path) for r in manifest.files if Path(r.path).exists())
    reload = (("daemon-reload",),) if calls else ()
    return UninstallPlan(manifest, manifest_file, present, (*calls, *reload))


async def apply_uninstall(plan: UninstallPlan, systemctl: Systemctl | None) -> None:
    """Stop and disable first (systemctl needs the unit files for that), remove the files, reload."""
    stopping = [call for call in plan.systemctl if call != ("daemon-reload",)]
    await _run(systemctl, stopping)
    with _writing():
        for path in (*plan.remove, plan.manifest_file):
            path.unlink(missing_ok=True)
    await _run(systemctl, [call for call in plan.systemctl if call == ("daemon-reload",)])


@dataclass(frozen=True)
class ServiceStatus:
    installed: bool
    drift: tuple[str, ...]
    active: bool | None
    manifest: Manifest | None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"installed": self.installed, "drift": list(self.drift), "active": self.active}
        if self.manifest is not None:
            m = self.manifest
            document.update(scope=m.scope, mode=m.mode, units=list(m.units), interval=m.interval,
                            profile=m.profile, token_source=m.token_source)
        return document


async def service_status(
    manifest_file: Path,
    runner: CommandRunner,
    *,
    user: bool = False,
    unit_dir: Path | None = None,
    env_dir: Path | None = None,
) -> ServiceStatus:
    """Installed (per the manifest, in these dirs if given), drifted files, and whether systemd runs it.

    `user` picks the systemd instance to ask when there is no manifest to say.
    """
    manifest = read_manifest(manifest_file)
    if manifest is not None and not _same_dirs(manifest, unit_dir, env_dir):
        manifest = None
    user = manifest.scope == "user" if manifest else user
    unit = manifest.primary_unit if manifest else DAEMON_UNIT
    active = await Systemctl(runner, user=user).is_active(unit)
    if manifest is None:
        return ServiceStatus(False, (), active, None)
    return ServiceStatus(True, tuple(drift(manifest)), active, manifest)


def _same_dirs(manifest: Manifest, unit_dir: Path | None, env_dir: Path | None) -> bool:
    return (unit_dir is None or str(_absolute(unit_dir)) == manifest.unit_dir) and (
        env_dir is None or str(_absolute(env_dir)) == manifest.env_dir
    )


def check_dirs(manifest: Manifest, unit_dir: Path | None, env_dir: Path | None) -> None:
    if not _same_dirs(manifest, unit_dir, env_dir):
        raise ServiceError(
            "not_installed",
            f"the install manifest names unit dir {manifest.unit_dir} and env dir {manifest.env_dir}",
        )
