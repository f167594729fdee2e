"""Expert scoring: what counts as a contribution to a path, time decay, staleness, and the planted pattern."""

from __future__ import annotations

import dataclasses
import itertools

import orjson
import pytest

from sync.clock import SystemClock, utc_iso
from sync.config import ExpertsConfig
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest.pipeline import SyncRequest
from sync.read.experts import PathPrefix, decayed, find_experts
from sync.store.db import Database

NOW = 1_800_000_000.0
DAY = 86_400.0
PROJECT = 1
_ids = itertools.count(1)


def days_ago(days: float) -> str:
    return utc_iso(NOW - days * DAY)  # type: ignore[return-value]


class Mirror:
    """Writes MRs, their files and notes the way the sync leaves them (raw JSON included)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.next_iid = itertools.count(1)

    async def project(self) -> None:
        async with self.db.transaction() as conn:
            await conn.execute("INSERT INTO projects VALUES (?, 'acme/app', 'app', '', x'', 0)", (PROJECT,))

    async def mr(self, author: str, paths: list[str], age_days: float, *, old_paths: list[str] | None = None) -> int:
        iid = next(self.next_iid)
        created = days_ago(age_days)
        raw = orjson.dumps({"iid": iid, "author": {"username": author, "name": author.title()}})
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO merge_requests (project_id, iid, id, title, state, author_username, created_at,"
                " updated_at, merged_at, raw) VALUES (?, ?, ?, 't', 'merged', ?, ?, ?, ?, ?)",
                (PROJECT, iid, next(_ids), author, created, created, created, raw),
            )
            await conn.executemany(
                "INSERT INTO mr_files (project_id, mr_iid, path, old_path) VALUES (?, ?, ?, ?)",
                [(PROJECT, iid, p, (old_paths or paths)[i]) for i, p in enumerate(paths)],
            )
        return iid

    async def note(
        self, mr_iid: int, author: str, age_days: float, *, diff_path: str | None = None, system: bool = False,
        body: str = "a comment",
    ) -> None:
        note_id = next(_ids)
        raw: dict = {"id": note_id, "body": body, "author": {"username": author, "name": author.title()},
                     "type": "DiffNote" if diff_path else None, "system": system}
        if diff_path:
            raw["position"] = {"new_path": diff_path, "old_path": diff_path}
        at = days_ago(age_days)
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO notes (id, project_id, noteable_kind, noteable_iid, discussion_id, individual_note,"
                " discussion_seq, note_seq, author_username, system, created_at, updated_at, raw)"
                " VALUES (?, ?, 'merge_request', ?, ?, 0, 0, 0, ?, ?, ?, ?, ?)",
                (note_id, PROJECT, mr_iid, f"d{note_id}", author, int(system), at, at, orjson.dumps(raw)),
            )


@pytest.fixture
async def mirror(db: Database) -> Mirror:
    m = Mirror(db)
    await m.project()
    return m


async def experts(db: Database, path: str, settings: ExpertsConfig | None = None) -> dict[str, dict]:
    result = await find_experts(db, PROJECT, path, settings or ExpertsConfig(), now=NOW)
    return {e.username: e.to_json() for e in result.items}


# -- paths ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "inside", "outside"),
    [
        ("src/auth/", ["src/auth/tokens.py", "src/auth/deep/x.py"], ["src/authz/a.py", "src/auth"]),
        ("src/auth", ["src/auth/tokens.py", "src/auth"], ["src/authz/a.py", "src/auth.py"]),
        ("/src/auth/tokens.py", ["src/auth/tokens.py"], ["src/auth/tokens.pyc", "src/auth/tokens"]),
        ("/", ["README.md", "src/a.py"], []),
    ],
)
def test_a_path_means_that_file_or_everything_under_that_directory(path, inside, outside):
    prefix = PathPrefix.parse(path)

    def matches(p: str) -> bool:
        return p == prefix.exact or prefix.low <= p < prefix.high

    assert all(matches(p) for p in inside) and not any(matches(p) for p in outside)


# -- what counts --------------------------------------------------------------------------------------


async def test_authored_mrs_diff_notes_and_reviews_on_the_path_each_count_as_their_kind(db, mirror):
    mr = await mirror.mr("ana", ["src/auth/tokens.py", "docs/x.md"], 10)
    await mirror.note(mr, "ana", 9, body="my own MR: not a review")
    await mirror.note(mr, "ben", 9, diff_path="src/auth/tokens.py")
    await mirror.note(mr, "ben", 8, body="and a plain comment")
    await mirror.note(mr, "cy", 7, body="looks fine")
    await mirror.note(mr, "cy", 6, body="really")
    await mirror.note(mr, "dee", 5, system=True, body="approved this merge request")
    await mirror.note(mr, "eve", 5, system=True, body="added 1 commit")
    await mirror.note(mr, "fay", 5, diff_path="docs/x.md")

    found = await experts(db, "src/auth/")

    assert {u: e["contributions"] for u, e in found.items()} == {
        "ana": {"mr_author": 1},
        "ben": {"diff_note": 1, "review": 1},
        "cy": {"review": 1},  # two comments on one MR are one review
        "dee": {"review": 1},  # an approval
        "fay": {"review": 1},  # commented on the MR, though on another file
    }
    assert found["ana"]["name"] == "Ana" and found["ana"]["last_contribution_at"] == days_ago(10)


async def test_nothing_outside_the_path_or_in_another_directory_with_the_same_prefix_counts(db, mirror):
    await mirror.mr("ana", ["src/authz/policy.py"], 1)
    mr = await mirror.mr("ben", ["docs/auth.md"], 1)
    await mirror.note(mr, "cy", 1, diff_path="docs/auth.md")
    assert await experts(db, "src/auth") == {}


async def test_a_renamed_file_counts_under_its_old_path_too(db, mirror):
    await mirror.mr("ana", ["src/identity/tokens.py"], 3, old_paths=["src/auth/tokens.py"])
    assert set(await experts(db, "src/auth/")) == {"ana"}


async def test_the_score_is_the_sum_of_decayed_weights(db, mirror):
    settings = ExpertsConfig()
    mr = await mirror.mr("ana", ["src/a.py"], 30)
    await mirror.note(mr, "ana", 20, diff_path="src/a.py")
    await mirror.note(mr, "ben", 45, body="review")
    found = await experts(db, "src/")
    expected_ana = decayed(1.0, 30, 180) + decayed(0.5, 20, 90)
    assert found["ana"]["score"] == pytest.approx(expected_ana, rel=1e-5)
    assert found["ben"]["score"] == pytest.approx(decayed(settings.review_weight, 45, 90), rel=1e-5)
    assert decayed(2.0, 90, 90) == pytest.approx(1.0)


# -- the planted pattern ------------------------------------------------------------------------------


@pytest.fixture
async def planted(db, mirror) -> None:
    """`veteran` authored 20 MRs on src/auth/ about 400 days ago; `newcomer` 3 in the last two weeks."""
    for i in range(20):
        await mirror.mr("veteran", [f"src/auth/module_{i}.py"], 400 + i)
    for i in range(3):
        await mirror.mr("newcomer", ["src/auth/session.py"], 5 + 4 * i)


async def test_many_old_contributions_outrank_a_few_recent_ones_under_a_long_half_life(db, planted):
    found = await experts(db, "src/auth/")
    assert list(found) == ["veteran", "newcomer"]
    assert found["veteran"]["score"] == pytest.approx(sum(decayed(1.0, 400 + i, 180) for i in range(20)), rel=1e-5)
    assert found["veteran"]["contributions"] == {"mr_author": 20}


async def test_the_ranking_flips_when_the_half_life_is_short(db, planted):
    short = dataclasses.replace(ExpertsConfig(), mr_author_half_life=30 * DAY)
    found = await experts(db, "src/auth/", short)
    assert list(found) == ["newcomer", "veteran"]
    assert found["veteran"]["score"] < 0.01 < found["newcomer"]["score"]


async def test_the_old_contributor_is_stale_and_the_recent_one_is_not(db, planted):
    found = await experts(db, "src/auth/")
    assert found["veteran"]["stale"] is True and found["newcomer"]["stale"] is False
    assert found["veteran"]["last_contribution_at"] == days_ago(400)


async def test_stale_after_is_configurable(db, planted):
    patient = dataclasses.replace(ExpertsConfig(), stale_after=500 * DAY)
    assert (await experts(db, "src/auth/", patient))["veteran"]["stale"] is False


# -- against a real sync --------------------------------------------------------------------------------


async def test_diff_note_paths_are_extracted_for_every_synced_diff_note(simulator, config_for, db):
    await SyncRunner(db, EventBus(), SystemClock(), config_for()).run(SyncRequest(profile="fast"))
    expected = sum(
        1
        for p in simulator.projects.values()
        for (kind, _), threads in p.discussions.items()
        if kind == "merge_request"
        for t in threads
        for n in t["notes"]
        if n["type"] == "DiffNote"
    )
    assert expected > 0
    assert await db.fetchval("SELECT count(*) FROM diff_note_paths") == expected
    result = await find_experts(db, 1001, "src/", ExpertsConfig(), now=SystemClock().now())
    assert result.items and result.items == sorted(result.items, key=lambda e: -e.score)
    assert all(e.name for e in result.items)
