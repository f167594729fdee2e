"""Initial sync against the simulator: concurrency N side by side with one request at a time.

    python bench/sync_bench.py            # 2 projects x (400 issues + 150 MRs, 3 notes each), 15 ms latency
    python bench/sync_bench.py --quick    # tiny sizes, for the test suite

Both runs use the same pipeline and the same simulator process; only `gitlab.concurrency` differs.
The figure that matters is the ratio (wall time sequential / wall time concurrent) and the request count.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._simproc import TOKEN, SimSpec, simulator_process
from gateway.simulator.profiles import DEFAULT_PROFILE, PROFILES
from sync.clock import SystemClock
from sync.config import load_config
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.gitlab.client import GitLabClient
from sync.ingest.pipeline import SyncRequest
from sync.store.db import Database


async def timed_sync(
    url: str, projects: list[str], concurrency: int, data_dir: Path
) -> tuple[float, dict, int]:
    config = load_config(
        None,
        {
            "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir),
            "LORE_GATEWAY_GITLAB_URL": url,
            "LORE_GATEWAY_GITLAB_TOKEN": TOKEN,
            "LORE_GATEWAY_GITLAB_PROJECTS": ",".join(projects),
            "LORE_GATEWAY_GITLAB_CONCURRENCY": str(concurrency),
        },
    )
    db = await Database.open(config.db_path)
    try:
        async with GitLabClient(url, TOKEN, concurrency=concurrency) as client:
            runner = SyncRunner(db, EventBus(), SystemClock(), config, client=client)
            start = time.perf_counter()
            run = await runner.run(SyncRequest(profile="fast"))
            elapsed = time.perf_counter() - start
            if run.status != "succeeded":
                raise SystemExit(f"sync failed: {run.error_code}: {run.error_message}")
            return elapsed, run.counts, client.requests_made
    finally:
        await db.close()


def minimum_requests(spec: SimSpec) -> int:
    pages = -(-spec.issues // 100) + -(-spec.merge_requests // 100)
    return spec.projects * (pages + spec.issues + 2 * spec.merge_requests)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.015, help="seconds the simulator adds per request")
    parser.add_argument("--gitlab-version", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                        help="which GitLab the simulator behaves like (docs/gitlab.md)")
    args = parser.parse_args()
    spec = SimSpec(latency=args.latency, gitlab_version=args.gitlab_version)
    if args.quick:
        spec = SimSpec(projects=2, issues=30, merge_requests=10, notes_per_item=2, latency=0.002,
                       gitlab_version=args.gitlab_version)
    projects = [f"bench/p{n}" for n in range(spec.projects)]
    with simulator_process(spec) as url, tempfile.TemporaryDirectory() as tmp:
        seq, counts, seq_requests = asyncio.run(timed_sync(url, projects, 1, Path(tmp) / "seq"))
        conc, counts2, requests = asyncio.run(timed_sync(url, projects, args.concurrency, Path(tmp) / "conc"))
    assert counts == counts2, (counts, counts2)
    print(
        f"sync of {spec.projects} projects x ({spec.issues} issues + {spec.merge_requests} MRs, "
        f"{spec.notes_per_item} notes each), {spec.latency * 1000:.0f} ms latency per request"
    )
    minimum = minimum_requests(spec)
    print(
        f"  REST requests made: {requests} (sequential run: {seq_requests}); minimum the API allows "
        f"(list pages + discussions + diffs): {minimum} -> {requests / minimum:.3f}x the minimum "
        f"(+{spec.projects} project look-ups)"
    )
    print(f"  items: {counts}")
    print(f"  sequential (1 request at a time): {seq:7.2f} s")
    print(f"  concurrency {args.concurrency:<2}                    : {conc:7.2f} s")
    print(f"  speed-up: {seq / conc:.2f}x")


if __name__ == "__main__":
    main()
