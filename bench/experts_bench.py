"""Expert query latency (what GET /api/v1/experts runs) over a project of 10,000 MRs, side by side
with the straightforward query that finds DiffNotes by parsing every note's JSON and paths by LIKE
(no diff_note_paths table, no index range scans).

MRs, their files and notes (a third of them DiffNotes) are generated straight into a temporary
database; the migrations' triggers extract DiffNote paths exactly as during a sync.

    python bench/experts_bench.py           # 10,000 MRs
    python bench/experts_bench.py --quick   # 300 MRs, for the test suite
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.clock import utc_iso
from sync.config import ExpertsConfig
from sync.read.experts import APPROVAL_NOTE, Contributions, PathPrefix, find_experts, score_contributions
from sync.store.db import Database, migrate

PROJECT = 1001
NOW = 1_800_000_000.0
DAY = 86_400.0
PEOPLE = [f"dev{i:02d}" for i in range(60)]
AREAS = [f"src/{top}/{sub}/" for top in ("auth", "api", "sync", "ui", "store", "cli") for sub in
         ("core", "util", "model", "views", "tests", "io", "net", "db")]


def tree(rng: random.Random) -> list[str]:
    return [area + f"file_{i}.py" for area in AREAS for i in range(rng.randint(4, 12))]


def generate(path: Path, mrs: int, seed: int = 3) -> tuple[int, int]:
    """Write `mrs` MRs with files and notes; returns (files, notes) written."""
    rng = random.Random(seed)
    files = tree(rng)
    migrate(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO projects VALUES (?, 'bench/experts', 'experts', '', x'', 0)", (PROJECT,))
    mr_rows, file_rows, note_rows = [], [], []
    note_id = 1
    for iid in range(1, mrs + 1):
        author = rng.choice(PEOPLE[: 20 + iid % 40])
        age = rng.uniform(0, 730)
        at = utc_iso(NOW - age * DAY)
        area = rng.choice(AREAS)
        touched = rng.sample([f for f in files if f.startswith(area)], k=min(3, rng.randint(1, 5)))
        touched += rng.sample(files, k=rng.randint(0, 2))
        raw = orjson.dumps({"iid": iid, "author": {"username": author, "name": author.upper()}, "title": "t"})
        mr_rows.append((PROJECT, iid, iid, "t", "merged", author, at, at, at, raw))
        file_rows += [(PROJECT, iid, f, f) for f in dict.fromkeys(touched)]
        for _ in range(rng.randint(1, 6)):
            who = rng.choice(PEOPLE)
            when = utc_iso(NOW - max(0.0, age - rng.uniform(0, 10)) * DAY)
            diff = rng.random() < 0.35
            approval = not diff and rng.random() < 0.1
            note = {"id": note_id, "type": "DiffNote" if diff else None, "system": approval,
                    "body": APPROVAL_NOTE if approval else "a comment", "author": {"username": who, "name": who}}
            if diff:
                target = rng.choice(touched)
                note["position"] = {"new_path": target, "old_path": target}
            note_rows.append((note_id, PROJECT, "merge_request", iid, f"d{note_id}", 0, 0, 0, who, int(approval),
                              when, when, orjson.dumps(note)))
            note_id += 1
    conn.executemany("INSERT INTO merge_requests (project_id, iid, id, title, state, author_username, created_at,"
                     " updated_at, merged_at, raw) VALUES (?,?,?,?,?,?,?,?,?,?)", mr_rows)
    conn.executemany("INSERT INTO mr_files (project_id, mr_iid, path, old_path) VALUES (?,?,?,?)", file_rows)
    conn.executemany("INSERT INTO notes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", note_rows)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()
    return len(file_rows), len(note_rows)


# The baseline: the same contributions, found the obvious way.
_NAIVE = """
SELECT m.author_username, 0, julianday(?1) - julianday(coalesce(m.merged_at, m.created_at)),
    coalesce(m.merged_at, m.created_at)
FROM merge_requests m WHERE m.project_id = ?2 AND m.iid IN
    (SELECT mr_iid FROM mr_files WHERE project_id = ?2 AND (path LIKE ?3 || '%' OR old_path LIKE ?3 || '%'))
UNION ALL
SELECT author_username, 1, julianday(?1) - julianday(created_at), created_at FROM notes
WHERE project_id = ?2 AND json_extract(CAST(raw AS TEXT), '$.type') = 'DiffNote'
  AND (json_extract(CAST(raw AS TEXT), '$.position.new_path') LIKE ?3 || '%'
       OR json_extract(CAST(raw AS TEXT), '$.position.old_path') LIKE ?3 || '%')
UNION ALL
SELECT n.author_username, 2, julianday(?1) - julianday(max(n.created_at)), max(n.created_at)
FROM notes n JOIN merge_requests m ON m.project_id = n.project_id AND m.iid = n.noteable_iid
WHERE n.project_id = ?2 AND n.author_username IS NOT m.author_username
  AND (n.system = 0 OR json_extract(CAST(n.raw AS TEXT), '$.body') = ?4)
  AND n.noteable_iid IN (SELECT mr_iid FROM mr_files WHERE project_id = ?2
                         AND (path LIKE ?3 || '%' OR old_path LIKE ?3 || '%'))
GROUP BY n.noteable_iid, n.author_username
"""


async def naive(db: Database, path: str, settings: ExpertsConfig) -> int:
    rows = await db.fetchall(_NAIVE, (utc_iso(NOW), PROJECT, path, APPROVAL_NOTE))
    return len(score_contributions(Contributions.from_rows(rows), settings, NOW, {})[:20])


async def measure(
    path: Path, queries: list[str], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    db = await Database.open(path, migrate_first=False)
    settings = ExpertsConfig()
    ours: dict[str, list[float]] = {q: [] for q in queries}
    theirs: dict[str, list[float]] = {q: [] for q in queries}
    agree = 0
    try:
        for _ in range(rounds):
            for query in queries:
                started = time.perf_counter()
                result = await find_experts(db, PROJECT, query, settings, now=NOW)
                ours[query].append(time.perf_counter() - started)
                started = time.perf_counter()
                found = await naive(db, PathPrefix.parse(query).low, settings)
                theirs[query].append(time.perf_counter() - started)
                agree += found == len(result.items)
    finally:
        await db.close()
    return ours, theirs, agree


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.2f}ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mrs", type=int, default=10_000)
    args = parser.parse_args()
    mrs = 300 if args.quick else args.mrs
    rounds = 2 if args.quick else 5
    queries = ["src/", "src/auth/", "src/api/core/", "src/sync/db/", "src/ui/views/", "src/cli/io/file_1.py"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "experts.db"
        started = time.perf_counter()
        files, notes = generate(path, mrs)
        built = time.perf_counter() - started
        by_path, baseline_by_path, agree = asyncio.run(measure(path, queries, rounds))
    ours = [t for ts in by_path.values() for t in ts]
    theirs = [t for ts in baseline_by_path.values() for t in ts]
    print(f"experts over {mrs:,} MRs ({files:,} file rows, {notes:,} notes; generated in {built:.1f}s), "
          f"{len(ours)} queries from the project root down to one file")
    print(f"  {'':44} {'p50':>10} {'p99':>10} {'mean':>10}")
    for name, samples in (("ours (range scans, diff_note_paths)", ours),
                          ("baseline (LIKE, JSON parse of every note)", theirs)):
        print(f"  {name:44} {ms(percentile(samples, 50))} {ms(percentile(samples, 99))} "
              f"{ms(statistics.fmean(samples))}")
    print("  by path, median:                 ours   baseline")
    for query in queries:
        ours_median, their_median = statistics.median(by_path[query]), statistics.median(baseline_by_path[query])
        print(f"    {query:24} {ms(ours_median)} {ms(their_median)}")
    print(f"  same number of experts in {agree} of {len(ours)} queries (the baseline's LIKE 'file_1.py%' also"
          " matches file_10.py)")
    print(f"  baseline / ours at p50: {percentile(theirs, 50) / percentile(ours, 50):.1f}x, "
          f"at p99: {percentile(theirs, 99) / percentile(ours, 99):.1f}x")


if __name__ == "__main__":
    main()
