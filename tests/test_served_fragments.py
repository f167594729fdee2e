"""Issues and MRs are served from API JSON stored at write time; rows without one render the same."""

import orjson

from sync.clock import SystemClock
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest.pipeline import SyncRequest
from sync.read import queries
from sync.read.filters import ItemFilters


async def page(db, kind):
    result = await queries.list_items(db, kind, 1001, ItemFilters(), None, 100)
    return [orjson.loads(item) for item in result.items]


async def test_a_row_without_a_stored_fragment_is_served_identically(simulator, config_for, db):
    await SyncRunner(db, EventBus(), SystemClock(), config_for()).run(SyncRequest(profile="fast"))
    for kind, table in (("issue", "issues"), ("merge_request", "merge_requests")):
        stored = await page(db, kind)
        async with db.transaction() as conn:
            await conn.execute(f"UPDATE {table} SET api = NULL")
        assert await page(db, kind) == stored
        assert orjson.loads(await queries.get_item(db, kind, 1001, 1)) == next(i for i in stored if i["iid"] == 1)


async def test_an_issue_carries_its_work_item_status_from_the_column(simulator, config_for, db):
    await SyncRunner(db, EventBus(), SystemClock(), config_for()).run(SyncRequest(profile="fast"))
    async with db.transaction() as conn:
        await conn.execute("UPDATE issues SET work_item_status = ? WHERE project_id = 1001 AND iid = 2",
                           ('{"name":"In review","category":"in_progress"}',))
    items = {i["iid"]: i for i in await page(db, "issue")}
    assert items[2]["work_item_status"] == {"name": "In review", "category": "in_progress"}
    assert items[1]["work_item_status"] is None
    assert "work_item_status" not in (await page(db, "merge_request"))[0]
