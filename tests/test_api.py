"""The read API against a mirror filled by a real sync: shapes, filters, keyset paging, discussions, errors."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.keys import DB
from gateway.simulator.gitlab import GitLabSimulator
from gateway.tokens import signing_keys
from sync.clock import SystemClock, normalize_time
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest import mirror
from sync.ingest.pipeline import SyncRequest

WIDGETS, GADGETS = 1001, 1002  # the simulator's project ids (conftest: 30 + 20 issues, 12 + 8 MRs)
Z_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


class Api:
    """A test client that sends a bearer token."""

    def __init__(self, client: Any, token: str) -> None:
        self.client = client
        self.app = client.app
        self.token = token

    async def get(self, path: str, *, token: str | None = None, headers: dict | None = None, **params: Any):
        sent = {"Authorization": f"Bearer {token or self.token}", **(headers or {})}
        return await self.client.get(f"/api/v1{path}", params=params, headers=sent)

    async def json(self, path: str, **params: Any) -> Any:
        resp = await self.get(path, **params)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def walk(self, path: str, **params: Any) -> list[dict]:
        items, cursor = [], None
        while True:
            page = await self.json(path, **params, **({"cursor": cursor} if cursor else {}))
            items.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return items


async def sync_mirror(db, config) -> None:
    run = await SyncRunner(db, EventBus(), SystemClock(), config).run(SyncRequest(profile="fast"))
    assert run.status == "succeeded", run.error_message


@pytest.fixture
async def api(simulator, config_for, db, aiohttp_client) -> Api:
    await sync_mirror(db, config_for())
    app = create_app(config_for(), scheduler=False)
    client = await aiohttp_client(app)
    created = await app[TOKENS].create("reader", ["read"], None)
    return Api(client, created.token)


def sim_issue(sim: GitLabSimulator, project_id: int, iid: int) -> dict:
    return sim.projects[project_id].issues[iid]


# -- projects ---------------------------------------------------------------------------------------


async def test_projects_lists_every_mirrored_project_by_id(api):
    body = await api.json("/projects")
    assert [p["id"] for p in body["items"]] == [WIDGETS, GADGETS]
    assert body["next_cursor"] is None
    assert body["items"][0]["path_with_namespace"] == "acme/widgets"
    assert Z_TIME.fullmatch(body["items"][0]["synced_at"])


async def test_projects_page_with_a_cursor(api):
    first = await api.json("/projects", per_page=1)
    second = await api.json("/projects", per_page=1, cursor=first["next_cursor"])
    assert [p["id"] for p in first["items"] + second["items"]] == [WIDGETS, GADGETS]
    assert second["next_cursor"] is None


async def test_a_project_is_its_bare_object_and_an_unknown_one_is_404(api):
    project = await api.json(f"/projects/{GADGETS}")
    assert project["id"] == GADGETS and project["name"] == "gadgets"
    resp = await api.get("/projects/999")
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


# -- items ------------------------------------------------------------------------------------------


async def test_an_issue_carries_gitlabs_field_names_and_values(api, simulator):
    issue = await api.json(f"/projects/{WIDGETS}/issues/3")
    raw = sim_issue(simulator, WIDGETS, 3)
    assert set(issue) == {"id", "iid", "project_id", "title", "description", "state", "labels", "author",
                          "assignees", "created_at", "updated_at", "closed_at", "web_url", "work_item_status"}
    assert (issue["id"], issue["iid"], issue["project_id"]) == (raw["id"], 3, WIDGETS)
    assert issue["title"] == raw["title"] and issue["web_url"] == raw["web_url"]
    assert issue["author"] == {k: raw["author"][k] for k in ("id", "username", "name")}
    assert [a["username"] for a in issue["assignees"]] == [a["username"] for a in raw["assignees"]]
    assert issue["labels"] == raw["labels"]
    assert issue["updated_at"] == normalize_time(raw["updated_at"])
    assert issue["work_item_status"] is None


async def test_every_timestamp_is_rfc3339_utc_with_z(api):
    issues = await api.walk(f"/projects/{WIDGETS}/issues", per_page=100)
    mrs = await api.walk(f"/projects/{WIDGETS}/merge_requests", per_page=100)
    stamps = [it[k] for it in issues + mrs for k in ("created_at", "updated_at", "closed_at", "merged_at")
              if it.get(k) is not None]
    assert len(stamps) > 2 * len(issues) and all(Z_TIME.fullmatch(s) for s in stamps)
    assert any(it["closed_at"] for it in issues)


async def test_a_merge_request_carries_branches_reviewers_and_merged_at(api, simulator):
    merged = next(mr for mr in simulator.projects[WIDGETS].merge_requests.values() if mr["state"] == "merged")
    mr = await api.json(f"/projects/{WIDGETS}/merge_requests/{merged['iid']}")
    assert mr["source_branch"] == merged["source_branch"] and mr["target_branch"] == "main"
    assert mr["merged_at"] == normalize_time(merged["merged_at"])
    assert [r["username"] for r in mr["reviewers"]] == [r["username"] for r in merged["reviewers"]]
    assert "work_item_status" not in mr


async def test_an_unknown_item_is_404(api):
    for path in (f"/projects/{WIDGETS}/issues/999", f"/projects/{WIDGETS}/merge_requests/999",
                 "/projects/999/issues", "/projects/999/issues/1/discussions"):
        resp = await api.get(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/projects/abc", "/projects/-1/issues", "/projects/0", "/projects/1.5",
                                  "/projects/99999999999999999999999/issues",
                                  f"/projects/{WIDGETS}/issues/x", f"/projects/{WIDGETS}/issues/%C2%B2",
                                  f"/projects/{WIDGETS}/merge_requests/ 1/discussions"])
async def test_a_path_id_that_is_not_a_positive_integer_is_404(api, path):
    resp = await api.get(path)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


# -- lists: paging and filters ----------------------------------------------------------------------


async def test_paging_walks_every_issue_once_newest_first(api, simulator):
    items = await api.walk(f"/projects/{WIDGETS}/issues", per_page=7)
    keys = [(it["updated_at"], it["iid"]) for it in items]
    assert keys == sorted(keys, reverse=True)
    assert sorted(it["iid"] for it in items) == sorted(simulator.projects[WIDGETS].issues)


async def test_per_page_defaults_to_20(api):
    body = await api.json(f"/projects/{WIDGETS}/issues")
    assert len(body["items"]) == 20 and body["next_cursor"]


async def test_the_state_filter_narrows_issues_and_merge_requests(api, simulator):
    closed = await api.walk(f"/projects/{WIDGETS}/issues", state="closed")
    expected = {i for i, it in simulator.projects[WIDGETS].issues.items() if it["state"] == "closed"}
    assert {it["iid"] for it in closed} == expected and expected
    merged = await api.walk(f"/projects/{WIDGETS}/merge_requests", state="merged")
    assert merged and all(mr["state"] == "merged" for mr in merged)
    assert len(await api.walk(f"/projects/{WIDGETS}/issues", state="all")) == 30


async def test_labels_must_all_match(api, simulator):
    issues = simulator.projects[WIDGETS].issues.values()
    two = next(it["labels"][:2] for it in issues if len(it["labels"]) >= 2)
    found = await api.walk(f"/projects/{WIDGETS}/issues", labels=",".join(reversed(two)))
    expected = {it["iid"] for it in issues if set(two) <= set(it["labels"])}
    assert {it["iid"] for it in found} == expected
    one = await api.walk(f"/projects/{WIDGETS}/issues", labels=two[0])
    assert len(one) >= len(found)


async def test_author_and_updated_after_filter(api, simulator):
    issues = list(simulator.projects[WIDGETS].issues.values())
    author = issues[0]["author"]["username"]
    by_author = await api.walk(f"/projects/{WIDGETS}/issues", author=author)
    assert {it["iid"] for it in by_author} == {it["iid"] for it in issues if it["author"]["username"] == author}
    middle = sorted(normalize_time(it["updated_at"]) for it in issues)[15]
    recent = await api.walk(f"/projects/{WIDGETS}/issues", updated_after=middle)
    assert len(recent) == 15 and all(it["updated_at"] >= middle for it in recent)


async def test_updated_after_accepts_an_offset(api):
    everything = await api.walk(f"/projects/{WIDGETS}/issues", updated_after="2000-01-01T02:00:00+02:00")
    assert len(everything) == 30


@pytest.mark.parametrize(("params", "name"), [
    ({"per_page": "0"}, "per_page"), ({"per_page": "101"}, "per_page"), ({"per_page": "ten"}, "per_page"),
    ({"per_page": "-1"}, "per_page"), ({"per_page": ""}, "per_page"), ({"state": "merged"}, "state"),
    ({"state": "OPENED"}, "state"), ({"updated_after": "yesterday"}, "updated_after"),
    ({"updated_after": "2024-01-01"}, "updated_after"), ({"updated_after": "2024-13-01T00:00:00Z"}, "updated_after"),
    ({"updated_after": "0001-01-01T00:00:00+01:00"}, "updated_after"), ({"author": ""}, "author"),
    ({"labels": ",".join(f"l{i}" for i in range(21))}, "labels"), ({"cursor": ""}, "cursor"),
])
async def test_an_invalid_value_of_a_known_parameter_is_400_naming_it(api, params, name):
    resp = await api.get(f"/projects/{WIDGETS}/issues", **params)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_parameter" and error["message"].startswith(f"{name}:")


async def test_unknown_parameters_are_ignored(api):
    plain = await api.get(f"/projects/{WIDGETS}/issues")
    extra = await api.get(f"/projects/{WIDGETS}/issues", sort="asc", page="3", foo="bar")
    assert extra.status == 200
    assert await extra.read() == await plain.read()
    assert extra.headers["ETag"] == plain.headers["ETag"]


async def test_the_merge_request_state_filter_accepts_merged_and_locked(api):
    for state in ("opened", "closed", "merged", "locked", "all"):
        assert (await api.get(f"/projects/{WIDGETS}/merge_requests", state=state)).status == 200


# -- cursors ----------------------------------------------------------------------------------------


async def cursor_of(api: Api, path: str, **params: Any) -> str:
    return (await api.json(path, per_page=5, **params))["next_cursor"]


async def test_a_garbage_or_tampered_cursor_is_400(api):
    cursor = await cursor_of(api, f"/projects/{WIDGETS}/issues")
    body, mac = cursor.split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for bad in ("garbage", "a.b", f"{flipped}.{mac}", f"{body}.{mac[:-1]}", cursor + "x", "é.é", "." * 600):
        resp = await api.get(f"/projects/{WIDGETS}/issues", cursor=bad)
        assert resp.status == 400, bad
        assert (await resp.json())["error"]["message"].startswith("cursor:")


async def test_a_cursor_from_another_list_or_other_filters_is_400(api):
    cursor = await cursor_of(api, f"/projects/{WIDGETS}/issues", state="opened")
    for path, params in ((f"/projects/{WIDGETS}/issues", {}), (f"/projects/{WIDGETS}/issues", {"state": "closed"}),
                         (f"/projects/{GADGETS}/issues", {"state": "opened"}),
                         (f"/projects/{WIDGETS}/merge_requests", {"state": "opened"}), ("/projects", {})):
        resp = await api.get(path, cursor=cursor, **params)
        assert resp.status == 400, path


async def test_a_cursor_survives_a_change_of_page_size(api):
    first = await api.json(f"/projects/{WIDGETS}/issues", per_page=5)
    rest = await api.json(f"/projects/{WIDGETS}/issues", per_page=100, cursor=first["next_cursor"])
    assert len(first["items"]) + len(rest["items"]) == 30


async def test_a_cursor_keeps_working_after_the_signing_keys_rotate(simulator, config_for, db, aiohttp_client, api):
    cursor = await cursor_of(api, f"/projects/{WIDGETS}/issues")
    current = signing_keys(config_for())
    rotated = config_for(auth_signing_keys=f"a-new-key-0123456789abcdef0123456789abcdef,{current[0]}")
    app = create_app(rotated, scheduler=False)
    client = await aiohttp_client(app)
    token = (await app[TOKENS].create("rotated", ["read"], None)).token
    resp = await client.get(f"/api/v1/projects/{WIDGETS}/issues", params={"cursor": cursor},
                            headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200
    assert len((await resp.json())["items"]) == 20


# -- paging while a sync writes ---------------------------------------------------------------------


async def test_a_walk_neither_repeats_nor_skips_items_a_concurrent_sync_does_not_move(
    api, simulator, config_for, db
):
    path = f"/projects/{WIDGETS}/issues"
    order = [it["iid"] for it in await api.walk(path, per_page=100)]
    page = await api.json(path, per_page=6)
    seen = [it["iid"] for it in page["items"]]
    # Move to the top: one item already seen, the first one not yet seen, and one far ahead.
    moved = {order[2], order[6], order[20]}
    for iid in moved:
        simulator.update_issue(WIDGETS, iid, title=f"moved {iid}")
    await sync_mirror(db, config_for())
    cursor = page["next_cursor"]
    while cursor:
        page = await api.json(path, per_page=6, cursor=cursor)
        seen.extend(it["iid"] for it in page["items"])
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)), "an item was repeated"
    assert set(seen) >= set(order) - moved, "an item that did not move was skipped"


async def test_a_walk_under_a_sync_running_at_the_same_time_sees_every_unmoved_issue_once(
    api, simulator, config_for, db
):
    path = f"/projects/{WIDGETS}/issues"
    everything = {it["iid"] for it in await api.walk(path)}
    moved: set[int] = set()
    rounds_during_walk = 0
    walking = True

    async def keep_syncing() -> None:
        nonlocal rounds_during_walk
        for round_ in range(4):
            iid = 1 + (round_ * 7) % 30
            moved.add(iid)
            simulator.update_issue(WIDGETS, iid, title=f"round {round_}")
            await sync_mirror(db, config_for())
            rounds_during_walk += walking

    async def walk() -> list[int]:
        nonlocal walking
        seen, cursor = [], None
        while True:
            page = await api.json(path, per_page=3, **({"cursor": cursor} if cursor else {}))
            seen.extend(it["iid"] for it in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                walking = False
                return seen
            await asyncio.sleep(0.05)  # a reader paging slowly through a busy mirror

    seen, _ = await asyncio.gather(walk(), keep_syncing())
    assert rounds_during_walk >= 2, "the sync did not write while the walk was under way"
    assert len(seen) == len(set(seen))
    assert set(seen) >= everything - moved


# -- discussions ------------------------------------------------------------------------------------


async def test_discussions_are_threads_with_their_notes_in_gitlabs_order(api, simulator):
    threads = await api.walk(f"/projects/{WIDGETS}/merge_requests/1/discussions")
    expected = simulator.projects[WIDGETS].discussions[("merge_request", 1)]
    assert [t["id"] for t in threads] == [d["id"] for d in expected]
    assert [[n["id"] for n in t["notes"]] for t in threads] == [[n["id"] for n in d["notes"]] for d in expected]
    note = threads[0]["notes"][0]
    assert set(note) == {"id", "body", "author", "created_at", "updated_at", "system", "resolvable", "resolved",
                         "position"}
    assert all(isinstance(t["individual_note"], bool) for t in threads)


async def test_diff_notes_keep_their_position_and_others_have_null(api):
    threads = await api.walk(f"/projects/{WIDGETS}/merge_requests/1/discussions")
    notes = [n for t in threads for n in t["notes"]]
    assert any(n["position"] and n["position"]["new_path"] for n in notes)
    issue_notes = [n for t in await api.walk(f"/projects/{WIDGETS}/issues/1/discussions") for n in t["notes"]]
    assert issue_notes and all(n["position"] is None for n in issue_notes)


async def test_note_fields_gitlab_leaves_out_default_to_false_and_null(api):
    discussion = {"id": "d1", "individual_note": True, "notes": [
        {"id": 5_000_001, "body": "plain", "author": {"id": 1, "username": "a", "name": "A"},
         "created_at": "2024-05-01T10:00:00+02:00", "system": False}]}
    async with api.app[DB].transaction() as conn:
        await mirror.replace_discussions(conn, WIDGETS, "issue", 2, [discussion])
    threads = (await api.json(f"/projects/{WIDGETS}/issues/2/discussions"))["items"]
    note = threads[0]["notes"][0]
    assert (note["resolvable"], note["resolved"], note["position"]) == (False, False, None)
    assert note["created_at"] == note["updated_at"] == "2024-05-01T08:00:00.000Z"


async def test_discussions_page_by_thread(api, simulator):
    expected = simulator.projects[WIDGETS].discussions[("issue", 1)]
    first = await api.json(f"/projects/{WIDGETS}/issues/1/discussions", per_page=1)
    assert len(first["items"]) == 1 and (first["next_cursor"] is not None) == (len(expected) > 1)
    walked = await api.walk(f"/projects/{WIDGETS}/issues/1/discussions", per_page=1)
    assert [t["id"] for t in walked] == [d["id"] for d in expected]


async def test_an_item_without_notes_has_an_empty_list_of_threads(api):
    async with api.app[DB].transaction() as conn:
        await mirror.replace_discussions(conn, GADGETS, "issue", 4, [])
    body = await api.json(f"/projects/{GADGETS}/issues/4/discussions")
    assert body == {"items": [], "next_cursor": None}


# -- authentication ---------------------------------------------------------------------------------


async def test_no_token_is_401_and_a_token_without_read_is_403(api):
    resp = await api.client.get(f"/api/v1/projects/{WIDGETS}/issues")
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    sync_only = await api.app[TOKENS].create("deployer", ["sync"], None)
    resp = await api.get(f"/projects/{WIDGETS}/issues", token=sync_only.token)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"


async def test_issues_filter_by_work_item_status_name_category_or_none(api):
    async with api.app[DB].transaction() as conn:
        await conn.execute("UPDATE issues SET work_item_status = ? WHERE project_id = 1001 AND iid IN (1, 2)",
                           ('{"name":"In review","category":"in_progress"}',))
    by_name = await api.walk("/projects/1001/issues", status="In Review")
    by_category = await api.walk("/projects/1001/issues", status="IN_PROGRESS")
    assert sorted(i["iid"] for i in by_name) == sorted(i["iid"] for i in by_category) == [1, 2]
    assert all(i["work_item_status"]["name"] == "In review" for i in by_name)
    without = await api.walk("/projects/1001/issues", status="none")
    assert len(without) == 28 and all(i["work_item_status"] is None for i in without)
    assert (await api.get("/projects/1001/issues", status="")).status == 400
