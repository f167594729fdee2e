"""How fresh each project's mirror is, and how many webhooks arrived lately: the status page's numbers.

Lag is measured from what GitLab has told the gateway and the gateway has not yet mirrored: the age of a
project's oldest unprocessed webhook event (0 when none waits). A dropped webhook is invisible here by
nature; the timer fallback (sync.interval) bounds that case, and `last_synced_at` shows it.
"""

from __future__ import annotations

from typing import Any

from sync.clock import utc_iso
from sync.control.inbox_queries import pending_by_project
from sync.store.db import Database

INTAKE_WINDOW = 3600.0  # the last hour
INTAKE_BUCKET = 300.0  # five minutes a bar

_PROJECTS = """
SELECT p.id, p.path_with_namespace, p.synced_at,
       (SELECT count(*) FROM issues i WHERE i.project_id = p.id),
       (SELECT count(*) FROM merge_requests m WHERE m.project_id = p.id),
       (SELECT count(*) FROM notes n WHERE n.project_id = p.id)
FROM projects p ORDER BY p.path_with_namespace
"""


async def project_freshness(db: Database, now: float) -> list[dict[str, Any]]:
    """Per mirrored project: items mirrored, when it was last synced, and how far it trails GitLab."""
    rows = await db.fetchall(_PROJECTS)
    pending = await pending_by_project(db)  # what "pending" means is the inbox's (inbox_queries)
    return [_freshness(row, *pending.get(row[0], (0, now)), now) for row in rows]


def _freshness(row: Any, pending_events: int, oldest_pending: float, now: float) -> dict[str, Any]:
    return {
        "id": row[0], "path": row[1], "last_synced_at": utc_iso(row[2]),
        "items": {"issues": row[3], "merge_requests": row[4], "notes": row[5]},
        "pending_events": pending_events,
        "lag_seconds": round(max(0.0, now - oldest_pending), 1),  # 0 when nothing waits
    }


async def webhook_intake(db: Database, now: float) -> dict[str, Any]:
    """Webhooks accepted into the inbox over the last hour, oldest bucket first (duplicates and rejects
    are not stored, so they are not counted)."""
    start = now - INTAKE_WINDOW
    buckets = int(INTAKE_WINDOW // INTAKE_BUCKET)
    rows = await db.fetchall(
        "SELECT CAST((received_at - ?) / ? AS INTEGER), count(*) FROM webhook_events"
        " WHERE received_at >= ? AND received_at <= ? GROUP BY 1", (start, INTAKE_BUCKET, start, now))
    counts = [0] * buckets
    for bucket, count in rows:
        counts[min(max(int(bucket), 0), buckets - 1)] += count
    return {"bucket_seconds": int(INTAKE_BUCKET), "counts": counts, "last_hour": sum(counts)}
