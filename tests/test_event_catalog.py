"""The event catalog (sync/events.py) against docs/api.md's table of SSE events, and emit() on the bus."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from sync import (
    CatalogEvent,
    DataChanged,
    EventBus,
    Reset,
    SchedulerState,
    SyncFailed,
    SyncFinished,
    SyncProgress,
    SyncQueued,
    SyncStarted,
    WebhookReceived,
)

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
CATALOG: list[type[CatalogEvent]] = [SyncQueued, SyncStarted, SyncProgress, SyncFinished, SyncFailed, DataChanged,
                                     WebhookReceived, Reset]


def documented_events() -> dict[str, set[str]]:
    """The rows of docs/api.md's SSE table: each event's name and the `words` its row names."""
    rows = {}
    for line in API_DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `([a-z_]+\.[a-z_]+|reset)` \| (.*) \|$", line)
        if match:
            rows[match.group(1)] = set(re.findall(r"`([a-z_]+)`", match.group(2)))
    return rows


def test_every_documented_event_is_in_the_catalog() -> None:
    assert set(documented_events()) == {event.name for event in [*CATALOG, SchedulerState]}


@pytest.mark.parametrize("event", CATALOG, ids=lambda e: e.name)
def test_each_field_of_an_event_is_documented_in_its_row(event: type[CatalogEvent]) -> None:
    assert {f.name for f in fields(event)} - documented_events()[event.name] == set()  # type: ignore[arg-type]


def test_emit_publishes_the_name_and_the_fields_in_declaration_order() -> None:
    bus = EventBus()
    sent = bus.emit(SyncProgress(run_id=3, stage="issues", done=5, total=9))
    assert (sent.name, list(sent.data.items())) == ("sync.progress",
                                                    [("run_id", 3), ("stage", "issues"), ("done", 5), ("total", 9)])
    assert bus.since(0) == [sent]


def test_the_scheduler_state_payload_is_the_snapshot_itself() -> None:
    snapshot = {"state": "idle", "next_run_at": None, "paused_reason": None, "consecutive_failures": 0}
    assert EventBus().emit(SchedulerState(snapshot)).data == snapshot
