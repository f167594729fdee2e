"""Reconcile (deletions GitLab sends no webhook for) against the simulator, side by side with the alternative.

    python bench/reconcile_bench.py            # 2 projects x (5,000 issues + 5,000 MRs), 1% deleted in GitLab
    python bench/reconcile_bench.py --quick    # tiny sizes, for the test suite

The mirror is filled straight from list pages (no discussions: a reconcile never reads them), then a
few items per project and kind are made to exist only in the mirror. Figures: the reconcile's requests
against ceil(items / 100) per project and kind (the fewest GitLab's 100-row pages allow; target
<= 1.05x), the quiet incremental pass it rides on, and its wall time against asking GitLab for every
mirrored item by iid, the obvious alternative. Then a few items per project and kind are taken out of
the mirror only (as if a listing had walked past them), and a second reconcile's requests are set
against ceil(items / 100) plus what fetching each lost item costs (item + discussions, + diffs for MRs).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._simproc import TOKEN, SimSpec, simulator_process
from sync.clock import SystemClock, normalize_time
from sync.config import Config, load_config
from sync.control.runner import SyncRunner
from sync.errors import PermanentError
from sync.events import EventBus
from sync.gitlab.client import GitLabClient
from sync.ingest import mirror
from sync.ingest.pipeline import KINDS, SyncRequest, gather
from sync.store.db import Database
from sync.types import TABLES

GHOST_IID = 1_000_000  # mirror-only items get iids from here: GitLab "deleted" them


def bench_config(url: str, projects: list[str], data_dir: Path, concurrency: int) -> Config:
    return load_config(None, {
        "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir),
        "LORE_GATEWAY_GITLAB_URL": url,
        "LORE_GATEWAY_GITLAB_TOKEN": TOKEN,
        "LORE_GATEWAY_GITLAB_PROJECTS": ",".join(projects),
        "LORE_GATEWAY_GITLAB_CONCURRENCY": str(concurrency),
    })


async def fill_mirror(db: Database, client: GitLabClient, projects: list[str], ghosts: int) -> list[int]:
    """Every item from its list pages, cursors at the newest, plus `ghosts` mirror-only items per kind."""
    ids = []
    for path in projects:
        project = await client.project(path)
        ids.append(project["id"])
        async with db.transaction() as conn:
            await mirror.upsert_project(conn, project, time.time())
        for kind in KINDS:
            rows: list[dict] = []
            async for page in client.pages(f"/projects/{project['id']}/{TABLES[kind]}",
                                           client.list_params(None)):
                rows += page
            extra = [{**rows[n], "iid": GHOST_IID + n, "id": GHOST_IID * 10 + n} for n in range(ghosts)]
            async with db.transaction() as conn:
                await mirror.upsert_items(conn, kind, project["id"], rows + extra)
                newest = max(normalize_time(r["updated_at"]) for r in rows)
                await mirror.set_cursor(conn, project["id"], TABLES[kind], newest)
    return ids


async def timed_run(runner: SyncRunner, client: GitLabClient, request: SyncRequest) -> tuple[float, int, dict]:
    before = client.requests_made
    start = time.perf_counter()
    run = await runner.run(request)
    elapsed = time.perf_counter() - start
    if run.status != "succeeded":
        raise SystemExit(f"run failed: {run.error_code}: {run.error_message}")
    return elapsed, client.requests_made - before, run.counts


async def ask_each_item(db: Database, client: GitLabClient, project_ids: list[int]) -> tuple[float, int, int]:
    """The alternative: GET every mirrored item by iid; a 404 means deleted."""
    targets = [(pid, kind, iid) for pid in project_ids for kind in KINDS
               for iid in sorted(await _iids(db, pid, kind))]
    missing = 0

    async def probe(pid: int, kind: str, iid: int) -> None:
        nonlocal missing
        try:
            await client.get(f"/projects/{pid}/{TABLES[kind]}/{iid}")
        except PermanentError:  # a 404: never retried, an answer here
            missing += 1

    before = client.requests_made
    start = time.perf_counter()
    await gather(probe(*t) for t in targets)
    return time.perf_counter() - start, client.requests_made - before, missing


async def _iids(db: Database, project_id: int, kind: str) -> set[int]:
    async with db.transaction() as conn:
        return await mirror.stored_iids(conn, project_id, kind)  # type: ignore[arg-type]


async def bench(url: str, spec: SimSpec, ghosts: int, concurrency: int, data_dir: Path) -> None:
    projects = [f"bench/p{n}" for n in range(spec.projects)]
    config = bench_config(url, projects, data_dir, concurrency)
    for side in ("reconcile", "probe"):
        (data_dir / side).mkdir(parents=True)
    dbs = [await Database.open(data_dir / side / "lore.db") for side in ("reconcile", "probe")]
    try:
        async with GitLabClient(url, TOKEN, concurrency=concurrency) as client:
            ids = await fill_mirror(dbs[0], client, projects, ghosts)
            await fill_mirror(dbs[1], client, projects, ghosts)
            runner = SyncRunner(dbs[0], EventBus(), SystemClock(), config, client=client)
            await timed_run(runner, client, SyncRequest(profile="fast"))  # one-time probes (GraphQL) out of the way
            quiet_s, quiet_n, _ = await timed_run(runner, client, SyncRequest(profile="fast"))
            both_s, both_n, counts = await timed_run(runner, client, SyncRequest(profile="fast", reconcile=True))
            probe_s, probe_n, probe_missing = await ask_each_item(dbs[1], client, ids)
            await lose_from_mirror(dbs[0], ids, ghosts)
            _, lacking_n, lacking_counts = await timed_run(runner, client, SyncRequest(profile="fast", reconcile=True))
    finally:
        for db in dbs:
            await db.close()
    report(spec, ghosts, concurrency, quiet=(quiet_s, quiet_n), both=(both_s, both_n), counts=counts,
           probe=(probe_s, probe_n, probe_missing))
    report_lacking(spec, ghosts, quiet_n, lacking_n, lacking_counts)


async def lose_from_mirror(db: Database, project_ids: list[int], count: int) -> None:
    """Take the `count` newest-iid items of each project and kind out of the mirror, cursors untouched."""
    async with db.transaction() as conn:
        for pid in project_ids:
            for kind in KINDS:
                for iid in sorted(await mirror.stored_iids(conn, pid, kind))[-count:]:
                    await mirror.delete_item(conn, pid, kind, iid)


def report_lacking(spec: SimSpec, lost: int, quiet_n: int, lacking_n: int, counts: dict) -> None:
    pages = spec.projects * (math.ceil(spec.issues / 100) + math.ceil(spec.merge_requests / 100))
    fetches = spec.projects * lost * (2 + 3)  # issue: item, discussions; MR: item, discussions, diffs
    expected = spec.projects * len(KINDS) * lost
    reconcile_n = lacking_n - quiet_n
    print(f"  mirror lacking {lost} per project and kind: recovered {counts.get('recovered', 0)} "
          f"(expected {expected}); {reconcile_n} requests against {pages} pages + {fetches} fetches = "
          f"{pages + fetches} -> {reconcile_n / (pages + fetches):.3f}x")
    if counts.get("recovered", 0) != expected:
        raise SystemExit("the reconcile did not fetch exactly the items the mirror lacked")


def report(spec: SimSpec, ghosts: int, concurrency: int, *, quiet: tuple[float, int], both: tuple[float, int],
           counts: dict, probe: tuple[float, int, int]) -> None:
    pages = spec.projects * (math.ceil(spec.issues / 100) + math.ceil(spec.merge_requests / 100))
    reconcile_n = both[1] - quiet[1]
    reconcile_s = both[0] - quiet[0]
    deleted, expected = counts.get("deleted", 0), spec.projects * len(KINDS) * ghosts
    print(f"reconcile of {spec.projects} projects x ({spec.issues} issues + {spec.merge_requests} MRs), "
          f"{ghosts} deleted in GitLab per project and kind, {spec.latency * 1000:.0f} ms latency, "
          f"concurrency {concurrency}")
    print(f"  deleted from the mirror: {deleted} (expected {expected})")
    print(f"  quiet incremental pass : {quiet[1]:6d} requests {quiet[0]:7.2f} s")
    print(f"  pass + reconcile       : {both[1]:6d} requests {both[0]:7.2f} s")
    print(f"  reconcile alone        : {reconcile_n:6d} requests {reconcile_s:7.2f} s; ceil(items/100) per project "
          f"and kind = {pages} -> {reconcile_n / pages:.3f}x (target <= 1.05x)")
    print(f"  asking for every item  : {probe[1]:6d} requests {probe[0]:7.2f} s ({probe[2]} answered 404)")
    print(f"  reconcile vs asking for every item: {probe[1] / max(reconcile_n, 1):.1f}x fewer requests, "
          f"{probe[0] / max(reconcile_s, 1e-9):.1f}x faster")
    if deleted != expected or probe[2] != expected:
        raise SystemExit("the reconcile did not delete exactly the items GitLab no longer has")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.005, help="seconds the simulator adds per request")
    args = parser.parse_args()
    spec = SimSpec(projects=2, issues=5000, merge_requests=5000, notes_per_item=0, latency=args.latency)
    ghosts = 50
    if args.quick:
        spec = SimSpec(projects=2, issues=150, merge_requests=60, notes_per_item=0, latency=0.001)
        ghosts = 3
    with simulator_process(spec) as url, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(bench(url, spec, ghosts, args.concurrency, Path(tmp)))


if __name__ == "__main__":
    main()
