"""The `lore-gateway` command line.

Exit codes are part of the contract: 0 ok; 1 the operation failed (message on
stderr, and with `--json` an {"error": ...} document on stdout); 2 usage or
configuration error. Each command is an async function that returns the
document `--json` prints, so text and JSON output never drift apart.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from gateway.cli import (
    backup_cmds,
    doctor_cmds,
    hooks_cmds,
    init_cmds,
    knowledge_cmds,
    serve_cmds,
    service_cmds,
    sync_cmds,
    token_cmds,
)
from gateway.cli.base import CommandFailed, Context, Parser, UsageError
from gateway.cli.changes_cmds import register as register_changes
from gateway.server import run_loop
from sync import Config, ConfigError, MigrationError, SyncError, load_config

COMMAND_GROUPS = [serve_cmds, sync_cmds, token_cmds, service_cmds, backup_cmds, knowledge_cmds, init_cmds, hooks_cmds,
                  doctor_cmds]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lore-gateway", description="A self-hosted gateway between GitLab and the tools that need it."
    )
    parser.add_argument(
        "--config", metavar="PATH", help="TOML config file (default: env LORE_GATEWAY_CONFIG)"
    )
    parser.add_argument(
        "--json", action="store_true", help="machine-readable output: one JSON document on stdout"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for group in COMMAND_GROUPS:
        group.register(commands)
    register_changes(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wants_json = "--json" in argv
    try:
        args = build_parser().parse_args(argv)
        # `init` writes the config: it must run before one exists (even where $LORE_GATEWAY_CONFIG names it).
        config = load_config(args.config) if getattr(args, "needs_config", True) else Config()
        ctx = Context(args, config, bool(args.json))
        document = run_loop(args.handler(ctx))
    except (UsageError, ConfigError) as exc:
        return _fail(
            wants_json, 2, "usage_error" if isinstance(exc, UsageError) else "config_error", str(exc)
        )
    except CommandFailed as exc:
        return _fail(wants_json, 1, exc.code, exc.message, exc.extra)
    except SyncError as exc:
        return _fail(wants_json, 1, exc.code, exc.message)
    except MigrationError as exc:
        return _fail(wants_json, 1, "migration_error", str(exc))
    except KeyboardInterrupt:
        return _fail(wants_json, 1, "interrupted", "interrupted")
    if ctx.json and document is not None:
        sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    return 0


def _fail(wants_json: bool, status: int, code: str, message: str, extra: dict[str, Any] | None = None) -> int:
    print(f"lore-gateway: {message}", file=sys.stderr)
    if wants_json:
        document = {"error": {"code": code, "message": message}, **(extra or {})}
        sys.stdout.buffer.write(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    return status
