"""`search` and `experts`: the knowledge built on the mirror, from the command line.

Both read the local database directly (no gateway needs to run) through the same engine functions
as the REST API, so the two never disagree; `--json` prints what the API would answer.
"""

from __future__ import annotations

import sys
from typing import Any

from gateway.cli.base import CommandFailed, Context, UsageError, json_flag, open_database
from sync import (
    KINDS,
    MARK_CLOSE,
    MARK_OPEN,
    Database,
    EmbeddingClient,
    Expert,
    SearchHit,
    SearchQueryError,
    SystemClock,
    VectorIndex,
    find_experts,
    mirrored_projects,
    project_paths,
    resolve_project,
    search,
    utc_iso,
)

MAX_LIMIT = 100


def register(commands: Any) -> None:
    p = commands.add_parser("search", help="full-text search over the mirrored issues, MRs and notes")
    p.add_argument("query", metavar="QUERY", help='words, "a phrase", OR/NOT, prefix*')
    p.add_argument("--type", choices=KINDS, help="only this kind of document")
    p.add_argument("--project", metavar="ID", help="only this project (numeric id or group/project path)")
    p.add_argument("--mode", choices=("text", "semantic"), default="text",
                   help="semantic: by meaning, with the configured embedding endpoint")
    p.add_argument("--limit", type=_limit, default=20, metavar="N", help=f"at most N results (1..{MAX_LIMIT})")
    json_flag(p)
    p.set_defaults(handler=cmd_search)

    p = commands.add_parser("experts", help="who knows the files under a path (time-decayed contributions)")
    p.add_argument("path", metavar="PATH", help="a file or directory, e.g. src/auth/")
    p.add_argument("--project", metavar="ID", help="numeric id or group/project path (needed with several)")
    p.add_argument("--limit", type=_limit, default=20, metavar="N", help=f"at most N people (1..{MAX_LIMIT})")
    json_flag(p)
    p.set_defaults(handler=cmd_experts)


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ValueError(text)  # argparse: "invalid _limit value" -> usage error
    return int(text)


# -- search -----------------------------------------------------------------------------------------


async def cmd_search(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    async with open_database(ctx) as db:
        project_id = await _project(db, args.project) if args.project else None
        if args.mode == "semantic":
            hits = await _semantic(ctx, db, args.query, args.type, project_id, args.limit)
        else:
            try:
                hits = (await search(db, args.query, kind=args.type, project_id=project_id, limit=args.limit)).items
            except SearchQueryError as exc:
                raise UsageError(f"QUERY: {exc}") from None
        paths = await project_paths(db)
    ctx.out(render_hits(hits, paths, bold=sys.stdout.isatty()))
    return {"items": [hit.to_json() for hit in hits]}


async def _semantic(
    ctx: Context, db: Database, text: str, kind: str | None, project_id: int | None, limit: int
) -> list[SearchHit]:
    settings = ctx.config.embeddings
    if not settings.url:
        raise UsageError("--mode semantic needs an embedding endpoint: set [embeddings] url")
    async with EmbeddingClient(settings.url, settings.model) as client:
        vector = (await client.embed([text]))[0]
    hits, _ = await VectorIndex(settings.model).search(db, vector, kind=kind, project_id=project_id, limit=limit)
    return hits


def render_hits(hits: list[SearchHit], paths: dict[int, str], *, bold: bool) -> str:
    if not hits:
        return "no matches"
    lines = []
    for hit in hits:
        sigil = "!" if hit.parent_type == "merge_request" else "#"
        ref = f"{paths.get(hit.project_id, hit.project_id)}{sigil}{hit.iid}"
        what = f"note {hit.note_id} on {ref}" if hit.note_id else ref
        lines.append(f"{hit.type:<13} {what}  {hit.title}  (score {hit.score:g})")
        if hit.snippet:
            opening, closing = ("\033[1m", "\033[0m") if bold else ("*", "*")
            snippet = hit.snippet.replace(MARK_OPEN, opening).replace(MARK_CLOSE, closing)
            lines.append("    " + " ".join(snippet.split()))
    return "\n".join(lines)


# -- experts ----------------------------------------------------------------------------------------


async def cmd_experts(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    now = SystemClock().now()
    async with open_database(ctx) as db:
        project_id = await _project(db, args.project) if args.project else await _only_project(db)
        result = await find_experts(db, project_id, args.path, ctx.config.experts, now=now, limit=args.limit)
        paths = await project_paths(db)
    ctx.out(render_experts(result.items, args.path, paths.get(project_id, str(project_id)), now))
    return result.to_json()


def render_experts(experts: list[Expert], path: str, project: str, now: float) -> str:
    header = f"experts on {path} in {project} (as of {utc_iso(now)}):"
    if not experts:
        return f"{header}\n  nobody yet: no MR, diff note or review touches it in the mirror"
    lines = [header]
    for rank, e in enumerate(experts, 1):
        who = f"{e.username} ({e.name})" if e.name else e.username
        kinds = " ".join(f"{k}={n}" for k, n in e.contributions.items())
        stale = "  [stale]" if e.stale else ""
        lines.append(
            f"  {rank:>2}. {who:<32} score {e.score:8.3f}  last {utc_iso(e.last_contribution_at)}  {kinds}{stale}"
        )
    return "\n".join(lines)


# -- projects ---------------------------------------------------------------------------------------


async def _project(db: Database, ref: str) -> int:
    project_id = await resolve_project(db, ref)
    if project_id is None:
        raise CommandFailed("not_found", f"project {ref} is not in the mirror (run `lore-gateway sync` first?)")
    return project_id


async def _only_project(db: Database) -> int:
    projects = await mirrored_projects(db)
    if len(projects) == 1:
        return projects[0][0]
    if not projects:
        raise CommandFailed("not_found", "the mirror holds no project yet (run `lore-gateway sync` first)")
    listed = ", ".join(f"{path} ({pid})" for pid, path in projects)
    raise UsageError(f"several projects are mirrored, choose one with --project: {listed}")
