"""The simulator's version profiles differ where the GitLab versions they stand for differ."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.simulator.gitlab import GitLabSimulator
from gateway.simulator.profiles import DEFAULT_PROFILE
from sync.clock import FakeClock
from sync.gitlab.workitems_graphql import build_query

TOKEN = {"PRIVATE-TOKEN": "sim-token"}


def make_sim(version: str, clock: FakeClock | None = None) -> GitLabSimulator:
    sim = GitLabSimulator(clock=clock or FakeClock(), seed=7, gitlab_version=version)
    sim.add_project("group/alpha", issues=3, merge_requests=2, notes_per_item=1)
    return sim


def test_an_unknown_profile_is_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match=re.escape("known: 15.6, 17.5-ee, 18.5-ee, ce, gitlab.com")):
        GitLabSimulator(gitlab_version="14.0")


@pytest.mark.parametrize(("version", "reported", "enterprise"), [
    ("15.6", "15.6.8", False), ("17.5-ee", "17.5.5-ee", True), ("18.5-ee", "18.5.0-ee", True),
    ("ce", "18.5.0", False), ("gitlab.com", "18.6.0-pre", True),
])
async def test_version_and_metadata_report_the_profile(aiohttp_client: Any, version: str, reported: str,
                                                       enterprise: bool) -> None:
    client = await aiohttp_client(make_sim(version).app())

    for path in ("/api/v4/version", "/api/v4/metadata"):  # /version mirrors /metadata since 15.5
        body = await (await client.get(path, headers=TOKEN)).json()
        assert (body["version"], body["enterprise"]) == (reported, enterprise)
        assert isinstance(body["revision"], str) and body["kas"]["enabled"] is False


async def test_version_needs_a_token_like_every_api_path(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_sim(DEFAULT_PROFILE).app())

    assert (await client.get("/api/v4/version")).status == 401


async def test_gitlab_15_6_has_no_diffs_route_but_serves_changes(aiohttp_client: Any) -> None:
    sim = make_sim("15.6")
    client = await aiohttp_client(sim.app())

    diffs = await client.get("/api/v4/projects/1001/merge_requests/1/diffs", headers=TOKEN)
    changes = await client.get("/api/v4/projects/1001/merge_requests/1/changes", headers=TOKEN)

    assert diffs.status == 404 and await diffs.json() == {"error": "404 Not Found"}
    body = await changes.json()
    assert [c["new_path"] for c in body["changes"]] == [d["new_path"] for d in sim.projects[1001].diffs[1]]
    assert body["iid"] == 1 and body["overflow"] is False


async def test_changes_of_a_missing_merge_request_is_gitlabs_not_found(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_sim("15.6").app())

    response = await client.get("/api/v4/projects/1001/merge_requests/99/changes", headers=TOKEN)

    assert response.status == 404 and await response.json() == {"message": "404 Merge Request Not Found"}


def test_webhooks_before_17_4_carry_no_idempotency_key() -> None:
    old, new = make_sim("15.6"), make_sim("18.5-ee")

    old_headers = old.update_issue(1001, 1, title="x").headers()
    new_headers = new.update_issue(1001, 1, title="x").headers()

    assert "Idempotency-Key" not in old_headers and old_headers["User-Agent"] == "GitLab/15.6.8"
    assert "Idempotency-Key" in new_headers and new_headers["User-Agent"] == "GitLab/18.5.0"


async def test_self_managed_sends_ratelimit_headers_only_on_the_429(aiohttp_client: Any) -> None:
    sim = make_sim("18.5-ee")
    sim.throttle = 2
    client = await aiohttp_client(sim.app())

    answers = [await client.get("/api/v4/projects/1001", headers=TOKEN) for _ in range(3)]

    assert [r.status for r in answers] == [200, 200, 429]
    assert not any(k.startswith("RateLimit") for k in answers[0].headers)
    limited = answers[2].headers
    assert (limited["RateLimit-Limit"], limited["RateLimit-Remaining"]) == ("2", "0")
    assert await answers[2].text() == "Retry later" and int(limited["Retry-After"]) >= 1


async def test_gitlab_com_sends_ratelimit_headers_on_every_answer(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_sim("gitlab.com").app())

    first = await client.get("/api/v4/projects/1001", headers=TOKEN)
    second = await client.get("/api/v4/projects/1001", headers=TOKEN)

    assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("2000", "1999")
    assert second.headers["RateLimit-Observed"] == "2"


async def test_the_throttle_window_opens_again_at_the_next_minute(aiohttp_client: Any) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    sim = make_sim("ce", clock)
    sim.throttle = 1
    client = await aiohttp_client(sim.app())

    assert (await client.get("/api/v4/projects/1001", headers=TOKEN)).status == 200
    assert (await client.get("/api/v4/projects/1001", headers=TOKEN)).status == 429
    await clock.advance(60)
    assert (await client.get("/api/v4/projects/1001", headers=TOKEN)).status == 200


async def graphql(client: Any, with_category: bool = True) -> dict[str, Any]:
    body = {"query": build_query(with_category), "variables": {"fullPath": "group/alpha", "iids": ["1"]}}
    response = await client.post("/api/graphql", json=body, headers=TOKEN)
    assert response.status == 200
    return await response.json()


async def test_ee_17_5_answers_the_status_selection_with_a_scalar_error(aiohttp_client: Any) -> None:
    sim = make_sim("17.5-ee")
    sim.enable_work_items()
    client = await aiohttp_client(sim.app())

    error = (await graphql(client, with_category=False))["errors"][0]

    assert error["message"].startswith("Selections can't be made on scalars (field 'status' returns String")
    assert error["extensions"]["code"] == "selectionMismatch"


async def test_ce_does_not_know_the_status_widget_type(aiohttp_client: Any) -> None:
    sim = make_sim("ce")
    sim.enable_work_items()
    client = await aiohttp_client(sim.app())

    error = (await graphql(client))["errors"][0]

    assert error["message"] == "No such type WorkItemWidgetStatus, so it can't be a fragment condition"


async def test_ee_18_5_answers_statuses_with_categories(aiohttp_client: Any) -> None:
    sim = make_sim("18.5-ee")
    sim.enable_work_items()
    client = await aiohttp_client(sim.app())

    nodes = (await graphql(client))["data"]["project"]["workItems"]["nodes"]

    assert nodes[0]["widgets"][1]["status"] == {"name": "To do", "category": "TO_DO"}

