"""`init`: a first config file, commented, mode 0600, with every secret the gateway needs generated.

What it cannot guess (GitLab's URL, the token file, the projects) comes from flags, or from prompts when
a person sits at a terminal; without one, a missing answer is a usage error naming the flag. The secrets
are never printed. They go to 0600 files in a `secrets/` directory (0700) beside the config, which names
them (`*_file` keys): so the config itself holds none, and can be made readable to a system service's
dynamic user (docs/operations.md) while `service install` moves the secrets to its env file. Everything
is validated by loading it exactly as `serve` will before the config takes the place of anything.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.cli.base import CommandFailed, Context, UsageError, json_flag
from sync import CONFIG_ENV, ConfigError, load_config

DEFAULT_CONFIG = Path("~/.config/lore-gateway/config.toml")
SIGNING_KEY_BYTES = 48  # API-token signing key; well above the 32 bytes the gateway requires
WEBHOOK_KEY_BYTES = 32  # GitLab takes a signing token of exactly 32 bytes (whsec_ + base64)


def register(commands: Any) -> None:
    p = commands.add_parser("init", help="write a commented config with generated secrets (mode 0600)")
    p.add_argument("--gitlab-url", metavar="URL", help="e.g. https://gitlab.example.com")
    p.add_argument("--token-file", metavar="FILE", help="a file holding a GitLab access token (api scope)")
    p.add_argument("--project", action="append", metavar="PATH", dest="projects",
                   help="group/project to mirror (repeatable)")
    p.add_argument("--config-out", metavar="PATH",
                   help=f"where to write it (default: ${CONFIG_ENV} or {DEFAULT_CONFIG})")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    json_flag(p)
    p.set_defaults(handler=cmd_init, needs_config=False)


@dataclass(frozen=True)
class Answers:
    gitlab_url: str
    token_file: Path
    projects: tuple[str, ...]


@dataclass(frozen=True)
class Generated:
    webhook_secret: str
    signing_token: str
    signing_key: str

    @classmethod
    def new(cls) -> Generated:
        return cls(
            webhook_secret=secrets.token_urlsafe(32),
            signing_token="whsec_" + base64.b64encode(secrets.token_bytes(WEBHOOK_KEY_BYTES)).decode(),
            signing_key=secrets.token_urlsafe(SIGNING_KEY_BYTES),
        )


async def cmd_init(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    target = _target(args.config_out)
    secret_files = SecretFiles(target.parent / "secrets")
    existing = [p for p in (target, *secret_files.paths()) if p.exists()]
    if existing and not args.force:
        raise CommandFailed("config_exists", f"{existing[0]} already exists; pass --force to replace it")
    answers = gather(args.gitlab_url, args.token_file, args.projects, ask=_terminal())
    secret_files.write(Generated.new())
    write_config(target, render_config(answers, secret_files))
    ctx.out(f"Wrote {target} (mode 0600) and, in {secret_files.directory} (0700), a new webhook secret, webhook "
            "signing token and API signing key (0600 each; they are not shown here). Next:\n"
            f"  export {CONFIG_ENV}={target}\n"
            "  lore-gateway hooks install --url https://<this host, as GitLab reaches it>/webhooks/gitlab\n"
            "  lore-gateway doctor\n"
            "  lore-gateway serve            (or: lore-gateway service install)")
    return {"config": str(target), "gitlab_url": answers.gitlab_url, "token_file": str(answers.token_file),
            "projects": list(answers.projects),
            "generated": {key: str(path) for key, path in secret_files.by_key().items()}}


# -- answers ---------------------------------------------------------------------------------------


class Asker:
    """Questions on a terminal; tests give their own."""

    def ask(self, question: str) -> str:
        return input(f"{question}: ").strip()

    def secret(self, question: str) -> str:
        return getpass.getpass(f"{question}: ").strip()


def _terminal() -> Asker | None:
    return Asker() if sys.stdin.isatty() and sys.stdout.isatty() else None


def gather(gitlab_url: str | None, token_file: str | None, projects: list[str] | None, *,
           ask: Asker | None) -> Answers:
    """Flags first, then questions; without a terminal, a usage error naming every missing flag."""
    missing = [flag for flag, value in (("--gitlab-url", gitlab_url), ("--token-file", token_file),
                                        ("--project", projects)) if not value]
    if missing and ask is None:
        raise UsageError(f"missing {', '.join(missing)} (no terminal to ask on)")
    if ask is not None:
        gitlab_url = gitlab_url or ask.ask("GitLab URL (e.g. https://gitlab.example.com)")
        token_file = token_file or _token_file(ask)
        if not projects:
            projects = [p.strip() for p in ask.ask("Projects to mirror (group/project, comma-separated)").split(",")]
    answers = Answers((gitlab_url or "").rstrip("/"), Path(token_file or "").expanduser().absolute(),
                      tuple(p.strip().strip("/") for p in projects or () if p.strip()))
    if not answers.gitlab_url or not answers.projects:
        raise UsageError("a GitLab URL and at least one project are needed")
    if not answers.token_file.is_file():
        raise UsageError(f"--token-file: {answers.token_file} is not a file (put the GitLab token in it, mode 0600)")
    return answers


def _token_file(ask: Asker) -> str:
    """A path; when it does not exist yet, the token is asked for (hidden) and written there, 0600."""
    path = Path(ask.ask("File holding the GitLab token (api scope)") or "~/.config/lore-gateway/gitlab-token")
    path = path.expanduser()
    if not path.exists():
        token = ask.secret(f"GitLab access token (it is written to {path}, mode 0600, and never shown)")
        if not token:
            raise UsageError("no GitLab token given")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
    return str(path)


def _target(config_out: str | None) -> Path:
    chosen = config_out or os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG)
    return Path(chosen).expanduser().absolute()


# -- the file --------------------------------------------------------------------------------------


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


@dataclass(frozen=True)
class SecretFiles:
    """Where the generated secrets live: one file a key, one secret a line (rotation adds a line)."""

    directory: Path

    def by_key(self) -> dict[str, Path]:
        return {"webhook.secrets_file": self.directory / "webhook-secrets",
                "webhook.signing_tokens_file": self.directory / "webhook-signing-tokens",
                "auth.signing_keys_file": self.directory / "auth-signing-keys"}

    def paths(self) -> list[Path]:
        return list(self.by_key().values())

    def write(self, generated: Generated) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        values = (generated.webhook_secret, generated.signing_token, generated.signing_key)
        for path, value in zip(self.paths(), values, strict=True):
            _write_private(path, value + "\n")


def _write_private(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600 from the first byte
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def render_config(answers: Answers, secrets_at: SecretFiles) -> str:
    projects = ", ".join(_toml(p) for p in answers.projects)
    files = {key: _toml(str(path)) for key, path in secrets_at.by_key().items()}
    return f"""\
# lore-gateway configuration, written by `lore-gateway init`.
# Every key is documented in docs/configuration.md; any key can be overridden by an environment variable
# LORE_GATEWAY_<SECTION>_<KEY>. The secrets are in the files it names (0600 each), not here.

[gitlab]
url = {_toml(answers.gitlab_url)}
# The access token's file (api scope; Maintainer on each project, for `lore-gateway hooks install`).
token_file = {_toml(str(answers.token_file))}
projects = [{projects}]
# requests_per_minute = 0       # a request budget shared by every process; 0 = none

[gateway]
host = "127.0.0.1"
port = 8080
# data_dir = "~/.local/share/lore-gateway"

[webhook]
# GitLab's X-Gitlab-Token, for GitLab before 19.0; add a line while rotating.
secrets_file = {files["webhook.secrets_file"]}
# The Standard Webhooks signing token `hooks install` gives GitLab 19.0+ (whsec_ + base64 of 32 bytes).
signing_tokens_file = {files["webhook.signing_tokens_file"]}
# Where GitLab posts (`hooks install`, the hook health check); default http://<host>:<port>/webhooks/gitlab.
# url = "https://gateway.example.com/webhooks/gitlab"

[sync]
interval = "30m"                # the timer fallback: GitLab drops webhooks, the timer catches up
profile = "balanced"

[auth]
# Signs the gateway's API tokens (lore-gateway token create); the first line signs, all verify.
signing_keys_file = {files["auth.signing_keys_file"]}

# [redis]
# url = "redis://127.0.0.1:6379/0"   # share limits, locks and events between processes
"""


def write_config(target: Path, text: str) -> None:
    """Written 0600 beside the target, loaded as `serve` would, then moved into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".toml")  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        try:
            load_config(temp, env={})
        except ConfigError as error:
            raise UsageError(str(error).replace(temp, str(target))) from None
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
