"""The sync pipeline: GitLab -> mirror, page by page, for one run.

One module because its stages share one run's state (counts, progress, the project checks made once a run)
and one commit rule.

A listing walks `updated_after`-ordered pages; for each page it fetches the
discussions (and, for MRs, the diffs) of the items that changed, then commits
the items, their notes and files, and the cursor in ONE transaction. So the
cursor never moves past anything that is not fully in the mirror, and a run
that dies mid-way resumes exactly where its last commit left off.

Offset pages shift when an item is updated during the walk (it jumps to the
end and every later item moves back by one, so one can slip past a page
boundary unseen). An item seen twice in a walk reveals that; the walk is then
repeated from where the shift began, so no item is missed.

What a listing cannot show is handled here too: a 404/403 on one item or its details removes that
item (ItemGone) and the run goes on; notes hidden by GitLab's throttled touch are fetched again once
the touch window has closed; and a reconcile pass deletes what GitLab no longer lists and fetches what
it lists that the mirror lacks.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, cast, get_args

from sync.clock import Clock, normalize_time
from sync.config import EmbeddingsConfig
from sync.errors import ItemGone, PermanentError, SyncError
from sync.gitlab.client import GitLabClient
from sync.ingest import mirror
from sync.ingest.documents import refresh_documents
from sync.ingest.embeddings import SKIPPED as EMBEDDINGS_SKIPPED
from sync.ingest.embeddings import EmbeddingClient, refresh_embeddings
from sync.ingest.workitems import sync_work_item_status
from sync.store.db import Database
from sync.types import TABLES, ItemRef, Kind, Progress

MAX_REWALKS = 3
KINDS: tuple[Kind, ...] = get_args(Kind)  # issue, merge_request: the order a pass lists them in
# GitLab's largest page; a reconcile lists each project and kind in ceil(items / 100) requests.
PAGE = 100
T = TypeVar("T")


class DataChanged(Protocol):
    """Announces committed changes: `iids` every item that changed, `deleted` those of them now gone."""

    def __call__(self, project_id: int, kind: str, iids: list[int], deleted: Sequence[int] = ()) -> None: ...


@dataclass(frozen=True)
class SyncRequest:
    trigger: str = "manual"
    profile: str = "balanced"
    projects: tuple[str, ...] | None = None  # restrict to these configured projects (path or id)
    full: bool = False  # ignore cursors and re-list everything
    # non-empty: a targeted run over these items (kind issue/merge_request, an iid) and whole projects
    # (kind "project": an incremental pass)
    targets: tuple[ItemRef, ...] = ()
    reconcile: bool = False  # also list every iid and delete what GitLab no longer has


@dataclass(frozen=True)
class _Details:
    """An item's discussions (and an MR's diffs), and when the first request for them was sent."""

    discussions: list
    diffs: list | None
    fetched_at: float


@dataclass(frozen=True)
class Outcome:
    counts: dict[str, int]
    warnings: list[str]


class Pipeline:
    """One run's worth of work; `sync.control.runner` wraps it with the lock and the run record."""

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
        touch_interval: float = 60.0,
    ) -> None:
        self._db = db
        self._touch_interval = touch_interval
        self._project_checks: dict[int, asyncio.Future[Any]] = {}
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
            started, first_time = self._clock.now(), await self._unmirrored(projects)
            for kind in KINDS:
                await self._stage(TABLES[kind])
                await gather(self._sync_listing(pid, kind, request.full) for pid in projects)
            await self._mark_reconciled(first_time, started)
            await self._recheck_discussions(projects)
            if request.reconcile:
                await self._reconcile(projects)
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
        resource = TABLES[kind]
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
        path = f"/projects/{project_id}/{TABLES[kind]}"
        pages = self._client.pages(path, self._client.list_params(updated_after), on_total=self._add_total)
        async for page in pages:
            for item in page:
                seen = first_seen.setdefault(item["iid"], normalize_time(item["updated_at"]))
                if seen != normalize_time(item["updated_at"]):
                    rewind = min(rewind or seen, seen)
            await self._commit_page(project_id, kind, page)
            self._done += len(page)
            await self._progress(TABLES[kind], self._done, max(self._total, self._done))
        return rewind

    def _add_total(self, total: int) -> None:
        self._total += total

    async def _commit_page(self, project_id: int, kind: Kind, page: list[dict]) -> None:
        if not page:
            return
        stored = await self._stored(project_id, kind, [it["iid"] for it in page])
        changed = mirror.changed_items(page, stored)
        fetched = await gather(self._details_unless_gone(project_id, kind, it["iid"]) for it in changed)
        kept = [(it, d) for it, d in zip(changed, fetched, strict=True) if d is not None]
        vanished = [it["iid"] for it, d in zip(changed, fetched, strict=True) if d is None]
        newest = max(normalize_time(it["updated_at"]) for it in page)
        async with self._db.transaction() as conn:
            cursor = await mirror.get_cursor(conn, project_id, TABLES[kind])
            if kept:
                await self._write_items(conn, project_id, kind, [it for it, _ in kept], [d for _, d in kept])
            deleted = await self._delete(conn, project_id, kind, vanished)
            if cursor is None or newest > cursor:
                await mirror.set_cursor(conn, project_id, TABLES[kind], newest)
        self._announce(project_id, kind, [it["iid"] for it, _ in kept], deleted)

    async def _stored(self, project_id: int, kind: Kind, iids: list[int]) -> dict[int, str]:
        marks = ",".join("?" * len(iids))
        rows = await self._db.fetchall(
            f"SELECT iid, updated_at FROM {TABLES[kind]} WHERE project_id = ? AND iid IN ({marks})",
            (project_id, *iids),
        )
        return {r[0]: r[1] for r in rows}

    # -- item details -----------------------------------------------------------------------------

    async def _fetch_details(self, project_id: int, kind: Kind, iid: int) -> _Details:
        """Discussions (and an MR's diffs); raises ItemGone when GitLab says the item is not there."""
        ref = ItemRef(project_id, kind, iid)
        base = f"/projects/{project_id}/{TABLES[kind]}/{iid}"
        fetched_at = self._clock.now()  # before the request: a note written during it is not "seen"
        if kind == "merge_request":
            discussions, diffs = await gather(
                [
                    self._for_item(ref, self._client.get_all(f"{base}/discussions")),
                    self._for_item(ref, self._client.merge_request_files(project_id, iid)),
                ]
            )
            return _Details(discussions, diffs, fetched_at)
        return _Details(await self._for_item(ref, self._client.get_all(f"{base}/discussions")), None, fetched_at)

    async def _details_unless_gone(self, project_id: int, kind: Kind, iid: int) -> _Details | None:
        try:
            return await self._fetch_details(project_id, kind, iid)
        except ItemGone:
            return None

    async def _write_items(
        self,
        conn: Any,
        project_id: int,
        kind: Kind,
        items: list[dict],
        details: list[_Details],
    ) -> None:
        await mirror.upsert_items(conn, kind, project_id, items)
        for item, detail in zip(items, details, strict=True):
            self.counts["notes"] += await mirror.replace_discussions(
                conn, project_id, kind, item["iid"], detail.discussions
            )
            if detail.diffs is not None:
                self.counts["mr_files"] += await mirror.replace_mr_files(
                    conn, project_id, item["iid"], detail.diffs
                )
            await self._remember_fetch(conn, ItemRef(project_id, kind, item["iid"]), item["updated_at"], detail)
        self.counts[TABLES[kind]] += len(items)
        await mirror.bump_versions(conn, project_id, [TABLES[kind], "discussions"])

    async def _remember_fetch(self, conn: Any, ref: ItemRef, updated_at: str, detail: _Details) -> None:
        await mirror.record_discussions_fetch(conn, ref, updated_at, detail.fetched_at, self._touch_interval)

    # -- item-level failures ----------------------------------------------------------------------

    async def _for_item(self, ref: ItemRef, request: Awaitable[T]) -> T:
        """Await a request about one item; a 404/403 becomes ItemGone once the project itself still answers."""
        try:
            return await request
        except PermanentError as exc:
            if exc.code not in ItemGone.CAUSES:
                raise
            # A project deleted or hidden mid-run makes every item 404: that must pause, not empty the mirror.
            await self._check_project(ref.project_id)
            raise ItemGone(ref.project_id, ref.kind, ref.iid, exc) from exc

    async def _check_project(self, project_id: int) -> None:
        """GET the project once per run (concurrent callers share the request); raises if it is gone."""
        check = self._project_checks.get(project_id)
        if check is None:
            check = self._project_checks[project_id] = asyncio.ensure_future(self._client.project(project_id))
        await asyncio.shield(check)

    async def _delete(self, conn: Any, project_id: int, kind: Kind, iids: Iterable[int]) -> list[int]:
        """Delete these items (inside the caller's transaction); the iids that were in the mirror."""
        deleted = [iid for iid in iids if await mirror.delete_item(conn, project_id, kind, iid)]
        if deleted:
            await mirror.bump_versions(conn, project_id, [TABLES[kind], "discussions"])
            self.counts["deleted"] += len(deleted)
        return deleted

    def _announce(self, project_id: int, kind: Kind, changed: list[int], deleted: list[int]) -> None:
        if changed or deleted:
            self._data_changed(project_id, kind, [*changed, *deleted], deleted)

    # -- targeted runs ----------------------------------------------------------------------------

    async def _run_targets(self, projects: list[int], targets: Iterable[ItemRef]) -> None:
        covered = set(projects)
        wanted = [t for t in dict.fromkeys(targets) if t.project_id in covered]
        passes = [t for t in wanted if t.kind == "project"]
        items = [t for t in wanted if t.kind in KINDS and t.iid is not None]
        await self._stage("targets")
        self._total = len(items)
        await gather(self._sync_item(t) for t in items)
        for target in passes:
            for kind in KINDS:
                await self._sync_listing(target.project_id, kind, full=False)

    async def _sync_item(self, ref: ItemRef) -> None:
        """Fetch one named item (kind issue or merge_request, with an iid) and its details."""
        await self._fetch_item(ref)
        self._done += 1
        await self._progress("targets", self._done, self._total)

    async def _fetch_item(self, ref: ItemRef) -> bool:
        """GET one item and its details and write them if they differ from the mirror; a 404/403 drops it.
        Whether anything was written."""
        project_id, kind = cast(int, ref.project_id), cast(Kind, ref.kind)  # callers pass only these kinds
        path = f"/projects/{project_id}/{TABLES[kind]}/{ref.iid}"
        try:
            item = await self._for_item(ref, self._client.get(path))
            details = await self._fetch_details(project_id, kind, item["iid"])
        except ItemGone:
            await self._forget(ref)
            return False
        async with self._db.transaction() as conn:
            changed = await self._differs(conn, project_id, kind, item, details.discussions)
            if changed:
                await self._write_items(conn, project_id, kind, [item], [details])
            else:
                await self._remember_fetch(conn, ref, item["updated_at"], details)
        if changed:
            self._data_changed(project_id, kind, [item["iid"]])
        return changed

    async def _differs(self, conn: Any, project_id: int, kind: Kind, item: dict, discussions: list) -> bool:
        """Whether a refetched item or its notes differ from the mirror (an unchanged one is not rewritten)."""
        rows = await conn.execute_fetchall(
            f"SELECT updated_at FROM {TABLES[kind]} WHERE project_id = ? AND iid = ?",
            (project_id, item["iid"]),
        )
        if not rows or rows[0][0] != normalize_time(item["updated_at"]):
            return True
        stored = await mirror.stored_notes_fingerprint(conn, project_id, kind, item["iid"])
        return stored != mirror.notes_fingerprint(discussions)

    async def _forget(self, ref: ItemRef) -> None:
        """GitLab says the item is gone (deleted, or moved out of reach): drop it from the mirror."""
        async with self._db.transaction() as conn:
            deleted = await self._delete(conn, ref.project_id, ref.kind, [ref.iid])
        self._announce(ref.project_id, ref.kind, [], deleted)

    # -- notes GitLab's throttled touch kept out of the listings ----------------------------------

    async def _recheck_discussions(self, projects: list[int]) -> None:
        """Fetch again the discussions of items whose touch window closed after their last fetch.

        One discussions request per such item, i.e. per item that changed within `touch_interval` of
        its last fetch (see mirror.record_discussions_fetch); none at all on a quiet mirror.
        """
        async with self._db.transaction() as conn:
            due = await mirror.due_rechecks(conn, projects, self._clock.now(), self._touch_interval)
        if not due:
            return
        await self._stage("discussions")
        self._total = len(due)
        await gather(self._recheck(ref) for ref in due)

    async def _recheck(self, ref: ItemRef) -> None:
        path = f"/projects/{ref.project_id}/{TABLES[ref.kind]}/{ref.iid}/discussions"
        fetched_at = self._clock.now()
        try:
            discussions = await self._for_item(ref, self._client.get_all(path))
        except ItemGone:
            await self._forget(ref)
        else:
            if await self._store_rechecked(ref, discussions, fetched_at):
                self._data_changed(ref.project_id, ref.kind, [ref.iid])
        self._done += 1
        await self._progress("discussions", self._done, self._total)

    async def _store_rechecked(self, ref: ItemRef, discussions: list, fetched_at: float) -> bool:
        """Write the discussions if they differ from the mirror's; whether they did."""
        async with self._db.transaction() as conn:
            rows = await conn.execute_fetchall(
                f"SELECT updated_at FROM {TABLES[ref.kind]} WHERE project_id = ? AND iid = ?",
                (ref.project_id, ref.iid),
            )
            if not rows:
                return False  # deleted meanwhile; delete_item dropped its recheck too
            stored = await mirror.stored_notes_fingerprint(conn, ref.project_id, ref.kind, ref.iid)
            changed = stored != mirror.notes_fingerprint(discussions)
            if changed:
                self.counts["notes"] += await mirror.replace_discussions(
                    conn, ref.project_id, ref.kind, ref.iid, discussions
                )
                await mirror.bump_versions(conn, ref.project_id, ["discussions"])
            detail = _Details(discussions, None, fetched_at)
            await self._remember_fetch(conn, ref, rows[0][0], detail)
        self.counts["rechecked"] += 1
        return changed

    # -- reconcile: deletions GitLab sends no webhook for, and items the listings missed ------------

    async def _reconcile(self, projects: list[int]) -> None:
        """List every iid of each project and kind: delete from the mirror what GitLab lacks, and fetch
        what the mirror lacks."""
        await self._stage("reconcile")
        await gather(self._reconcile_project(project_id) for project_id in projects)

    async def _reconcile_project(self, project_id: int) -> None:
        started = self._clock.now()
        await gather(self._reconcile_kind(project_id, kind) for kind in KINDS)
        await self._mark_reconciled([project_id], started)

    async def _unmirrored(self, projects: list[int]) -> list[int]:
        """Projects with no item in the mirror: their first listing is as good as a reconcile."""
        async with self._db.transaction() as conn:
            return [pid for pid in projects if not await mirror.has_items(conn, pid)]

    async def _mark_reconciled(self, projects: list[int], started: float) -> None:
        async with self._db.transaction() as conn:
            for project_id in projects:
                await mirror.mark_reconciled(conn, project_id, started)

    async def _reconcile_kind(self, project_id: int, kind: Kind) -> None:
        """Delete what GitLab no longer lists, and fetch what it lists that the mirror lacks."""
        async with self._db.transaction() as conn:
            if await mirror.get_cursor(conn, project_id, TABLES[kind]) is None:
                return  # never listed: the next listing walks from the start anyway. No request
            known = await mirror.stored_iids(conn, project_id, kind)
        listed = await self._listed_iids(project_id, kind)
        gone = await self._confirm_gone(project_id, kind, sorted(known - listed))
        if gone:
            async with self._db.transaction() as conn:
                deleted = await self._delete(conn, project_id, kind, gone)
            self._announce(project_id, kind, [], deleted)
        await self._fetch_unmirrored(project_id, kind, sorted(listed - known))

    async def _fetch_unmirrored(self, project_id: int, kind: Kind, iids: list[int]) -> None:
        """Items GitLab lists but the mirror lacks: the incremental listing walked past them (a clock
        skewed between GitLab's nodes, a page lost to a shifted offset), and no webhook brought them.
        Each is fetched as a targeted run fetches one (the item, its discussions, an MR's diffs), so the
        cost is one GET per item on top of the details any fetch of it needs; 100 at a time, so a mirror
        that lost a great many holds only that many in flight."""
        self._total += len(iids)
        for start in range(0, len(iids), PAGE):
            written = await gather(self._fetch_item(ItemRef(project_id, kind, iid))
                                   for iid in iids[start : start + PAGE])
            self.counts["recovered"] += sum(written)
            self._done += len(written)
            await self._progress("reconcile", self._done, max(self._total, self._done))

    async def _listed_iids(self, project_id: int, kind: Kind) -> set[int]:
        """Every iid GitLab lists, oldest first: new items land on the last page, not in the middle."""
        params: dict[str, str | int] = {
            "scope": "all", "state": "all", "order_by": "created_at", "sort": "asc", "per_page": PAGE,
        }
        if kind == "merge_request":
            params["view"] = "simple"  # the MR list's slim form: iid, title, state and a few more
        listed: set[int] = set()
        path = f"/projects/{project_id}/{TABLES[kind]}"
        async for page in self._client.pages(path, params, on_total=self._add_total):
            listed.update(int(item["iid"]) for item in page)
            self._done += len(page)
            await self._progress("reconcile", self._done, max(self._total, self._done))
        return listed

    async def _confirm_gone(self, project_id: int, kind: Kind, missing: list[int]) -> list[int]:
        """Of the iids a listing did not show, those GitLab still does not show when asked by name.

        Offset pages shift back when an item before them is deleted during the walk, so one item per
        deletion can slip past a page boundary unseen; asking again (100 iids a request) keeps a
        concurrent deletion from taking a live item with it.
        """
        path = f"/projects/{project_id}/{TABLES[kind]}"
        gone: list[int] = []
        for start in range(0, len(missing), PAGE):
            chunk = missing[start : start + PAGE]
            query = {"scope": "all", "state": "all", "per_page": PAGE, "iids[]": chunk}
            found = await self._client.get(path, query)  # type: ignore[arg-type]
            present = {int(item["iid"]) for item in found} if isinstance(found, list) else set()
            gone += [iid for iid in chunk if iid not in present]
        return gone


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
