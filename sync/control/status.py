"""What the gateway is doing, derived from the database alone.

`status` (CLI), `GET /api/v1/sync/status` and the status page all render this
one dict, and every field is derived from rows (service_state, locks, sync_runs,
webhook_events), so any process sharing the database reports the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sync.clock import Clock, utc_iso
from sync.config import SYNC_DISABLED, Config
from sync.control.freshness import project_freshness, webhook_intake
from sync.control.inbox_queries import count_pending
from sync.control.lock import SYNC_LOCK
from sync.control.runs import RunLog
from sync.gitlab.budget import budget_usage
from sync.gitlab.hooks import HealthStore
from sync.store.db import Database


@dataclass(frozen=True)
class ServiceState:
    consecutive_failures: int
    next_retry_at: float | None
    paused_reason: str | None


async def read_service_state(db: Database) -> ServiceState:
    row = await db.fetchone(
        "SELECT consecutive_failures, next_retry_at, paused_reason FROM service_state WHERE id = 1"
    )
    if row is None:
        return ServiceState(0, None, None)
    return ServiceState(row[0], row[1], row[2])


@dataclass(frozen=True)
class SchedulerView:
    """What the scheduler is doing: the data of the `scheduler.state` event (docs/api.md)."""

    state: str  # idle | debouncing | running | backoff | paused
    next_run_at: float | None
    paused_reason: str | None
    consecutive_failures: int

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "next_run_at": utc_iso(self.next_run_at),
            "paused_reason": self.paused_reason,
            "consecutive_failures": self.consecutive_failures,
        }


async def stored_scheduler_view(db: Database, clock: Clock, config: Config) -> SchedulerView:
    """The scheduler's view from the database alone, for a process that runs no scheduler of its own."""
    state = await read_service_state(db)
    now = clock.now()
    running = await lock_is_held(db, clock, config.sync.stale_lock)
    next_run_at = None
    if config.gitlab.enabled and not state.paused_reason:
        next_run_at = _next_timer_run(await RunLog(db, clock).last_success_at(), state, now, config.sync.interval)
    return SchedulerView(derive_state(state, running=running, debouncing=False, now=now), next_run_at,
                         state.paused_reason, state.consecutive_failures)


async def lock_is_held(db: Database, clock: Clock, stale_after: float) -> bool:
    heartbeat = await db.fetchval("SELECT heartbeat_at FROM locks WHERE name = ?", (SYNC_LOCK,))
    return heartbeat is not None and clock.now() - heartbeat < stale_after


def derive_state(state: ServiceState, *, running: bool, debouncing: bool, now: float) -> str:
    if running:
        return "running"
    if state.paused_reason:
        return "paused"
    if state.next_retry_at is not None and state.next_retry_at > now:
        return "backoff"
    return "debouncing" if debouncing else "idle"


async def sync_status(
    db: Database,
    clock: Clock,
    config: Config,
    *,
    debouncing: bool = False,
    next_run_at: float | None = None,
    recent: int = 5,
) -> dict[str, Any]:
    """The status document of docs/api.md "Sync" (plus `sync_enabled` and `warnings`)."""
    runs = RunLog(db, clock)
    state = await read_service_state(db)
    now = clock.now()
    running = await lock_is_held(db, clock, config.sync.stale_lock)
    last_success = await runs.last_success_at()
    last = await runs.last_finished()
    if next_run_at is None and config.gitlab.enabled and not state.paused_reason:
        next_run_at = _next_timer_run(last_success, state, now, config.sync.interval)
    in_backoff = state.next_retry_at is not None and state.consecutive_failures > 0
    webhooks = HealthStore(config.gateway.data_dir).load()
    return {
        "scheduler_state": derive_state(state, running=running, debouncing=debouncing, now=now),
        "sync_enabled": config.gitlab.enabled,
        "last_sync": last.to_json() if last else None,
        "last_success_at": utc_iso(last_success),
        "recent_runs": [r.to_json() for r in await runs.recent(recent)],
        "next_run_at": utc_iso(next_run_at),
        "backoff": {
            "consecutive_failures": state.consecutive_failures,
            "next_retry_at": utc_iso(state.next_retry_at),
        }
        if in_backoff and not state.paused_reason
        else None,
        "paused_reason": state.paused_reason,
        "pending_events": await count_pending(db),
        "warnings": _warnings(config) + _hook_warnings(webhooks),
        "projects": await project_freshness(db, now),
        "webhook_intake": await webhook_intake(db, now),
        "webhooks": webhooks,
        "gitlab_requests": (await budget_usage(db, clock, config.gitlab.requests_per_minute)).to_json(),
    }


def _next_timer_run(last_success: float | None, state: ServiceState, now: float, interval: float) -> float:
    due = now if last_success is None else last_success + interval
    if state.next_retry_at is not None:
        due = max(due, state.next_retry_at)
    return max(due, now)


def _hook_warnings(webhooks: list[dict[str, Any]]) -> list[str]:
    """A disabled or missing webhook, as the last hook check found it (the timer keeps syncing)."""
    return [f"webhook of {h.get('project')}: {h.get('message')}" for h in webhooks
            if h.get("state") in ("disabled", "missing")]


def _warnings(config: Config) -> list[str]:
    notes = []
    if not config.gitlab.enabled:
        notes.append(SYNC_DISABLED)
    if config.sync.profile == "full" and not config.embeddings.url:
        notes.append("profile full without embeddings.url: the embeddings stage is skipped")
    return notes
