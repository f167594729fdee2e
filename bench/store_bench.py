"""The store's insert rate: issue rows upserted in batches of 100 per transaction (as the pipeline
writes a page) side by side with one row per transaction.

    python bench/store_bench.py           # 20,000 rows
    python bench/store_bench.py --quick   # 500 rows, for the test suite
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.simulator.gitlab import GitLabSimulator
from sync.ingest import mirror
from sync.store.db import Database


def make_issues(count: int) -> list[dict]:
    sim = GitLabSimulator(seed=1)
    project = sim.add_project("bench/store", issues=count)
    return list(project.issues.values())


async def insert_rate(path: Path, issues: list[dict], batch: int) -> float:
    db = await Database.open(path)
    try:
        async with db.transaction() as conn:
            await conn.execute("INSERT INTO projects VALUES (1001, 'bench/store', 'store', '', x'', 0)")
        start = time.perf_counter()
        for i in range(0, len(issues), batch):
            async with db.transaction() as conn:
                await mirror.upsert_items(conn, "issue", 1001, issues[i : i + batch])
        elapsed = time.perf_counter() - start
        assert await db.fetchval("SELECT count(*) FROM issues") == len(issues)
        return len(issues) / elapsed
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    rows = 500 if args.quick else args.rows
    issues = make_issues(rows)
    with tempfile.TemporaryDirectory() as tmp:
        single = asyncio.run(insert_rate(Path(tmp) / "single.db", issues, 1))
        batched = asyncio.run(insert_rate(Path(tmp) / "batched.db", issues, 100))
    print(f"upserting {rows} issue rows (WAL, synchronous=NORMAL, full GitLab JSON per row)")
    print(f"  one row per transaction : {single:10,.0f} rows/s")
    print(f"  100 rows per transaction: {batched:10,.0f} rows/s")
    print(f"  batched / single: {batched / single:.1f}x")


if __name__ == "__main__":
    main()
