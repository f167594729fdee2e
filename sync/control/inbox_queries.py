"""The scheduler's side of the webhook inbox: read pending events, mark them processed, purge old ones.

Another module writes the inbox (group commit, concurrently); the scheduler only reads pending rows and
marks exactly the ids a committed run covered, captured before that run started, so an event that arrived
during a run is never marked by a run that did not include it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sync.store.db import Database
from sync.types import ItemRef

# A project named by this many distinct items is cheaper to re-list incrementally than to fetch item by item.
ITEMS_BEFORE_PROJECT_PASS = 50
_MARK_CHUNK = 500  # well under SQLite's limit on bound parameters


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """A stored webhook event no committed run has covered yet, as the scheduler reads it back: its row id
    (to mark it processed) and what it names. The event as the webhook hands it in is inbox.InboxEvent."""

    id: int
    item: ItemRef  # kind None: nothing to fetch


_UNPROCESSED = "FROM webhook_events WHERE processed_at IS NULL"  # pending: no committed run covered it yet

# Group and system hooks speak for every project GitLab has, not only the mirrored ones. An event about a
# project the mirror does not hold names nothing to fetch (its kind reads as NULL), so it starts no run:
# the rows in `projects` are the configured projects once a run has resolved them. Before the first run
# there are none, and nothing is filtered (that run covers every configured project anyway).
_PENDING = (
    "SELECT e.id, e.project_id,"
    " CASE WHEN p.id IS NULL AND EXISTS (SELECT 1 FROM projects) THEN NULL ELSE e.kind END, e.iid"
    " FROM webhook_events e LEFT JOIN projects p ON p.id = e.project_id"
    " WHERE e.processed_at IS NULL ORDER BY e.id"
)


async def pending_rows(db: Database) -> list[PendingEvent]:
    """Every event no committed run has covered yet, oldest first; one about a project the mirror does
    not hold has no kind (docs/webhooks.md)."""
    rows = await db.fetchall(_PENDING)
    return [PendingEvent(r[0], ItemRef(r[1], r[2], r[3])) for r in rows]


async def has_pending(db: Database) -> bool:
    return bool(await db.fetchval(f"SELECT EXISTS (SELECT 1 {_UNPROCESSED})"))


async def count_pending(db: Database) -> int:
    """Stored events no committed sync run has processed yet."""
    return int(await db.fetchval(f"SELECT count(*) {_UNPROCESSED}") or 0)


async def pending_by_project(db: Database) -> dict[int, tuple[int, float]]:
    """Per project: how many stored events no committed run has covered yet, and when the oldest arrived."""
    rows = await db.fetchall(
        f"SELECT project_id, count(*), min(received_at) {_UNPROCESSED} AND project_id IS NOT NULL"
        " GROUP BY project_id"
    )
    return {r[0]: (r[1], r[2]) for r in rows}


async def mark_processed(conn: Any, ids: Sequence[int], run_id: int | None, now: float) -> None:
    """Mark these events processed by `run_id` (inside the caller's transaction)."""
    for start in range(0, len(ids), _MARK_CHUNK):
        chunk = ids[start:start + _MARK_CHUNK]
        marks = ",".join("?" * len(chunk))
        await conn.execute(
            f"UPDATE webhook_events SET processed_at = ?, run_id = ?"
            f" WHERE id IN ({marks}) AND processed_at IS NULL",
            (now, run_id, *chunk),
        )


async def purge_processed(conn: Any, before: float) -> int:
    """Delete processed events older than `before`; pending ones are never deleted."""
    cur = await conn.execute(
        "DELETE FROM webhook_events WHERE processed_at IS NOT NULL AND processed_at < ?", (before,)
    )
    return int(cur.rowcount or 0)


def targets_for(events: Iterable[PendingEvent], *, items_per_project: int = ITEMS_BEFORE_PROJECT_PASS
                ) -> tuple[ItemRef, ...]:
    """The targets a webhook run fetches: named items, then incremental passes over whole projects.

    Events with no project or no kind name nothing to fetch and give no target. An issue or MR event
    without an iid becomes a pass over its project, and so does a project with more than
    `items_per_project` distinct items.
    """
    items: dict[int, dict[ItemRef, None]] = {}
    passes: dict[int, None] = {}
    for event in events:
        ref = event.item
        if ref.project_id is None or ref.kind not in ("issue", "merge_request", "project"):
            continue
        if ref.kind == "project" or ref.iid is None:
            passes[ref.project_id] = None
        else:
            items.setdefault(ref.project_id, {})[ref] = None
    for project_id, named in items.items():
        if len(named) > items_per_project:
            passes[project_id] = None
    kept = [t for named in items.values() if len(named) <= items_per_project for t in named]
    return (*kept, *(ItemRef(project_id, "project") for project_id in passes))
