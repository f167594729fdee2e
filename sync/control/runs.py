"""The record of sync runs (`sync_runs`): one row a run, whatever its outcome.

The row is the single source of truth for a run: status and CLI output, the REST
API and SSE payloads are all rendered from `Run.to_json()`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import orjson

from sync.clock import Clock, utc_iso
from sync.errors import SyncError
from sync.store.db import Database

TRIGGERS = ("webhook", "timer", "startup", "manual", "api")
PROFILES = ("fast", "balanced", "full")


@dataclass(frozen=True)
class Run:
    id: int
    trigger: str
    profile: str
    status: str
    stage: str | None
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    transient: bool | None = None
    started_at: float = 0.0
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "interrupted")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "trigger": self.trigger,
            "profile": self.profile,
            "status": self.status,
            "stage": self.stage,
            "counts": self.counts,
            "warnings": self.warnings,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "transient": self.transient,
            "started_at": utc_iso(self.started_at),
            "finished_at": utc_iso(self.finished_at),
        }

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Run:
        return cls(
            id=row["id"],
            trigger=row["trigger"],
            profile=row["profile"],
            status=row["status"],
            stage=row["stage"],
            counts=orjson.loads(row["counts"]),
            warnings=orjson.loads(row["warnings"]),
            error_code=row["error_code"],
            error_message=row["error_message"],
            transient=None if row["transient"] is None else bool(row["transient"]),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
        )


class RunLog:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def start(self, trigger: str, profile: str, owner: str) -> int:
        async with self._db.transaction() as conn:
            cur = await conn.execute(
                "INSERT INTO sync_runs (trigger, profile, status, owner, started_at) VALUES (?, ?, 'running', ?, ?)",
                (trigger, profile, owner, self._clock.now()),
            )
            return int(cur.lastrowid or 0)

    async def set_stage(self, run_id: int, stage: str) -> None:
        async with self._db.transaction() as conn:
            await conn.execute("UPDATE sync_runs SET stage = ? WHERE id = ?", (stage, run_id))

    async def finish(
        self,
        run_id: int,
        status: str,
        counts: dict[str, int],
        warnings: list[str],
        error: SyncError | None = None,
    ) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                "UPDATE sync_runs SET status = ?, counts = ?, warnings = ?, error_code = ?, error_message = ?,"
                " transient = ?, finished_at = ? WHERE id = ?",
                (
                    status,
                    orjson.dumps(counts).decode(),
                    orjson.dumps(warnings).decode(),
                    error.code if error else None,
                    error.message if error else None,
                    None if error is None else int(error.transient),
                    self._clock.now(),
                    run_id,
                ),
            )

    async def get(self, run_id: int) -> Run | None:
        row = await self._db.fetchone("SELECT * FROM sync_runs WHERE id = ?", (run_id,))
        return Run.from_row(row) if row else None

    async def recent(self, limit: int = 10) -> list[Run]:
        rows = await self._db.fetchall("SELECT * FROM sync_runs ORDER BY id DESC LIMIT ?", (limit,))
        return [Run.from_row(r) for r in rows]

    async def last_finished(self) -> Run | None:
        row = await self._db.fetchone(
            "SELECT * FROM sync_runs WHERE finished_at IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT 1"
        )
        return Run.from_row(row) if row else None

    async def last_success_at(self) -> float | None:
        return await self._db.fetchval("SELECT max(finished_at) FROM sync_runs WHERE status = 'succeeded'")


async def mark_interrupted(conn: Any, owner: str, now: float) -> list[int]:
    """Close the runs a dead lock holder left 'running' (inside the takeover's transaction)."""
    rows = await conn.execute_fetchall(
        "SELECT id FROM sync_runs WHERE status = 'running' AND owner = ?", (owner,)
    )
    await conn.execute(
        "UPDATE sync_runs SET status = 'interrupted', error_code = 'interrupted', transient = 1,"
        " error_message = 'the process running this sync stopped before it finished', finished_at = ?"
        " WHERE status = 'running' AND owner = ?",
        (now, owner),
    )
    return [r[0] for r in rows]
