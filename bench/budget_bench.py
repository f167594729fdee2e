"""A simulated day of timer passes under GitLab's proposed Free-tier budget (100 requests a minute).

Every webhook is lost, so only the timer keeps the mirror fresh: a pass `--interval` after the last one
ended, as `sync.interval` schedules them. GitLab keeps changing during the day (working hours, plus one
bulk edit), and the same day is replayed twice in one run: without a budget (the baseline) and with
`gitlab.requests_per_minute`. Time is a fake clock shared by the simulator and the gateway, so a day takes
a minute or two; request latency is not modelled (the same in both runs). The initial sync of the mirror
comes first and is reported apart.

    .venv/bin/python bench/budget_bench.py [--quick] [--budget 100] [--interval 5m]

Prints requests used against the budget (peak a minute, peak an hour against GitLab's 5,000) and the
freshness kept: how long after a change in GitLab the mirror had it (p50/p99/max), budget vs baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import FakeClock
from sync.config import Config, load_config
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.gitlab.budget import RequestBudget
from sync.gitlab.client import GitLabClient
from sync.ingest.pipeline import SyncRequest
from sync.store.db import Database

TOKEN = "bench-token"
DAY_START = 1_800_000_000.0 - 1_800_000_000.0 % 86_400  # a midnight (UTC)


@dataclass(frozen=True)
class Scenario:
    projects: int = 2
    issues: int = 1500
    merge_requests: int = 500
    notes_per_item: int = 4
    hours: float = 24.0
    changes: int = 1200  # item changes in working hours (09-18 UTC): issue/MR edits and comments
    bulk_edit: int = 300  # issues relabelled at once at 11:00
    interval: float = 300.0


@dataclass
class Outcome:
    initial_sync: float = 0.0  # seconds of (fake) time the first full sync took
    passes: int = 0
    lags: list[float] = field(default_factory=list)  # of the day's ordinary changes
    bulk_lag: float = 0.0  # until the whole bulk edit was in the mirror
    per_minute: dict[int, int] = field(default_factory=dict)
    waits: int = 0

    @property
    def requests(self) -> int:
        return sum(self.per_minute.values())

    def peak_hour(self) -> int:
        minutes = sorted(self.per_minute)
        if not minutes:
            return 0
        return max(sum(self.per_minute.get(m, 0) for m in range(start, start + 60)) for start in minutes)


class CountingBudget(RequestBudget):
    """The gateway's budget, also remembering every minute's requests (the table keeps only two hours)."""

    def __init__(self, db: Database, clock: FakeClock, per_minute: int) -> None:
        super().__init__(db, clock, per_minute)
        self.counted: Counter[int] = Counter()

    async def acquire(self) -> int:
        minute = await super().acquire()
        self.counted[minute] += 1
        return minute


def schedule(scenario: Scenario, sim: GitLabSimulator, rng: random.Random) -> list[tuple[float, str, int, int]]:
    """(time, what, project id, iid) for every change of the day, in time order."""
    projects = list(sim.projects.values())
    work_start, work_end = DAY_START + 9 * 3600, DAY_START + min(18.0, scenario.hours) * 3600
    if scenario.hours < 18:
        work_start = DAY_START
        work_end = DAY_START + scenario.hours * 3600
    changes = []
    for _ in range(scenario.changes):
        project = rng.choice(projects)
        roll = rng.random()
        what = "note_issue" if roll < 0.25 else "note_mr" if roll < 0.4 else "issue" if roll < 0.7 else "mr"
        items = project.merge_requests if what in ("note_mr", "mr") else project.issues
        changes.append((rng.uniform(work_start, work_end), what, project.id, rng.choice(list(items))))
    bulk_at = work_start + (work_end - work_start) * 0.25 + 137  # off the passes' 5-minute grid
    project = projects[0]
    for iid in rng.sample(list(project.issues), min(scenario.bulk_edit, len(project.issues))):
        changes.append((bulk_at, "bulk", project.id, iid))
    return sorted(changes)


def apply(sim: GitLabSimulator, what: str, project_id: int, iid: int, n: int) -> None:
    if what == "note_issue":
        sim.add_note(project_id, "issue", iid, f"comment {n}")
    elif what == "note_mr":
        sim.add_note(project_id, "merge_request", iid, f"review comment {n}")
    elif what == "issue":
        sim.update_issue(project_id, iid, title=f"Issue edited ({n})")
    elif what == "mr":
        sim.update_merge_request(project_id, iid, title=f"MR edited ({n})")
    else:
        sim.update_issue(project_id, iid, labels=["triaged", f"batch-{n % 3}"])


async def drive(clock: FakeClock, budget: CountingBudget, sim: GitLabSimulator, task: asyncio.Task) -> None:
    """Move the fake clock to the next minute once the run waits for the budget: at once when the minute's
    budget is spent, else when nothing has reached GitLab for a while (the run has no more to ask now)."""
    seen, quiet = -1, 0
    while not task.done():
        await asyncio.sleep(0.002)
        count = sim.request_count
        quiet = quiet + 1 if count == seen else 0
        seen = count
        spent = budget.counted[int(clock.now() // 60)] >= budget.per_minute
        if budget.waiting and (spent or quiet >= 25):
            await clock.advance(60 - clock.now() % 60)
            quiet = 0


async def replay(scenario: Scenario, per_minute: int, data_dir: Path) -> Outcome:
    clock = FakeClock(start=DAY_START - 12 * 3600)  # the initial sync: done well before the day begins
    sim = GitLabSimulator(token=TOKEN, clock=clock, seed=5, gitlab_version="18.5-ee")
    for n in range(scenario.projects):
        sim.add_project(f"team/p{n}", issues=scenario.issues, merge_requests=scenario.merge_requests,
                        notes_per_item=scenario.notes_per_item)
    sim.enable_work_items()
    changes = schedule(scenario, sim, random.Random(9))
    runner = web.AppRunner(sim.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    db = await Database.open(data_dir / "lore.db")
    budget = CountingBudget(db, clock, per_minute)
    outcome = Outcome()
    try:
        async with GitLabClient(url, TOKEN, clock=clock, budget=budget) as client:
            sync = SyncRunner(db, EventBus(), clock, config(data_dir, url, scenario, per_minute), client=client)

            async def one_pass() -> float:
                task = asyncio.ensure_future(sync.run(SyncRequest(trigger="timer", profile="fast")))
                await drive(clock, budget, sim, task)
                run = task.result()
                assert run.status == "succeeded", run.error_message
                outcome.passes += 1
                return clock.now()

            started = clock.now()
            await one_pass()
            outcome.initial_sync = clock.now() - started
            await clock.advance(max(0.0, DAY_START - clock.now()))
            lags = await day_of_passes(scenario, sim, clock, changes, one_pass)
            outcome.lags = [lag for lag, what in lags if what != "bulk"]
            outcome.bulk_lag = max((lag for lag, what in lags if what == "bulk"), default=0.0)
        outcome.per_minute = {m: n for m, n in budget.counted.items() if m >= DAY_START // 60}
        outcome.waits = budget.waits
    finally:
        await db.close()
        await runner.cleanup()
    return outcome


async def day_of_passes(scenario: Scenario, sim: GitLabSimulator, clock: FakeClock,
                        changes: list[tuple[float, str, int, int]], one_pass) -> list[tuple[float, str]]:
    """Run the timer's passes through the day; each change's lag is the end of the first pass after it."""
    end_of_day = DAY_START + scenario.hours * 3600
    lags: list[tuple[float, str]] = []
    pending: list[tuple[float, str]] = []
    next_change = 0
    next_pass = clock.now() + scenario.interval
    while next_pass <= end_of_day:
        while next_change < len(changes) and changes[next_change][0] <= next_pass:
            at, what, project_id, iid = changes[next_change]
            await clock.advance(max(0.0, at - clock.now()))
            apply(sim, what, project_id, iid, next_change)
            pending.append((at, what))
            next_change += 1
        await clock.advance(max(0.0, next_pass - clock.now()))
        ended = await one_pass()
        lags += [(ended - at, what) for at, what in pending]
        pending = []
        next_pass = ended + scenario.interval  # sync.interval after the last success
    return lags


def config(data_dir: Path, url: str, scenario: Scenario, per_minute: int) -> Config:
    return load_config(None, {
        "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir),
        "LORE_GATEWAY_GITLAB_URL": url,
        "LORE_GATEWAY_GITLAB_TOKEN": TOKEN,
        "LORE_GATEWAY_GITLAB_PROJECTS": ",".join(f"team/p{n}" for n in range(scenario.projects)),
        "LORE_GATEWAY_GITLAB_REQUESTS_PER_MINUTE": str(per_minute),
    })


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(scenario: Scenario, budget: int, base: Outcome, capped: Outcome) -> None:
    items = scenario.projects * (scenario.issues + scenario.merge_requests)
    print(f"a day of timer passes every {scenario.interval / 60:g} min after the last one, every webhook lost: "
          f"{scenario.projects} projects, {items} items, {len(base.lags)} changes in working hours "
          f"and a bulk edit of {scenario.bulk_edit} issues; budget {budget} requests/minute")
    print(f"{'':34}{'no budget':>12}{'budget':>12}{'ratio':>9}")
    rows = [
        ("initial sync (min; no latency)", base.initial_sync / 60, capped.initial_sync / 60),
        ("requests over the day", base.requests, capped.requests),
        ("timer passes over the day", base.passes - 1, capped.passes - 1),
        ("peak requests in a minute", max(base.per_minute.values(), default=0),
         max(capped.per_minute.values(), default=0)),
        ("peak requests in an hour", base.peak_hour(), capped.peak_hour()),
        ("change -> mirror lag p50 (s)", statistics.median(base.lags), statistics.median(capped.lags)),
        ("change -> mirror lag p99 (s)", percentile(base.lags, 0.99), percentile(capped.lags, 0.99)),
        ("change -> mirror lag max (s)", max(base.lags), max(capped.lags)),
        (f"bulk edit ({scenario.bulk_edit}) mirrored after (s)", base.bulk_lag, capped.bulk_lag),
    ]
    for name, a, b in rows:
        print(f"  {name:32}{a:12.1f}{b:12.1f}{ratio(b, a):>9}")
    over = sum(1 for n in capped.per_minute.values() if n > budget)
    print(f"  minutes over the budget: {over}; requests that waited for the next minute: {capped.waits}")
    print(f"  budgeted lag p99 / baseline lag p99: {ratio(percentile(capped.lags, 0.99), percentile(base.lags, 0.99))}")


async def main_async(scenario: Scenario, budget: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = await replay(scenario, 0, Path(tmp) / "baseline")
        capped = await replay(scenario, budget, Path(tmp) / "budget")
    report(scenario, budget, base, capped)
    assert all(n <= budget for n in capped.per_minute.values()), "the budget was exceeded"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    parser.add_argument("--budget", type=int, default=100, help="requests a minute (default 100)")
    parser.add_argument("--interval", type=float, default=300.0, help="seconds between passes (default 300)")
    args = parser.parse_args()
    scenario = Scenario(interval=args.interval)
    if args.quick:
        scenario = Scenario(projects=1, issues=60, merge_requests=20, notes_per_item=2, hours=3.0, changes=60,
                            bulk_edit=40, interval=600.0)
    for path in ("sync", "lore_gateway"):
        __import__("logging").getLogger(path).setLevel("ERROR")
    asyncio.run(main_async(scenario, args.budget if not args.quick else 20))


if __name__ == "__main__":
    main()
