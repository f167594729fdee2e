"""The GitLab client against small scripted aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sync.clock import FakeClock
from sync.errors import PermanentError, TransientError
from sync.gitlab.client import GitLabClient, RetryPolicy

TOKEN = "glpat-s3cr3t-t0ken-value"
NOW = 1_800_000_000.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RecordingClock:
    """A clock whose sleeps return at once and are remembered, so waits can be asserted exactly."""

    def __init__(self, now: float = NOW) -> None:
        self._now = now
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def serve(aiohttp_server):
    """Start a server whose every GET goes to `handler`; returns its base URL."""

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.fixture
async def make_client():
    clients: list[GitLabClient] = []

    def make(base_url: str, **kwargs) -> GitLabClient:
        kwargs.setdefault("clock", RecordingClock())
        kwargs.setdefault("rng", random.Random(7))
        client = GitLabClient(base_url, TOKEN, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@dataclass(frozen=True)
class Reply:
    """A canned answer; built afresh per request because an aiohttp Response is single-use."""

    status: int = 200
    body: Any = None
    text: str | None = None
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)

    def build(self) -> web.Response:
        if self.text is not None:
            return web.Response(
                status=self.status, text=self.text, content_type=self.content_type, headers=self.headers
            )
        return web.json_response(self.body, status=self.status, headers=self.headers)


def scripted(*replies: Reply) -> tuple[Handler, list[web.Request]]:
    """A handler answering with `replies` in order (the last one repeats), recording requests."""
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request)
        return replies[min(len(seen), len(replies)) - 1].build()

    return handler, seen


def json_response(data: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(status=status, body=data, headers=headers)


def text_response(
    text: str = "", status: int = 200, content_type: str = "text/plain", **headers: str
) -> Reply:
    return Reply(status=status, text=text, content_type=content_type, headers=headers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- pagination -------------------------------------------------------------------------------------


async def test_pages_follow_x_next_page_until_it_is_empty(serve, make_client):
    pages = {"1": ([1, 2], "2"), "2": ([3, 4], "3"), "3": ([5], "")}
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(dict(request.query))
        rows, next_page = pages[request.query["page"]]
        # No x-total-pages at all, as GitLab does above 10,000 rows.
        return json_response(rows, **{"x-next-page": next_page}).build()

    client = make_client(await serve(handler))

    rows = await client.get_all("/projects/12/issues")

    assert rows == [1, 2, 3, 4, 5]
    assert [q["page"] for q in seen] == ["1", "2", "3"]
    assert {q["per_page"] for q in seen} == {"100"}


async def test_pages_stop_without_x_next_page_even_if_x_total_pages_says_more(serve, make_client):
    handler, seen = scripted(json_response([1], **{"x-total-pages": "5"}))
    client = make_client(await serve(handler))

    pages = [page async for page in client.pages("/projects/12/issues")]

    assert pages == [[1]]
    assert len(seen) == 1


async def test_a_next_page_that_does_not_move_forward_is_an_error_not_a_loop(serve, make_client):
    handler, _ = scripted(json_response([1], **{"x-next-page": "1"}))
    client = make_client(await serve(handler))

    with pytest.raises(TransientError) as caught:
        await client.get_all("/projects/12/issues")

    assert caught.value.code == "gitlab_bad_response"


async def test_list_params_are_sent_and_per_page_can_be_overridden(serve, make_client):
    handler, seen = scripted(json_response([]))
    client = make_client(await serve(handler))

    await client.get_all("/projects/12/merge_requests", client.list_params("2026-05-17T18:08:09.081Z"))
    await client.get_all("/projects/12/issues", {"per_page": 20})

    assert dict(seen[0].query) == {
        "scope": "all",
        "state": "all",
        "order_by": "updated_at",
        "sort": "asc",
        "per_page": "100",
        "updated_after": "2026-05-17T18:08:09.081Z",
        "page": "1",
    }
    assert seen[1].query["per_page"] == "20"
    assert "updated_after" not in client.list_params(None)


async def test_requests_carry_the_private_token_under_api_v4(serve, make_client):
    handler, seen = scripted(json_response({"id": 12}))
    client = make_client(await serve(handler) + "/")

    assert await client.get("/projects/12") == {"id": 12}
    assert seen[0].path == "/api/v4/projects/12"
    assert seen[0].headers["PRIVATE-TOKEN"] == TOKEN


# -- retries ----------------------------------------------------------------------------------------


async def test_a_500_then_200_is_retried_and_returns_the_data(serve, make_client):
    handler, seen = scripted(json_response({"message": "boom"}, status=500), json_response({"ok": True}))
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock)

    assert await client.get("/projects/12") == {"ok": True}
    assert len(seen) == 2
    assert client.requests_made == 2
    assert len(clock.sleeps) == 1
    assert 0.4 <= clock.sleeps[0] <= 0.6


async def test_every_response_is_counted_by_its_status_retries_included(serve, make_client):
    handler, _ = scripted(json_response({"message": "boom"}, status=500), json_response({"ok": True}))
    client = make_client(await serve(handler), clock=RecordingClock())

    await client.get("/projects/12")

    assert client.responses == {500: 1, 200: 1}


async def test_429_with_retry_after_sleeps_exactly_that_long(serve, make_client):
    limited = text_response("Retry later", status=429, **{"Retry-After": "2"})
    handler, _ = scripted(limited, json_response([1]))
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock)

    assert await client.get("/projects/12/issues") == [1]
    assert clock.sleeps == [2.0]


async def test_retry_after_waits_on_the_injected_clock_not_the_event_loop(serve, make_client):
    limited = text_response("Retry later", status=429, **{"Retry-After": "2"})
    handler, seen = scripted(limited, json_response([1]))
    clock = FakeClock(start=NOW)
    client = make_client(await serve(handler), clock=clock)

    task = asyncio.create_task(client.get("/projects/12/issues"))
    for _ in range(200):
        if clock.sleepers:
            break
        await asyncio.sleep(0.01)
    await clock.advance(1.9)
    assert not task.done()
    await clock.advance(0.1)

    assert await asyncio.wait_for(task, 5) == [1]
    assert len(seen) == 2


async def test_503_retry_after_as_an_http_date_is_honoured(serve, make_client):
    date = formatdate(NOW + 10, usegmt=True)
    handler, _ = scripted(text_response(status=503, **{"Retry-After": date}), json_response([]))
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock)

    await client.get("/projects/12")

    assert clock.sleeps == [10.0]


@pytest.mark.parametrize("value", ["soon", "-5", "nan"])
async def test_unusable_retry_after_falls_back_to_backoff(serve, make_client, value):
    handler, _ = scripted(text_response(status=429, **{"Retry-After": value}), json_response([]))
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock)

    await client.get("/projects/12")

    assert len(clock.sleeps) == 1
    assert 0.4 <= clock.sleeps[0] <= 0.6


async def test_huge_retry_after_is_capped(serve, make_client):
    handler, _ = scripted(text_response(status=429, **{"Retry-After": "86400"}), json_response([]))
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock)

    await client.get("/projects/12")

    assert clock.sleeps == [300.0]


async def test_persistent_503_raises_transient_after_all_attempts(serve, make_client):
    handler, seen = scripted(json_response({"message": "maintenance"}, status=503))
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock, retry=RetryPolicy(attempts=3))

    with pytest.raises(TransientError) as caught:
        await client.get("/projects/12/issues")

    assert caught.value.code == "gitlab_unavailable"
    assert caught.value.transient
    assert "GET /projects/12/issues -> HTTP 503: maintenance" in str(caught.value)
    assert len(seen) == 3
    assert len(clock.sleeps) == 2


async def test_persistent_429_raises_rate_limited(serve, make_client):
    handler, _ = scripted(text_response("Retry later", status=429))
    client = make_client(await serve(handler), retry=RetryPolicy(attempts=2))

    with pytest.raises(TransientError) as caught:
        await client.get("/projects/12")

    assert caught.value.code == "gitlab_rate_limited"
    assert "Retry later" in caught.value.message


async def test_backoff_delays_stay_within_twenty_percent_jitter(serve, make_client):
    handler, _ = scripted(text_response(status=502))
    clock = RecordingClock()
    policy = RetryPolicy(attempts=6, base=0.5, cap=4.0)
    client = make_client(await serve(handler), clock=clock, retry=policy, rng=random.Random(1))

    with pytest.raises(TransientError):
        await client.get("/projects/12")

    nominal = [0.5, 1.0, 2.0, 4.0, 4.0]
    assert len(clock.sleeps) == len(nominal)
    for slept, expected in zip(clock.sleeps, nominal, strict=True):
        assert expected * 0.8 <= slept <= expected * 1.2


def test_jitter_spreads_over_the_whole_twenty_percent_band():
    policy = RetryPolicy(base=1.0, cap=30.0)
    rng = random.Random(3)
    delays = [policy.delay(3, rng) for _ in range(2000)]

    assert min(delays) >= 3.2 and max(delays) <= 4.8
    assert min(delays) < 3.3 and max(delays) > 4.7


def test_retry_policy_needs_at_least_one_attempt():
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# -- permanent failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "gitlab_unauthorized"),
        (403, "gitlab_forbidden"),
        (404, "gitlab_not_found"),
        (400, "gitlab_bad_request"),
        (422, "gitlab_bad_request"),
    ],
)
async def test_client_errors_are_permanent_and_not_retried(serve, make_client, status, code):
    handler, seen = scripted(json_response({"message": f"{status} Nope"}, status=status))
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock)

    with pytest.raises(PermanentError) as caught:
        await client.get("/projects/12")

    assert caught.value.code == code
    assert not caught.value.transient
    assert len(seen) == 1
    assert client.requests_made == 1
    assert clock.sleeps == []


async def test_structured_gitlab_messages_are_shown_and_truncated(serve, make_client):
    handler, _ = scripted(json_response({"message": {"title": ["x" * 500]}}, status=400))
    client = make_client(await serve(handler))

    with pytest.raises(PermanentError) as caught:
        await client.get("/projects/12")

    assert caught.value.message.startswith('GET /projects/12 -> HTTP 400: {"title": ["xxx')
    assert len(caught.value.message) < 260


# -- projects ---------------------------------------------------------------------------------------


async def test_project_path_is_url_encoded_on_the_wire(serve, make_client):
    handler, seen = scripted(json_response({"id": 12}))
    client = make_client(await serve(handler))

    assert await client.project("group/sub/project") == {"id": 12}
    assert seen[0].raw_path == "/api/v4/projects/group%2Fsub%2Fproject"


async def test_project_by_numeric_id(serve, make_client):
    handler, seen = scripted(json_response({"id": 12}))
    client = make_client(await serve(handler))

    await client.project(12)

    assert seen[0].raw_path == "/api/v4/projects/12"


async def test_missing_project_is_project_not_found(serve, make_client):
    handler, _ = scripted(json_response({"message": "404 Project Not Found"}, status=404))
    client = make_client(await serve(handler))

    with pytest.raises(PermanentError) as caught:
        await client.project("group/project")

    assert caught.value.code == "project_not_found"
    assert "group/project" in caught.value.message


async def test_project_unauthorized_keeps_its_own_code(serve, make_client):
    handler, _ = scripted(json_response({"message": "401 Unauthorized"}, status=401))
    client = make_client(await serve(handler))

    with pytest.raises(PermanentError) as caught:
        await client.project("group/project")

    assert caught.value.code == "gitlab_unauthorized"


# -- transport --------------------------------------------------------------------------------------


async def test_concurrency_is_bounded_per_request(serve, make_client):
    in_flight = 0
    peak = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.json_response({})

    client = make_client(await serve(handler), concurrency=3)

    await asyncio.gather(*(client.get(f"/projects/{n}") for n in range(10)))

    assert peak == 3
    assert client.requests_made == 10


async def test_a_slow_server_times_out_as_transient(serve, make_client):
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    client = make_client(await serve(handler), timeout=0.1, retry=RetryPolicy(attempts=2))
    try:
        with pytest.raises(TransientError) as caught:
            await client.get("/projects/12")
    finally:
        release.set()

    assert caught.value.code == "gitlab_timeout"
    assert client.requests_made == 2


async def test_connection_refused_is_transient(make_client):
    client = make_client(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=2))

    with pytest.raises(TransientError) as caught:
        await client.get("/projects/12")

    assert caught.value.code == "gitlab_connection"
    assert client.requests_made == 2


async def test_a_2xx_body_that_is_not_json_is_a_bad_response(serve, make_client):
    handler, _ = scripted(text_response("<html>sign in</html>", content_type="text/html"))
    client = make_client(await serve(handler), retry=RetryPolicy(attempts=1))

    with pytest.raises(TransientError) as caught:
        await client.get("/projects/12")

    assert caught.value.code == "gitlab_bad_response"


async def test_an_injected_session_is_left_open(serve):
    handler, _ = scripted(json_response({}))
    base_url = await serve(handler)
    async with aiohttp.ClientSession() as session:
        async with GitLabClient(base_url, TOKEN, session=session, clock=RecordingClock()) as client:
            await client.get("/projects/12")
        assert not session.closed


# -- rate limits ------------------------------------------------------------------------------------


def ratelimited(remaining: str, limit: str = "2000", reset: str = str(int(NOW) + 40)) -> Reply:
    headers = {"RateLimit-Remaining": remaining, "RateLimit-Limit": limit, "RateLimit-Reset": reset}
    return json_response([], **headers)


async def test_low_remaining_quota_spreads_the_time_left_over_the_requests_left(serve, make_client):
    handler, _ = scripted(ratelimited("4"))
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock)

    await client.get("/projects/12")
    await client.get("/projects/12")

    assert clock.sleeps == [10.0]
    assert client.last_ratelimit_remaining == 4


async def test_plenty_of_quota_means_no_slow_down(serve, make_client):
    handler, _ = scripted(ratelimited("1500"))
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock)

    await client.get("/projects/12")
    await client.get("/projects/12")

    assert clock.sleeps == []
    assert client.last_ratelimit_remaining == 1500


async def test_no_quota_left_waits_until_reset_clamped_to_a_minute(serve, make_client):
    handler, _ = scripted(
        ratelimited("0", reset=str(int(NOW) + 30)), ratelimited("0", reset=str(int(NOW) + 3600))
    )
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock)

    await client.get("/projects/12")
    await client.get("/projects/12")
    await client.get("/projects/12")

    assert clock.sleeps == [30.0, 60.0]


async def test_garbage_ratelimit_headers_are_ignored(serve, make_client):
    handler, _ = scripted(
        ratelimited("lots", limit="?", reset="tomorrow"), ratelimited("0", reset="tomorrow")
    )
    clock = RecordingClock()
    client = make_client(await serve(handler), clock=clock)

    for _ in range(3):
        await client.get("/projects/12")

    assert clock.sleeps == []
    assert client.last_ratelimit_remaining == 0


# -- secrets ----------------------------------------------------------------------------------------


async def test_the_token_never_appears_in_errors_logs_or_repr(serve, make_client, caplog):
    echo = json_response({"message": f"token {TOKEN} rejected"}, status=500)
    handler, _ = scripted(echo, json_response({"message": f"token {TOKEN} revoked"}, status=401))
    client = make_client(await serve(handler))

    with caplog.at_level(logging.DEBUG, logger="sync.gitlab.client"):
        with pytest.raises(PermanentError) as caught:
            await client.get("/projects/12")

    assert "revoked" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert TOKEN not in caplog.text and "rejected" in caplog.text
    assert TOKEN not in repr(client)


# -- post_json (GraphQL) ----------------------------------------------------------------------------


@pytest.fixture
def serve_post(aiohttp_server):
    """Start a server whose every POST goes to `handler`; returns its base URL."""

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/{tail:.*}", handler)
        server = await aiohttp_server(app)
        return str(server.make_url("")).rstrip("/")

    return start


async def test_post_json_sends_json_to_the_instance_root_with_the_token(serve_post, make_client):
    seen: list[tuple[str, Any, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, await request.json(), request.headers.get("PRIVATE-TOKEN")))
        return web.json_response({"data": {"ok": True}})

    client = make_client(await serve_post(handler))

    answer = await client.post_json("/api/graphql", {"query": "{ ok }", "variables": {}})

    assert answer == {"data": {"ok": True}}
    assert seen == [("/api/graphql", {"query": "{ ok }", "variables": {}}, TOKEN)]


async def test_post_json_does_not_retry_a_graphql_timeout_but_says_so(serve_post, make_client):
    body = {"errors": [{"message": "Request timed out. Please try a less complex query or a smaller set of records."}]}
    handler, seen = scripted(json_response(body, status=503))
    client = make_client(await serve_post(handler))

    with pytest.raises(TransientError) as caught:
        await client.post_json("/api/graphql", {"query": "{ big }"})

    assert caught.value.code == "gitlab_query_timeout"
    assert "POST /api/graphql" in caught.value.message
    assert len(seen) == 1


async def test_post_json_retries_other_server_errors_like_a_get(serve_post, make_client):
    handler, seen = scripted(json_response({"message": "502 Bad Gateway"}, status=502), json_response({"data": {}}))
    client = make_client(await serve_post(handler))

    assert await client.post_json("/api/graphql", {"query": "{ x }"}) == {"data": {}}
    assert len(seen) == 2


async def test_post_json_to_a_missing_endpoint_is_a_permanent_not_found(serve_post, make_client):
    handler, _ = scripted(json_response({"error": "404 Not Found"}, status=404))
    client = make_client(await serve_post(handler))

    with pytest.raises(PermanentError) as caught:
        await client.post_json("/api/graphql", {"query": "{ x }"})

    assert caught.value.code == "gitlab_not_found" and caught.value.message.startswith("POST /api/graphql")
