"""Each MCP tool on a 50,000-item mirror, side by side with the same question asked of GitLab's REST API.

The mirror is written straight from a seeded GitLab simulator (sync.ingest.mirror + the documents index, as a
sync writes them); the gateway serves it in its own process and the official `mcp` client calls each tool.
The baseline asks the same simulator over HTTP with 50 ms of latency a request, the way an agent without
the mirror would (GitLab's own MCP server calls the live API), with 8 requests in flight at most:

  get_issue / get_merge_request  the item, then its discussions (100 threads a page): 2+ requests
  list_issues / list_merge_requests  one filtered page of 20
  changes        issues and MRs updated since the cursor's time, 100 a page (no notes, no deletions: less
                 than the feed answers)
  experts        only the latest 100 merged MRs: the list, then each one's diffs and discussions (the
                 mirror scores every MR)
  search         the simulator has no search API; GitLab's project search takes one request per scope
                 (issues, merge requests, notes): modeled as 3 list requests, which GitLab answers faster
                 than a search, so the ratio is a floor
  sync_status    describes the mirror itself: no GitLab equivalent, shown alone

    python bench/mcp_bench.py [--items N] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._gatewayproc import GatewayProcess, gateway_process

LATENCY = 0.050
CONCURRENCY = 8  # gitlab.concurrency's default
NOTES_PER_ITEM = 2
WORD = "crash"  # a word the simulator's titles use


# -- the mirror -------------------------------------------------------------------------------------


def make_simulator(items: int) -> Any:
    from gateway.simulator.gitlab import GitLabSimulator
    from tests.conftest import SIM_TOKEN

    sim = GitLabSimulator(token=SIM_TOKEN, seed=3, latency=LATENCY)
    sim.add_project("bench/app", issues=items * 4 // 5, merge_requests=items // 5, notes_per_item=NOTES_PER_ITEM)
    return sim


async def write_mirror(sim: Any, data_dir: Path) -> None:
    """The simulator's data into a fresh mirror, through the same writes a sync makes."""
    from sync.config import ensure_data_dir
    from sync.ingest import mirror
    from sync.ingest.documents import refresh_documents
    from sync.store.db import Database
    from tests.conftest import make_config

    config = make_config(data_dir)
    ensure_data_dir(config)
    db = await Database.open(config.db_path)
    try:
        for project in sim.projects.values():
            async with db.transaction() as conn:
                await mirror.upsert_project(conn, project.rest(), time.time())
            for kind, items in (("issue", project.issues), ("merge_request", project.merge_requests)):
                rows = list(items.values())
                for start in range(0, len(rows), 500):
                    batch = rows[start:start + 500]
                    async with db.transaction() as conn:
                        await mirror.upsert_items(conn, kind, project.id, batch)
                        for item in batch:
                            await mirror.replace_discussions(conn, project.id, kind, item["iid"],
                                                             project.discussions.get((kind, item["iid"]), []))
                            if kind == "merge_request":
                                await mirror.replace_mr_files(conn, project.id, item["iid"],
                                                              project.diffs.get(item["iid"], []))
        await refresh_documents(db)
    finally:
        await db.close()


# -- the questions ----------------------------------------------------------------------------------


class GitLab:
    """The baseline client: counts requests, keeps at most CONCURRENCY in flight."""

    def __init__(self, http: Any, base: str) -> None:
        self.http = http
        self.base = base
        self.requests = 0
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def get(self, path: str, **params: Any) -> Any:
        async with self._slots:
            self.requests += 1
            async with self.http.get(self.base + path, params=params) as response:
                assert response.status == 200, (path, response.status)
                return await response.json()

    async def all(self, paths: list[str], **params: Any) -> list[Any]:
        return await asyncio.gather(*(self.get(p, **params) for p in paths))


def questions(project_id: int, mr_iid: int, issue_iid: int, since: str, experts_mrs: int,
              ) -> dict[str, tuple[dict[str, Any], Callable[[GitLab], Awaitable[Any]] | None]]:
    p = f"/api/v4/projects/{project_id}"

    async def item(gitlab: GitLab, kind: str, iid: int) -> None:
        await gitlab.all([f"{p}/{kind}/{iid}", f"{p}/{kind}/{iid}/discussions"], per_page=100)

    async def experts(gitlab: GitLab) -> None:
        mrs = await gitlab.get(f"{p}/merge_requests", state="merged", per_page=experts_mrs, order_by="updated_at")
        paths = [f"{p}/merge_requests/{mr['iid']}/{what}" for mr in mrs for what in ("diffs", "discussions")]
        await gitlab.all(paths, per_page=100)

    async def search(gitlab: GitLab) -> None:
        await gitlab.all([f"{p}/issues", f"{p}/merge_requests", f"{p}/issues"], per_page=20)

    async def changes(gitlab: GitLab) -> None:
        await gitlab.all([f"{p}/issues", f"{p}/merge_requests"], updated_after=since, per_page=100)

    return {
        "get_issue": ({"project": project_id, "iid": issue_iid}, lambda g: item(g, "issues", issue_iid)),
        "get_merge_request": ({"project": project_id, "iid": mr_iid}, lambda g: item(g, "merge_requests", mr_iid)),
        "list_issues": ({"project": project_id, "state": "opened"},
                        lambda g: g.get(f"{p}/issues", state="opened", per_page=20, order_by="updated_at")),
        "list_merge_requests": ({"project": project_id, "state": "merged"},
                                lambda g: g.get(f"{p}/merge_requests", state="merged", per_page=20,
                                                order_by="updated_at")),
        "search": ({"query": WORD, "project": project_id}, search),
        "experts": ({"project": project_id, "path": "src/"}, experts),
        "changes": ({"limit": 100}, changes),
        "sync_status": ({}, None),
    }


# -- measuring --------------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000}


async def time_mcp(gateway: GatewayProcess, asked: dict[str, Any], reps: int) -> dict[str, dict[str, float]]:
    """Each tool `reps` times through the official client; with the gateway's CPU a call, which a busy
    machine does not inflate the way it inflates wall-clock latency."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    figures = {}
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {gateway.token}"}) as http, \
            Client(streamable_http_client(gateway.url + "/mcp", http_client=http)) as client:
        for name, (args, _) in asked.items():
            samples = []
            cpu = gateway.cpu_seconds()
            for _ in range(reps):
                started = time.perf_counter()
                result = await client.call_tool(name, args)
                samples.append(time.perf_counter() - started)
                assert not result.is_error, name
            figures[name] = {**percentiles(samples), "server_cpu_ms": (gateway.cpu_seconds() - cpu) / reps * 1000}
    return figures


async def time_gitlab(base: str, asked: dict[str, Any], reps: int) -> dict[str, dict[str, float]]:
    import aiohttp

    from tests.conftest import SIM_TOKEN

    figures = {}
    async with aiohttp.ClientSession(headers={"PRIVATE-TOKEN": SIM_TOKEN}) as http:
        for name, (_, ask) in asked.items():
            if ask is None:
                continue
            samples, requests = [], 0
            for _ in range(reps):
                gitlab = GitLab(http, base)
                started = time.perf_counter()
                await ask(gitlab)
                samples.append(time.perf_counter() - started)
                requests = gitlab.requests
            figures[name] = {**percentiles(samples), "gitlab_requests": requests}
    return figures


async def bench(items: int, mcp_reps: int, gitlab_reps: int, experts_mrs: int) -> dict[str, Any]:
    from aiohttp.test_utils import TestServer

    sim = make_simulator(items)
    project = next(iter(sim.projects.values()))
    mr_iid = max(project.merge_requests)
    issue_iid = max(project.issues)
    since = sorted(i["updated_at"] for i in project.issues.values())[-50]
    asked = questions(project.id, mr_iid, issue_iid, since, experts_mrs)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        started = time.perf_counter()
        await write_mirror(sim, data_dir)
        build_s = time.perf_counter() - started
        server = TestServer(sim.app())
        await server.start_server()
        try:
            with gateway_process(data_dir) as gateway:
                await time_mcp(gateway, asked, 2)  # warm up
                ours = await time_mcp(gateway, asked, mcp_reps)
            theirs = await time_gitlab(str(server.make_url("")).rstrip("/"), asked, gitlab_reps)
        finally:
            await server.close()
    rows = {}
    for name in asked:
        row: dict[str, Any] = {"mcp": ours[name]}
        if name in theirs:
            row["gitlab"] = theirs[name]
            row["latency_ratio_p50"] = theirs[name]["p50_ms"] / ours[name]["p50_ms"]
            row["gitlab_requests_saved"] = theirs[name]["gitlab_requests"]
        rows[name] = row
    return {"items": len(project.issues) + len(project.merge_requests), "mirror_build_s": build_s,
            "latency_ms": LATENCY * 1000, "mcp_reps": mcp_reps, "gitlab_reps": gitlab_reps, "tools": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        report = asyncio.run(bench(500, 5, 2, 10))
    else:
        report = asyncio.run(bench(args.items, 200, 20, 100))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['items']:,} items in the mirror (built in {report['mirror_build_s']:.0f} s); GitLab simulator "
          f"at {report['latency_ms']:.0f} ms a request, {CONCURRENCY} in flight; {report['mcp_reps']} MCP calls "
          f"and {report['gitlab_reps']} GitLab rounds per question")
    print(f"{'tool':20} {'MCP p50':>9} {'MCP p99':>9} {'CPU/call':>9} {'GitLab p50':>11} {'GitLab p99':>11} "
          f"{'ratio':>7} {'requests saved':>15}")
    for name, row in report["tools"].items():
        mcp, gitlab = row["mcp"], row.get("gitlab")
        their = (f"{gitlab['p50_ms']:9.1f}ms {gitlab['p99_ms']:9.1f}ms {row['latency_ratio_p50']:6.1f}x "
                 f"{row['gitlab_requests_saved']:15d}") if gitlab else f"{'(no GitLab equivalent)':>52}"
        print(f"{name:20} {mcp['p50_ms']:7.1f}ms {mcp['p99_ms']:7.1f}ms {mcp['server_cpu_ms']:7.1f}ms {their}")


if __name__ == "__main__":
    main()
