"""One sync, end to end: the single-flight lock, the run record, the pipeline, the events.

Every way of starting a sync (CLI, scheduler, API) comes through `SyncRunner.run`,
so each gets the same guarantees: at most one at a time across processes, a
`sync_runs` row that always ends in a final status, and `sync.*` events with
the run's id.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from sync.clock import Clock
from sync.config import SYNC_DISABLED, Config
from sync.control.lock import DistributedLock, SyncLock, new_owner
from sync.control.runs import Run, RunLog
from sync.errors import PermanentError, SyncError, TransientError
from sync.events import DataChanged, EventBus, SyncFailed, SyncFinished, SyncProgress, SyncStarted
from sync.gitlab.budget import RequestBudget
from sync.gitlab.client import GitLabClient
from sync.ingest.pipeline import Pipeline, SyncRequest
from sync.read.changes import latest_seq_now
from sync.scaleout.redis_bus import redis_client
from sync.store.db import Database


class ProgressThrottle:
    """Publishes sync.progress at most ~50 times a stage, plus every stage's first and last step."""

    def __init__(self, bus: EventBus, run_id: int) -> None:
        self._bus = bus
        self._run_id = run_id
        self._last: tuple[str, int] = ("", -1)

    async def __call__(self, stage: str, done: int, total: int) -> None:
        last_stage, last_done = self._last
        step = max(1, total // 50)
        if stage == last_stage and done != total and done - last_done < step:
            return
        self._last = (stage, done)
        self._bus.emit(SyncProgress(self._run_id, stage, done, total))


class SyncRunner:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        clock: Clock,
        config: Config,
        *,
        client: GitLabClient | None = None,
        owner: str | None = None,
        distributed_lock: DistributedLock | None = None,
    ) -> None:
        """`distributed_lock`: shared beyond this database (Redis), held by `owner`, taken before the row."""
        self._db = db
        self._bus = bus
        self._clock = clock
        self._config = config
        self._client = client
        self.owner = owner or new_owner()
        self.runs = RunLog(db, clock)
        self.lock = SyncLock(db, clock, self.owner, stale_after=config.sync.stale_lock,
                             distributed=distributed_lock)

    async def run(self, request: SyncRequest, *, wait: bool = False) -> Run:
        """Run now; raises SyncInProgress when another run holds the lock (unless `wait`)."""
        if not self._config.gitlab.enabled:
            raise PermanentError(
                "gitlab_not_configured", SYNC_DISABLED
            )
        async with self.lock.held(wait=wait):
            run_id = await self.runs.start(request.trigger, request.profile, self.owner)
            await self.lock.set_run(run_id)
            started = await self.runs.get(run_id)
            assert started is not None
            self._bus.emit(SyncStarted(run_id, started.to_json()))
            await self._execute(run_id, request)
        run = await self.runs.get(run_id)
        assert run is not None
        return run

    async def _execute(self, run_id: int, request: SyncRequest) -> None:
        async with self._client_for_run() as client:
            pipeline = self._pipeline(run_id, client)
            try:
                outcome = await pipeline.run(request)
            except SyncError as error:
                await self._failed(run_id, "failed", pipeline, error)
            except asyncio.CancelledError:
                stopped = TransientError("interrupted", "the gateway stopped before this sync finished")
                await asyncio.shield(self._failed(run_id, "interrupted", pipeline, stopped))
                raise
            else:
                await self.runs.finish(run_id, "succeeded", outcome.counts, outcome.warnings)
                finished = await self.runs.get(run_id)
                assert finished is not None
                self._bus.emit(SyncFinished(run_id, outcome.counts, outcome.warnings, finished.to_json()))

    async def _failed(self, run_id: int, status: str, pipeline: Pipeline, error: SyncError) -> None:
        await self.runs.finish(run_id, status, dict(pipeline.counts), [], error)
        self._bus.emit(SyncFailed(run_id, error.code, error.message, error.transient))

    def _pipeline(self, run_id: int, client: GitLabClient) -> Pipeline:
        async def set_stage(stage: str) -> None:
            await self.runs.set_stage(run_id, stage)

        def data_changed(project_id: int, kind: str, iids: list[int], deleted: Sequence[int] = ()) -> None:
            # seq: where the change feed stands after this commit (GET /api/v1/changes?since=seq).
            self._bus.emit(DataChanged(project_id, kind, iids, list(deleted), latest_seq_now(self._db)))

        return Pipeline(
            self._db,
            client,
            self._clock,
            projects=self._config.gitlab.projects,
            progress=ProgressThrottle(self._bus, run_id),
            data_changed=data_changed,
            set_stage=set_stage,
            embeddings=self._config.embeddings,
            touch_interval=self._config.gitlab.touch_interval,
        )

    @asynccontextmanager
    async def _client_for_run(self) -> AsyncIterator[GitLabClient]:
        """The long-lived client of `serve` when there is one; otherwise one for this run."""
        if self._client is not None:
            yield self._client
            return
        gitlab = self._config.gitlab
        redis = redis_client(self._config.redis.url) if self._config.redis.url else None
        budget = RequestBudget(self._db, self._clock, gitlab.requests_per_minute, redis=redis)
        try:
            async with GitLabClient(
                gitlab.url or "",
                gitlab.token or "",
                concurrency=gitlab.concurrency,
                timeout=gitlab.timeout,
                clock=self._clock,
                budget=budget,
            ) as client:
                yield client
        finally:
            if redis is not None:
                await redis.aclose()
