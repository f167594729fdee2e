"""HTTP authentication: 401 with a Bearer challenge, 403 for a missing scope, SSE tickets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from itsdangerous import URLSafeSerializer

from gateway import auth
from gateway.app import create_app
from gateway.auth import PRINCIPAL, TOKENS, requires
from gateway.http import json_response
from gateway.tokens import TICKET_SALT
from sync.clock import FakeClock
from sync.config import AuthConfig, Config, GatewayConfig

KEY = "test-key-" + "t" * 32


async def whoami(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    return json_response({"token_id": principal.token_id, "name": principal.name})


@dataclass
class Gateway:
    client: TestClient
    clock: FakeClock

    async def token(self, *scopes: str, ttl: float | None = None) -> str:
        store = self.client.app[TOKENS]
        return (await store.create("test", list(scopes), ttl)).token

    async def ticket(self, token: str) -> str:
        response = await self.client.post("/api/v1/events/ticket", headers=bearer(token))
        assert response.status == 201
        return (await response.json())["ticket"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def gw(aiohttp_client, tmp_path: Path) -> Gateway:
    clock = FakeClock()
    config = Config(gateway=GatewayConfig(data_dir=tmp_path), auth=AuthConfig(signing_keys=(KEY,)))
    app = create_app(config, clock=clock)
    auth.setup(app)
    app.router.add_post("/api/v1/dummy", requires("sync")(whoami))
    app.router.add_get("/api/v1/stream", requires("read", allow_ticket=True)(whoami))
    return Gateway(await aiohttp_client(app), clock)


# --- 401 ---------------------------------------------------------------------------------------


async def test_no_token_is_401_with_a_bearer_challenge_and_no_error_attribute(gw: Gateway) -> None:
    response = await gw.client.post("/api/v1/dummy")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="lore-gateway"'
    assert (await response.json())["error"]["code"] == "unauthorized"


async def test_another_auth_scheme_counts_as_no_token(gw: Gateway) -> None:
    response = await gw.client.post("/api/v1/dummy", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status == 401
    assert "error=" not in response.headers["WWW-Authenticate"]


async def test_a_bad_token_is_401_invalid_token_and_the_message_does_not_echo_it(gw: Gateway) -> None:
    token = await gw.token("sync")
    tampered = token[:-3] + "xyz"
    response = await gw.client.post("/api/v1/dummy", headers=bearer(tampered))
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="lore-gateway", error="invalid_token"'
    assert tampered[4:] not in await response.text()


async def test_an_expired_token_is_401(gw: Gateway) -> None:
    token = await gw.token("sync", ttl=60)
    await gw.clock.advance(61)
    assert (await gw.client.post("/api/v1/dummy", headers=bearer(token))).status == 401


async def test_a_revoked_token_is_401_on_the_next_request(gw: Gateway) -> None:
    token = await gw.token("sync")
    assert (await gw.client.post("/api/v1/dummy", headers=bearer(token))).status == 200
    store = gw.client.app[TOKENS]
    await store.revoke((await store.list())[0].id)
    assert (await gw.client.post("/api/v1/dummy", headers=bearer(token))).status == 401


# --- 403 and 200 -------------------------------------------------------------------------------


async def test_a_token_without_the_scope_is_403_forbidden_naming_the_scope(gw: Gateway) -> None:
    response = await gw.client.post("/api/v1/dummy", headers=bearer(await gw.token("read")))
    assert response.status == 403
    error = (await response.json())["error"]
    assert error == {"code": "forbidden", "message": "this token lacks the 'sync' scope"}


@pytest.mark.parametrize("scope", ["sync", "admin"])
async def test_a_token_with_the_scope_or_admin_reaches_the_handler_as_its_principal(gw: Gateway,
                                                                                     scope: str) -> None:
    response = await gw.client.post("/api/v1/dummy", headers=bearer(await gw.token(scope)))
    assert response.status == 200
    assert (await response.json())["name"] == "test"


async def test_an_authenticated_request_records_the_tokens_last_use(gw: Gateway) -> None:
    await gw.client.post("/api/v1/dummy", headers=bearer(await gw.token("sync")))
    [info] = await gw.client.app[TOKENS].list()
    assert info.last_used_at == gw.clock.now()


def test_requires_refuses_an_unknown_scope_when_the_route_is_declared() -> None:
    with pytest.raises(ValueError, match="unknown scope"):
        requires("write")


# --- tickets -----------------------------------------------------------------------------------


async def test_the_ticket_endpoint_answers_201_with_a_ticket_and_an_rfc3339_expiry(gw: Gateway) -> None:
    response = await gw.client.post("/api/v1/events/ticket", headers=bearer(await gw.token("read")))
    assert response.status == 201
    body = await response.json()
    assert set(body) == {"ticket", "expires_at"}
    assert body["expires_at"].endswith("Z")
    assert response.headers["Cache-Control"] == "no-store"


async def test_the_ticket_endpoint_needs_the_read_scope(gw: Gateway) -> None:
    response = await gw.client.post("/api/v1/events/ticket", headers=bearer(await gw.token("sync")))
    assert response.status == 403


async def test_a_ticket_opens_an_allow_ticket_route_until_sixty_seconds_pass(gw: Gateway) -> None:
    ticket = await gw.ticket(await gw.token("read"))
    assert (await gw.client.get("/api/v1/stream", params={"ticket": ticket})).status == 200
    await gw.clock.advance(61)
    response = await gw.client.get("/api/v1/stream", params={"ticket": ticket})
    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_a_ticket_is_not_accepted_where_the_route_does_not_allow_tickets(gw: Gateway) -> None:
    ticket = await gw.ticket(await gw.token("read", "sync"))
    assert (await gw.client.post("/api/v1/dummy", params={"ticket": ticket})).status == 401
    assert (await gw.client.post("/api/v1/dummy", headers=bearer(ticket))).status == 401


async def test_a_token_in_the_ticket_parameter_is_refused(gw: Gateway) -> None:
    token = await gw.token("read")
    assert (await gw.client.get("/api/v1/stream", params={"ticket": token})).status == 401


async def test_a_ticket_of_a_revoked_token_is_refused(gw: Gateway) -> None:
    ticket = await gw.ticket(await gw.token("read"))
    store = gw.client.app[TOKENS]
    await store.revoke((await store.list())[0].id)
    assert (await gw.client.get("/api/v1/stream", params={"ticket": ticket})).status == 401


async def test_a_ticket_forged_with_the_signing_key_for_another_tokens_id_is_401(gw: Gateway) -> None:
    victim = await gw.token("read", "admin")  # someone else's token: the attacker knows only its id
    victim_id = (await gw.client.app[TOKENS].list())[0].id
    mine = await gw.ticket(await gw.token("read"))
    signer = URLSafeSerializer([KEY], salt=TICKET_SALT)  # the attacker holds a valid signing key
    payload = signer.loads(mine[len("lgt_"):])
    forged = "lgt_" + signer.dumps({**payload, "id": victim_id, "s": ["read", "admin"]})
    assert (await gw.client.get("/api/v1/stream", params={"ticket": forged})).status == 401
    assert (await gw.client.get("/api/v1/stream", params={"ticket": mine})).status == 200
    assert victim not in forged
