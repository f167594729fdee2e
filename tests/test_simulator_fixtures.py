"""The simulator's REST answers carry every key of GitLab's documented example responses, with its JSON type.

The fixtures are GitLab's own examples (tests/fixtures/gitlab/rest/README.md says where each comes from).
A key documented with null, or answered with null, may hold any type: GitLab documents many nullable fields
by one example value.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import FakeClock

FIXTURES = Path(__file__).parent / "fixtures" / "gitlab" / "rest"
TOKEN = {"PRIVATE-TOKEN": "sim-token"}
# Keys of a documented example that GitLab itself no longer sends. notes.md's example author predates the
# UserBasic entity every note has carried since (no email: GitLab never exposes it to other users).
STALE_IN_DOCS = {"note.json": {"author.email", "author.created_at"}}


def documented(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def json_type(value: Any) -> str:
    for kind, types in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                        ("array", list), ("object", dict)):
        if isinstance(value, types):
            return kind
    return "null"


def list_schema(examples: list[Any]) -> Any:
    """One example standing for a documented list: objects merged, so a key shown on any element counts."""
    objects = [e for e in examples if isinstance(e, dict)]
    if not objects:
        return examples[0] if examples else None
    merged: dict[str, Any] = {}
    for obj in objects:
        for key, value in obj.items():
            if merged.get(key) is None:
                merged[key] = value
    return merged


def mismatches(actual: Any, doc: Any, path: str = "", skip: frozenset[str] = frozenset()) -> list[str]:
    """Where `actual` lacks a documented key or holds another JSON type than the documentation shows."""
    if actual is None or doc is None:
        return []
    if json_type(actual) != json_type(doc):
        return [f"{path or '.'}: {json_type(actual)}, documented {json_type(doc)}"]
    if isinstance(doc, dict):
        found = []
        for key, value in doc.items():
            where = f"{path}.{key}" if path else key
            if re.sub(r"\[\d+\]\.?", "", where) in skip:  # skip names a key wherever lists put it
                continue
            if key not in actual:
                found.append(f"{where}: missing")
            else:
                found += mismatches(actual[key], value, where, skip)
        return found
    if isinstance(doc, list) and doc:
        schema = list_schema(doc)
        return [m for i, item in enumerate(actual) for m in mismatches(item, schema, f"{path}[{i}]", skip)]
    return []


@pytest.fixture
async def gitlab(aiohttp_client: Any) -> Any:
    sim = GitLabSimulator(clock=FakeClock(), seed=7)
    sim.add_project("group/alpha", issues=6, merge_requests=4, notes_per_item=6, files_per_mr=3)
    client = await aiohttp_client(sim.app())

    async def get(path: str) -> Any:
        response = await client.get(f"/api/v4{path}", headers=TOKEN)
        assert response.status == 200, path
        return await response.json()

    return get


@pytest.mark.parametrize(("fixture", "path"), [
    ("issue.json", "/projects/1001/issues/1"),
    ("merge_request.json", "/projects/1001/merge_requests/1"),
    ("mr_changes.json", "/projects/1001/merge_requests/1/changes"),
    ("mr_diffs.json", "/projects/1001/merge_requests/1/diffs"),
    ("issue_discussions.json", "/projects/1001/issues/1/discussions?per_page=100"),
    ("version.json", "/version"),
    ("metadata.json", "/metadata"),
])
async def test_an_answer_carries_the_documented_keys_and_types(gitlab: Any, fixture: str, path: str) -> None:
    assert mismatches(await gitlab(path), documented(fixture)) == []


async def test_every_note_in_discussions_is_the_documented_note_entity(gitlab: Any) -> None:
    notes = [n for d in await gitlab("/projects/1001/issues/2/discussions?per_page=100") for n in d["notes"]]

    assert notes
    assert mismatches(notes, [documented("note.json")], skip=frozenset(STALE_IN_DOCS["note.json"])) == []


def test_the_check_catches_a_missing_key_and_a_wrong_type() -> None:
    doc = {"id": 1, "labels": ["a"], "author": {"username": "x"}, "closed_at": None}
    answer = {"id": "1", "labels": [2], "author": {}, "closed_at": "2020-01-01T00:00:00Z"}

    assert mismatches(answer, doc) == ["id: string, documented integer", "labels[0]: integer, documented string",
                                       "author.username: missing"]
