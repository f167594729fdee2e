"""The simulated GitLab behaves like GitLab where the gateway depends on it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web

from gateway.simulator.gitlab import GitLabSimulator, Webhook
from sync.clock import FakeClock

TOKEN = {"PRIVATE-TOKEN": "sim-token"}
SIGNING_KEY = b"0123456789abcdef0123456789abcdef"
SIGNING_TOKEN = "whsec_" + base64.b64encode(SIGNING_KEY).decode()


def make_sim(**project: Any) -> GitLabSimulator:
    sim = GitLabSimulator(clock=FakeClock(), seed=7)
    sim.add_project("group/alpha", **project)
    return sim


async def walk(client: Any, path: str, **params: str) -> list[dict[str, Any]]:
    """Every row of a paginated list, following x-next-page like a GitLab client."""
    rows: list[dict[str, Any]] = []
    page = "1"
    while page:
        response = await client.get(path, params={**params, "page": page}, headers=TOKEN)
        assert response.status == 200
        rows += await response.json()
        page = response.headers["x-next-page"]
    return rows


# -- pagination and filters -----------------------------------------------------------------------------

async def test_first_page_carries_gitlab_pagination_headers(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_sim(issues=45).app())

    response = await client.get("/api/v4/projects/1001/issues", headers=TOKEN)

    assert len(await response.json()) == 20
    h = response.headers
    assert (h["x-page"], h["x-per-page"], h["x-next-page"], h["x-prev-page"]) == ("1", "20", "2", "")
    assert (h["x-total"], h["x-total-pages"]) == ("45", "3")
    links = [part.split("; ") for part in h["Link"].split(", ")]
    assert [rel for _, rel in links] == ['rel="next"', 'rel="first"', 'rel="last"']
    assert "page=3" in links[2][0]


async def test_walking_x_next_page_returns_every_issue_exactly_once(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_sim(issues=45).app())

    rows = await walk(client, "/api/v4/projects/1001/issues", per_page="7")

    assert sorted(r["iid"] for r in rows) == list(range(1, 46))


async def test_last_page_has_empty_next_page_and_a_prev_page(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_sim(issues=45).app())

    response = await client.get("/api/v4/projects/1001/issues", params={"page": "3"}, headers=TOKEN)

    assert len(await response.json()) == 5
    assert (response.headers["x-next-page"], response.headers["x-prev-page"]) == ("", "2")


async def test_per_page_is_capped_at_100(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_sim(issues=150).app())

    response = await client.get("/api/v4/projects/1001/issues", params={"per_page": "500"}, headers=TOKEN)

    assert response.headers["x-per-page"] == "100"
    assert len(await response.json()) == 100


async def test_above_10000_rows_totals_and_last_link_are_omitted(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_sim(issues=10_001).app())

    response = await client.get("/api/v4/projects/1001/issues", params={"per_page": "100"}, headers=TOKEN)

    assert "x-total" not in response.headers and "x-total-pages" not in response.headers
    assert 'rel="last"' not in response.headers["Link"]
    assert response.headers["x-next-page"] == "2"
    last = await client.get("/api/v4/projects/1001/issues", params={"per_page": "100", "page": "101"},
                            headers=TOKEN)
    assert len(await last.json()) == 1 and last.headers["x-next-page"] == ""


async def test_updated_after_is_inclusive_and_asc_orders_by_updated_at(aiohttp_client: Any) -> None:
    sim = make_sim(issues=60)
    client = await aiohttp_client(sim.app())
    times = sorted(i["updated_at"] for i in sim.projects[1001].issues.values())
    cutoff = times[40]

    rows = await walk(client, "/api/v4/projects/1001/issues", scope="all", state="all",
                      order_by="updated_at", sort="asc", updated_after=cutoff, per_page="100")

    assert [r["updated_at"] for r in rows] == times[40:]


async def test_updated_after_accepts_an_offset_timestamp(aiohttp_client: Any) -> None:
    sim = make_sim(issues=30)
    client = await aiohttp_client(sim.app())
    newest = max(i["updated_at"] for i in sim.projects[1001].issues.values())
    shifted = datetime.fromisoformat(newest).astimezone(timezone(timedelta(hours=2))).isoformat()
    assert shifted.endswith("+02:00")

    rows = await walk(client, "/api/v4/projects/1001/issues", updated_after=shifted)

    assert [r["updated_at"] for r in rows] == [newest]


async def test_state_filter_and_bad_state_value(aiohttp_client: Any) -> None:
    sim = make_sim(merge_requests=40)
    client = await aiohttp_client(sim.app())
    merged = {m["iid"] for m in sim.projects[1001].merge_requests.values() if m["state"] == "merged"}

    rows = await walk(client, "/api/v4/projects/1001/merge_requests", state="merged", per_page="100")
    bad = await client.get("/api/v4/projects/1001/merge_requests", params={"state": "nope"}, headers=TOKEN)

    assert {r["iid"] for r in rows} == merged and merged
    assert bad.status == 400


async def test_discussions_and_diffs_are_paginated_lists(aiohttp_client: Any) -> None:
    sim = make_sim(merge_requests=3, notes_per_item=30, files_per_mr=5)
    client = await aiohttp_client(sim.app())
    threads = sim.projects[1001].discussions[("merge_request", 1)]

    rows = await walk(client, "/api/v4/projects/1001/merge_requests/1/discussions", per_page="5")
    diffs = await walk(client, "/api/v4/projects/1001/merge_requests/1/diffs", per_page="2")

    assert [r["id"] for r in rows] == [t["id"] for t in threads]
    assert len(diffs) == 5
    assert set(diffs[0]) >= {"old_path", "new_path", "a_mode", "b_mode", "diff", "new_file", "renamed_file",
                             "deleted_file"}


async def test_project_is_found_by_url_encoded_path(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_sim(issues=2).app())

    response = await client.get("/api/v4/projects/group%2Falpha", headers=TOKEN)
    missing = await client.get("/api/v4/projects/group%2Fnope", headers=TOKEN)

    assert (await response.json())["id"] == 1001
    assert missing.status == 404 and await missing.json() == {"message": "404 Project Not Found"}


# -- auth, faults, counters, rate limits ----------------------------------------------------------------

async def test_request_without_token_is_401(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_sim(issues=1).app())

    anonymous = await client.get("/api/v4/projects/1001/issues")
    wrong = await client.get("/api/v4/projects/1001/issues", headers={"PRIVATE-TOKEN": "nope"})
    bearer = await client.get("/api/v4/projects/1001/issues", headers={"Authorization": "Bearer sim-token"})

    assert anonymous.status == wrong.status == 401
    assert await anonymous.json() == {"message": "401 Unauthorized"}
    assert bearer.status == 200


async def test_injected_500_fails_once_then_the_request_succeeds(aiohttp_client: Any) -> None:
    sim = make_sim(issues=3)
    client = await aiohttp_client(sim.app())
    sim.inject_fault(500, path_contains="/issues")

    first = await client.get("/api/v4/projects/1001/issues", headers=TOKEN)
    second = await client.get("/api/v4/projects/1001/issues", headers=TOKEN)

    assert first.status == 500 and await first.json() == {"message": "500 Internal Server Error"}
    assert second.status == 200


async def test_injected_429_is_plain_text_with_retry_after(aiohttp_client: Any) -> None:
    sim = make_sim(issues=3)
    client = await aiohttp_client(sim.app())
    sim.inject_fault(429, retry_after=30)

    response = await client.get("/api/v4/projects/1001", headers=TOKEN)

    assert response.status == 429
    assert response.headers["Retry-After"] == "30"
    assert await response.text() == "Retry later"


async def test_fault_after_lets_matching_requests_through_first(aiohttp_client: Any) -> None:
    sim = make_sim(issues=3)
    client = await aiohttp_client(sim.app())
    sim.inject_fault(503, path_contains="/discussions", after=2, times=2)

    statuses = [(await client.get("/api/v4/projects/1001/issues/1/discussions", headers=TOKEN)).status
                for _ in range(5)]
    other = await client.get("/api/v4/projects/1001/issues/1", headers=TOKEN)

    assert statuses == [200, 200, 503, 503, 200]
    assert other.status == 200


async def test_requests_are_counted_by_route_kind_and_logged(aiohttp_client: Any) -> None:
    sim = make_sim(issues=2, merge_requests=1)
    client = await aiohttp_client(sim.app())

    await client.get("/api/v4/projects/1001/issues", headers=TOKEN)
    await client.get("/api/v4/projects/1001/issues/1", headers=TOKEN)
    await client.get("/api/v4/projects/1001/merge_requests/1/diffs", headers=TOKEN)
    await client.get("/api/v4/projects/1001/issues")  # unauthenticated still counts

    assert sim.requests == {"issues_list": 2, "issue": 1, "mr_diffs": 1}
    assert sim.request_count == 4
    assert sim.request_log[1] == ("GET", "/api/v4/projects/1001/issues/1")
    sim.reset_counters()
    assert sim.request_count == 0 and not sim.requests


async def test_ratelimit_headers_count_down_with_a_unix_reset(aiohttp_client: Any) -> None:
    sim = make_sim(issues=1)
    sim.ratelimit_remaining = 3
    client = await aiohttp_client(sim.app())

    first = await client.get("/api/v4/projects/1001", headers=TOKEN)
    second = await client.get("/api/v4/projects/1001", headers=TOKEN)

    assert (first.headers["RateLimit-Remaining"], second.headers["RateLimit-Remaining"]) == ("2", "1")
    assert int(first.headers["RateLimit-Reset"]) > 1_800_000_000  # a Unix time, not seconds-from-now


async def test_latency_delays_every_api_response(aiohttp_client: Any) -> None:
    sim = make_sim(issues=1)
    sim.latency = 0.05
    client = await aiohttp_client(sim.app())

    started = time.perf_counter()
    await client.get("/api/v4/projects/1001", headers=TOKEN)

    assert time.perf_counter() - started >= 0.05


async def test_graphql_without_work_items_answers_200_with_errors(aiohttp_client: Any) -> None:
    sim = make_sim(issues=1)
    client = await aiohttp_client(sim.app())

    query = {"query": "{ project(fullPath: \"group/alpha\") { workItems { nodes { iid } } } }"}
    response = await client.post("/api/graphql", json=query, headers=TOKEN)

    assert response.status == 200
    assert "workItems" in (await response.json())["errors"][0]["message"]
    assert sim.requests["graphql"] == 1


# -- mutations and webhooks -----------------------------------------------------------------------------

def test_update_issue_bumps_updated_at_past_every_other_item() -> None:
    sim = make_sim(issues=50, merge_requests=20)
    project = sim.projects[1001]
    newest_before = max(i["updated_at"] for i in [*project.issues.values(), *project.merge_requests.values()])

    sim.update_issue(1001, 7, title="Renamed")

    assert project.issues[7]["title"] == "Renamed"
    assert project.issues[7]["updated_at"] > newest_before


def test_mutations_get_strictly_increasing_times_while_the_clock_stands_still() -> None:
    sim = make_sim(issues=3, merge_requests=2)

    sim.update_issue(1001, 1, title="a")
    sim.update_merge_request(1001, 1, title="b")
    sim.add_note(1001, "issue", 2, "c")

    issues, mrs = sim.projects[1001].issues, sim.projects[1001].merge_requests
    assert issues[1]["updated_at"] < mrs[1]["updated_at"] < issues[2]["updated_at"]


def test_issue_hook_routes_to_project_and_iid() -> None:
    sim = make_sim(issues=10)
    iid = next(i["iid"] for i in sim.projects[1001].issues.values()
               if i["state"] == "opened" and not i["confidential"])

    hook = sim.update_issue(1001, iid, state="closed")

    assert hook.event == "Issue Hook"
    assert hook.payload["object_kind"] == "issue"
    assert hook.payload["project"]["id"] == 1001
    assert hook.payload["project"]["path_with_namespace"] == "group/alpha"
    assert hook.payload["object_attributes"]["iid"] == iid
    assert hook.payload["object_attributes"]["action"] == "close"
    assert hook.payload["changes"]["state_id"] == {"previous": 1, "current": 2}


def test_merging_an_mr_sends_a_merge_action() -> None:
    sim = make_sim(merge_requests=10)
    iid = next(m["iid"] for m in sim.projects[1001].merge_requests.values() if m["state"] == "opened")

    hook = sim.update_merge_request(1001, iid, state="merged")

    assert hook.event == "Merge Request Hook"
    assert hook.payload["object_attributes"]["action"] == "merge"
    assert sim.projects[1001].merge_requests[iid]["merged_at"] is not None


def test_note_hook_names_the_parent_and_bumps_its_updated_at() -> None:
    sim = make_sim(merge_requests=2)
    before = sim.projects[1001].merge_requests[2]["updated_at"]

    hook = sim.add_note(1001, "merge_request", 2, "Looks good", author="grace.kim")

    mr = sim.projects[1001].merge_requests[2]
    attrs = hook.payload["object_attributes"]
    assert hook.event == "Note Hook"
    assert (attrs["noteable_type"], attrs["note"]) == ("MergeRequest", "Looks good")
    assert attrs["action"] == "create"
    assert attrs["created_at"].endswith(" UTC")  # Ruby's format, as GitLab sends it
    assert hook.payload["merge_request"]["iid"] == 2
    assert mr["updated_at"] > before
    assert sim.projects[1001].discussions[("merge_request", 2)][-1]["id"] == attrs["discussion_id"]


def test_add_issue_takes_the_next_iid_and_sends_an_open_action() -> None:
    sim = make_sim(issues=4)

    hook = sim.add_issue(1001, title="Brand new", labels=["bug"])

    assert hook.payload["object_attributes"]["iid"] == 5
    assert hook.payload["object_attributes"]["action"] == "open"
    assert sim.projects[1001].issues[5]["labels"] == ["bug"]


def test_bad_update_is_rejected_before_anything_changes() -> None:
    sim = make_sim(issues=1)
    before = dict(sim.projects[1001].issues[1])

    with pytest.raises(TypeError):
        sim.update_issue(1001, 1, colour="red")
    with pytest.raises(ValueError):
        sim.update_issue(1001, 1, title="half-applied", state="merged")

    assert sim.projects[1001].issues[1] == before


def test_signed_webhook_headers_verify_with_an_independent_hmac() -> None:
    hook = make_sim(issues=2).update_issue(1001, 1, title="signed")

    headers = hook.headers(secret="s3cret", signing_token=SIGNING_TOKEN, timestamp=1_800_000_123)

    message = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + hook.body()
    expected = base64.b64encode(hmac.new(SIGNING_KEY, message, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert headers["webhook-id"] == headers["Idempotency-Key"] == hook.idempotency_key
    assert headers["webhook-timestamp"] == "1800000123"
    assert headers["X-Gitlab-Token"] == "s3cret"
    assert json.loads(hook.body()) == hook.payload


def test_webhook_uuid_is_new_per_request_but_idempotency_key_is_stable() -> None:
    hook = Webhook(event="Push Hook", payload={"object_kind": "push"})

    first, second = hook.headers(), hook.headers()

    assert first["X-Gitlab-Webhook-UUID"] != second["X-Gitlab-Webhook-UUID"]
    assert first["Idempotency-Key"] == second["Idempotency-Key"]
    assert first["User-Agent"].startswith("GitLab/")
    assert "X-Gitlab-Token" not in first and "webhook-signature" not in first


async def test_deliver_posts_the_exact_signed_body(aiohttp_server: Any) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.json_response({"accepted": True}, status=202)

    receiver = web.Application()
    receiver.router.add_post("/webhooks/gitlab", receive)
    server = await aiohttp_server(receiver)
    sim = make_sim(issues=1)
    hook = sim.push_event(1001)

    status = await sim.deliver(hook, str(server.make_url("/webhooks/gitlab")), signing_token=SIGNING_TOKEN)

    headers, body = received[0]
    message = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(SIGNING_KEY, message, hashlib.sha256).digest()).decode()
    assert status == 202
    assert headers["X-Gitlab-Event"] == "Push Hook"
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert headers["webhook-timestamp"] == "1800000000"  # the simulator's clock, not the wall clock
    assert json.loads(body)["project_id"] == 1001


# -- generated data -------------------------------------------------------------------------------------

def test_two_realistic_projects_get_consecutive_ids_and_the_asked_for_sizes() -> None:
    sim = GitLabSimulator(clock=FakeClock())
    for path in ("group/alpha", "group/beta"):
        sim.add_project(path, issues=400, merge_requests=150, notes_per_item=3)

    assert [p.id for p in sim.projects.values()] == [1001, 1002]
    assert [(len(p.issues), len(p.merge_requests)) for p in sim.projects.values()] == [(400, 150)] * 2


def test_generated_data_is_deterministic_from_the_seed() -> None:
    def snapshot(seed: int) -> str:
        sim = GitLabSimulator(clock=FakeClock(), seed=seed)
        sim.add_project("group/alpha", issues=20, merge_requests=10, notes_per_item=3)
        project = sim.projects[1001]
        return json.dumps([project.issues, project.merge_requests, list(project.discussions.values())])

    assert snapshot(3) == snapshot(3)
    assert snapshot(3) != snapshot(4)


def test_generated_data_has_the_shapes_a_mirror_needs() -> None:
    sim = make_sim(issues=100, merge_requests=60, notes_per_item=3)
    project = sim.projects[1001]
    items = [*project.issues.values(), *project.merge_requests.values()]
    threads = [t for ts in project.discussions.values() for t in ts]
    notes = [n for t in threads for n in t["notes"]]
    mr_paths = {d["new_path"] for files in project.diffs.values() for d in files}

    assert len({i["updated_at"] for i in items}) == len(items)
    assert len({i["author"]["username"] for i in items}) <= 12
    assert any(len(t["notes"]) >= 2 for t in threads)
    assert any(n["system"] for n in notes)
    diff_notes = [n for n in notes if n["type"] == "DiffNote"]
    assert diff_notes and all(n["position"]["new_path"] in mr_paths for n in diff_notes)
    assert all(len(t["id"]) == 40 for t in threads)
    assert len({i["id"] for i in project.issues.values()}) == len(project.issues)
