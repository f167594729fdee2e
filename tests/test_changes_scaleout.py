"""The change feed across two `serve` processes sharing Redis and the database: one sequence for both."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from gateway.simulator.gitlab import GitLabSimulator
from tests.redis_server import redis_server, redis_url  # noqa: F401 (fixtures)
from tests.test_scaleout import SECRET, WIDGETS, gateways, open_stream, scaleout_env  # noqa: F401 (fixture)


async def test_two_processes_serve_the_same_feed_and_the_stream_carries_its_seq(
    tmp_path: Path, gitlab_url: str, simulator: GitLabSimulator, redis_url: str, gateways  # noqa: F811
) -> None:
    env, token = await scaleout_env(tmp_path, gitlab_url, redis_url)
    a, b = await gateways(env), await gateways(env)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:

        async def feed(gateway, since: str) -> dict:
            async with session.get(f"{gateway.url}/api/v1/changes", params={"since": since, "limit": "1000"}) as r:
                assert r.status == 200, await r.text()
                return await r.json()

        start = (await feed(a, "0"))["next_cursor"]
        assert (await feed(b, "0"))["next_cursor"] == start  # the initial sync's changes, seen alike
        on_b = await open_stream(session, b, token)
        hook = simulator.update_issue(WIDGETS, 3, title="Renamed through A")
        assert await simulator.deliver(hook, f"{a.url}/webhooks/gitlab", secret=SECRET, session=session) == 202
        seen = await on_b.until("data.changed", lambda r: 3 in r.data["iids"])
        on_b.response.close()
        from_a, from_b = await feed(a, start), await feed(b, start)
    changed = seen[-1].data
    assert from_a == from_b
    assert [(c["kind"], c["iid"], c["action"]) for c in from_a["items"]] == [("issue", 3, "updated")]
    assert changed["seq"] == from_a["items"][-1]["seq"] == int(from_a["next_cursor"])
