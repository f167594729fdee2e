"""Rate limits on /api/v1: a budget per token, per address without one, headers on every response."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.keys import DB
from sync.clock import FakeClock

WIDGETS = 1001
LIMIT_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


@pytest.fixture
async def limited(config_for, aiohttp_client):
    """An app with `ratelimit.api` of 5 a minute (an empty mirror is enough here)."""

    async def build(rate: str = "5/minute") -> tuple[Any, str]:
        app = create_app(config_for(ratelimit_api=rate), clock=FakeClock(), scheduler=False)
        client = await aiohttp_client(app)
        return client, (await app[TOKENS].create("reader", ["read"], None)).token

    return build


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def limit_headers(resp: Any) -> tuple[int, int, int]:
    limit, remaining, reset = (resp.headers[h] for h in LIMIT_HEADERS)
    assert limit.isdigit() and remaining.isdigit() and reset.isdigit()
    return int(limit), int(remaining), int(reset)


async def test_every_api_response_carries_the_rate_limit_headers(limited):
    client, token = await limited("100/minute")
    projects = await client.get("/api/v1/projects", headers=bearer(token))
    responses = {
        200: projects,
        304: await client.get("/api/v1/projects", headers={**bearer(token), "If-None-Match": projects.headers["ETag"]}),
        400: await client.get("/api/v1/projects", params={"per_page": "0"}, headers=bearer(token)),
        401: await client.get("/api/v1/projects"),
        404: await client.get("/api/v1/no/such/route", headers=bearer(token)),
        405: await client.delete("/api/v1/projects", headers=bearer(token)),
    }
    for status, resp in responses.items():
        assert resp.status == status
        assert limit_headers(resp)[0] == 100, status
    openapi = await client.get("/api/v1/openapi.json")
    assert limit_headers(openapi)[0] == 100


async def test_paths_outside_the_api_carry_no_rate_limit_headers(limited):
    client, _ = await limited()
    resp = await client.get("/healthz")
    assert resp.status == 200 and "RateLimit-Limit" not in resp.headers


async def test_remaining_counts_down_per_token(limited):
    client, token = await limited()
    seen = [limit_headers(await client.get("/api/v1/projects", headers=bearer(token)))[1] for _ in range(3)]
    assert seen == [4, 3, 2]


async def test_each_token_has_its_own_budget(limited):
    client, token = await limited()
    other = (await client.app[TOKENS].create("other", ["read"], None)).token
    for _ in range(5):
        await client.get("/api/v1/projects", headers=bearer(token))
    assert (await client.get("/api/v1/projects", headers=bearer(token))).status == 429
    resp = await client.get("/api/v1/projects", headers=bearer(other))
    assert resp.status == 200 and limit_headers(resp)[1] == 4


async def test_a_burst_over_the_limit_gets_429_with_a_correct_retry_after(limited):
    client, token = await limited("3/minute")
    statuses = [(await client.get("/api/v1/projects", headers=bearer(token))).status for _ in range(3)]
    assert statuses == [200, 200, 200]
    resp = await client.get("/api/v1/projects", headers=bearer(token))
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "rate_limited"
    _, remaining, reset = limit_headers(resp)
    assert remaining == 0 and 1 <= int(resp.headers["Retry-After"]) <= 60
    assert int(resp.headers["Retry-After"]) == max(1, reset)


async def test_requests_without_a_valid_token_share_their_address_budget(limited):
    client, token = await limited()
    # No token, then made-up tokens: each spends the address's budget, not a fresh one of its own.
    for n in range(5):
        headers = bearer(f"lgw_made-up-{n}") if n else {}
        assert (await client.get("/api/v1/projects", headers=headers)).status == 401
    resp = await client.get("/api/v1/projects", headers=bearer("lgw_yet-another"))
    assert resp.status == 429
    # A real token is not charged for them.
    assert (await client.get("/api/v1/projects", headers=bearer(token))).status == 200


async def test_knowing_whose_budget_to_charge_reads_no_token_row_per_request(limited, monkeypatch):
    client, token = await limited("1000/minute")
    assert (await client.get("/api/v1/projects", headers=bearer(token))).status == 200
    calls: Counter[str] = Counter()
    db = client.app[DB]
    original = db.fetchone

    async def counting(sql: str, params: Any = ()) -> Any:
        calls["api_tokens" in sql] += 1
        return await original(sql, params)

    monkeypatch.setattr(db, "fetchone", counting)
    for _ in range(20):
        assert (await client.get("/api/v1/projects", headers=bearer(token))).status == 200
    assert calls[True] == 0


async def test_a_revoked_token_is_refused_and_still_told_its_limits(limited):
    client, _ = await limited()
    created = await client.app[TOKENS].create("short-lived", ["read"], None)
    assert (await client.get("/api/v1/projects", headers=bearer(created.token))).status == 200
    await client.app[TOKENS].revoke(created.id)
    resp = await client.get("/api/v1/projects", headers=bearer(created.token))
    assert resp.status == 401 and limit_headers(resp)[0] == 5
