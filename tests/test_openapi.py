"""The OpenAPI document: served without a token, matching the app's routes, and true under fuzzing.

The fuzzer draws requests for every read route from the document itself (its parameters, their
schemas, plus garbage and unknown parameters) against a real gateway serving a synced mirror over a
real socket, and holds each answer to the document: no 5xx, only documented statuses, the error shape,
and 200 bodies that match their schemas.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.openapi import PATH, document
from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import SystemClock
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest.pipeline import SyncRequest
from sync.store.db import Database
from tests.conftest import SIM_TOKEN, make_config

# Documented routes that no module registers yet, as ("METHOD", "/path"): empty now that every route of
# docs/api.md has landed. A route documented ahead of its handler goes here until it lands; the test below
# fails for an entry that has become registered, so the list cannot go stale.
NOT_YET_REGISTERED: set[tuple[str, str]] = set()
METHODS = ("get", "post", "put", "patch", "delete")
NOT_FUZZED = {"/api/v1/events"}  # a stream that never ends by itself; covered by its own tests


def documented_routes() -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in document()["paths"].items() for m in item if m in METHODS}


def app_routes(app: web.Application) -> set[tuple[str, str]]:
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.method != "HEAD" and r.resource is not None}


@pytest.fixture
def app(tmp_path) -> web.Application:
    return create_app(make_config(tmp_path / "data"), scheduler=False)


# -- the document -----------------------------------------------------------------------------------


def test_the_document_and_the_apps_routes_match(app):
    documented, registered = documented_routes(), app_routes(app)
    assert registered - documented == set(), "routes the document lacks"
    assert documented - registered <= NOT_YET_REGISTERED, "documented routes the app lacks"


def test_the_allow_list_names_only_routes_still_missing(app):
    landed = NOT_YET_REGISTERED & app_routes(app)
    assert not landed, f"registered now: remove {sorted(landed)} from NOT_YET_REGISTERED"


def test_every_route_of_the_design_is_documented():
    documented = documented_routes()
    design = {("GET", f"/api/v1{p}") for p in (
        "/projects", "/projects/{id}", "/projects/{id}/issues", "/projects/{id}/issues/{iid}",
        "/projects/{id}/merge_requests", "/projects/{id}/merge_requests/{iid}",
        "/projects/{id}/issues/{iid}/discussions", "/projects/{id}/merge_requests/{iid}/discussions",
        "/search", "/experts", "/sync/status", "/sync/runs", "/events", "/openapi.json", "/changes")}
    design |= {("POST", "/api/v1/sync"), ("POST", "/api/v1/sync/resume"), ("POST", "/api/v1/events/ticket"),
               ("POST", "/webhooks/gitlab"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
               ("GET", "/")}
    design |= {("POST", "/mcp")}
    assert design == documented


def resolve(ref: str) -> Any:
    node: Any = document()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_every_reference_resolves_and_every_path_parameter_is_declared():
    for ref in refs(document()):
        resolve(ref)
    for path, item in document()["paths"].items():
        for method, op in item.items():
            declared = {p["name"] for p in map(deref, op.get("parameters", [])) if p["in"] == "path"}
            wanted = {seg[1:-1] for seg in path.split("/") if seg.startswith("{")}
            assert declared == wanted, (method, path)


def test_every_api_operation_documents_its_errors_and_rate_limit_headers():
    ids = Counter()
    for path, item in document()["paths"].items():
        for op in item.values():
            ids[op["operationId"]] += 1
            if path.startswith("/api/v1"):
                assert "429" in op["responses"], path
                assert all("RateLimit-Remaining" in r.get("headers", {}) for r in op["responses"].values()), path
            if op["security"]:
                assert {"401", "403"} <= set(op["responses"]), path
    assert max(ids.values()) == 1


async def test_the_document_is_served_without_a_token_and_revalidates(aiohttp_client, app):
    client = await aiohttp_client(app)
    resp = await client.get(PATH)
    assert resp.status == 200
    body = await resp.json()
    assert body["openapi"] == "3.1.0" and body == orjson.loads(orjson.dumps(document()))
    again = await client.get(PATH, headers={"If-None-Match": resp.headers["ETag"]})
    assert again.status == 304


# -- a small JSON Schema check (the subset the document uses) ---------------------------------------


def deref(node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(node["$ref"])
    return node


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def conforms(value: Any, schema: Any) -> bool:
    schema = deref(schema)
    if "allOf" in schema and not all(conforms(value, s) for s in schema["allOf"]):
        return False
    if "oneOf" in schema and sum(conforms(value, s) for s in schema["oneOf"]) != 1:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_type_ok(value, n) for n in names):
            return False
    if isinstance(value, dict):
        if any(k not in value for k in schema.get("required", [])):
            return False
        props = schema.get("properties", {})
        if not all(conforms(value[k], s) for k, s in props.items() if k in value):
            return False
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not all(conforms(v, extra) for k, v in value.items() if k not in props):
            return False
    if isinstance(value, list) and "items" in schema:
        return all(conforms(v, schema["items"]) for v in value)
    return True


def test_the_schema_check_rejects_a_wrong_item():
    issue = {"id": 1, "iid": 1, "project_id": 1, "title": "t", "description": None, "state": "opened",
             "labels": [], "author": None, "assignees": [], "created_at": "x", "updated_at": "x",
             "closed_at": None, "web_url": "u", "work_item_status": None}
    schema = {"$ref": "#/components/schemas/Issue"}
    assert conforms(issue, schema)
    assert not conforms({**issue, "state": "merged"}, schema)
    assert not conforms({k: v for k, v in issue.items() if k != "work_item_status"}, schema)
    assert not conforms({**issue, "author": {"id": "1", "username": "a", "name": "A"}}, schema)


# -- fuzzing ----------------------------------------------------------------------------------------


@dataclass
class Served:
    """A gateway on a real socket in a thread of its own, over a mirror synced from the simulator."""

    port: int
    tokens: dict[str, str]
    ids: dict[str, list[int]]
    cursors: list[str]
    operations: list[tuple[str, dict]]
    etags: list[str] = field(default_factory=list)
    # (route, URL, its ETag) as first served: asked again with If-None-Match, a read token answers 304.
    conditional: list[tuple[str, str, str]] = field(default_factory=list)
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    per_route: Counter[str] = field(default_factory=Counter)
    _conn: http.client.HTTPConnection | None = None

    def get(self, target: str, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self._conn.request("GET", target, headers=headers)
                resp = self._conn.getresponse()
                body = resp.read()
            except (http.client.HTTPException, ConnectionError):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
                continue
            self.requests += 1
            self.statuses[resp.status] += 1
            return resp.status, body, {k.lower(): v for k, v in resp.getheaders()}
        raise AssertionError("unreachable")


async def _start(data_dir: Path) -> tuple[list[web.AppRunner], Served]:
    sim = GitLabSimulator(token=SIM_TOKEN, seed=7)
    sim.add_project("acme/widgets", issues=30, merge_requests=12, notes_per_item=3)
    sim.add_project("acme/gadgets", issues=20, merge_requests=8, notes_per_item=2)
    sim_runner = web.AppRunner(sim.app(), access_log=None)
    await sim_runner.setup()
    await web.TCPSite(sim_runner, "127.0.0.1", 0).start()
    sim_url = f"http://127.0.0.1:{sim_runner.addresses[0][1]}"
    config = make_config(data_dir, sim_url, ("acme/widgets", "acme/gadgets"), ratelimit_api="1000000/minute")
    db = await Database.open(config.db_path)
    try:
        run = await SyncRunner(db, EventBus(), SystemClock(), config).run(SyncRequest(profile="balanced"))
        assert run.status == "succeeded", run.error_message
    finally:
        await db.close()
    app = create_app(config, scheduler=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    tokens = {"read": (await app[TOKENS].create("fuzz", ["read"], None)).token,
              "sync": (await app[TOKENS].create("fuzz-sync", ["sync"], None)).token}
    ids = {"id": [1001, 1002], "iid": [1, 2, 3, 12, 20], "since": [0, 1, 40, 99, 10**6]}
    operations = [(path, item["get"]) for path, item in document()["paths"].items()
                  if "get" in item and ("GET", path) in app_routes(app) and path not in NOT_FUZZED]
    served = Served(runner.addresses[0][1], tokens, ids, [], operations)
    return [runner, sim_runner], served


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzzed-gateway", daemon=True)
    thread.start()
    runners, srv = asyncio.run_coroutine_threadsafe(_start(tmp_path_factory.mktemp("fuzz")), loop).result(60)
    for route, path in (
        ("/api/v1/projects/{id}/issues", "/api/v1/projects/1001/issues?per_page=2"),
        ("/api/v1/projects", "/api/v1/projects?per_page=1"),
        ("/api/v1/projects/{id}/merge_requests/{iid}/discussions",
         "/api/v1/projects/1001/merge_requests/1/discussions?per_page=1"),
    ):
        _, body, headers = srv.get(path, {"Authorization": f"Bearer {srv.tokens['read']}"})
        srv.cursors.append(orjson.loads(body)["next_cursor"])
        srv.etags.append(headers["etag"])
        srv.conditional.append((route, path, headers["etag"]))
    try:
        yield srv
    finally:
        print(f"\nfuzz: {srv.requests} requests tried over {len(srv.per_route)} routes; "
              f"statuses {dict(sorted(srv.statuses.items()))}")
        for runner in runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


TEXT = st.text(max_size=24)
ASCII = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
# FTS5's query grammar in pieces (operators, NEAR groups with good and bad distances, column filters,
# prefixes, anchors, quotes), put together in any order: each must be a 200 or a 400, never a 500.
FTS_PIECES = ["token", "refresh", "widget", "a", "b", "AND", "OR", "NOT", "NEAR", "NEAR(", "(", ")", ",", "*",
              "^", '"', ":", "-", "+", "{", "}", "title:", "body:", "{title body}:", "-title:", "1", "-1", "10",
              "NEAR(a, b)", "NEAR(a b, -1)", "NEAR(token refresh, 5)", "tok*", '"token refresh"', "x1y"]
FTS_QUERIES = st.lists(st.tuples(st.sampled_from(FTS_PIECES), st.sampled_from(["", " "])), min_size=1,
                       max_size=8).map(lambda parts: "".join(p + sep for p, sep in parts))


def value_for(param: dict, served: Served) -> st.SearchStrategy[str]:
    """Valid values (from the schema, and real ids and cursors) half the time, anything the other half."""
    schema = deref(param.get("schema", {}))
    valid: list[st.SearchStrategy[str]] = []
    if "enum" in schema:
        valid.append(st.sampled_from([str(v) for v in schema["enum"]]))
    if schema.get("type") == "integer":
        valid.append(st.integers(schema.get("minimum", -5) - 2, schema.get("maximum", 2**70) + 2).map(str))
        valid.append(st.sampled_from(["0", "-1", "1e3", "99999999999999999999999", " 7", "٣"]))
    if schema.get("format") == "date-time":
        valid.append(st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()))
    if param["name"] in served.ids:
        valid.append(st.sampled_from([str(i) for i in served.ids[param["name"]]]))
    if param["name"] == "cursor":
        valid.append(st.sampled_from(served.cursors))
        valid.append(st.sampled_from(served.cursors).flatmap(
            lambda c: st.integers(0, len(c) - 1).map(lambda i: c[:i] + ("A" if c[i] != "A" else "B") + c[i + 1:])))
    if param["name"] == "q":
        valid.append(FTS_QUERIES)
    if param["name"] == "labels":
        valid.append(st.lists(st.sampled_from(["bug", "feature", "docs", "priority::high", ""]), max_size=4)
                     .map(",".join))
    return st.one_of(*valid, TEXT) if valid else TEXT


@st.composite
def requests_for(draw: st.DrawFn, served: Served) -> tuple[str, dict, str, dict[str, str]]:
    # Now and then a revalidation of a page served before: a random path and ETag almost never pair up, so
    # without these how many 304s the fuzz sees would hang on how Hypothesis's draws fall (and they move
    # with every literal in the code it has loaded: it draws constants from local modules).
    if draw(st.integers(0, 29)) == 0:
        route, target, etag = draw(st.sampled_from(served.conditional))
        op = next(op for path, op in served.operations if path == route)
        auth = draw(st.sampled_from(["read", "sync", "none"]))
        headers = {"If-None-Match": etag}
        if auth in served.tokens:
            headers["Authorization"] = f"Bearer {served.tokens[auth]}"
        return route, op, target, headers
    path, op = draw(st.sampled_from(served.operations))
    target = path
    query: dict[str, str] = {}
    headers: dict[str, str] = {}
    for param in map(deref, op.get("parameters", [])):
        if param["in"] == "path":
            value = draw(value_for(param, served).filter(lambda v: v not in ("", ".", "..")))
            target = target.replace("{" + param["name"] + "}", urllib.parse.quote(value, safe=""))
        elif param["in"] == "query" and draw(st.booleans()):
            query[param["name"]] = draw(value_for(param, served))
        elif param["name"] == "If-None-Match" and draw(st.booleans()):
            headers[param["name"]] = draw(st.one_of(ASCII, st.just("*"), st.sampled_from(served.etags)))
    query.update(draw(st.dictionaries(st.text(min_size=1, max_size=8), TEXT, max_size=2)))
    auth = draw(st.sampled_from(["read", "read", "read", "sync", "garbage", "none"]))
    if auth in served.tokens:
        headers["Authorization"] = f"Bearer {served.tokens[auth]}"
    elif auth == "garbage":
        headers["Authorization"] = draw(ASCII.map(lambda s: f"Bearer {s}x"))
    if query:
        target += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    return path, op, target, headers


def check(op: dict, status: int, body: bytes, headers: dict[str, str]) -> None:
    assert status < 500, body
    assert str(status) in op["responses"], f"undocumented status {status}: {body[:300]!r}"
    response = deref(op["responses"][str(status)])
    for name in response.get("headers", {}):
        if name not in ("WWW-Authenticate", "Retry-After"):
            assert name.lower() in headers, f"{status} without {name}"
    if status == 304:
        assert body == b""
        return
    media = next(iter(response.get("content", {"application/json": {}})))
    if media != "application/json":
        return
    data = orjson.loads(body)
    schema = response["content"][media]["schema"]
    assert conforms(data, schema), f"{status} body does not match its schema: {body[:500]!r}"


@settings(max_examples=1200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_fuzzing_every_read_route_gives_only_documented_answers(served, data):
    path, op, target, headers = data.draw(requests_for(served))
    served.per_route[path] += 1
    status, body, response_headers = served.get(target, headers)
    check(op, status, body, response_headers)


def test_the_fuzzer_tried_every_route_and_got_real_answers(served):
    """Runs after the fuzz test (same module): it must have exercised successes and errors alike."""
    assert served.requests >= 1200, served.requests
    assert set(served.per_route) == {path for path, _ in served.operations}
    assert min(served.per_route.values()) >= 15, served.per_route
    assert served.statuses[200] > 100 and served.statuses[400] > 50 and served.statuses[404] > 50
    assert served.statuses[401] > 20 and served.statuses[403] > 20 and served.statuses[304] > 5


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(q=FTS_QUERIES)
def test_fuzzing_search_with_fts5_operator_grammar_gives_200_or_400_never_500(served, q):
    op = document()["paths"]["/api/v1/search"]["get"]
    target = "/api/v1/search?" + urllib.parse.urlencode({"q": q}, quote_via=urllib.parse.quote)
    status, body, headers = served.get(target, {"Authorization": f"Bearer {served.tokens['read']}"})
    check(op, status, body, headers)
    assert status in (200, 400), (q, status, body[:300])
