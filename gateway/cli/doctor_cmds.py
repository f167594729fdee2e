"""`doctor`: one line a check (ok, warn or fail) with its fix; exit 1 when anything fails.

The checks live in the engine (sync.control.doctor); this module only lays them out.
"""

from __future__ import annotations

from typing import Any

from gateway.cli.base import CommandFailed, Context, json_flag
from sync import FAIL, OK, Check, SystemClock, run_checks


def register(commands: Any) -> None:
    p = commands.add_parser("doctor", help="check config, files, GitLab, token, projects, hooks, clock, Redis")
    json_flag(p)
    p.set_defaults(handler=cmd_doctor)


async def cmd_doctor(ctx: Context) -> dict[str, Any]:
    checks = await run_checks(ctx.config, SystemClock())
    ctx.out(render(checks))
    document = {"ok": not any(c.status == FAIL for c in checks), "checks": [c.to_json() for c in checks]}
    failed = [c.name for c in checks if c.status == FAIL]
    if failed:
        raise CommandFailed("doctor_failed", f"{len(failed)} check(s) failed: {', '.join(failed)}",
                            {"checks": document["checks"]})
    return document


def render(checks: list[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for check in checks:
        lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.message}")
        if check.status != OK and check.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    return "\n".join(lines)
