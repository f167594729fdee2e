"""`lore-gateway demo`: the README's first command, end to end in a real subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import aiohttp
import orjson


async def test_demo_serves_a_synced_mirror_and_takes_webhooks_until_interrupted(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORE_GATEWAY_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "--json", "demo", "--port", "0", "--every", "2.5",
        "--data-dir", str(tmp_path / "demo"), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        banner = orjson.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        headers = {"Authorization": f"Bearer {banner['token']}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                async with session.get(banner["urls"]["sync_status"]) as response:
                    status = await response.json()
                triggers = {run["trigger"] for run in status["recent_runs"] if run["status"] == "succeeded"}
                if "webhook" in triggers:  # the start-up run, then a run from the simulator's webhooks
                    break
                await asyncio.sleep(0.2)
            assert "webhook" in triggers, status
            async with session.get(banner["urls"]["projects"]) as response:
                projects = await response.json()
            assert sorted(p["path_with_namespace"] for p in projects["items"]) == ["demo/platform", "demo/storefront"]
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 20)
    assert proc.returncode == 0
