"""The engine's CLI end to end, in real subprocesses: exit codes, JSON output, the lock, kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import orjson
import pytest

from gateway.simulator.gitlab import GitLabSimulator
from sync.store.db import Database
from tests.conftest import SIM_TOKEN


def cli_env(
    data_dir: Path, gitlab_url: str | None, projects: str = "acme/widgets,acme/gadgets", **extra: str
) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORE_GATEWAY_")}
    env["LORE_GATEWAY_GATEWAY_DATA_DIR"] = str(data_dir)
    if gitlab_url:
        env |= {
            "LORE_GATEWAY_GITLAB_URL": gitlab_url,
            "LORE_GATEWAY_GITLAB_TOKEN": SIM_TOKEN,
            "LORE_GATEWAY_GITLAB_PROJECTS": projects,
        }
    env |= {f"LORE_GATEWAY_{k.upper()}": v for k, v in extra.items()}
    return env


async def cli(env: dict, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_sync_json_prints_the_run_and_exits_0(tmp_path, gitlab_url):
    code, out, err = await cli(cli_env(tmp_path, gitlab_url), "sync", "--json")
    assert code == 0, err
    run = orjson.loads(out)
    assert run["status"] == "succeeded" and run["trigger"] == "manual" and run["counts"]["issues"] == 50


async def test_status_json_after_a_sync_shows_it(tmp_path, gitlab_url):
    env = cli_env(tmp_path, gitlab_url)
    await cli(env, "sync")
    code, out, _ = await cli(env, "--json", "status")
    status = orjson.loads(out)
    assert code == 0
    assert status["scheduler_state"] == "idle" and status["last_sync"]["status"] == "succeeded"
    assert status["last_success_at"].endswith("Z") and status["pending_events"] == 0


async def test_the_full_profile_says_in_json_that_embeddings_were_skipped(tmp_path, gitlab_url):
    code, out, err = await cli(cli_env(tmp_path, gitlab_url), "sync", "--profile", "full", "--json")
    assert code == 0
    assert any("embeddings: skipped" in w for w in orjson.loads(out)["warnings"])
    assert "warning: embeddings" in err


async def test_sync_while_another_holds_the_lock_exits_1_with_sync_in_progress(tmp_path, gitlab_url):
    env = cli_env(tmp_path, gitlab_url)
    db = await Database.open(tmp_path / "lore.db")
    async with db.transaction() as conn:
        await conn.execute(
            "INSERT INTO locks (name, owner, acquired_at, heartbeat_at)"
            " VALUES ('sync', 'other-host:1:abc', strftime('%s','now'), strftime('%s','now'))"
        )
    await db.close()
    code, out, err = await cli(env, "sync", "--json")
    assert code == 1
    assert orjson.loads(out)["error"]["code"] == "sync_in_progress"
    assert "another sync is running" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"sync_interval": "30x"}, "sync.interval"),
        ({"gitlab_timeout": "soon"}, "gitlab.timeout"),
        ({"gitlab_token_file": "/nonexistent/token"}, "gitlab.token_file"),
        ({"gitlab_tokne": "x"}, "GITLAB_TOKNE"),
    ],
)
async def test_bad_configuration_exits_2_with_a_clear_message(tmp_path, extra, message):
    env = cli_env(tmp_path, "http://127.0.0.1:9", **extra)
    if "gitlab_token_file" in extra:
        del env["LORE_GATEWAY_GITLAB_TOKEN"]
    code, out, err = await cli(env, "--json", "status")
    assert code == 2
    assert message.lower() in err.lower()
    assert orjson.loads(out)["error"]["code"] == "config_error"
    assert "Traceback" not in err


async def test_a_gitlab_url_without_scheme_exits_2(tmp_path):
    code, _, err = await cli(cli_env(tmp_path, "gitlab.example.com"), "status")
    assert code == 2 and "gitlab.url" in err


async def test_an_unwritable_data_dir_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = await cli(cli_env(blocker / "data", None), "status")
    assert code == 2 and "gateway.data_dir" in err


async def test_sync_without_gitlab_configured_exits_2(tmp_path):
    code, _, err = await cli(cli_env(tmp_path, None), "sync")
    assert code == 2 and "sync is disabled" in err


async def test_a_usage_error_exits_2(tmp_path):
    code, _, err = await cli(cli_env(tmp_path, None), "sync", "--profile", "turbo")
    assert code == 2 and "invalid choice" in err


async def test_kill_9_mid_sync_then_a_new_sync_loses_and_duplicates_nothing(tmp_path, aiohttp_server):
    sim = GitLabSimulator(token=SIM_TOKEN, seed=9, latency=0.02)
    sim.add_project("slow/one", issues=400, notes_per_item=2)
    server = await aiohttp_server(sim.app())
    env = cli_env(
        tmp_path,
        str(server.make_url("")).rstrip("/"),
        "slow/one",
        gitlab_concurrency="2",
        sync_stale_lock="10m",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "sync",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    db = await Database.open(tmp_path / "lore.db")
    try:
        for _ in range(600):  # until the first pages are committed (at most ~30 s)
            if (await db.fetchval("SELECT count(*) FROM issues") or 0) >= 100:
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        partial = await db.fetchval("SELECT count(*) FROM issues")
        assert 100 <= partial < 400
        # The dead holder's lock is fresh: a new sync refuses until it goes stale.
        code, out, _ = await cli(env, "sync", "--json")
        assert code == 1 and orjson.loads(out)["error"]["code"] == "sync_in_progress"
        async with db.transaction() as conn:  # ten minutes pass without a heartbeat
            await conn.execute("UPDATE locks SET heartbeat_at = heartbeat_at - 601")
        code, out, err = await cli(env, "sync", "--json")
        assert code == 0, err
        assert await db.fetchval("SELECT count(*) FROM issues") == 400
        assert await db.fetchval("SELECT count(*) FROM notes") == 800
        statuses = [
            tuple(r) for r in await db.fetchall("SELECT status, error_code FROM sync_runs ORDER BY id")
        ]
        assert statuses == [("interrupted", "interrupted"), ("succeeded", None)]
    finally:
        await db.close()


async def test_status_text_shows_the_last_runs_warnings(tmp_path, gitlab_url):
    env = cli_env(tmp_path, gitlab_url)
    await cli(env, "sync")
    code, out, _ = await cli(env, "status")
    assert code == 0
    assert "last sync: #1 succeeded (manual, balanced)" in out
    assert "warning: work_item_status: unavailable" in out
