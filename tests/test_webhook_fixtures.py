"""GitLab's own documented webhook and system-hook examples, posted through the real endpoint: each is routed
as docs/webhooks.md says, and the simulator's webhooks have the same shape as GitLab's.

The fixtures (tests/fixtures/gitlab/) are copied from GitLab's webhook_events.md and system_hooks.md; each
names its X-Gitlab-Event header, its doc section, and the route it must get.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway import webhooks
from gateway.simulator.gitlab import GitLabSimulator, Webhook
from sync.clock import FakeClock
from tests.test_webhooks import NOW, MakeClient, gateway  # noqa: F401  (the fixture)

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "gitlab"
DOCS_TABLE = ROOT / "docs" / "webhooks.md"
FILES = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*hooks/*.json"))
OUTCOMES = {"issue": "issue", "merge_request": "merge request", "project": "project pass"}


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def docs_rows() -> dict[str, str]:
    """Fixture file -> the table row naming it, from docs/webhooks.md."""
    rows: dict[str, str] = {}
    for line in DOCS_TABLE.read_text().splitlines():
        for name in re.findall(r"`((?:webhooks|system_hooks)/[\w.]+\.json)`", line):
            assert name not in rows, f"{name} is in two rows of the table"
            rows[name] = line
    return rows


def outcome_of(expect: Any) -> str:
    return "ignored" if expect == "ignored" else OUTCOMES[expect["kind"]]


# -- the fixtures and the table ----------------------------------------------------------------------


def test_there_is_a_fixture_for_every_documented_example() -> None:
    webhook_kinds = {fixture(f)["x_gitlab_event"] for f in FILES if f.startswith("webhooks/")}
    system_events = {fixture(f)["payload"].get("event_name") or fixture(f)["payload"]["object_kind"]
                     for f in FILES if f.startswith("system_hooks/")}

    assert webhook_kinds == {
        "Push Hook", "Tag Push Hook", "Issue Hook", "Confidential Issue Hook", "Note Hook",
        "Confidential Note Hook", "Merge Request Hook", "Wiki Page Hook", "Pipeline Hook", "Job Hook",
        "Deployment Hook", "Member Hook", "Project Hook", "Subgroup Hook", "Feature Flag Hook", "Release Hook",
        "Milestone Hook", "Emoji Hook", "Resource Access Token Hook", "Vulnerability Hook",
    }
    assert system_events == {  # system_hooks.md: its list of events, then push, tag, MR and approvals
        "group_create", "group_destroy", "group_rename", "key_create", "key_destroy", "project_create",
        "project_destroy", "project_rename", "project_transfer", "project_update", "repository_update",
        "user_access_request_revoked_for_group", "user_access_request_revoked_for_project",
        "user_access_request_to_group", "user_access_request_to_project", "user_add_to_group",
        "user_add_to_team", "user_create", "user_destroy", "user_failed_login", "user_remove_from_group",
        "user_remove_from_team", "user_rename", "user_update_for_group", "user_update_for_team",
        "push", "tag_push", "merge_request", "gitlab_subscription_member_approval",
        "gitlab_subscription_member_approvals",
    }
    assert len(FILES) == 65


@pytest.mark.parametrize("name", FILES)
def test_each_fixture_names_its_header_its_doc_section_and_its_route(name: str) -> None:
    data = fixture(name)

    assert set(data) - {"example", "derived", "note"} == {"x_gitlab_event", "doc", "expect", "payload"}
    assert re.fullmatch(r"doc/(user/project/integrations/webhook_events|administration/system_hooks)\.md#[a-z-]+",
                        data["doc"])
    assert data["x_gitlab_event"].endswith("Hook")
    assert isinstance(data["payload"], dict) and data["payload"]


def test_the_docs_table_has_one_row_for_each_fixture() -> None:
    assert sorted(docs_rows()) == FILES


@pytest.mark.parametrize("name", FILES)
def test_the_docs_table_says_what_the_fixture_expects(name: str) -> None:
    row = docs_rows()[name]
    gateway_cell = row.split("|")[-3]  # | ... | Gateway | Why |

    assert f"**{outcome_of(fixture(name)['expect'])}**" in gateway_cell, row


# -- every documented example through the real endpoint -------------------------------------------------


@pytest.mark.parametrize("name", FILES)
async def test_every_documented_example_is_routed_as_the_docs_table_says(
    name: str, gateway: MakeClient  # noqa: F811
) -> None:
    gw = await gateway()
    data = fixture(name)
    hook = Webhook(event=data["x_gitlab_event"], payload=data["payload"])

    response = await gw.post(hook)

    assert response.status == 202
    rows = await gw.rows()
    if data["expect"] == "ignored":
        assert await response.json() == {"accepted": True, "ignored": True}
        assert rows == [] and gw.published == []
        assert gw.app[webhooks.STATS].ignored == 1
    else:
        [row] = rows
        assert {"kind": row["kind"], "project_id": row["project_id"], "iid": row["iid"]} == data["expect"]
        assert row["payload"] == b""  # a routed event keeps only its route


# -- the simulator speaks GitLab's shape -----------------------------------------------------------------

# Keys of a documented example that GitLab's current source does not send for the simulated item, each
# checked in gitlab-org/gitlab: lib/gitlab/hook_data/issuable_builder.rb sends `assignees` and never a
# top-level `assignee`; issue_builder.rb sends `escalation_status`/`escalation_policy` for incidents only;
# neither issue_builder.rb nor merge_request_builder.rb has `position`, `branch_name` or `assignee`.
# `changes` holds only what moved, so it differs by edit.
NOT_SENT_TODAY = {
    "issue.json": {"assignee", "object_attributes.escalation_status", "object_attributes.escalation_policy"},
    "note_issue.json": {"issue.position", "issue.branch_name"},
    "note_merge_request.json": {"merge_request.position", "merge_request.assignee"},
}


def missing_keys(documented: Any, ours: Any, path: str = "") -> set[str]:
    """Dotted paths of keys in `documented` that `ours` lacks (objects, and the first object of a list)."""
    if isinstance(documented, list) and documented and isinstance(documented[0], dict):
        return missing_keys(documented[0], ours[0], f"{path}[]") if isinstance(ours, list) and ours else set()
    if not isinstance(documented, dict):
        return set()
    if not isinstance(ours, dict):
        return {path}
    missing = set()
    for key, value in documented.items():
        where = f"{path}.{key}" if path else key
        if key not in ours:
            missing.add(where)
        elif key != "changes":
            missing |= missing_keys(value, ours[key], where)
    return missing


def simulated() -> dict[str, Webhook]:
    sim = GitLabSimulator(clock=FakeClock(float(NOW)), seed=3)
    sim.add_project("acme/widgets", issues=5, merge_requests=3, notes_per_item=1)
    people = sorted(sim._data.people)[:2]
    return {
        "issue.json": sim.update_issue(1001, 2, title="x", labels=["bug"], assignees=people),
        "merge_request.json": sim.update_merge_request(1001, 1, title="y", labels=["bug"], assignees=people,
                                                       reviewers=people),
        "note_issue.json": sim.add_note(1001, "issue", 3, "a comment"),
        "note_merge_request.json": sim.add_note(1001, "merge_request", 2, "a comment"),
        "push.json": sim.push_event(1001),
    }


@pytest.mark.parametrize("name", ["issue.json", "merge_request.json", "note_issue.json",
                                  "note_merge_request.json", "push.json"])
def test_the_simulators_webhook_carries_every_key_gitlab_documents(name: str) -> None:
    documented = fixture(f"webhooks/{name}")
    hook = simulated()[name]

    assert hook.event == documented["x_gitlab_event"]
    assert missing_keys(documented["payload"], hook.payload) == NOT_SENT_TODAY.get(name, set())


def test_the_shape_check_notices_a_missing_key() -> None:
    documented = fixture("webhooks/push.json")["payload"]
    ours = json.loads(json.dumps(documented))
    del ours["commits"][0]["author"]
    del ours["total_commits_count"]

    assert missing_keys(documented, ours) == {"commits[].author", "total_commits_count"}


def test_the_simulator_leaves_out_assignees_and_reviewers_when_there_are_none() -> None:
    sim = GitLabSimulator(clock=FakeClock(float(NOW)), seed=3)
    sim.add_project("acme/widgets", issues=2, merge_requests=2)

    issue = sim.update_issue(1001, 1, assignees=[]).payload
    mr = sim.update_merge_request(1001, 1, assignees=[], reviewers=[]).payload

    assert "assignees" not in issue
    assert "assignees" not in mr and "reviewers" not in mr
