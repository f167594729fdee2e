"""`changes`: the change feed (sync.read.changes) from the command line, read from the local database.

`--json` prints what GET /api/v1/changes would answer; the text form is one line a change, then the
cursor to pass as `--since` next time. A cursor the feed can no longer continue exits 1 with
`cursor_expired` (list again); a malformed one is a usage error (exit 2).
"""

from __future__ import annotations

from typing import Any

from gateway.cli.base import CommandFailed, Context, UsageError, json_flag, open_database
from sync import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Change,
    CursorExpired,
    InvalidChangeCursor,
    project_paths,
    read_changes,
)

_REFERENCE = {"issue": "#", "merge_request": "!"}  # GitLab's own reference style: group/project#12, !7


def register(commands: Any) -> None:
    p = commands.add_parser("changes", help="every create/update/delete of an issue, MR or note since a cursor")
    p.add_argument("--since", metavar="CURSOR",
                   help="a cursor printed by the last call (or an SSE data.changed seq); default: the oldest kept")
    p.add_argument("--limit", type=_limit, default=DEFAULT_LIMIT, metavar="N",
                   help=f"at most N changes (1..{MAX_LIMIT}, default {DEFAULT_LIMIT})")
    json_flag(p)
    p.set_defaults(handler=cmd_changes)


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(text)  # argparse: "invalid _limit value" -> usage error
    return int(text)


async def cmd_changes(ctx: Context) -> dict[str, Any]:
    async with open_database(ctx) as db:
        try:
            page = await read_changes(db, ctx.args.since, ctx.args.limit)
        except InvalidChangeCursor as exc:
            raise UsageError(f"--since: {exc}") from None
        except CursorExpired as exc:
            raise CommandFailed(exc.code, exc.message) from None
        paths = await project_paths(db)
    for change in page.items:
        ctx.out(render_change(change, paths))
    if not page.items:
        ctx.out("no changes")
    ctx.out(f"next: --since {page.next_cursor}")
    return page.to_json()


def render_change(change: Change, paths: dict[int, str]) -> str:
    item = f"{paths.get(change.project_id, change.project_id)}{_REFERENCE[change.parent_kind]}{change.iid}"
    what = f"note {change.note_id} on {item}" if change.note_id is not None else item
    return f"{change.seq:>8}  {change.at}  {change.action:<7}  {what}"
