"""Structured logs: one JSON object a line, the request id in and out, and never a secret."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import logs
from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.simulator.gitlab import GitLabSimulator
from tests.conftest import make_config

SECRET = "webhook-secret-do-not-log"


class Captured:
    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        return self._stream.getvalue()

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.text.splitlines()]


@pytest.fixture
def captured() -> Iterator[Captured]:
    """The gateway's logging, as `serve` configures it, into a buffer (at debug: the most it ever logs)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    stream = io.StringIO()
    logs.configure("debug", stream)
    yield Captured(stream)
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


async def log_inside(request: web.Request) -> web.Response:
    logging.getLogger("lore_gateway.test").info("inside the handler", extra={"project_id": 1001})
    return web.json_response({"ok": True})


async def broken(request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


@pytest.fixture
async def gateway(tmp_path: Path, aiohttp_client) -> TestClient:
    app = create_app(make_config(tmp_path / "data", webhook_secrets=SECRET, auth_signing_keys="k" * 32),
                     scheduler=False)
    app.router.add_get("/test/log", log_inside)
    app.router.add_get("/test/broken", broken)
    return await aiohttp_client(app)


# -- the line -----------------------------------------------------------------------------------------


def test_a_line_is_one_json_object_with_time_level_logger_message_and_extras(captured: Captured) -> None:
    logging.getLogger("lore_gateway.test").warning("disk %s", "full", extra={"free_bytes": 0})

    (line,) = captured.lines()
    assert {k: line[k] for k in ("level", "logger", "msg", "free_bytes")} == {
        "level": "warning", "logger": "lore_gateway.test", "msg": "disk full", "free_bytes": 0}
    assert str(line["ts"]).endswith("Z") and "T" in str(line["ts"])
    assert "request_id" not in line


def test_an_exception_is_part_of_its_line(captured: Captured) -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        logging.getLogger("lore_gateway.test").exception("failed")

    (line,) = captured.lines()
    assert "ValueError: bad value" in str(line["exc"])


def test_configuring_twice_keeps_one_handler(captured: Captured) -> None:
    logs.configure("info", io.StringIO())
    logs.configure("warning", io.StringIO())

    ours = [h for h in logging.getLogger().handlers if isinstance(h.formatter, logs.JsonFormatter)]
    assert len(ours) == 1
    assert logging.getLogger().level == logging.WARNING


# -- the request id -----------------------------------------------------------------------------------


async def test_a_line_logged_in_a_request_carries_its_request_id(gateway: TestClient, captured: Captured) -> None:
    response = await gateway.get("/test/log", headers={"X-Request-Id": "req-42"})

    assert response.headers["X-Request-Id"] == "req-42"
    inside = [line for line in captured.lines() if line["msg"] == "inside the handler"]
    assert inside == [{**inside[0], "request_id": "req-42", "project_id": 1001}]


async def test_a_request_without_an_id_gets_a_new_one(gateway: TestClient) -> None:
    first = (await gateway.get("/healthz")).headers["X-Request-Id"]
    second = (await gateway.get("/healthz")).headers["X-Request-Id"]

    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]+", first) and first != second


@pytest.mark.parametrize("incoming", ["has spaces", "x" * 200, "quote\"d", ""])
async def test_an_unusable_incoming_request_id_is_replaced(gateway: TestClient, incoming: str) -> None:
    response = await gateway.get("/healthz", headers={"X-Request-Id": incoming})

    assert response.headers["X-Request-Id"] != incoming


async def test_an_unhandled_error_is_logged_with_the_request_id(gateway: TestClient, captured: Captured) -> None:
    response = await gateway.get("/test/broken", headers={"X-Request-Id": "req-500"})

    assert response.status == 500
    assert response.headers["X-Request-Id"] == "req-500"
    errors = [line for line in captured.lines() if "RuntimeError: a bug" in str(line.get("exc", ""))]
    assert [line["request_id"] for line in errors] == ["req-500"]


async def test_no_access_log_below_debug(gateway: TestClient, captured: Captured) -> None:
    logging.getLogger().setLevel(logging.INFO)
    for _ in range(3):
        await gateway.get("/healthz")

    assert captured.text == ""


async def test_a_slow_request_is_logged_at_warning(gateway: TestClient, captured: Captured,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    logging.getLogger().setLevel(logging.INFO)
    monkeypatch.setattr(logs, "SLOW_REQUEST", 0.0)
    await gateway.get("/healthz", headers={"X-Request-Id": "slow-1"})

    (line,) = captured.lines()
    assert (line["level"], line["route"], line["status"], line["request_id"]) == (
        "warning", "/healthz", 200, "slow-1")


# -- secrets ------------------------------------------------------------------------------------------


async def test_a_request_carrying_a_token_never_logs_it(gateway: TestClient, captured: Captured,
                                                        simulator: GitLabSimulator) -> None:
    token = (await gateway.app[TOKENS].create("logged", ["read"], None)).token
    auth = {"Authorization": f"Bearer {token}"}
    ticket = (await (await gateway.post("/api/v1/events/ticket", headers=auth)).json())["ticket"]
    await gateway.get("/api/v1/projects", headers=auth)
    await gateway.get(f"/api/v1/projects?ticket={ticket}")
    await gateway.get("/api/v1/projects", headers={"Authorization": "Bearer lgw_made-up-token"})
    hook = simulator.update_issue(1001, 1, title="x")
    await gateway.post("/webhooks/gitlab", data=hook.body(), headers=hook.headers(secret=SECRET))

    assert len(captured.lines()) >= 5  # debug: a line per request, so there was something to leak
    for secret in (token, ticket, "lgw_made-up-token", SECRET):
        assert secret not in captured.text


def test_aiosqlite_statements_are_not_logged_even_at_debug(captured: Captured) -> None:
    logging.getLogger("aiosqlite").debug("executing INSERT INTO webhook_events VALUES (%r)", b"payload")

    assert captured.text == ""


def test_token_shaped_text_in_a_message_is_redacted(captured: Captured) -> None:
    logging.getLogger("lore_gateway.test").error(
        "GET http://gw/api/v1/events?ticket=lgt_abc.def&x=1 failed with Authorization: Bearer lgw_sekrit "
        "(PRIVATE-TOKEN=glpat-123, key whsec_c2VjcmV0)")

    text = captured.text
    for leaked in ("lgt_abc.def", "lgw_sekrit", "glpat-123", "c2VjcmV0"):
        assert leaked not in text
    assert "[redacted]" in text


def test_extra_fields_named_like_secrets_are_redacted(captured: Captured) -> None:
    logging.getLogger("lore_gateway.test").info("auth", extra={"authorization": "Bearer abc", "token": "t1",
                                                              "webhook_secret": "s1", "token_id": 7})

    (line,) = captured.lines()
    assert (line["authorization"], line["token"], line["webhook_secret"], line["token_id"]) == (
        "[redacted]", "[redacted]", "[redacted]", 7)
