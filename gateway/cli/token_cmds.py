"""`token create | list | revoke`: API tokens managed from the command line.

The token text is printed once, by `create`, and is never stored or shown again; the signing keys
come from the same place `serve` takes them (gateway.tokens.signing_keys), so both agree.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.cli.base import CommandFailed, Context, UsageError, json_flag, open_database
from gateway.tokens import SCOPES, BadTokenRequest, TokenInfo, TokenStore, UnknownToken, signing_keys
from sync import ConfigError, Database, SystemClock, parse_duration, utc_iso


def register(commands: Any) -> None:
    token = commands.add_parser("token", help="create, list and revoke API tokens")
    actions = token.add_subparsers(dest="token_command", metavar="ACTION")
    actions.required = True

    p = actions.add_parser("create", help="create a token and print it once")
    p.add_argument("--name", required=True, help="what the token is for (shown by `token list`)")
    p.add_argument("--scope", action="append", required=True, choices=SCOPES, dest="scopes",
                   help="read, sync or admin (admin implies the others); repeatable")
    p.add_argument("--ttl", type=_ttl, metavar="DURATION",
                   help="expire after e.g. 12h or 30d (default: never)")
    json_flag(p)
    p.set_defaults(handler=cmd_token_create)

    p = actions.add_parser("list", help="every token: scopes, expiry, last use, revocation")
    json_flag(p)
    p.set_defaults(handler=cmd_token_list)

    p = actions.add_parser("revoke", help="revoke a token at once")
    p.add_argument("id", type=int, metavar="ID", help="the token's id (see `token list`)")
    json_flag(p)
    p.set_defaults(handler=cmd_token_revoke)


def _ttl(text: str) -> float:
    """argparse type for --ttl: a duration longer than zero (a bad one is exit 2)."""
    try:
        seconds = parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not longer than 0s")
    return seconds


def _store(ctx: Context, db: Database) -> TokenStore:
    return TokenStore(db, SystemClock(), signing_keys(ctx.config))


async def cmd_token_create(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    async with open_database(ctx) as db:
        try:
            created = await _store(ctx, db).create(args.name, args.scopes, args.ttl)
        except BadTokenRequest as exc:
            raise UsageError(str(exc)) from None
    expiry = f"expires {utc_iso(created.expires_at)}" if created.expires_at is not None else "never expires"
    ctx.out(f"Created token {created.id} {created.name!r} (scopes: {', '.join(created.scopes)}; {expiry}).\n"
            "It is shown only this once and cannot be recovered: store it now.\n\n"
            f"{created.token}")
    return created.to_json()


async def cmd_token_list(ctx: Context) -> dict[str, Any]:
    async with open_database(ctx) as db:
        tokens = await _store(ctx, db).list()
    now = SystemClock().now()
    ctx.out(render_tokens(tokens, now))
    return {"items": [{**info.to_json(), "status": info.status(now)} for info in tokens]}


async def cmd_token_revoke(ctx: Context) -> dict[str, Any]:
    token_id = ctx.args.id
    async with open_database(ctx) as db:
        try:
            info = await _store(ctx, db).revoke(token_id)
        except UnknownToken as exc:
            raise CommandFailed("not_found", str(exc)) from None
    ctx.out(f"token {info.id} {info.name!r} is revoked (since {utc_iso(info.revoked_at)})")
    return {"id": info.id, "revoked_at": utc_iso(info.revoked_at)}


def render_tokens(tokens: list[TokenInfo], now: float) -> str:
    if not tokens:
        return "no tokens yet (create one: lore-gateway token create --name NAME --scope read)"
    header = ("ID", "NAME", "SCOPES", "STATUS", "CREATED", "EXPIRES", "LAST USED")
    rows = [header] + [
        (str(t.id), t.name, ",".join(t.scopes), t.status(now) + (" (legacy)" if t.legacy else ""),
         utc_iso(t.created_at) or "",
         utc_iso(t.expires_at) or "never", utc_iso(t.last_used_at) or "never")
        for t in tokens
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
