"""Who knows the files under a path: contributions from the mirror, scored with time decay.

Contributions: MRs authored that touch the path, diff notes on it, and reviews of such MRs by others
(comments or an approval, once per person and MR). Each is worth weight * 0.5 ^ (age / half-life), per
kind, from [experts]; so a few recent ones can outweigh many old ones. `now` is always a parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sync.clock import parse_time, utc_iso
from sync.config import ExpertsConfig
from sync.read.queries import project_exists
from sync.store.db import Database

KINDS = ("mr_author", "diff_note", "review")
APPROVAL_NOTE = "approved this merge request"  # GitLab's system note for an approval
_DAY = 86_400.0
_HIGHEST = "\U0010ffff"  # sorts after every path: the open upper end of the whole-project range


@dataclass(frozen=True)
class PathPrefix:
    """A file or directory, as half-open ranges over stored paths (index range scans, no LIKE escaping)."""

    exact: str  # the path itself (a file), or "" for none
    low: str  # paths in [low, high) are under it
    high: str

    @classmethod
    def parse(cls, path: str) -> PathPrefix:
        """`src/auth/` or `src/auth` (both: that directory, not `src/authz`), `src/auth/tokens.py`, or `/`."""
        text = path.strip().lstrip("/")
        while text.startswith("./"):
            text = text[2:].lstrip("/")
        if not text:
            return cls("", "", _HIGHEST)
        exact = "" if text.endswith("/") else text
        directory = text if text.endswith("/") else text + "/"
        return cls(exact, directory, directory[:-1] + chr(ord("/") + 1))


@dataclass(frozen=True)
class Contributions:
    """Contributions as columns (one entry each), the shape the scoring is computed in."""

    usernames: list[str]
    kinds: np.ndarray  # index into KINDS
    ages: np.ndarray  # days before the query's `now`, never negative
    times: list[str]  # when, as the mirror stores it (RFC 3339, UTC: sorts as time)

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]]) -> Contributions:
        """From (username, kind index, age in days, time) rows."""
        count = len(rows)
        return cls(
            usernames=[r[0] for r in rows],
            kinds=np.fromiter((r[1] for r in rows), dtype=np.int64, count=count),
            ages=np.maximum(np.fromiter((r[2] or 0.0 for r in rows), dtype=np.float64, count=count), 0.0),
            times=[r[3] for r in rows],
        )


@dataclass(frozen=True)
class Expert:
    username: str
    name: str | None
    score: float
    last_contribution_at: float
    stale: bool
    contributions: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "name": self.name,
            "score": self.score,
            "last_contribution_at": utc_iso(self.last_contribution_at),
            "stale": self.stale,
            "contributions": self.contributions,
        }


@dataclass(frozen=True)
class ExpertsResult:
    path: str
    project_id: int
    items: list[Expert]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "project_id": self.project_id, "items": [e.to_json() for e in self.items]}


def decayed(weight: float, age_days: float, half_life_days: float) -> float:
    """weight * 0.5 ^ (age / half-life); a half-life of zero counts only what happened just now."""
    if half_life_days <= 0:
        return weight if age_days <= 0 else 0.0
    return weight * 0.5 ** (max(age_days, 0.0) / half_life_days)


def score_contributions(
    contributions: Contributions, settings: ExpertsConfig, now: float, names: dict[str, str | None]
) -> list[Expert]:
    """Experts from their contributions, highest score first (ties by username).

    Vectorized: a broad path in a big project has tens of thousands of contributions.
    """
    if not contributions.usernames:
        return []
    index: dict[str, int] = {}
    who = np.fromiter(
        (index.setdefault(u, len(index)) for u in contributions.usernames),
        dtype=np.int64,
        count=len(contributions.usernames),
    )
    people = len(index)
    value = _decayed_values(contributions.kinds, contributions.ages, settings)
    scores = np.bincount(who, weights=value, minlength=people)
    counts = np.zeros((people, len(KINDS)), dtype=np.int64)
    np.add.at(counts, (who, contributions.kinds), 1)
    # The newest contribution of each person: order by person, then age; the first of each run.
    order = np.lexsort((contributions.ages, who))
    firsts = order[np.concatenate(([True], who[order][1:] != who[order][:-1]))]
    experts = []
    for user, person in index.items():
        last_at = parse_time(contributions.times[firsts[person]])
        experts.append(
            Expert(
                username=user,
                name=names.get(user),
                score=round(float(scores[person]), 6),
                last_contribution_at=last_at,
                stale=now - last_at > settings.stale_after,
                contributions={KINDS[k]: int(counts[person, k]) for k in range(len(KINDS)) if counts[person, k]},
            )
        )
    experts.sort(key=lambda e: (-e.score, e.username))
    return experts


def _decayed_values(kinds: np.ndarray, ages: np.ndarray, settings: ExpertsConfig) -> np.ndarray:
    """`decayed()` of every contribution at once."""
    weights = np.array([settings.mr_author_weight, settings.diff_note_weight, settings.review_weight])
    half_lives = np.array(
        [settings.mr_author_half_life, settings.diff_note_half_life, settings.review_half_life]
    ) / _DAY
    half = half_lives[kinds]
    # A half-life of zero counts only what happened just now (as `decayed` does).
    exponent = np.where(half > 0, ages / np.where(half > 0, half, 1.0), np.where(ages <= 0, 0.0, np.inf))
    return weights[kinds] * np.power(0.5, exponent)


async def find_experts(
    db: Database,
    project_id: int,
    path: str,
    settings: ExpertsConfig,
    *,
    now: float,
    limit: int = 20,
) -> ExpertsResult:
    """The top `limit` experts on `path` in the project, as of `now` (Unix time)."""
    prefix = PathPrefix.parse(path)
    contributions = await load_contributions(db, project_id, prefix, now)
    experts = score_contributions(contributions, settings, now, {})[:limit]
    names = await _display_names(db, project_id, [e.username for e in experts])
    named = [Expert(e.username, names.get(e.username), e.score, e.last_contribution_at, e.stale,
                    e.contributions) for e in experts]
    return ExpertsResult(path, project_id, named)


async def resolve_project(db: Database, ref: str) -> int | None:
    """A mirrored project's id from its numeric id or path_with_namespace; None if not mirrored."""
    text = ref.strip().strip("/")
    if text.isdigit():
        return int(text) if await project_exists(db, int(text)) else None
    return await db.fetchval(
        "SELECT id FROM projects WHERE path_with_namespace = ? COLLATE NOCASE", (text,)
    )


async def mirrored_projects(db: Database) -> list[tuple[int, str]]:
    rows = await db.fetchall("SELECT id, path_with_namespace FROM projects ORDER BY path_with_namespace")
    return [(row[0], row[1]) for row in rows]


# -- the queries ----------------------------------------------------------------------------------

# Parameters are numbered, each used wherever needed: ?1 project, ?2 now, ?3 approval note,
# ?4 the exact path, [?5, ?6) the range under it. Each condition is its own index range scan: an
# OR of them makes SQLite dedupe the rows of a WITHOUT ROWID table in a temporary b-tree. CROSS JOIN
# pins the join order: the planner cannot know how few MRs `touched` holds, and would otherwise scan
# every note of the project.
_CONTRIBUTIONS = """
WITH touched(mr_iid) AS MATERIALIZED (
    SELECT mr_iid FROM mr_files WHERE project_id = ?1 AND path = ?4
    UNION SELECT mr_iid FROM mr_files WHERE project_id = ?1 AND path >= ?5 AND path < ?6
    UNION SELECT mr_iid FROM mr_files WHERE project_id = ?1 AND old_path = ?4
    UNION SELECT mr_iid FROM mr_files WHERE project_id = ?1 AND old_path >= ?5 AND old_path < ?6
),
diff_notes(note_id) AS (
    SELECT note_id FROM diff_note_paths WHERE project_id = ?1 AND path = ?4
    UNION SELECT note_id FROM diff_note_paths WHERE project_id = ?1 AND path >= ?5 AND path < ?6
    UNION SELECT note_id FROM diff_note_paths WHERE project_id = ?1 AND old_path = ?4
    UNION SELECT note_id FROM diff_note_paths WHERE project_id = ?1 AND old_path >= ?5 AND old_path < ?6
)
-- MRs authored that touch the path (when merged, else when opened).
SELECT m.author_username, 0, julianday(?2) - julianday(coalesce(m.merged_at, m.created_at)),
    coalesce(m.merged_at, m.created_at)
FROM touched t CROSS JOIN merge_requests m ON m.project_id = ?1 AND m.iid = t.mr_iid
WHERE m.author_username IS NOT NULL
UNION ALL
-- Diff notes on a file under the path, by its new or its old name (a renamed file counts once).
SELECT p.author_username, 1, julianday(?2) - julianday(p.created_at), p.created_at
FROM diff_notes d CROSS JOIN diff_note_paths p ON p.note_id = d.note_id
WHERE p.author_username IS NOT NULL
UNION ALL
-- One review per person and MR (someone else's), at their latest comment or approval on it.
SELECT n.author_username, 2, julianday(?2) - julianday(max(n.created_at)), max(n.created_at)
FROM touched t
CROSS JOIN merge_requests m ON m.project_id = ?1 AND m.iid = t.mr_iid
CROSS JOIN notes n ON n.project_id = ?1 AND n.noteable_kind = 'merge_request' AND n.noteable_iid = t.mr_iid
WHERE n.author_username IS NOT NULL AND n.author_username IS NOT m.author_username
  AND (n.system = 0 OR json_extract(CAST(n.raw AS TEXT), '$.body') = ?3)
GROUP BY n.noteable_iid, n.author_username
"""


async def load_contributions(db: Database, project_id: int, prefix: PathPrefix, now: float) -> Contributions:
    """Every contribution to files under `prefix` in the project (ages as of `now`)."""
    params = (project_id, utc_iso(now), APPROVAL_NOTE, prefix.exact, prefix.low, prefix.high)
    return Contributions.from_rows(await db.fetchall(_CONTRIBUTIONS, params))


async def _display_names(db: Database, project_id: int, usernames: list[str]) -> dict[str, str | None]:
    """People's display names (GitLab's `name`), from an MR or a note of theirs in the mirror."""
    names: dict[str, str | None] = {}
    for username in usernames:
        name = await db.fetchval(
            "SELECT json_extract(CAST(raw AS TEXT), '$.author.name') FROM merge_requests"
            " WHERE project_id = ? AND author_username = ? LIMIT 1",
            (project_id, username),
        )
        if name is None:
            name = await db.fetchval(
                "SELECT json_extract(CAST(raw AS TEXT), '$.author.name') FROM notes"
                " WHERE project_id = ? AND author_username = ? LIMIT 1",
                (project_id, username),
            )
        names[username] = name
    return names
