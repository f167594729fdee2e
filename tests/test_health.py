"""/healthz and /readyz."""

import asyncio
import sqlite3

from gateway.app import create_app
from gateway.health import READINESS, READY_TTL
from gateway.keys import DB
from sync.clock import FakeClock
from tests.conftest import make_config

GUARD = 30.0  # seconds: a guard against a probe that waits for the writer, never a timing assumption


async def test_healthz_and_readyz_answer_with_no_gitlab_configured(tmp_path, aiohttp_client):
    client = await aiohttp_client(create_app(make_config(tmp_path), scheduler=False))
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    body = await ready.json()
    assert ready.status == 200 and body["sync_enabled"] is False
    assert "sync is disabled" in body["message"]


async def test_readyz_is_503_when_the_store_cannot_write(tmp_path, aiohttp_client, monkeypatch):
    app = create_app(make_config(tmp_path), scheduler=False)
    client = await aiohttp_client(app)

    async def locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(app[DB], "check_ready", locked)
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "not_ready"


async def test_300_readyz_calls_neither_grow_the_wal_nor_wait_for_the_writer(tmp_path, aiohttp_client):
    clock = FakeClock()
    app = create_app(make_config(tmp_path), clock=clock, scheduler=False)
    client = await aiohttp_client(app)
    wal = app[DB].path.with_name("lore.db-wal")
    before = wal.stat().st_size

    async with app[DB].transaction():  # the writer is taken for the whole time
        statuses = []
        for _ in range(300):
            await clock.advance(READY_TTL)  # every call checks the store anew
            statuses.append((await asyncio.wait_for(client.get("/readyz"), GUARD)).status)

    assert statuses == [200] * 300 and app[READINESS].checks == 300
    assert wal.stat().st_size == before


async def test_readyz_reuses_its_answer_for_a_second(tmp_path, aiohttp_client):
    clock = FakeClock()
    app = create_app(make_config(tmp_path), clock=clock, scheduler=False)
    client = await aiohttp_client(app)

    await asyncio.gather(*(client.get("/readyz") for _ in range(50)))
    await clock.advance(READY_TTL / 2)
    await client.get("/readyz")
    assert app[READINESS].checks == 1
    await clock.advance(READY_TTL / 2)
    await client.get("/readyz")
    assert app[READINESS].checks == 2
