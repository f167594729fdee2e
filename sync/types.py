"""Small types shared across the engine, declared once: what kind of item and its table, which item an
event names, how far a stage is, the id range.

Kept apart from any step of the flow (as Starlette keeps `types.py`), so the write side and the read side
both use them without importing each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["issue", "merge_request"]
# A stage reports (stage name, done, total); the runner turns it into `sync.progress` events.
Progress = Callable[[str, int, int], Awaitable[None]]
MAX_ID = 2**63 - 1  # SQLite's INTEGER range: a larger id names no row
# Each kind's mirror table, which is also its GitLab REST resource (/projects/:id/issues) and the name its
# data version, cursor and counts go by.
TABLES: dict[str, str] = {"issue": "issues", "merge_request": "merge_requests"}


@dataclass(frozen=True, slots=True)
class ItemRef:
    """Which item something is about, the one record of (project, kind, iid) in the engine.

    A webhook event names an item, a whole project (kind "project", no iid), or nothing to sync (kind
    None: stored, never fetched); a sync run's targets are the first two; the mirror's rows (rechecks,
    deletions) are always an issue or merge request with an iid. Frozen and slotted: webhooks build one
    per request and targets are deduplicated as dict keys.
    """

    project_id: int | None
    kind: str | None  # issue | merge_request | project | None
    iid: int | None = None
