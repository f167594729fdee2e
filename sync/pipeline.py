"""The sync pipeline: GitLab -> mirror, page by page, for one run.

A listing walks `updated_after`-ordered pages; for each page it fetches the
discussions (and, for MRs, the diffs) of the items that changed, then commits
the items, their notes and files, and the cursor in ONE transaction. So the
cursor never moves past anything that is not fully in the mirror, and a run
that dies mid-way resumes exactly where its last commit left off.

Offset pages shift when an item is updated during the walk (it jumps to the
end and every later item moves back by one, so one can slip past a page
boundary unseen). An item seen twice in a walk reveals that; the walk is then
repeated from where the shift began, so no item is missed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sync import mirror
from sync.clock import Clock, normalize_time
from sync.config import EmbeddingsConfig
from sync.db import Database
from sync.documents import refresh_documents
from sync.embeddings import SKIPPED as EMBEDDINGS_SKIPPED
from sync.embeddings import EmbeddingClient, refresh_embeddings
from sync.errors import PermanentError, SyncError
from sync.gitlab import GitLabClient
from sync.mirror import TABLE, Kind
from sync.workitems import sync_work_item_status

TargetKind = Literal["issue", "merge_request", "project"]
Progress = Callable[[str, int, int], Awaitable[None]]
DataChanged = Callable[[int, str, list[int]], None]
MAX_REWALKS = 3


@dataclass(frozen=True)
class Target:
    """One thing a webhook named: an item, or a whole project for an incremental pass."""

    project_id: int
    kind: TargetKind
    iid: int | None = None


@dataclass(frozen=True)
class SyncRequest:
    trigger: str = "manual"
    profile: str = "balanced"
    projects: tuple[str, ...] | None = None  # restrict to these configured projects (path or id)
    full: bool = False  # ignore cursors and re-list everything
    targets: tuple[Target, ...] = ()  # non-empty: a targeted run


@dataclass(frozen=True)
class Outcome:
    counts: dict[str, int]
    warnings: list[str]


class Pipeline:
    """One run's worth of work; `sync.runner` wraps it with the lock and the run record."""

    def __init__(
        self,
        db: Database,
        client: GitLabClient,
        clock: Clock,
        *,
        projects: Sequence[str],
        progress: Progress,
        data_changed: DataChanged,
        set_stage: Callable[[str], Awaitable[None]],
        embeddings: EmbeddingsConfig | None = None,
    ) -> None:
        self._db = db
        self._embeddings = embeddings or EmbeddingsConfig()
        self._client = client
        self._clock = clock
        self._configured = tuple(projects)
        self._progress = progress
        self._data_changed = data_changed
        self._set_stage = set_stage
        self.counts: Counter[str] = Counter()
        self._done = 0
        self._total = 0

    async def run(self, request: SyncRequest) -> Outcome:
        warnings: list[str] = []
        await self._stage("projects")
        projects = await self._resolve_projects(request)
        if request.targets:
            await self._run_targets(projects, request.targets)
        else:
            for kind in ("issue", "merge_request"):
                await self._stage(TABLE[kind])
                await gather(self._sync_listing(pid, kind, request.full) for pid in projects)
        warnings += await self._work_item_status(projects, request.full)
        if request.profile in ("balanced", "full"):
            await self._stage("documents")
            self.counts["documents"] += await refresh_documents(self._db, self._document_progress)
        if request.profile == "full":
            warnings += await self._embed()
        return Outcome(dict(self.counts), warnings)

    async def _stage(self, name: str) -> None:
        self._done = self._total = 0
        await self._set_stage(name)
        await self._progress(name, 0, 0)

    async def _document_progress(self, done: int, total: int) -> None:
        await self._progress("documents", done, total)

    # -- enrichment stages (never fail the run: what they cannot do becomes a warning) ------------

    async def _work_item_status(self, projects: list[int], refetch_all: bool) -> list[str]:
        await self._stage("work_item_status")
        result = await sync_work_item_status(
            self._db,
            self._client,
            self._clock,
            projects,
            refetch_all=refetch_all,
            progress=self._progress,
            data_changed=self._data_changed,
        )
        self.counts["work_item_statuses"] += result.changed
        return list(result.warnings)

    async def _embed(self) -> list[str]:
        config = self._embeddings
        if not config.url:
            return [EMBEDDINGS_SKIPPED]
        await self._stage("embeddings")
        async with EmbeddingClient(config.url, config.model) as client:
            result = await refresh_embeddings(
                self._db, client, batch_size=config.batch_size, progress=self._progress
            )
        self.counts["embeddings"] += result.embedded
        return list(result.warnings)

    # -- projects ---------------------------------------------------------------------------------

    async def _resolve_projects(self, request: SyncRequest) -> list[int]:
        """GitLab ids of the projects this run covers, refreshing their rows."""
        wanted = self._configured
        if request.projects:
            unknown = [p for p in request.projects if p not in self._configured]
            if unknown:
                raise PermanentError(
                    "unknown_project", f"not a configured project: {', '.join(unknown)} (see gitlab.projects)"
                )
            wanted = request.projects
        found = await gather(self._client.project(p) for p in wanted)
        now = self._clock.now()
        async with self._db.transaction() as conn:
            for project in found:
                if await mirror.upsert_project(conn, project, now):
                    await mirror.bump_versions(conn, project["id"], ["project"])
                    await mirror.bump_versions(conn, 0, ["projects"])
        return [p["id"] for p in found]

    # -- incremental listings ---------------------------------------------------------------------

    async def _sync_listing(self, project_id: int, kind: Kind, full: bool) -> None:
        resource = TABLE[kind]
        cursor = None
        if not full:
            async with self._db.transaction() as conn:
                cursor = await mirror.get_cursor(conn, project_id, resource)
        for _ in range(MAX_REWALKS):
            rewind = await self._walk(project_id, kind, cursor)
            if rewind is None:
                return
            cursor = rewind
            async with self._db.transaction() as conn:
                await mirror.set_cursor(conn, project_id, resource, rewind)

    async def _walk(self, project_id: int, kind: Kind, updated_after: str | None) -> str | None:
        """Walk one listing; return where to walk again from if items shifted under it."""
        first_seen: dict[int, str] = {}
        rewind: str | None = None
        path = f"/projects/{project_id}/{TABLE[kind]}"
        pages = self._client.pages(path, self._client.list_params(updated_after), on_total=self._add_total)
        async for page in pages:
            for item in page:
                seen = first_seen.setdefault(item["iid"], normalize_time(item["updated_at"]))
                if seen != normalize_time(item["updated_at"]):
                    rewind = min(rewind or seen, seen)
            await self._commit_page(project_id, kind, page)
            self._done += len(page)
            await self._progress(TABLE[kind], self._done, max(self._total, self._done))
        return rewind

    def _add_total(self, total: int) -> None:
        self._total += total

    async def _commit_page(self, project_id: int, kind: Kind, page: list[dict]) -> None:
        if not page:
            return
        stored = await self._stored(project_id, kind, [it["iid"] for it in page])
        changed = mirror.changed_items(page, stored)
        details = await gather(self._fetch_details(project_id, kind, it["iid"]) for it in changed)
        newest = max(normalize_time(it["updated_at"]) for it in page)
        async with self._db.transaction() as conn:
            cursor = await mirror.get_cursor(conn, project_id, TABLE[kind])
            if changed:
                await self._write_items(conn, project_id, kind, changed, details)
            if cursor is None or newest > cursor:
                await mirror.set_cursor(conn, project_id, TABLE[kind], newest)
        if changed:
            self._data_changed(project_id, kind, [it["iid"] for it in changed])

    async def _stored(self, project_id: int, kind: Kind, iids: list[int]) -> dict[int, str]:
        marks = ",".join("?" * len(iids))
        rows = await self._db.fetchall(
            f"SELECT iid, updated_at FROM {TABLE[kind]} WHERE project_id = ? AND iid IN ({marks})",
            (project_id, *iids),
        )
        return {r[0]: r[1] for r in rows}

    # -- item details -----------------------------------------------------------------------------

    async def _fetch_details(self, project_id: int, kind: Kind, iid: int) -> tuple[list, list | None]:
        base = f"/projects/{project_id}/{TABLE[kind]}/{iid}"
        if kind == "merge_request":
            discussions, diffs = await gather(
                [self._client.get_all(f"{base}/discussions"), self._client.merge_request_files(project_id, iid)]
            )
            return discussions, diffs
        return await self._client.get_all(f"{base}/discussions"), None

    async def _write_items(
        self,
        conn: Any,
        project_id: int,
        kind: Kind,
        items: list[dict],
        details: list[tuple[list, list | None]],
    ) -> None:
        await mirror.upsert_items(conn, kind, project_id, items)
        for item, (discussions, diffs) in zip(items, details, strict=True):
            self.counts["notes"] += await mirror.replace_discussions(
                conn, project_id, kind, item["iid"], discussions
            )
            if diffs is not None:
                self.counts["mr_files"] += await mirror.replace_mr_files(conn, project_id, item["iid"], diffs)
        self.counts[TABLE[kind]] += len(items)
        await mirror.bump_versions(conn, project_id, [TABLE[kind], "discussions"])

    # -- targeted runs ----------------------------------------------------------------------------

    async def _run_targets(self, projects: list[int], targets: Iterable[Target]) -> None:
        covered = set(projects)
        wanted = [t for t in dict.fromkeys(targets) if t.project_id in covered]
        passes = [t for t in wanted if t.kind == "project"]
        items = [t for t in wanted if t.kind != "project" and t.iid is not None]
        await self._stage("targets")
        self._total = len(items)
        await gather(self._sync_item(t) for t in items)
        for target in passes:
            for kind in ("issue", "merge_request"):
                await self._sync_listing(target.project_id, kind, full=False)

    async def _sync_item(self, target: Target) -> None:
        kind: Kind = "issue" if target.kind == "issue" else "merge_request"
        path = f"/projects/{target.project_id}/{TABLE[kind]}/{target.iid}"
        try:
            item = await self._client.get(path)
        except PermanentError as exc:
            if exc.code != "gitlab_not_found":
                raise
            await self._forget(target.project_id, kind, int(target.iid or 0))
        else:
            details = await self._fetch_details(target.project_id, kind, item["iid"])
            async with self._db.transaction() as conn:
                changed = await self._differs(conn, target.project_id, kind, item, details[0])
                if changed:
                    await self._write_items(conn, target.project_id, kind, [item], [details])
            if changed:
                self._data_changed(target.project_id, kind, [item["iid"]])
        self._done += 1
        await self._progress("targets", self._done, self._total)

    async def _differs(self, conn: Any, project_id: int, kind: Kind, item: dict, discussions: list) -> bool:
        """Whether a refetched item or its notes differ from the mirror (an unchanged one is not rewritten)."""
        rows = await conn.execute_fetchall(
            f"SELECT updated_at FROM {TABLE[kind]} WHERE project_id = ? AND iid = ?",
            (project_id, item["iid"]),
        )
        if not rows or rows[0][0] != normalize_time(item["updated_at"]):
            return True
        stored = await mirror.stored_notes_fingerprint(conn, project_id, kind, item["iid"])
        return stored != mirror.notes_fingerprint(discussions)

    async def _forget(self, project_id: int, kind: Kind, iid: int) -> None:
        """GitLab says the item is gone (deleted, or moved out of reach): drop it from the mirror."""
        async with self._db.transaction() as conn:
            if not await mirror.delete_item(conn, project_id, kind, iid):
                return
            await mirror.bump_versions(conn, project_id, [TABLE[kind], "discussions"])
        self.counts["deleted"] += 1
        self._data_changed(project_id, kind, [iid])


async def gather(coros: Iterable[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run concurrently; on the first failure cancel the rest and raise that failure itself."""
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as failures:
        raise _first_cause(failures) from None
    return [t.result() for t in tasks]


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            stack[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    return next((e for e in leaves if isinstance(e, SyncError)), leaves[0])
