"""What every command shares: its context, its errors, and the `--json` flag."""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

from aiohttp import web

from gateway.server import ListenError, running
from sync import Config, Database, ensure_data_dir


class UsageError(Exception):
    """Bad arguments or configuration: exit 2."""


class CommandFailed(Exception):
    """The operation failed: exit 1 with a stable error code (and, with --json, `extra` beside the error)."""

    def __init__(self, code: str, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra or {}


@dataclass
class Context:
    args: argparse.Namespace
    config: Config
    json: bool

    def out(self, text: str) -> None:
        if not self.json:
            print(text, flush=True)

    def err(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


Command = Callable[[Context], Awaitable[Any]]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


@asynccontextmanager
async def open_database(ctx: Context) -> AsyncIterator[Database]:
    """The database in the configured data dir, migrated, closed on exit."""
    ensure_data_dir(ctx.config)
    db = await Database.open(ctx.config.db_path)
    try:
        yield db
    finally:
        await db.close()


def json_flag(parser: argparse.ArgumentParser) -> None:
    """`--json` and `--config` are accepted after the command too.

    SUPPRESS keeps an absent flag from resetting what was given before the command.
    """
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    parser.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help="TOML config file")


@asynccontextmanager
async def listening(app: web.Application, host: str, port: int) -> AsyncIterator[str]:
    """The app served on host:port (its URL), or CommandFailed(listen_failed) when it cannot bind."""
    try:
        async with running(app, host, port) as url:
            yield url
    except ListenError as exc:
        raise CommandFailed("listen_failed", str(exc)) from exc
