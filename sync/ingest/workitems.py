"""The work-item status stage: each issue's `{"name", "category"}` status, from GitLab's GraphQL API.

Only issues whose status was not fetched for their current `updated_at` are asked for (GitLab moves it
on a status change): all on a first run, the changed ones later, every one on a `full` run. `BatchSizer`
fits the batch to GitLab's complexity limit and its 30 s timeout.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiosqlite

from sync.clock import Clock, utc_iso
from sync.errors import PermanentError, TransientError
from sync.gitlab.client import GitLabClient
from sync.ingest.mirror import bump_versions
from sync.store.db import Database
from sync.types import Progress

STAGE = "work_item_status"
MAX_BATCH = 100  # GitLab's page size limit for a connection
FEATURE = "work_item_status"
REPROBE_AFTER = 24 * 3600.0  # an instance found without work items is asked again after this long
SOLO_FAILURES_LIMIT = 3  # this many items in a row failing alone is the instance's problem, not theirs

_COMPLEXITY = re.compile(r"Query has complexity of \d+, which exceeds max complexity of \d+")
_UNDEFINED = re.compile(r"doesn't exist on type|No such type|undefinedField|undefinedType|can't be a fragment")
# GitLab EE 15.x-17.7: WorkItemWidgetStatus exists, but its `status` is the requirement's verification
# status, a String, so selecting `{ name }` on it fails validation (graphql-ruby's selectionMismatch).
_SCALAR_STATUS = re.compile(r"Selections can't be made on scalars \(field 'status'")

DataChanged = Callable[[int, str, list[int]], None]


def build_query(with_category: bool = True) -> str:
    """The batch query; without `category` for GitLab before 18.1, which does not know that field."""
    fields = "name category" if with_category else "name"
    return (
        "query workItemStatuses($fullPath: ID!, $iids: [String!], $first: Int) {"
        " project(fullPath: $fullPath) { workItems(iids: $iids, first: $first) {"
        f" nodes {{ iid widgets {{ ... on WorkItemWidgetStatus {{ status {{ {fields} }} }} }} }} }} }} }}"
    )


# -- batch sizing ---------------------------------------------------------------------------------


class BatchSizer:
    """How many issues the next request asks for.

    Both rejections halve the size. A complexity error depends on the size alone (GitLab computes it
    from the query before running it), so the rejected size becomes a ceiling for the run, and a size
    already accepted is a floor the halving never goes below. A timeout may be load or one slow item,
    so its size is a ceiling only for the next few successes. Each success grows the size by a quarter
    (at least one, at most half the way to the ceiling): under a complexity limit it settles on the
    largest size GitLab accepts.
    """

    __slots__ = ("_ceiling", "_floor", "_slow", "_slow_left", "maximum", "size")

    SLOW_MEMORY = 8  # successes for which a timed-out size stays off limits

    def __init__(self, maximum: int = MAX_BATCH) -> None:
        self.maximum = maximum
        self.size = maximum
        self._ceiling = maximum + 1  # the smallest size rejected as too complex
        self._floor = 0  # the largest size accepted
        self._slow = maximum + 1  # the smallest size that timed out lately
        self._slow_left = 0

    def too_complex(self, size: int) -> None:
        self._ceiling = min(self._ceiling, size)
        if self._floor >= size:
            self._floor = 0  # the query changed under us; what was accepted before says nothing now
        self.size = max(1, size // 2, self._floor)

    def timed_out(self, size: int) -> None:
        self._slow = min(self._slow, size) if self._slow_left else size
        self._slow_left = self.SLOW_MEMORY
        self.size = max(1, size // 2)

    def item_failed(self) -> None:
        """An item failed even alone: the timeouts that led to it were its fault, not the size's."""
        self._slow, self._slow_left = self.maximum + 1, 0
        self.size = max(1, self._floor // 2)

    def accepted(self, size: int) -> None:
        if size < self.size:
            return  # a short tail batch says nothing about the size
        self._floor = max(self._floor, size)
        limit = self._ceiling
        if self._slow_left:
            self._slow_left -= 1
            limit = min(limit, self._slow)
        step = max(1, size // 4)
        if limit <= self.maximum:
            step = min(step, max(1, (limit - size) // 2))
        self.size = max(1, min(self.maximum, limit - 1, size + step))


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


class _Unavailable(Exception):
    """GitLab cannot answer this at all (no GraphQL, no workItems, no widget)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ProjectUnavailable(Exception):
    """GitLab answers, but not for this project (no status widget there, or the path is unknown)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Rejected(Exception):
    """GitLab refused this batch (complexity, timeout, or an error it would not explain per item)."""

    def __init__(self, reason: str, *, complexity: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.complexity = complexity


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
        self._client = client
        self._clock = clock
        self._progress = progress
        self._data_changed = data_changed
        self._sizer = BatchSizer()
        self._with_category = True
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
        except _Unavailable as exc:
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
                statuses = await self._fetch(project.path, [iid for iid, _ in batch])
            except _Rejected as rejected:
                await self._rejected(project, batch, rejected, queue)
                continue
            except _ProjectUnavailable as exc:
                await _write_probe(self._db, feature, exc.reason, self._clock.now())
                self._no_widget.append(f"{project.path} ({exc.reason})")
                return
            self._sizer.accepted(len(batch))
            self._solo_streak = 0
            await self._store(project.project_id, batch, statuses)
        await _clear_probe(self._db, feature)

    async def _rejected(
        self, project: _Pending, batch: list[tuple[int, str]], rejected: _Rejected, queue: deque
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
            raise _Unavailable(f"{SOLO_FAILURES_LIMIT} issues in a row failed even alone: {rejected.reason}")
        self._sizer.item_failed()
        self._skipped.append(f"{project.path}#{iid}: {rejected.reason}")
        await self._record_failure(project.project_id, iid, updated_at, rejected.reason)
        await self._advance(1)

    # -- one request --------------------------------------------------------------------------------

    async def _fetch(self, path: str, iids: list[int]) -> dict[int, dict[str, Any] | None]:
        """Statuses by iid (items GitLab did not return are absent)."""
        variables = {"fullPath": path, "iids": [str(i) for i in iids], "first": len(iids)}
        try:
            answer = await self._client.post_json(
                "/api/graphql", {"query": build_query(self._with_category), "variables": variables}
            )
        except PermanentError as exc:
            raise _Unavailable(exc.message) from exc
        except TransientError as exc:
            if exc.code == "gitlab_query_timeout":
                raise _Rejected("GitLab timed out on the query") from exc
            raise
        if not isinstance(answer, dict):
            raise _Rejected("the answer is not a JSON object")
        errors = answer.get("errors")
        if errors:
            self._classify(errors)
            return await self._fetch(path, iids)  # only after dropping `category`
        return _statuses(answer, path)

    def _classify(self, errors: Any) -> None:
        """Raise what GraphQL `errors` mean; return only when a retry without `category` may work."""
        messages = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in _as_list(errors)]
        text = "; ".join(messages) or "GraphQL errors"
        if any(_COMPLEXITY.search(m) for m in messages):
            raise _Rejected(text, complexity=True)
        if any(_SCALAR_STATUS.search(m) for m in messages):
            # The query itself is refused, whatever the batch: halving it would only repeat the refusal.
            raise _Unavailable(
                "this GitLab's status widget is a requirement's verification status (a String: EE before 17.8),"
                " not the work-item status"
            )
        if any(_UNDEFINED.search(m) for m in messages) or _has_undefined_code(errors):
            if self._with_category and all("'category'" in m for m in messages):
                self._with_category = False  # GitLab before 18.1: statuses without categories
                return
            raise _Unavailable(text)
        raise _Rejected(text)

    # -- writing ------------------------------------------------------------------------------------

    async def _store(
        self, project_id: int, batch: list[tuple[int, str]], statuses: dict[int, dict[str, Any] | None]
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


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _has_undefined_code(errors: Any) -> bool:
    codes = {
        (e.get("extensions") or {}).get("code") for e in _as_list(errors) if isinstance(e, dict)
    }
    return bool(codes & {"undefinedField", "undefinedType"})


def _statuses(answer: dict[str, Any], path: str) -> dict[int, dict[str, Any] | None]:
    data = answer.get("data") or {}
    project = data.get("project")
    if project is None:
        # The path no longer names a project this token sees (renamed since the run began, say).
        raise _ProjectUnavailable(f"GraphQL does not know project {path}")
    nodes = ((project.get("workItems") or {}).get("nodes")) or []
    statuses: dict[int, dict[str, Any] | None] = {}
    widget_seen = False
    for node in nodes:
        widget = next((w for w in node.get("widgets") or [] if isinstance(w, dict) and "status" in w), None)
        widget_seen = widget_seen or widget is not None
        statuses[int(node["iid"])] = _status(widget["status"]) if widget else None
    if nodes and not widget_seen:
        raise _ProjectUnavailable("its work items have no status widget (GitLab Free, or statuses not enabled)")
    return statuses


def _status(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or not raw.get("name"):
        return None
    return {"name": raw["name"], "category": raw.get("category")}


def _dump(status: dict[str, Any] | None) -> str | None:
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
