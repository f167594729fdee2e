"""/healthz and /readyz."""

import sqlite3

from gateway.app import create_app
from gateway.keys import DB
from tests.conftest import make_config


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

    monkeypatch.setattr(app[DB], "check_writable", locked)
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "not_ready"
