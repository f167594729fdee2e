"""The scheduler `serve` runs: debounced, single-flight syncs with a timer fallback and error-aware backoff.

One module because the loop, its plan and `settle_run` are one policy (when to run, how to back off),
which the timer's `service run` applies through the same function.

One loop task starts every run, so single flight in-process is structural: a trigger that arrives during
a run only records a want, and the loop's next pass turns all wants into exactly one follow-up run.
Backoff and pause live in `service_state`, not in memory: they survive restarts, every process sharing
the database reports the same thing, and the loop re-reads them on every pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sync.clock import Clock
from sync.config import SYNC_DISABLED, Config, SyncConfig
from sync.control import inbox_queries as inbox
from sync.control.runs import PROFILES, TRIGGERS, Run
from sync.control.status import SchedulerView, ServiceState, derive_state, read_service_state, sync_status
from sync.errors import PermanentError, SyncError, SyncInProgress, TransientError
from sync.events import EventBus, SchedulerState, SyncQueued
from sync.ingest import mirror
from sync.ingest.pipeline import SyncRequest
from sync.read import changes
from sync.store.db import Database

logger = logging.getLogger(__name__)

# The loop re-reads service_state at least this often, so a `resume` from another process takes effect.
STATE_POLL = 30.0
# How often (real seconds) a watcher looks for another process's change to service_state, such as the
# CLI's `resume`: one `PRAGMA data_version` per look, a one-row read only after some commit.
STATE_WATCH = 0.5
# After SyncInProgress (another process holds the lock), retry after max(sync.debounce, this).
MIN_IN_PROGRESS_RETRY = 1.0
# Among triggers due at once, the run is named after the first; any but "webhook" makes it incremental.
_AUTOMATIC_ORDER = ("startup", "timer", "webhook")


class SyncRunnerLike(Protocol):
    async def run(self, request: SyncRequest, *, wait: bool = False) -> Run: ...


# -- the policy, on service_state ---------------------------------------------------------------------


def backoff_delay(failures: int, sync: SyncConfig, rng: random.Random) -> float:
    """Seconds to wait after `failures` consecutive transient failures: base * 2^(n-1), capped, +-20%."""
    # The exponent is bounded so a long outage cannot overflow a float.
    raw = min(sync.backoff_max, sync.backoff_base * 2.0 ** min(max(failures, 1) - 1, 64))
    return raw * rng.uniform(0.8, 1.2)


async def record_success(conn: Any, now: float) -> None:
    """A run succeeded: failures reset, no retry pending, any pause cleared (inside a transaction)."""
    await conn.execute(
        "UPDATE service_state SET consecutive_failures = 0, next_retry_at = NULL, paused_reason = NULL,"
        " updated_at = ? WHERE id = 1",
        (now,),
    )


async def record_failure(
    conn: Any, now: float, error: SyncError, sync: SyncConfig, rng: random.Random
) -> None:
    """A transient failure backs off; a permanent one pauses until `resume` (inside a transaction)."""
    if not error.transient:
        await conn.execute(
            "UPDATE service_state SET paused_reason = ?, updated_at = ? WHERE id = 1",
            (f"{error.code}: {error.message}", now),
        )
        return
    rows = await conn.execute_fetchall("SELECT consecutive_failures FROM service_state WHERE id = 1")
    failures = (rows[0][0] if rows else 0) + 1
    await conn.execute(
        "UPDATE service_state SET consecutive_failures = ?, next_retry_at = ?, updated_at = ? WHERE id = 1",
        (failures, now + backoff_delay(failures, sync, rng), now),
    )


async def resume_service(db: Database, now: float) -> None:
    """Clear the pause and the backoff: automatic runs may start again."""
    async with db.transaction() as conn:
        await conn.execute(
            "UPDATE service_state SET paused_reason = NULL, consecutive_failures = 0, next_retry_at = NULL,"
            " updated_at = ? WHERE id = 1",
            (now,),
        )


async def last_incremental_success(db: Database) -> float | None:
    """When a run that re-listed projects last succeeded; the timer measures from it.

    Webhook runs fetch only the items they name, so they cannot stand in for the pass that catches
    events GitLab dropped.
    """
    return await db.fetchval(
        "SELECT max(finished_at) FROM sync_runs WHERE status = 'succeeded' AND trigger != 'webhook'"
    )


async def reconcile_due_at(db: Database, config: Config) -> float | None:
    """When the next pass must also reconcile (every `sync.reconcile_interval`); None: nothing to reconcile."""
    since = await mirror.reconcile_due_since(db, config.gitlab.projects)
    return None if since is None else since + config.sync.reconcile_interval


def failure_of(run: Run) -> SyncError:
    """The error a run that did not succeed stands for."""
    code = run.error_code or "sync_failed"
    message = run.error_message or f"the run ended {run.status}"
    # A run that does not say is retried, not paused: pausing needs a person, so it needs a reason.
    return PermanentError(code, message) if run.transient is False else TransientError(code, message)


async def settle_run(
    db: Database, now: float, config: Config, rng: random.Random, outcome: Run | SyncError, event_ids: list[int]
) -> SyncError | None:
    """The post-run policy, the one `serve`'s scheduler and the systemd timer's attempt both apply.

    On success: mark the events captured before the run, purge old ones and prune the change feed, and
    clear the backoff. On failure: back off or pause (returned, for the caller to report). CLI `sync`
    settles nothing on purpose: a one-off run by hand neither consumes webhook events nor moves the
    service's backoff (docs/architecture.md).
    """
    async with db.transaction() as conn:
        if isinstance(outcome, Run) and outcome.status == "succeeded":
            await inbox.mark_processed(conn, event_ids, outcome.id, now)
            await inbox.purge_processed(conn, now - config.webhook.retention)
            await changes.prune(conn, now - config.changes.retention)
            await record_success(conn, now)
            return None
        error = outcome if isinstance(outcome, SyncError) else failure_of(outcome)
        await record_failure(conn, now, error, config.sync, rng)
        return error


# -- the scheduler's memory between passes --------------------------------------------------------------


@dataclass
class _Wants:
    """What has asked for a run since the last one started."""

    manual: str | None = None  # the trigger of a queued manual run (api, manual)
    profile: str | None = None  # the fullest profile a manual request asked for
    startup: bool = False
    burst_first: float | None = None  # monotonic times of the current burst's first and last event
    burst_last: float | None = None

    def take(self) -> _Wants:
        taken = dataclasses.replace(self)
        self.manual = self.profile = self.burst_first = self.burst_last = None
        self.startup = False
        return taken

    def restore(self, taken: _Wants) -> None:
        """Give back what a run that never started had taken, merged with what came since."""
        self.manual = self.manual or taken.manual
        self.profile = _fuller(self.profile, taken.profile)
        self.startup = self.startup or taken.startup
        if taken.burst_first is not None:
            firsts = [t for t in (taken.burst_first, self.burst_first) if t is not None]
            lasts = [t for t in (taken.burst_last, self.burst_last) if t is not None]
            self.burst_first, self.burst_last = min(firsts), max(lasts)


def _fuller(a: str | None, b: str | None) -> str | None:
    if a is None or b is None:
        return a or b
    return max(a, b, key=PROFILES.index)


@dataclass(frozen=True)
class _Plan:
    due: tuple[str, ...]  # triggers due now; empty: nothing to run yet
    next_run_in: float | None  # seconds until a run is due; None: none is scheduled
    wake_at: float | None  # monotonic time the loop should look again; None: only on a wake-up


class Scheduler:
    """Owns the loop that decides when `serve` syncs; see docs/architecture.md "Following one webhook"."""

    def __init__(
        self,
        db: Database,
        runner: SyncRunnerLike,
        bus: EventBus,
        clock: Clock,
        config: Config,
        *,
        rng: random.Random | None = None,
        timer_gate: Callable[[], bool] | None = None,
        warnings: tuple[str, ...] = (),
        after_pass: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """`timer_gate`: whether this process may start timer runs now (the leader lease with Redis);
        `warnings`: lines the status document adds (e.g. per-process rate limits with several workers);
        `after_pass`: called after every run that is not a webhook's (timer, start-up, manual): the
        webhooks' health check, which must not raise what it can name."""
        self._after_pass = after_pass
        self._db = db
        self._timer_gate = timer_gate
        self._warnings = warnings
        self._runner = runner
        self._bus = bus
        self._clock = clock
        self._config = config
        self._rng = rng or random.Random()
        self._wants = _Wants()
        self._service = ServiceState(0, None, None)
        self._last_pass: float | None = None
        self._reconcile_at: float | None = None  # see reconcile_due_at
        self._running = False
        self._blocked_until = 0.0  # monotonic; another process holds the lock until we retry
        self._wake = asyncio.Event()
        self._parked = asyncio.Event()  # set while the loop sleeps with nothing due
        self._task: asyncio.Task[None] | None = None
        self._published: tuple[str, str | None, int] | None = None
        self._watch: asyncio.Task[None] | None = None

    # -- public API ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read the persisted state first, queue a start-up run if the mirror is empty or stale, then loop."""
        if self._task is not None:
            return
        self._service = await read_service_state(self._db)
        self._last_pass = await last_incremental_success(self._db)
        await self._read_reconcile_state()
        if self._automatic_allowed() and self._timer_due_at(self._clock.now()) <= self._clock.now():
            self._wants.startup = True
            self._announce("startup")
        self._task = asyncio.create_task(self._run_loop(), name="lore-gateway-scheduler")
        self._task.add_done_callback(_log_crash)
        self._watch = asyncio.create_task(self._watch_service_state(), name="lore-gateway-state-watch")
        self._publish_state()

    async def stop(self) -> None:
        """Cancel the loop; a running sync is cancelled with it (the runner marks it interrupted).

        Safe to call more than once, and before `start`.
        """
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            await asyncio.wait({watch})
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task})
        self._running = False
        self._parked.clear()

    def notify(self) -> None:
        """New inbox events: start the debounce, or extend it (never past `sync.max_wait`)."""
        if self._note_events():
            self._wake_loop()
        # Extending a burst only moves its deadline later: the loop wakes at the old one and looks again.

    def request_run(self, trigger: str = "api", profile: str | None = None) -> None:
        """Queue an incremental run now, ignoring debounce, backoff and pause (a person asked for it).

        While a run is going it coalesces into the one follow-up run. Raises ValueError for an unknown
        trigger or profile, and PermanentError("gitlab_not_configured") when sync is disabled.
        """
        if trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {trigger!r}")
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}")
        if not self._config.gitlab.enabled:
            raise PermanentError("gitlab_not_configured", SYNC_DISABLED)
        self._wants.profile = _fuller(self._wants.profile, profile or self._config.sync.profile)
        if self._wants.manual is None:
            self._wants.manual = trigger
            self._announce(trigger)
        self._wake_loop()

    async def resume(self) -> None:
        """Clear the pause and the backoff, and let the loop decide afresh."""
        await resume_service(self._db, self._clock.now())
        self._service = await read_service_state(self._db)
        self._publish_state(force=True)
        self._wake_loop()

    @property
    def state(self) -> str:
        """idle | debouncing | running | backoff | paused."""
        if self._running or self._blocked():
            return "running"  # a blocked scheduler waits on another process's run
        debouncing = self._wants.burst_first is not None and self._config.gitlab.enabled
        return derive_state(self._service, running=False, debouncing=debouncing, now=self._clock.now())

    async def status(self) -> dict[str, Any]:
        """The status document (docs/api.md "Sync"), with the live scheduler's debounce and next run."""
        document = await sync_status(
            self._db, self._clock, self._config,
            debouncing=self.state == "debouncing", next_run_at=self._next_run_at(),
        )
        document["warnings"] = [*document.get("warnings", []), *self._warnings]
        return document

    def view(self) -> SchedulerView:
        """What the scheduler is doing now, from its memory (no database read)."""
        return SchedulerView(self.state, self._next_run_at(), self._service.paused_reason,
                             self._service.consecutive_failures)

    def snapshot(self) -> dict[str, Any]:
        """The `scheduler.state` event's data."""
        return self.view().to_json()

    async def idle(self) -> None:
        """Wait until the loop has nothing due and waits for a deadline or a wake-up.

        Lets tests step a FakeClock deterministically. Raises what the loop died of, if it did.
        """
        task = self._task
        while task is not None:
            if task.done():
                if not task.cancelled() and (crash := task.exception()) is not None:
                    raise crash
                return
            if self._parked.is_set() and not self._wake.is_set():
                return
            if self._parked.is_set():
                await asyncio.sleep(0)  # woken, but the loop has not run since
                continue
            parked = asyncio.ensure_future(self._parked.wait())
            try:
                await asyncio.wait({parked, task}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                parked.cancel()

    # -- the loop -------------------------------------------------------------------------------------

    async def _run_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._refresh()
                plan = self._plan()
                self._publish_state()
                if plan.due:
                    await self._run(plan.due)
                else:
                    await self._wait(plan.wake_at)
            except sqlite3.OperationalError:
                # Most likely the database stayed locked past busy_timeout: look again shortly.
                logger.exception("scheduler: database error; retrying")
                await self._wait(self._clock.monotonic() + self._short_retry())

    async def _refresh(self) -> None:
        """Re-read what other processes (and earlier runs) may have changed."""
        self._service = await read_service_state(self._db)
        self._last_pass = await last_incremental_success(self._db)
        await self._read_reconcile_state()
        if self._wants.startup and self._timer_due_at(self._clock.now()) > self._clock.now():
            self._wants.startup = False  # another process made the pass this start-up run was for
        if self._wants.burst_first is None and await inbox.has_pending(self._db):
            # Left by a failed run, a restart or another process: process them like a fresh burst.
            self._note_events()

    async def _watch_service_state(self) -> None:
        """Wake the loop within STATE_WATCH when service_state changes under it (a `resume` from the CLI).

        Real time, not the Clock: other processes act in real time. PRAGMA data_version changes when any
        other connection commits, so an idle gateway costs one pragma per look.
        """
        seen = None
        while True:
            await asyncio.sleep(STATE_WATCH)
            try:
                version = await self._db.fetchval("PRAGMA data_version")
                if version == seen:
                    continue
                seen = version
                if await read_service_state(self._db) != self._service:
                    self._wake_loop()
            except sqlite3.OperationalError as err:  # busy or locked past the timeout: look again later
                logger.warning("scheduler: cannot watch service_state: %s", err)

    def _note_events(self) -> bool:
        """Start or extend the burst; True if this started it."""
        now = self._clock.monotonic()
        self._wants.burst_last = now
        if self._wants.burst_first is not None:
            return False
        self._wants.burst_first = now
        self._announce("webhook")
        return True

    def _plan(self, *, include_timer: bool = True, gate_timer: bool = True) -> _Plan:
        now, mono = self._clock.now(), self._clock.monotonic()
        waits: list[tuple[str, float]] = []
        if self._wants.manual:
            waits.append((self._wants.manual, 0.0))
        backoff_left = 0.0
        if self._automatic_allowed():
            backoff_left = max(0.0, (self._service.next_retry_at or now) - now)
            if self._wants.startup:
                waits.append(("startup", backoff_left))
            if self._wants.burst_first is not None:
                waits.append(("webhook", max(backoff_left, self._burst_due() - mono)))
            # A process the gate holds back plans no timer run (and so never spins on a due one).
            if include_timer and (not gate_timer or self._timer_gate is None or self._timer_gate()):
                waits.append(("timer", max(backoff_left, self._timer_due_at(now) - now)))
                if self._reconcile_at is not None:
                    waits.append(("timer", max(backoff_left, self._reconcile_at - now)))
        blocked = max(0.0, self._blocked_until - mono)
        delays = [max(delay, blocked) for _, delay in waits]
        due = [trigger for (trigger, _), delay in zip(waits, delays, strict=True) if delay <= 0]
        next_run_in = min(delays, default=None)
        # The end of a backoff changes the state even when no run is due then.
        wakes = [mono + d for d in (next_run_in, backoff_left or None) if d is not None]
        return _Plan(tuple(dict.fromkeys(due)), next_run_in, min(wakes, default=None))

    async def _run(self, due: tuple[str, ...]) -> None:
        taken = self._wants.take()
        events = await inbox.pending_rows(self._db)
        request = self._request_for(due, taken, events)
        if request is None:
            await self._settle_without_run(events)
            return
        if request.trigger == "timer":
            self._announce("timer")
        self._running = True
        self._publish_state()
        try:
            outcome = await self._attempt(request, taken)
            if outcome is not None:
                await self._settle(outcome, [e.id for e in events])
        finally:
            self._running = False
            self._publish_state()
        if self._after_pass is not None and request.trigger != "webhook":
            await self._check_after_pass()

    async def _check_after_pass(self) -> None:
        assert self._after_pass is not None
        try:
            await self._after_pass()
        except (SyncError, OSError) as error:  # a failed check must not stop the scheduler
            logger.warning("scheduler: the check after the pass failed: %s", error)

    def _request_for(self, due: tuple[str, ...], taken: _Wants, events: list[inbox.PendingEvent]
                     ) -> SyncRequest | None:
        """A webhook-only run is targeted; with any other trigger due, one incremental pass covers all."""
        profile = taken.profile or self._config.sync.profile
        named = sorted(due, key=lambda t: _AUTOMATIC_ORDER.index(t) if t in _AUTOMATIC_ORDER else -1)
        if named[0] != "webhook":
            reconcile = self._reconcile_at is not None and self._reconcile_at <= self._clock.now()
            return SyncRequest(trigger=named[0], profile=profile, reconcile=reconcile)
        targets = inbox.targets_for(events)
        if not targets:
            return None
        return SyncRequest(trigger="webhook", profile=profile, targets=targets)

    async def _attempt(self, request: SyncRequest, taken: _Wants) -> Run | SyncError | None:
        """Run once; None when another process holds the lock (the wants wait for the retry)."""
        logger.info("scheduler: starting a %s run (%d targets)", request.trigger, len(request.targets))
        try:
            run = await self._runner.run(request)
        except SyncInProgress as busy:
            logger.info("scheduler: %s; retrying shortly", busy.message)
            self._wants.restore(taken)
            self._blocked_until = self._clock.monotonic() + self._short_retry()
            return None
        except SyncError as error:  # refused before a run was recorded (e.g. GitLab not configured)
            self._blocked_until = 0.0
            return error
        self._blocked_until = 0.0
        return run

    async def _settle(self, outcome: Run | SyncError, event_ids: list[int]) -> None:
        """On success mark the captured events and prune old ones; on failure back off or pause."""
        error = await settle_run(self._db, self._clock.now(), self._config, self._rng, outcome, event_ids)
        if error is not None:
            logger.warning("scheduler: sync failed: %s: %s", error.code, error.message)
        self._service = await read_service_state(self._db)
        self._last_pass = await last_incremental_success(self._db)
        await self._read_reconcile_state()

    async def _settle_without_run(self, events: list[inbox.PendingEvent]) -> None:
        """Events that name nothing to fetch are done as soon as they are seen: no GitLab request."""
        if events:
            async with self._db.transaction() as conn:
                await inbox.mark_processed(conn, [e.id for e in events], None, self._clock.now())

    async def _wait(self, until: float | None) -> None:
        """Sleep until the monotonic time `until` (at most STATE_POLL) or a wake-up, whichever is first."""
        await _first_of(self._sleep_parked(until), self._wake.wait())

    async def _sleep_parked(self, until: float | None) -> None:
        # The clock is read in the same step that sleeps on it and sets `_parked`: no time can pass
        # between the two, and whoever sees `_parked` knows the deadline is registered.
        now = self._clock.monotonic()
        until = now + STATE_POLL if until is None else min(until, now + STATE_POLL)
        self._parked.set()
        try:
            await self._clock.sleep(until - now)
        finally:
            self._parked.clear()

    # -- helpers --------------------------------------------------------------------------------------

    def _automatic_allowed(self) -> bool:
        return self._config.gitlab.enabled and not self._service.paused_reason

    def _timer_due_at(self, now: float) -> float:
        return now if self._last_pass is None else self._last_pass + self._config.sync.interval

    async def _read_reconcile_state(self) -> None:
        self._reconcile_at = await reconcile_due_at(self._db, self._config)

    def _burst_due(self) -> float:
        """Monotonic time the current burst runs: debounce after its last event, max_wait after its first."""
        first, last = self._wants.burst_first, self._wants.burst_last
        assert first is not None and last is not None
        return min(last + self._config.sync.debounce, first + self._config.sync.max_wait)

    def _blocked(self) -> bool:
        return self._blocked_until > self._clock.monotonic()

    def _short_retry(self) -> float:
        return max(self._config.sync.debounce, MIN_IN_PROGRESS_RETRY)

    def _next_run_at(self) -> float | None:
        # During a run only a follow-up counts: the timer restarts from the run's outcome.
        plan = self._plan(include_timer=not self._running, gate_timer=False)
        return None if plan.next_run_in is None else self._clock.now() + plan.next_run_in

    def _wake_loop(self) -> None:
        self._wake.set()
        self._parked.clear()
        self._publish_state()

    def _announce(self, trigger: str) -> None:
        self._bus.emit(SyncQueued(None, trigger))

    def _publish_state(self, *, force: bool = False) -> None:
        """Publish `scheduler.state` when the state, the pause or the failure count changed."""
        key = (self.state, self._service.paused_reason, self._service.consecutive_failures)
        if force or key != self._published:
            self._published = key
            self._bus.emit(SchedulerState(self.snapshot()))


async def _first_of(*aws: Any) -> None:
    """Wait for the first of these awaitables to finish, and cancel the rest."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("scheduler loop stopped", exc_info=task.exception())
