"""GET /api/v1/search and /api/v1/experts over HTTP, against a mirror filled by a real sync."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.auth import TOKENS
from sync.clock import SystemClock
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest.pipeline import SyncRequest
from tests.test_embeddings import FakeEmbedder

WIDGETS = 1001


class Api:
    def __init__(self, client: Any, token: str) -> None:
        self.client = client
        self.token = token

    # The endpoint is positional-only: `path` is also a query parameter (of /experts).
    async def get(self, endpoint: str, /, *, headers: dict | None = None, **params: Any):
        sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        return await self.client.get(f"/api/v1{endpoint}", params=params, headers=sent)

    async def json(self, endpoint: str, /, **params: Any) -> Any:
        resp = await self.get(endpoint, **params)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def error(self, endpoint: str, status: int, /, **params: Any) -> dict:
        resp = await self.get(endpoint, **params)
        assert resp.status == status, await resp.text()
        return (await resp.json())["error"]


async def start(aiohttp_client, config) -> Api:
    app = create_app(config, scheduler=False)
    client = await aiohttp_client(app)
    created = await app[TOKENS].create("reader", ["read"], None)
    return Api(client, created.token)


@pytest.fixture
async def api(simulator, config_for, db, aiohttp_client) -> Api:
    simulator.add_issue(WIDGETS, title="Zeppelin mooring mast collapses", description="It fell over in the wind.")
    simulator.add_note(WIDGETS, "issue", 1, "Unrelated, but the zeppelin hangar doors stick too.")
    run = await SyncRunner(db, EventBus(), SystemClock(), config_for()).run(SyncRequest(profile="balanced"))
    assert run.status == "succeeded"
    return await start(aiohttp_client, config_for())


# -- search -----------------------------------------------------------------------------------------


async def test_search_returns_the_contract_shape_best_first(api):
    body = await api.json("/search", q="zeppelin mooring mast collapses")
    assert body["next_cursor"] is None
    first = body["items"][0]
    assert {k: first[k] for k in ("type", "project_id", "iid", "note_id", "title")} == {
        "type": "issue", "project_id": WIDGETS, "iid": 31, "note_id": None, "title": "Zeppelin mooring mast collapses"
    }
    assert first["web_url"].endswith("/-/issues/31") and isinstance(first["score"], float)


async def test_search_filters_by_type_and_project(api):
    notes = await api.json("/search", q="zeppelin", type="note")
    assert [(i["type"], i["iid"]) for i in notes["items"]] == [("note", 1)]
    assert notes["items"][0]["note_id"] and "<mark>zeppelin</mark>" in notes["items"][0]["snippet"]
    assert (await api.json("/search", q="zeppelin", project=1002))["items"] == []


async def test_search_pages_with_an_opaque_cursor(api):
    seen, cursor, pages = [], None, 0
    while True:
        params = {"q": "fix OR add", "per_page": 7, **({"cursor": cursor} if cursor else {})}
        body = await api.json("/search", **params)
        seen += [(i["type"], i["project_id"], i["iid"], i["note_id"]) for i in body["items"]]
        cursor, pages = body["next_cursor"], pages + 1
        if cursor is None:
            break
    assert pages > 1 and len(seen) == len(set(seen))


@pytest.mark.parametrize("q", ['"unbalanced', "AND", "login AND", "(login"])
async def test_a_malformed_fts_query_is_a_400_that_says_so(api, q):
    error = await api.error("/search", 400, q=q)
    assert error["code"] == "invalid_parameter" and error["message"].startswith("q: not a valid search query")


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({}, "q"),
        ({"q": "  "}, "q"),
        ({"q": "x", "type": "epic"}, "type"),
        ({"q": "x", "project": "acme"}, "project"),
        ({"q": "x", "project": "99999999999999999999999"}, "project"),
        ({"q": "x", "per_page": "0"}, "per_page"),
        ({"q": "x", "cursor": "not-ours"}, "cursor"),
        ({"q": "x", "mode": "fuzzy"}, "mode"),
        ({"q": "x", "mode": "semantic"}, "mode"),  # no embedding endpoint configured
    ],
)
async def test_bad_search_parameters_are_400_naming_the_parameter(api, params, name):
    error = await api.error("/search", 400, **params)
    assert error["code"] == "invalid_parameter" and error["message"].startswith(f"{name}:")


async def test_search_answers_304_to_a_matching_etag(api):
    first = await api.get("/search", q="zeppelin")
    etag = first.headers["ETag"]
    again = await api.get("/search", q="zeppelin", headers={"If-None-Match": etag})
    assert again.status == 304


async def test_search_needs_a_token(api):
    resp = await api.client.get("/api/v1/search", params={"q": "zeppelin"})
    assert resp.status == 401


# -- experts ----------------------------------------------------------------------------------------


async def test_experts_returns_people_by_score_with_their_contributions(api):
    body = await api.json("/experts", path="src/", project=WIDGETS)
    assert body["path"] == "src/" and body["project_id"] == WIDGETS
    items = body["items"]
    assert items and [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    assert set(items[0]) == {"username", "name", "score", "last_contribution_at", "stale", "contributions"}
    assert items[0]["last_contribution_at"].endswith("Z")
    assert set(items[0]["contributions"]) <= {"mr_author", "diff_note", "review"}


async def test_experts_limit_caps_the_list(api):
    assert len((await api.json("/experts", path="/", project=WIDGETS, limit=2))["items"]) == 2


@pytest.mark.parametrize(("params", "name"), [({"project": WIDGETS}, "path"), ({"path": "src/"}, "project")])
async def test_experts_needs_a_path_and_a_project(api, params, name):
    error = await api.error("/experts", 400, **params)
    assert error["message"].startswith(f"{name}:")


async def test_experts_for_a_project_not_in_the_mirror_is_404(api):
    assert (await api.error("/experts", 404, path="src/", project=999))["code"] == "not_found"


# -- semantic search --------------------------------------------------------------------------------


async def test_semantic_search_uses_the_configured_embedding_endpoint(simulator, config_for, db, aiohttp_client,
                                                                   aiohttp_server):
    embedder = FakeEmbedder()
    app = web.Application()
    app.router.add_post("/api/embed", embedder.handle)
    server = await aiohttp_server(app)
    config = config_for(embeddings_url=str(server.make_url("")).rstrip("/"))
    simulator.add_issue(WIDGETS, title="Zeppelin mooring mast collapses", description="It fell over in the wind.")
    run = await SyncRunner(db, EventBus(), SystemClock(), config).run(SyncRequest(profile="full"))
    assert run.status == "succeeded" and run.counts["embeddings"] > 0
    api = await start(aiohttp_client, config)

    body = await api.json("/search", q="zeppelin mooring mast collapses", mode="semantic", per_page=3)

    assert body["items"][0]["iid"] == 31 and body["items"][0]["type"] == "issue"
    assert body["next_cursor"] is not None
