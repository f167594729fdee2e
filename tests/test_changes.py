"""The change feed's engine: every create, update and delete of the mirror once, in commit order,
numbered by the database, across restarts, with expiry after retention."""

from __future__ import annotations

import time

import pytest

from sync.clock import SystemClock
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest import mirror
from sync.ingest.pipeline import SyncRequest
from sync.read import changes
from sync.read.changes import CursorExpired, InvalidChangeCursor, read_changes
from sync.store.db import Database
from sync.types import ItemRef
from tests.test_pipeline import runner_for


def issue(iid: int, title: str = "a title", updated_at: str = "2026-01-01T00:00:00.000Z") -> dict:
    return {"iid": iid, "id": 9000 + iid, "title": title, "state": "opened", "labels": [],
            "author": {"username": "ada"}, "created_at": "2026-01-01T00:00:00.000Z", "updated_at": updated_at}


def discussion(*notes: tuple[int, str]) -> dict:
    return {"id": f"d{notes[0][0]}", "individual_note": False, "notes": [
        {"id": nid, "body": body, "author": {"username": "ada"}, "system": False,
         "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z"}
        for nid, body in notes]}


async def add_project(db: Database, project_id: int = 1) -> None:
    async with db.transaction() as conn:
        await mirror.upsert_project(conn, {"id": project_id, "path_with_namespace": f"g/p{project_id}"}, 0.0)


def summary(page: changes.ChangePage) -> list[tuple]:
    return [(c.kind, c.iid, c.note_id, c.action) for c in page.items]


async def write(db: Database, *issues: dict, notes: dict[int, list[dict]] | None = None) -> None:
    async with db.transaction() as conn:
        await mirror.upsert_items(conn, "issue", 1, list(issues))
        for iid, discussions in (notes or {}).items():
            await mirror.replace_discussions(conn, 1, "issue", iid, discussions)


async def test_every_direct_mirror_write_that_changes_something_is_one_change_in_order(db):
    await add_project(db)
    await write(db, issue(1), notes={1: [discussion((11, "first"), (12, "second"))]})
    await write(db, issue(1), notes={1: [discussion((11, "first"), (12, "second"))]})  # nothing changed
    await write(db, issue(1, "renamed"), notes={1: [discussion((11, "first"), (12, "second, edited"))]})
    await write(db, issue(1, "renamed"), notes={1: [discussion((11, "first"))]})  # note 12 deleted upstream
    async with db.transaction() as conn:
        await mirror.delete_item(conn, 1, "issue", 1)
    page = await read_changes(db, None, 100)
    assert summary(page) == [
        ("issue", 1, None, "created"), ("note", 1, 11, "created"), ("note", 1, 12, "created"),
        ("issue", 1, None, "updated"), ("note", 1, 12, "updated"),
        ("note", 1, 12, "deleted"),
        ("issue", 1, None, "deleted"), ("note", 1, 11, "deleted"),
    ]
    seqs = [c.seq for c in page.items]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert page.next_cursor == str(seqs[-1])


async def test_a_change_names_its_parent_and_carries_a_utc_commit_time(db):
    await add_project(db)
    async with db.transaction() as conn:
        await mirror.upsert_items(conn, "merge_request", 1, [issue(4)])
        await mirror.replace_discussions(conn, 1, "merge_request", 4, [discussion((41, "a review"))])
    mr, note = (await read_changes(db, None, 10)).items
    assert (mr.kind, mr.parent_kind, mr.note_id) == ("merge_request", "merge_request", None)
    assert (note.kind, note.parent_kind, note.iid, note.note_id, note.project_id) == ("note", "merge_request", 4, 41, 1)
    assert note.at.endswith("Z") and abs(time.time() - _epoch(note.at)) < 60


def _epoch(text: str) -> float:
    from sync.clock import parse_time

    return parse_time(text)


async def test_pages_continue_from_next_cursor_and_a_caught_up_reader_keeps_its_cursor(db):
    await add_project(db)
    await write(db, *[issue(i) for i in range(1, 8)])
    first = await read_changes(db, None, 3)
    second = await read_changes(db, first.next_cursor, 3)
    third = await read_changes(db, second.next_cursor, 3)
    assert [c.iid for c in first.items + second.items + third.items] == list(range(1, 8))
    empty = await read_changes(db, third.next_cursor, 3)
    assert empty.items == [] and empty.next_cursor == third.next_cursor


async def test_a_restart_between_two_reads_loses_nothing_and_never_reuses_a_number(tmp_path):
    path = tmp_path / "lore.db"
    db = await Database.open(path)
    await add_project(db)
    await write(db, issue(1), issue(2))
    first = await read_changes(db, None, 100)
    await db.close()
    db = await Database.open(path)  # a restart: a new process would open the file the same way
    try:
        await write(db, issue(2, "changed"), issue(3))
        second = await read_changes(db, first.next_cursor, 100)
        assert summary(second) == [("issue", 2, None, "updated"), ("issue", 3, None, "created")]
        assert second.items[0].seq == first.items[-1].seq + 1
    finally:
        await db.close()


async def test_a_cursor_before_pruned_changes_is_expired_and_one_after_them_is_not(db):
    await add_project(db)
    await write(db, issue(1), issue(2))
    old = await read_changes(db, None, 1)  # has seen issue 1 only
    async with db.transaction() as conn:
        assert await changes.prune(conn, time.time() + 60) == 2  # both are older than the horizon
    with pytest.raises(CursorExpired) as expired:
        await read_changes(db, old.next_cursor, 10)
    assert expired.value.code == "cursor_expired" and "changes.retention" in expired.value.message
    await write(db, issue(3))
    caught_up = await read_changes(db, str(old.items[0].seq + 1), 10)
    assert summary(caught_up) == [("issue", 3, None, "created")]
    assert summary(await read_changes(db, None, 10)) == [("issue", 3, None, "created")]


async def test_pruning_keeps_what_is_newer_than_the_horizon(db):
    await add_project(db)
    await write(db, issue(1))
    async with db.transaction() as conn:
        assert await changes.prune(conn, time.time() - 3600) == 0
    assert len((await read_changes(db, "0", 10)).items) == 1


async def test_a_cursor_ahead_of_the_feed_is_expired_as_after_a_restore(db):
    await add_project(db)
    await write(db, issue(1))
    with pytest.raises(CursorExpired, match="ahead"):
        await read_changes(db, "999", 10)


@pytest.mark.parametrize("cursor", ["", "-1", "abc", "1.5", "１２", "9" * 30, " 1"])
async def test_a_malformed_cursor_is_refused(db, cursor):
    with pytest.raises(InvalidChangeCursor):
        await read_changes(db, cursor, 10)


@pytest.mark.parametrize("limit", [0, -1, changes.MAX_LIMIT + 1])
async def test_a_limit_out_of_range_is_refused(db, limit):
    with pytest.raises(ValueError, match="limit"):
        await read_changes(db, None, limit)


async def test_a_work_item_status_change_is_one_update_and_a_rewrite_keeps_it_without_another(db):
    await add_project(db)
    await write(db, issue(1))
    start = (await read_changes(db, None, 10)).next_cursor
    async with db.transaction() as conn:  # what sync.ingest.workitems does: remember it, then copy it over
        await conn.execute("INSERT INTO work_item_statuses (project_id, iid, checked_updated_at, status)"
                           " VALUES (1, 1, '2026-01-01T00:00:00.000Z', '{\"name\": \"Doing\"}')")
        await conn.execute("UPDATE issues SET work_item_status = '{\"name\": \"Doing\"}' WHERE iid = 1")
    await write(db, issue(1, "retitled", updated_at="2026-01-02T00:00:00.000Z"))  # status copied back
    page = await read_changes(db, start, 10)
    assert summary(page) == [("issue", 1, None, "updated"), ("issue", 1, None, "updated")]
    assert await db.fetchval("SELECT work_item_status FROM issues WHERE iid = 1") == '{"name": "Doing"}'


async def test_latest_seq_now_is_the_last_committed_change(db):
    assert changes.latest_seq_now(db) == 0
    await add_project(db)
    await write(db, issue(1), issue(2))
    assert changes.latest_seq_now(db) == (await read_changes(db, None, 10)).items[-1].seq


# -- through the pipeline, against the simulator ------------------------------------------------------


async def test_sync_create_update_and_delete_reach_the_feed_once_each_in_order(simulator, config_for, db):
    runner = runner_for(db, config_for())
    await runner.run(SyncRequest(profile="fast"))
    first = await read_changes(db, None, changes.MAX_LIMIT)
    items = sum(len(p.issues) + len(p.merge_requests) for p in simulator.projects.values())
    notes = await db.fetchval("SELECT count(*) FROM notes")
    assert len(first.items) == items + notes and {c.action for c in first.items} == {"created"}
    simulator.update_issue(1001, 3, title="Renamed by the sim")
    simulator.add_note(1001, "issue", 3, "a new comment")
    await runner.run(SyncRequest(profile="fast"))
    await runner.run(SyncRequest(profile="fast"))  # nothing new: nothing in the feed
    del simulator.projects[1001].issues[5]
    await runner.run(SyncRequest(trigger="webhook", profile="fast", targets=(ItemRef(1001, "issue", 5),)))
    later = await read_changes(db, first.next_cursor, changes.MAX_LIMIT)
    new_note = await db.fetchval("SELECT max(id) FROM notes WHERE noteable_kind = 'issue' AND noteable_iid = 3"
                                 " AND project_id = 1001")
    gone_notes = [c for c in later.items if c.kind == "note" and c.action == "deleted"]
    assert summary(later)[:3] == [("issue", 3, None, "updated"), ("note", 3, new_note, "created"),
                                  ("issue", 5, None, "deleted")]
    assert len(later.items) == 3 + len(gone_notes) and all(c.iid == 5 for c in gone_notes)


async def test_data_changed_events_carry_the_seq_the_feed_has_reached(simulator, config_for, db):
    bus = EventBus()
    seen = []
    bus.add_listener(lambda e: seen.append(e.data) if e.name == "data.changed" else None)
    await SyncRunner(db, bus, SystemClock(), config_for()).run(SyncRequest(profile="fast"))
    assert seen and all(isinstance(d["seq"], int) for d in seen)
    assert [d["seq"] for d in seen] == sorted(d["seq"] for d in seen)
    assert seen[-1]["seq"] == (await read_changes(db, None, changes.MAX_LIMIT)).items[-1].seq


async def test_pruning_stops_at_the_first_recent_change_even_after_a_clock_step_back(db):
    await add_project(db)
    await write(db, issue(1), issue(2), issue(3))
    async with db.transaction() as conn:  # the clock stepped back before issue 3 was written
        await conn.execute("UPDATE changes SET at = '2000-01-01T00:00:00.000Z' WHERE iid IN (1, 3)")
        assert await changes.prune(conn, time.time() - 3600) == 1
    assert [c.iid for c in (await read_changes(db, None, 10)).items] == [2, 3]
    assert await db.fetchval("SELECT through_seq FROM changes_pruned") == 1
