"""`backup PATH`: a consistent copy of the store while the gateway keeps running (sync/store/backup.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.cli.base import CommandFailed, Context, json_flag
from sync import BackupError, backup_database


def register(commands: Any) -> None:
    p = commands.add_parser(
        "backup", help="copy the database to PATH with SQLite's online backup API (safe while serving)"
    )
    p.add_argument("path", type=Path, metavar="PATH", help="the backup file, or a directory for a dated one")
    json_flag(p)
    p.set_defaults(handler=cmd_backup)


async def cmd_backup(ctx: Context) -> dict[str, Any]:
    try:
        result = await asyncio.to_thread(backup_database, ctx.config.db_path, ctx.args.path)
    except BackupError as err:
        raise CommandFailed(err.code, err.message) from None
    except OSError as err:
        raise CommandFailed("backup_failed", f"cannot write the backup: {err.strerror or err}") from None
    ctx.out(
        f"backed up {result.source} to {result.path} "
        f"({result.bytes / 1e6:.1f} MB in {result.seconds:.2f}s, integrity {result.integrity})"
    )
    return {
        "source": str(result.source),
        "path": str(result.path),
        "bytes": result.bytes,
        "pages": result.pages,
        "seconds": round(result.seconds, 3),
        "integrity": result.integrity,
    }
