"""`/mcp` through the official `mcp` SDK client against a gateway on 127.0.0.1: tools, auth, limits, budgets."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.mcp_tools import CHARS_PER_TOKEN
from sync.clock import SystemClock
from sync.config import ConfigError
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest.pipeline import SyncRequest
from sync.read.search import RANK_WINDOW
from tests.conftest import make_config

WIDGETS = 1001
BUDGET_TOKENS = 8000  # mcp.max_result_tokens' default


class Gateway:
    def __init__(self, server: Any, app: Any) -> None:
        self.server = server
        self.app = app
        self.url = str(server.make_url("/mcp"))

    async def token(self, *scopes: str) -> str:
        return (await self.app[TOKENS].create("agent", list(scopes), None)).token

    @contextlib.asynccontextmanager
    async def client(self, token: str, mode: str = "auto") -> AsyncIterator[Client]:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
            async with Client(streamable_http_client(self.url, http_client=http), mode=mode) as client:
                yield client


async def _sync(db, config) -> None:
    run = await SyncRunner(db, EventBus(), SystemClock(), config).run(SyncRequest(profile="balanced"))
    assert run.status == "succeeded", run.error_message


async def _serve(aiohttp_server, config) -> Gateway:
    app = create_app(config, scheduler=False)
    server = await aiohttp_server(app, host="127.0.0.1")
    return Gateway(server, app)


@pytest.fixture
async def gateway(simulator, config_for, db, aiohttp_server) -> Gateway:
    simulator.add_issue(WIDGETS, title="Zeppelin mooring mast collapses", description="It fell over in the wind.")
    await _sync(db, config_for())
    return await _serve(aiohttp_server, config_for())


def _result(call: Any) -> dict[str, Any]:
    assert not call.is_error
    (content,) = call.content
    return json.loads(content.text)


EVERY_TOOL_CALL = {
    "search": {"query": "zeppelin"},
    "list_projects": {},
    "list_issues": {"project": "acme/widgets", "state": "opened", "limit": 5},
    "list_merge_requests": {"project": WIDGETS, "limit": 5},
    "get_issue": {"project": WIDGETS, "iid": 1},
    "get_merge_request": {"project": "acme/widgets", "iid": 1},
    "experts": {"project": WIDGETS, "path": "src/"},
    "changes": {"limit": 10},
    "sync_status": {},
}


# -- the protocol -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "version"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_the_official_client_lists_the_tools_and_calls_every_one(gateway, mode, version):
    async with gateway.client(await gateway.token("read"), mode) as client:
        assert client.protocol_version == version
        listed = await client.list_tools()
        assert sorted(t.name for t in listed.tools) == sorted(EVERY_TOOL_CALL)
        answers = {name: _result(await client.call_tool(name, args)) for name, args in EVERY_TOOL_CALL.items()}
    assert answers["search"]["items"][0]["title"] == "Zeppelin mooring mast collapses"
    assert [p["path_with_namespace"] for p in answers["list_projects"]["items"]] == ["acme/widgets", "acme/gadgets"]
    assert {i["state"] for i in answers["list_issues"]["items"]} == {"opened"}
    assert len(answers["list_merge_requests"]["items"]) == 5
    assert answers["get_issue"]["item"]["iid"] == 1
    assert answers["get_merge_request"]["item"]["source_branch"]
    assert answers["experts"]["items"], "the simulator's MRs touch src/"
    assert [c["seq"] for c in answers["changes"]["items"]] == list(range(1, 11))
    assert answers["sync_status"]["last_success_at"] is not None


async def test_an_older_client_is_answered_in_its_own_protocol_version(gateway):
    token = await gateway.token("read")
    async with httpx2.AsyncClient() as http:
        response = await http.post(gateway.url, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-03-26", "capabilities": {},
                "clientInfo": {"name": "old", "version": "1"}}})
    assert response.status_code == 200
    assert response.json()["result"]["protocolVersion"] == "2025-03-26"


async def test_the_tool_list_is_at_most_12_tools_and_under_5000_tokens(gateway):
    async with gateway.client(await gateway.token("read")) as client:
        listed = await client.list_tools()
    text = json.dumps([t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in listed.tools])
    assert len(listed.tools) <= 12
    assert len(text) / CHARS_PER_TOKEN < 5000, len(text)


# -- auth, limits, metrics --------------------------------------------------------------------------


async def test_no_token_is_401_with_a_bearer_challenge(gateway):
    async with httpx2.AsyncClient() as http:
        response = await http.post(gateway.url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    with pytest.raises(Exception):  # noqa: B017 - the SDK wraps the refused connect in its own error
        async with gateway.client("not-a-token"):
            pass


async def test_a_token_without_the_read_scope_is_403(gateway):
    token = await gateway.token("sync")
    async with httpx2.AsyncClient() as http:
        response = await http.post(gateway.url, headers={"Authorization": f"Bearer {token}"},
                                   json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


async def test_mcp_spends_the_same_rate_limit_budget_as_rest(simulator, config_for, db, aiohttp_server):
    await _sync(db, config_for())
    gateway = await _serve(aiohttp_server, config_for(ratelimit_api="3/minute"))
    token = await gateway.token("read")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with httpx2.AsyncClient() as http:
        rest = await http.get(str(gateway.server.make_url("/api/v1/projects")), headers=headers)
        first = await http.post(gateway.url, headers=headers, json=body)
        second = await http.post(gateway.url, headers=headers, json=body)
        third = await http.post(gateway.url, headers=headers, json=body)
    assert [rest.status_code, first.status_code, second.status_code] == [200, 200, 200]
    assert first.headers["RateLimit-Remaining"] == "1"
    assert third.status_code == 429 and "Retry-After" in third.headers


async def test_mcp_requests_are_counted_in_metrics(gateway):
    async with gateway.client(await gateway.token("read")) as client:
        await client.call_tool("sync_status", {})
    async with httpx2.AsyncClient() as http:
        text = (await http.get(str(gateway.server.make_url("/metrics")))).text
    assert 'lore_gateway_http_requests_total{method="POST",route="/mcp",status="200"}' in text


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tool", "args", "parameter"), [
    ("list_issues", {"project": WIDGETS, "limit": 0}, "limit"),
    ("list_issues", {"project": WIDGETS, "state": "merged"}, "state"),
    ("list_issues", {"project": WIDGETS, "updated_after": "yesterday"}, "updated_after"),
    ("list_issues", {"project": WIDGETS, "cursor": "forged.cursor"}, "cursor"),
    ("list_issues", {}, "project"),
    ("get_issue", {"project": WIDGETS, "iid": "one"}, "iid"),
    ("search", {"query": 'unbalanced "quote AND ('}, "query"),
    ("search", {"query": "x", "type": "wiki"}, "type"),
    ("experts", {"project": WIDGETS}, "path"),
    ("changes", {"since": "-1"}, "since"),
    ("changes", {"limit": 1001}, "limit"),
])
async def test_bad_arguments_are_json_rpc_errors_naming_the_argument(gateway, tool, args, parameter):
    async with gateway.client(await gateway.token("read")) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool(tool, args)
    assert raised.value.code == -32602
    assert raised.value.data == {"error": "invalid_argument", "parameter": parameter}
    assert f"{parameter}:" in raised.value.message


async def test_an_item_or_project_not_in_the_mirror_is_a_not_found_error(gateway):
    async with gateway.client(await gateway.token("read")) as client:
        for tool, args in (("get_issue", {"project": WIDGETS, "iid": 9999}),
                           ("list_issues", {"project": "acme/nothing"})):
            with pytest.raises(MCPError) as raised:
                await client.call_tool(tool, args)
            assert raised.value.data == {"error": "not_found"}
        with pytest.raises(MCPError) as raised:
            await client.call_tool("changes", {"since": "99999999"})
        assert raised.value.data == {"error": "cursor_expired"} and "list again" in raised.value.message
        with pytest.raises(MCPError, match="unknown tool"):
            await client.call_tool("delete_everything", {})


# -- budgets ----------------------------------------------------------------------------------------

DESCRIPTION = "".join(f'{i:06d} "quoted" café\\n\n' for i in range(50_000))[:1_000_000]  # 1 MB, with escapes
MANY_NOTES = 2000
LONG_NOTE = "".join(f"line {i} of a very long review comment\n" for i in range(3_000))  # ~110 KB


@pytest.fixture
async def big(simulator, config_for, db, aiohttp_server) -> Gateway:
    simulator.add_issue(WIDGETS, title="A huge description", description=DESCRIPTION)
    for n in range(MANY_NOTES):
        simulator.add_note(WIDGETS, "merge_request", 2, LONG_NOTE if n == 700 else f"note number {n}")
    await _sync(db, config_for())
    return await _serve(aiohttp_server, config_for())


def _within_budget(call: Any, tokens: int = BUDGET_TOKENS) -> dict[str, Any]:
    (content,) = call.content
    assert len(content.text.encode()) <= tokens * CHARS_PER_TOKEN
    return json.loads(content.text)


async def _walk(client: Client, tool: str, args: dict[str, Any], tokens: int = BUDGET_TOKENS) -> list[dict[str, Any]]:
    pages, cursor = [], None
    while True:
        page = _within_budget(await client.call_tool(tool, {**args, **({"cursor": cursor} if cursor else {})}),
                              tokens)
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert "truncated" in page, "a page that stops early says so"
        assert len(pages) < 500


async def test_a_1_mb_description_is_read_whole_in_budgeted_pages(big):
    iid = 31  # the widgets project's 30 seeded issues, then this one
    async with big.client(await big.token("read")) as client:
        pages = await _walk(client, "get_issue", {"project": WIDGETS, "iid": iid})
    first = pages[0]["item"]
    assert first["title"] == "A huge description" and "description_truncated" in first
    text = first["description"] + "".join(p["description_part"]["text"] for p in pages[1:] if "description_part" in p)
    assert text == DESCRIPTION
    assert len(pages) > 30


async def test_an_mr_with_2000_notes_is_read_whole_in_order_in_budgeted_pages(big):
    async with big.client(await big.token("read")) as client:
        pages = await _walk(client, "get_merge_request", {"project": WIDGETS, "iid": 2})
    notes: dict[int, str] = {}
    order: list[int] = []
    for page in pages:
        for thread in page["discussions"]:
            for note in thread["notes"]:
                if note["id"] not in notes:
                    order.append(note["id"])
                    notes[note["id"]] = ""
                assert note.get("body_from", 0) == len(notes[note["id"]]), "a cut note continues where it stopped"
                notes[note["id"]] += note["body"]
    bodies = [notes[i] for i in order]
    added = [b for b in bodies if b.startswith("note number") or b == LONG_NOTE]
    assert added == [LONG_NOTE if n == 700 else f"note number {n}" for n in range(MANY_NOTES)]
    assert any("body_truncated" in n for p in pages for t in p["discussions"] for n in t["notes"])


async def test_lists_and_search_stay_in_budget_and_their_continuation_reaches_every_item(big):
    async with big.client(await big.token("read")) as client:
        pages = await _walk(client, "list_issues", {"project": WIDGETS, "limit": 100})
        iids = [i["iid"] for p in pages for i in p["items"]]
        search = _within_budget(await client.call_tool("search", {"query": "number", "limit": 100}))
        status = _within_budget(await client.call_tool("sync_status", {}))
        experts = _within_budget(await client.call_tool("experts", {"project": WIDGETS, "path": "/", "limit": 100}))
    assert sorted(iids) == list(range(1, 32))
    huge = next(i for p in pages for i in p["items"] if i["iid"] == 31)
    assert "get_ tool" in huge["description_truncated"]
    assert search["items"] and status["scheduler_state"] and experts["items"]


async def test_search_continuation_by_offset_reaches_every_hit_once_and_says_where_search_stops(big):
    hits: list[int] = []
    offset: int | None = 0
    async with big.client(await big.token("read")) as client:
        while offset is not None:
            page = _within_budget(await client.call_tool("search", {"query": "number", "type": "note",
                                                                    "limit": 100, "offset": offset}))
            hits += [h["note_id"] for h in page["items"]]
            offset = page["next_offset"]
            assert offset is None or len(hits) == offset, "each page starts where the last one stopped"
    # 1,999 notes say "number"; sync.read.search ranks the newest RANK_WINDOW of them, and the last page says so.
    assert len(hits) == len(set(hits)) == RANK_WINDOW
    assert f"at most the {RANK_WINDOW:,} most recently indexed matches" in page["truncated"]


async def test_diff_notes_are_condensed_with_their_file_and_line(gateway):
    async with gateway.client(await gateway.token("read")) as client:
        notes = [n for iid in range(1, 13)
                 for t in _result(await client.call_tool("get_merge_request", {"project": WIDGETS, "iid": iid}))[
                     "discussions"] for n in t["notes"]]
    diff_notes = [n for n in notes if "file" in n]
    assert diff_notes and all(isinstance(n["line"], int) and n["file"] for n in diff_notes)
    assert set(notes[0]) >= {"id", "author", "at", "body"}


async def test_the_configured_budget_is_the_one_kept(big, config_for, aiohttp_server):
    small = await _serve(aiohttp_server, config_for(mcp_max_result_tokens="1000"))
    async with small.client(await small.token("read")) as client:
        pages = await _walk(client, "get_merge_request", {"project": WIDGETS, "iid": 2}, tokens=1000)
        default = await _walk(client, "list_issues", {"project": WIDGETS, "limit": 100}, tokens=1000)
    assert len(pages) > 60 and len(default) > 1
    assert sum(len(t["notes"]) for p in pages for t in p["discussions"]) >= MANY_NOTES


@pytest.mark.parametrize("value", ["999", "25001", "many"])
def test_a_budget_outside_1000_to_25000_tokens_is_a_config_error(tmp_path, value):
    with pytest.raises(ConfigError, match=r"mcp\.max_result_tokens"):
        make_config(tmp_path, mcp_max_result_tokens=value)


async def test_the_change_feed_is_read_whole_and_in_order_within_budget(big, db):
    seqs: list[int] = []
    cut = 0
    since = None
    async with big.client(await big.token("read")) as client:
        while True:
            page = _within_budget(await client.call_tool("changes", {"limit": 1000, **({"since": since} if since
                                                                                      else {})}))
            seqs += [c["seq"] for c in page["items"]]
            cut += "truncated" in page
            since = page["next_cursor"]
            if page["caught_up"]:
                break
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > MANY_NOTES
    assert cut, "1,000 changes do not fit in 8,000 tokens: pages were cut, and said so"


async def test_an_item_too_large_for_the_budget_is_an_error_that_says_so_never_a_silent_cut(
        simulator, config_for, db, aiohttp_server):
    labels = [f"label-{n}-" + "x" * 60 for n in range(60)]  # ~4.5 KB of labels: more than 1,000 tokens hold
    simulator.add_issue(WIDGETS, title="Labelled to the brim", labels=labels)
    await _sync(db, config_for())
    gateway = await _serve(aiohttp_server, config_for(mcp_max_result_tokens="1000"))
    async with gateway.client(await gateway.token("read")) as client:
        for tool, args in (("list_issues", {"project": WIDGETS, "limit": 1}),
                           ("get_issue", {"project": WIDGETS, "iid": 31})):
            with pytest.raises(MCPError) as raised:
                await client.call_tool(tool, args)
            assert raised.value.data == {"error": "result_too_large"}
            assert "mcp.max_result_tokens" in raised.value.message
