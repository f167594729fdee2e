"""The one sync attempt the optional systemd timer runs (`lore-gateway service run`).

It applies the scheduler's policy once, with no loop: nothing while paused or backing off, and the outcome
settled in service_state by the same `settle_run` `serve`'s scheduler uses, so both report alike
(docs/operations.md, the one-shot sync and its timer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sync import (
    Clock,
    Config,
    Database,
    Run,
    ServiceState,
    SyncError,
    SyncInProgress,
    SyncRequest,
    SyncRunnerLike,
    failure_of,
    pending_rows,
    read_service_state,
    reconcile_due_at,
    settle_run,
)


@dataclass(frozen=True)
class Attempt:
    """What one `service run` did: skipped (and why), or ran (and how it went)."""

    skipped: str | None  # paused | backoff | sync_in_progress | sync_disabled
    state: ServiceState
    run: Run | None = None
    error: SyncError | None = None

    @property
    def succeeded(self) -> bool:
        return self.skipped is None and self.error is None


async def scheduled_attempt(
    db: Database, runner: SyncRunnerLike, clock: Clock, config: Config, rng: random.Random
) -> Attempt:
    """One run under the scheduler's policy: nothing while paused or backing off; the outcome recorded
    in service_state exactly as `serve`'s scheduler records it."""
    state = await read_service_state(db)
    if not config.gitlab.enabled:
        return Attempt("sync_disabled", state)
    if state.paused_reason:
        return Attempt("paused", state)
    if state.next_retry_at is not None and state.next_retry_at > clock.now():
        return Attempt("backoff", state)
    events = await pending_rows(db)
    reconcile_at = await reconcile_due_at(db, config)
    request = SyncRequest(trigger="timer", profile=config.sync.profile,
                          reconcile=reconcile_at is not None and reconcile_at <= clock.now())
    try:
        outcome: Run | SyncError = await runner.run(request)
    except SyncInProgress:
        return Attempt("sync_in_progress", state)  # that run records its own outcome
    except SyncError as error:
        outcome = error
    await settle_run(db, clock.now(), config, rng, outcome, [e.id for e in events])
    state = await read_service_state(db)
    if isinstance(outcome, Run) and outcome.status == "succeeded":
        return Attempt(None, state, outcome)
    error = outcome if isinstance(outcome, SyncError) else failure_of(outcome)
    return Attempt(None, state, outcome if isinstance(outcome, Run) else None, error)
