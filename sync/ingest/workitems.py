"""The work-item status stage: each issue's `{"name", "category"}` status, mirrored from GitLab.

Only issues whose status was not fetched for their current `updated_at` are asked for (GitLab moves it
on a status change): all on a first run, the changed ones later, every one on a `full` run. An instance
or project that cannot answer is remembered (a probe) and asked again a day later. The GraphQL side,
the query, its errors and the batch size GitLab accepts, is sync/gitlab/workitems_graphql.py.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import aiosqlite

from sync.clock import Clock, utc_iso
from sync.errors import TransientError
from sync.gitlab.client import GitLabClient
from sync.gitlab.workitems_graphql import (
    BatchRejected,
    BatchSizer,
    ProjectStatusesUnavailable,
    Status,
    StatusesUnavailable,
    StatusQuery,
)
from sync.ingest.mirror import bump_versions
from sync.store.db import Database
from sync.types import Progress

STAGE = "work_item_status"
FEATURE = "work_item_status"
REPROBE_AFTER = 24 * 3600.0  # an instance found without work items is asked again after this long
SOLO_FAILURES_LIMIT = 3  # this many items in a row failing alone is the instance's problem, not theirs

DataChanged = Callable[[int, str, list[int]], None]


# -- the stage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusResult:
    fetched: int  # statuses GitLab answered for
    changed: int  # issues whose stored status changed
    skipped: int  # issues that failed even alone (recorded, asked again once they change)
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class _Pending:
    project_id: int
    path: str
    items: tuple[tuple[int, str], ...]  # (iid, updated_at) to fetch


async def sync_work_item_status(
    db: Database,
    client: GitLabClient,
    clock: Clock,
    project_ids: Sequence[int],
    *,
    refetch_all: bool = False,
    progress: Progress | None = None,
    data_changed: DataChanged | None = None,
) -> StatusResult:
    """Fetch the status of every issue in `project_ids` that needs it; never fails the run.

    GitLab without work items, an error that persists after the client's retries, or items that
    fail even alone end up as warnings (one line each kind), and the rest of the sync goes on.
    """
    stage = _StatusStage(db, client, clock, progress, data_changed)
    return await stage.run(project_ids, refetch_all)


class _StatusStage:
    def __init__(
        self,
        db: Database,
        client: GitLabClient,
        clock: Clock,
        progress: Progress | None,
        data_changed: DataChanged | None,
    ) -> None:
        self._db = db
        self._query = StatusQuery(client)
        self._clock = clock
        self._progress = progress
        self._data_changed = data_changed
        self._sizer = BatchSizer()
        self._fetched = self._changed = self._done = self._total = 0
        self._solo_streak = 0
        self._skipped: list[str] = []
        self._no_widget: list[str] = []

    async def run(self, project_ids: Sequence[int], refetch_all: bool) -> StatusResult:
        await self._forget_deleted()
        known = await _read_probe(self._db, FEATURE)
        if known is not None and not refetch_all and self._clock.now() - known[1] < REPROBE_AFTER:
            return self._result(_unavailable_warning(known[0], known[1]))
        pending = await self._pending(project_ids, refetch_all)
        self._total = sum(len(p.items) for p in pending)
        try:
            for project in pending:
                await self._project(project, refetch_all)
        except StatusesUnavailable as exc:
            await _write_probe(self._db, FEATURE, exc.reason, self._clock.now())
            return self._result(f"{STAGE}: unavailable: {exc.reason}")
        except TransientError as exc:
            return self._result(f"{STAGE}: incomplete, the rest is fetched on the next run: {exc.message}")
        if pending:
            await _clear_probe(self._db, FEATURE)
        return self._result(None)

    def _result(self, warning: str | None) -> StatusResult:
        warnings = [warning] if warning else []
        if self._no_widget:
            warnings.append(f"{STAGE}: unavailable for {'; '.join(self._no_widget)}")
        if self._skipped:
            shown = "; ".join(self._skipped[:5]) + ("; ..." if len(self._skipped) > 5 else "")
            warnings.append(
                f"{STAGE}: skipped {len(self._skipped)} issue(s) that failed even alone"
                f" (asked again once they change): {shown}"
            )
        return StatusResult(self._fetched, self._changed, len(self._skipped), tuple(warnings))

    # -- which issues -------------------------------------------------------------------------------

    async def _forget_deleted(self) -> None:
        async with self._db.transaction() as conn:
            await conn.execute(
                "DELETE FROM work_item_statuses WHERE NOT EXISTS (SELECT 1 FROM issues i"
                " WHERE i.project_id = work_item_statuses.project_id AND i.iid = work_item_statuses.iid)"
            )

    async def _pending(self, project_ids: Sequence[int], refetch_all: bool) -> list[_Pending]:
        if not project_ids:
            return []
        marks = ",".join("?" * len(project_ids))
        stale = "" if refetch_all else "AND (w.iid IS NULL OR w.checked_updated_at != i.updated_at)"
        rows = await self._db.fetchall(
            f"SELECT i.project_id, p.path_with_namespace, i.iid, i.updated_at FROM issues i"
            f" JOIN projects p ON p.id = i.project_id"
            f" LEFT JOIN work_item_statuses w ON w.project_id = i.project_id AND w.iid = i.iid"
            f" WHERE i.project_id IN ({marks}) {stale} ORDER BY i.project_id, i.iid",
            tuple(project_ids),
        )
        paths: dict[int, str] = {}
        items: dict[int, list[tuple[int, str]]] = {}
        for project_id, path, iid, updated_at in rows:
            paths[project_id] = path
            items.setdefault(project_id, []).append((iid, updated_at))
        return [_Pending(pid, paths[pid], tuple(found)) for pid, found in items.items()]

    # -- one project --------------------------------------------------------------------------------

    async def _project(self, project: _Pending, refetch_all: bool) -> None:
        feature = f"{FEATURE}:{project.project_id}"
        known = await _read_probe(self._db, feature)
        if known is not None and not refetch_all and self._clock.now() - known[1] < REPROBE_AFTER:
            self._no_widget.append(f"{project.path} ({known[0]}, found {utc_iso(known[1])})")
            return
        queue = deque(project.items)
        while queue:
            batch = [queue.popleft() for _ in range(min(self._sizer.size, len(queue)))]
            try:
                statuses = await self._query.fetch(project.path, [iid for iid, _ in batch])
            except BatchRejected as rejected:
                await self._rejected(project, batch, rejected, queue)
                continue
            except ProjectStatusesUnavailable as exc:
                await _write_probe(self._db, feature, exc.reason, self._clock.now())
                self._no_widget.append(f"{project.path} ({exc.reason})")
                return
            self._sizer.accepted(len(batch))
            self._solo_streak = 0
            await self._store(project.project_id, batch, statuses)
        await _clear_probe(self._db, feature)

    async def _rejected(
        self, project: _Pending, batch: list[tuple[int, str]], rejected: BatchRejected, queue: deque
    ) -> None:
        if len(batch) > 1:
            if rejected.complexity:
                self._sizer.too_complex(len(batch))
            else:
                self._sizer.timed_out(len(batch))
            queue.extendleft(reversed(batch))  # asked again, in smaller batches
            return
        iid, updated_at = batch[0]
        self._solo_streak += 1
        if self._solo_streak >= SOLO_FAILURES_LIMIT:
            raise StatusesUnavailable(f"{SOLO_FAILURES_LIMIT} issues in a row failed even alone: {rejected.reason}")
        self._sizer.item_failed()
        self._skipped.append(f"{project.path}#{iid}: {rejected.reason}")
        await self._record_failure(project.project_id, iid, updated_at, rejected.reason)
        await self._advance(1)

    # -- writing ------------------------------------------------------------------------------------

    async def _store(
        self, project_id: int, batch: list[tuple[int, str]], statuses: dict[int, Status | None]
    ) -> None:
        rows = [(project_id, iid, updated_at, _dump(statuses.get(iid))) for iid, updated_at in batch]
        async with self._db.transaction() as conn:
            changed = await _changed_iids(conn, project_id, rows)
            await conn.executemany(
                "INSERT INTO work_item_statuses (project_id, iid, checked_updated_at, status, error)"
                " VALUES (?, ?, ?, ?, NULL) ON CONFLICT (project_id, iid) DO UPDATE SET"
                " checked_updated_at = excluded.checked_updated_at, status = excluded.status, error = NULL",
                rows,
            )
            if changed:
                await conn.executemany(
                    "UPDATE issues SET work_item_status = ? WHERE project_id = ? AND iid = ?",
                    [(status, project_id, iid) for _, iid, _, status in rows if iid in changed],
                )
                await bump_versions(conn, project_id, ["issues"])
        self._fetched += sum(1 for iid, _ in batch if iid in statuses)
        self._changed += len(changed)
        if changed and self._data_changed is not None:
            self._data_changed(project_id, "issue", sorted(changed))
        await self._advance(len(batch))

    async def _record_failure(self, project_id: int, iid: int, updated_at: str, reason: str) -> None:
        """Remember the failure for this version of the issue, so it is not asked again until it changes."""
        async with self._db.transaction() as conn:
            await conn.execute(
                "INSERT INTO work_item_statuses (project_id, iid, checked_updated_at, status, error)"
                " VALUES (?, ?, ?, NULL, ?) ON CONFLICT (project_id, iid) DO UPDATE SET"
                " checked_updated_at = excluded.checked_updated_at, error = excluded.error",
                (project_id, iid, updated_at, reason),
            )

    async def _advance(self, count: int) -> None:
        self._done += count
        if self._progress is not None:
            await self._progress(STAGE, self._done, self._total)


# -- helpers --------------------------------------------------------------------------------------


def _dump(status: Status | None) -> str | None:
    return None if status is None else json.dumps(status, separators=(",", ":"), sort_keys=True)


async def _changed_iids(conn: aiosqlite.Connection, project_id: int, rows: Iterable[tuple]) -> set[int]:
    wanted = {iid: status for _, iid, _, status in rows}
    marks = ",".join("?" * len(wanted))
    stored = await conn.execute_fetchall(
        f"SELECT iid, work_item_status FROM issues WHERE project_id = ? AND iid IN ({marks})",
        (project_id, *wanted),
    )
    return {iid for iid, status in stored if status != wanted[iid]}


async def _read_probe(db: Database, feature: str) -> tuple[str, float] | None:
    row = await db.fetchone("SELECT reason, checked_at FROM feature_probes WHERE feature = ?", (feature,))
    return None if row is None else (row[0], row[1])


async def _write_probe(db: Database, feature: str, reason: str, now: float) -> None:
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO feature_probes (feature, reason, checked_at) VALUES (?, ?, ?)"
            " ON CONFLICT (feature) DO UPDATE SET reason = excluded.reason, checked_at = excluded.checked_at",
            (feature, reason, now),
        )


async def _clear_probe(db: Database, feature: str) -> None:
    async with db.transaction() as conn:
        await conn.execute("DELETE FROM feature_probes WHERE feature = ?", (feature,))


def _unavailable_warning(reason: str, checked_at: float) -> str:
    return (
        f"{STAGE}: unavailable: {reason} (found {utc_iso(checked_at)}; asked again a day later,"
        " or on a full sync)"
    )
