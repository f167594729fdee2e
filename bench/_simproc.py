"""Run a GitLabSimulator in its own process, so a benchmark's client and server do not share a core."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

TOKEN = "bench-token"


@dataclass(frozen=True)
class SimSpec:
    projects: int = 2
    issues: int = 400
    merge_requests: int = 150
    notes_per_item: int = 3
    latency: float = 0.015
    gitlab_version: str = "18.5-ee"  # a profile of gateway.simulator.profiles


def _serve(spec: SimSpec, ready: mp.Queue, stop: mp.Event) -> None:  # type: ignore[type-arg]
    from gateway.simulator.gitlab import GitLabSimulator

    async def main() -> None:
        sim = GitLabSimulator(token=TOKEN, latency=spec.latency, seed=11, gitlab_version=spec.gitlab_version)
        for n in range(spec.projects):
            sim.add_project(
                f"bench/p{n}",
                issues=spec.issues,
                merge_requests=spec.merge_requests,
                notes_per_item=spec.notes_per_item,
            )
        runner = web.AppRunner(sim.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        ready.put(port)
        await asyncio.to_thread(stop.wait)
        await runner.cleanup()

    asyncio.run(main())


@contextmanager
def simulator_process(spec: SimSpec) -> Iterator[str]:
    """Yields the simulator's base URL; its projects are bench/p0, bench/p1, ..."""
    ctx = mp.get_context("spawn")
    ready: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    stop = ctx.Event()
    proc = ctx.Process(target=_serve, args=(spec, ready, stop), daemon=True)
    proc.start()
    try:
        port = ready.get(timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
