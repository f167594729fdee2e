"""The gateway process under pressure, measured from outside: its memory under a flood of distinct queries,
and its descriptors under more connections than `ulimit -n` allows."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from sync.store.db import migrate
from tests.gateway_process import Child, gateway_process

PROJECT = 1001
LABELS = 20
LABEL_LENGTH = 250  # 20 of them make a query of about 5 KB, the 5.7 KB key
MiB = 1024 * 1024


def seed_project(data_dir: Path) -> None:
    """A mirror with one (empty) project, so list queries answer 200 and are cached."""
    data_dir.mkdir(parents=True, exist_ok=True)
    migrate(data_dir / "lore.db")
    with sqlite3.connect(data_dir / "lore.db") as conn:
        conn.execute("INSERT INTO projects VALUES (?, 'acme/widgets', 'widgets', '', x'', 0)", (PROJECT,))


def long_labels(n: int) -> str:
    return ",".join(f"{n:06d}-{k:02d}-" + "x" * (LABEL_LENGTH - 10) for k in range(LABELS))


async def flood(child: Child, project: int, queries: range, in_flight: int = 16) -> list[int]:
    """GET the issue list once per query number, each with its own 20 long labels; the statuses."""
    headers = {"Authorization": f"Bearer {child.token}"}
    url = f"{child.url}/api/v1/projects/{project}/issues"
    numbers = iter(queries)
    statuses: list[int] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        async def worker() -> None:
            for n in numbers:
                async with session.get(url, params={"labels": long_labels(n)}) as response:
                    await response.read()
                    statuses.append(response.status)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return statuses


async def metric(child: Child, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{child.url}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
async def test_memory_stays_within_1_5x_the_cache_bound_under_10000_distinct_long_queries(tmp_path: Path) -> None:
    bound = 8 * MiB
    seed_project(tmp_path / "data")
    async with gateway_process(tmp_path / "data", cache_bytes=bound, ratelimit_api="1000000/minute") as child:
        # The same work on a project that does not exist (404s are never cached): every code path warm.
        assert set(await flood(child, 999, range(500))) == {404}
        before = child.rss()

        statuses = await flood(child, PROJECT, range(10_000))

        grown = child.rss() - before
        assert set(statuses) == {200}
        assert await metric(child, "lore_gateway_cache_evictions_total") > 0  # the bound was reached
        assert await metric(child, "lore_gateway_cache_bytes") <= bound
    assert grown <= 1.5 * bound, f"RSS grew {grown / MiB:.1f} MiB for a {bound / MiB:.0f} MiB cache"


# -- descriptors ----------------------------------------------------------------------------------------

NOFILE = 256  # the child's `ulimit -n`: fewer than the connections below, so accept() runs out
IDLE = 300
STREAMS = 300
PER_TOKEN = 50
GUARD = 60.0  # seconds: a guard against a hang, never a timing assumption


async def healthz(session: aiohttp.ClientSession, child: Child) -> int:
    async with session.get(f"{child.url}/healthz", timeout=aiohttp.ClientTimeout(total=GUARD)) as response:
        return response.status


async def closed_by_the_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), GUARD) == b""


@pytest.mark.slow
async def test_past_the_descriptor_limit_the_caps_refuse_the_excess_and_healthz_keeps_answering(
    tmp_path: Path,
) -> None:
    settings = {"gateway_keepalive_timeout": "1s", "gateway_max_sse_per_token": str(PER_TOKEN),
                "ratelimit_api": "1000000/minute"}
    async with gateway_process(tmp_path / "data", nofile=NOFILE, **settings) as child, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True)) as probe, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                  headers={"Authorization": f"Bearer {child.token}"}) as client:
        host, port = child.url.removeprefix("http://").split(":")
        connecting = [asyncio.ensure_future(asyncio.open_connection(host, int(port))) for _ in range(IDLE)]
        await asyncio.wait(connecting, timeout=1.0)  # the first ones in: the descriptors are gone

        assert await healthz(probe, child) == 200  # answered once an idle connection times out
        idle = [await asyncio.wait_for(c, GUARD) for c in connecting]
        assert all(await asyncio.gather(*(closed_by_the_server(reader) for reader, _ in idle)))

        responses = await asyncio.gather(*(client.get(f"{child.url}/api/v1/events") for _ in range(STREAMS)))
        statuses = sorted(response.status for response in responses)
        assert await healthz(probe, child) == 200  # with every stream the cap allows open
        accept_errors = await metric(child, "lore_gateway_accept_errors_total")
        for response in responses:
            response.close()
        for _, writer in idle:
            writer.close()

    assert statuses == [200] * PER_TOKEN + [429] * (STREAMS - PER_TOKEN)
    assert accept_errors > 0  # the limit really was reached
    about_accept = [line for line in child.log_lines() if "accept" in str(line.get("msg"))]
    assert about_accept and all(line["logger"] == "lore_gateway.server" for line in about_accept)
    assert len(about_accept) <= 4, about_accept
