"""POST /webhooks/gitlab: every bad input gets its documented 4xx and leaves no trace; good ones are stored
once, routed to what they name, and answered 202."""

from __future__ import annotations

import asyncio
import base64
import gzip
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import webhooks
from gateway.app import create_app
from gateway.keys import BUS, DB
from gateway.simulator.gitlab import GitLabSimulator, Webhook, sign_webhook
from sync.clock import FakeClock
from sync.config import Config, GatewayConfig, RateLimitConfig, WebhookConfig
from sync.events import Event
from sync.types import ItemRef
from tests.test_inbox import observe_synchronous

SECRET = "s3cret-token-0123456789"
OLD_SECRET = "old-secret-abcdef"
SIGNING_TOKEN = "whsec_" + base64.b64encode(b"k" * 32).decode()
OTHER_SIGNING_TOKEN = "whsec_" + base64.b64encode(b"x" * 32).decode()
NOW = 1_800_000_000
URL = webhooks.PATH

MakeClient = Callable[..., Awaitable["Gateway"]]


class Gateway:
    """A running app (the whole app, scheduler included) on a real socket, with what tests look at: rows,
    every event published on the bus (so "triggers nothing" is checked app-wide), the clock."""

    def __init__(self, client: TestClient, clock: FakeClock) -> None:
        self.client = client
        self.clock = clock
        self.app: web.Application = client.server.app  # type: ignore[assignment]
        self.published: list[Event] = []
        self.app[BUS].add_listener(self.published.append)

    async def rows(self) -> list[Any]:
        return await self.app[DB].fetchall("SELECT * FROM webhook_events ORDER BY id")

    async def post(self, hook: Webhook, **headers_kw: Any) -> Any:
        headers = hook.headers(**{"secret": SECRET, **headers_kw})
        return await self.client.post(URL, data=hook.body(), headers=headers)


def make_config(tmp_path: Path, **webhook: Any) -> Config:
    rate = webhook.pop("rate", "6000/minute")
    hook = WebhookConfig(**{"secrets": (SECRET, OLD_SECRET), "signing_tokens": (SIGNING_TOKEN,), **webhook})
    return Config(gateway=GatewayConfig(data_dir=tmp_path / "data"), webhook=hook,
                  ratelimit=RateLimitConfig(webhook=rate))


@pytest.fixture
def gateway(tmp_path: Path, aiohttp_client: Any) -> MakeClient:
    async def start(**webhook: Any) -> Gateway:
        clock = FakeClock(float(NOW))
        app = create_app(make_config(tmp_path, **webhook), clock=clock)
        webhooks.setup(app)
        return Gateway(await aiohttp_client(app), clock)

    return start


@pytest.fixture
def sim() -> GitLabSimulator:
    simulator = GitLabSimulator(clock=FakeClock(float(NOW)), seed=3)
    simulator.add_project("acme/widgets", issues=5, merge_requests=3, notes_per_item=1)
    return simulator


def issue_hook(sim: GitLabSimulator) -> Webhook:
    return sim.update_issue(1001, 2, title="Renamed")


async def error_of(response: Any) -> tuple[int, str]:
    return response.status, (await response.json())["error"]["code"]


# -- every bad input: its 4xx, nothing stored, nothing published ---------------------------------------

def _headers(hook: Webhook, **changes: str | None) -> dict[str, str]:
    headers = hook.headers(secret=SECRET)
    for name, value in changes.items():
        name = name.replace("_", "-")
        headers.pop(name, None)
        if value is not None:
            headers[name] = value
    return headers


def _signed(hook: Webhook, token: str = SIGNING_TOKEN, timestamp: int = NOW) -> dict[str, str]:
    return hook.headers(signing_token=token, timestamp=timestamp)


def _tampered_signature(hook: Webhook) -> dict[str, str]:
    headers = _signed(hook)
    headers["webhook-signature"] = "v1," + sign_webhook(SIGNING_TOKEN, "another-id", NOW, hook.body())
    return headers


BAD_REQUESTS: dict[str, tuple[Callable[[Webhook], tuple[str, bytes, dict[str, str]]], int, str]] = {
    "no token": (lambda h: ("POST", h.body(), _headers(h, X_Gitlab_Token=None)), 401, "unauthorized"),
    "wrong token": (lambda h: ("POST", h.body(), _headers(h, X_Gitlab_Token="nope")), 401, "unauthorized"),
    "a prefix of the token": (
        lambda h: ("POST", h.body(), _headers(h, X_Gitlab_Token=SECRET[:-1])), 401, "unauthorized"),
    "the token plus one character": (
        lambda h: ("POST", h.body(), _headers(h, X_Gitlab_Token=SECRET + "x")), 401, "unauthorized"),
    "an empty token": (lambda h: ("POST", h.body(), _headers(h, X_Gitlab_Token="")), 401, "unauthorized"),
    "a signature over other content": (
        lambda h: ("POST", h.body(), _tampered_signature(h)), 401, "invalid_signature"),
    "a signature by an unknown key": (
        lambda h: ("POST", h.body(), _signed(h, OTHER_SIGNING_TOKEN)), 401, "invalid_signature"),
    "a body changed after signing": (
        lambda h: ("POST", h.body() + b" ", _signed(h)), 401, "invalid_signature"),
    "a timestamp six minutes old": (
        lambda h: ("POST", h.body(), _signed(h, timestamp=NOW - 360)), 401, "invalid_signature"),
    "a timestamp six minutes ahead": (
        lambda h: ("POST", h.body(), _signed(h, timestamp=NOW + 360)), 401, "invalid_signature"),
    "a signature that is not base64": (
        lambda h: ("POST", h.body(), {**_signed(h), "webhook-signature": "v1,%%%"}),
        401, "invalid_signature"),
    "a timestamp of 5000 digits": (
        lambda h: ("POST", h.body(), {**_signed(h), "webhook-timestamp": "9" * 5000}),
        401, "invalid_signature"),
    "a timestamp that is not a number": (
        lambda h: ("POST", h.body(), {**_signed(h), "webhook-timestamp": "soon"}), 401, "invalid_signature"),
    "a body that is not JSON": (lambda h: ("POST", b"object_kind=issue", _headers(h)), 400, "invalid_json"),
    "a JSON array": (lambda h: ("POST", b"[1, 2]", _headers(h)), 400, "invalid_json"),
    "a JSON string": (lambda h: ("POST", b'"issue"', _headers(h)), 400, "invalid_json"),
    "invalid UTF-8": (lambda h: ("POST", b'{"title": "\xff\xfe"}', _headers(h)), 400, "invalid_json"),
    "an empty body": (lambda h: ("POST", b"", _headers(h)), 400, "invalid_json"),
    "a gzip header on a body that is not gzip": (
        lambda h: ("POST", h.body(), {**_headers(h), "Content-Encoding": "gzip"}), 400, "invalid_content_encoding"),
    "a deflate header on a body that is not deflate": (
        lambda h: ("POST", h.body(), {**_headers(h), "Content-Encoding": "deflate"}),
        400, "invalid_content_encoding"),
    "a truncated gzip body": (  # decodes to a prefix of the JSON: aiohttp does not check gzip's trailer
        lambda h: ("POST", gzip.compress(h.body())[:-12], {**_headers(h), "Content-Encoding": "gzip"}),
        400, "invalid_json"),
    "a Content-Encoding nobody decodes": (
        lambda h: ("POST", h.body(), {**_headers(h), "Content-Encoding": "compress"}),
        415, "unsupported_content_encoding"),
    "two content codings": (
        lambda h: ("POST", h.body(), {**_headers(h), "Content-Encoding": "gzip, gzip"}),
        415, "unsupported_content_encoding"),
    "a GET": (lambda h: ("GET", b"", _headers(h)), 405, "method_not_allowed"),
    "a PUT": (lambda h: ("PUT", h.body(), _headers(h)), 405, "method_not_allowed"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_a_bad_request_gets_its_4xx_and_leaves_no_trace(
    case: str, gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()
    build, status, code = BAD_REQUESTS[case]
    method, body, headers = build(issue_hook(sim))

    response = await gw.client.request(method, URL, data=body, headers=headers)

    assert await error_of(response) == (status, code)
    assert await gw.rows() == []
    assert gw.published == []


async def test_a_405_names_the_allowed_method(gateway: MakeClient) -> None:
    gw = await gateway()

    response = await gw.client.get(URL)

    assert response.status == 405
    assert response.headers["Allow"] == "POST"


async def test_a_chunked_body_over_the_limit_is_refused_while_reading(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway(max_body_bytes=1000)

    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 500

    response = await gw.client.post(URL, data=chunks(), headers=_headers(issue_hook(sim)))

    assert await error_of(response) == (413, "payload_too_large")
    assert await gw.rows() == []


async def test_without_any_secret_configured_every_request_is_refused(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway(secrets=(), signing_tokens=())

    response = await gw.post(issue_hook(sim))

    assert response.status == 401
    assert "secret is not configured" in (await response.json())["error"]["message"]
    assert await gw.rows() == []


async def test_an_error_never_echoes_the_token_it_was_sent(gateway: MakeClient, sim: GitLabSimulator) -> None:
    gw = await gateway()
    headers = _headers(issue_hook(sim), X_Gitlab_Token=SECRET + "x")

    response = await gw.client.post(URL, data=b"{}", headers=headers)

    assert SECRET not in await response.text()


# -- authentication that works ----------------------------------------------------------------------------

@pytest.mark.parametrize("secret", [SECRET, OLD_SECRET])
async def test_either_of_two_secrets_is_accepted_during_rotation(
    secret: str, gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()

    response = await gw.post(issue_hook(sim), secret=secret)

    assert response.status == 202
    assert len(await gw.rows()) == 1


async def test_a_signed_request_within_the_window_is_accepted(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()
    hook = issue_hook(sim)

    response = await gw.client.post(URL, data=hook.body(), headers=_signed(hook, timestamp=NOW - 299))

    assert response.status == 202


async def test_one_valid_signature_among_several_is_enough(gateway: MakeClient, sim: GitLabSimulator) -> None:
    gw = await gateway()
    hook = issue_hook(sim)
    headers = _signed(hook)
    stale = sign_webhook(OTHER_SIGNING_TOKEN, hook.idempotency_key, NOW, hook.body())
    headers["webhook-signature"] = f"v1,{stale} {headers['webhook-signature']}"

    response = await gw.client.post(URL, data=hook.body(), headers=headers)

    assert response.status == 202


# -- dedupe ------------------------------------------------------------------------------------------

async def test_a_repeated_idempotency_key_is_a_duplicate_stored_once(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()
    hook = issue_hook(sim)

    first = await (await gw.post(hook)).json()
    second_response = await gw.post(hook)
    second = await second_response.json()

    assert second_response.status == 202
    assert first == {"accepted": True, "event_id": first["event_id"], "duplicate": False}
    assert second == {"accepted": True, "event_id": first["event_id"], "duplicate": True}
    assert len(await gw.rows()) == 1


async def test_a_replayed_signed_request_is_a_duplicate(gateway: MakeClient, sim: GitLabSimulator) -> None:
    gw = await gateway()
    hook = issue_hook(sim)
    headers = _signed(hook)
    headers.pop("Idempotency-Key")  # the verified webhook-id alone is the key

    first = await gw.client.post(URL, data=hook.body(), headers=headers)
    await gw.clock.advance(120)
    replay = await gw.client.post(URL, data=hook.body(), headers=headers)

    assert (first.status, replay.status) == (202, 202)
    assert (await replay.json())["duplicate"] is True
    assert [row["idempotency_key"] for row in await gw.rows()] == [hook.idempotency_key]


async def test_the_event_uuid_is_not_a_dedupe_key(gateway: MakeClient, sim: GitLabSimulator) -> None:
    gw = await gateway()
    first, second = issue_hook(sim), sim.update_issue(1001, 3, title="Also renamed")
    shared = {"X-Gitlab-Event-UUID": "one-chain"}
    for hook in (first, second):
        headers = {**_headers(hook, Idempotency_Key=None), **shared}
        response = await gw.client.post(URL, data=hook.body(), headers=headers)
        assert (await response.json())["duplicate"] is False

    assert [row["idempotency_key"] for row in await gw.rows()] == [None, None]


async def test_without_a_key_a_resend_is_stored_again(gateway: MakeClient, sim: GitLabSimulator) -> None:
    gw = await gateway()
    hook = issue_hook(sim)
    headers = _headers(hook, Idempotency_Key=None)

    for _ in range(2):
        await gw.client.post(URL, data=hook.body(), headers=headers)

    assert len(await gw.rows()) == 2


# -- routing -----------------------------------------------------------------------------------------

ROUTES: dict[str, tuple[Callable[[GitLabSimulator], Webhook], tuple[str, int, str | None, int | None]]] = {
    "issue": (lambda s: s.update_issue(1001, 2, state="closed"), ("Issue Hook", 1001, "issue", 2)),
    "confidential issue": (lambda s: s.update_issue(1001, 4, confidential=True),
                           ("Confidential Issue Hook", 1001, "issue", 4)),
    "merge request": (lambda s: s.update_merge_request(1001, 1, title="MR"),
                      ("Merge Request Hook", 1001, "merge_request", 1)),
    "note on an issue": (lambda s: s.add_note(1001, "issue", 3, "A comment"),
                         ("Note Hook", 1001, "issue", 3)),
    "note on an MR": (lambda s: s.add_note(1001, "merge_request", 2, "LGTM"),
                      ("Note Hook", 1001, "merge_request", 2)),
    "push mentioning an issue": (lambda s: s.push_event(1001, message="Fix the widget\n\nCloses #3"),
                                 ("Push Hook", 1001, "project", None)),
}


@pytest.mark.parametrize("case", list(ROUTES))
async def test_each_event_kind_is_routed_to_what_it_names(
    case: str, gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()
    make_hook, (event, project_id, kind, iid) = ROUTES[case]
    hook = make_hook(sim)

    response = await gw.post(hook)

    assert response.status == 202
    [row] = await gw.rows()
    assert (row["event"], row["project_id"], row["kind"], row["iid"]) == (event, project_id, kind, iid)
    assert row["payload"] == (hook.body() if kind is None else b"")  # a routed event needs only its route
    received = [(e.name, e.data) for e in gw.published if e.name == "webhook.received"]
    assert received == [("webhook.received", {
        "event_id": str(row["id"]), "event": event, "project_id": project_id, "kind": kind, "iid": iid,
        "duplicate": False,
    })]


def _variant(hook: Webhook, event: str, **payload: Any) -> Webhook:
    return Webhook(event=event, payload={**hook.payload, **payload}, idempotency_key=hook.idempotency_key)


async def test_a_work_item_issue_hook_is_routed_as_an_issue(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()

    await gw.post(_variant(issue_hook(sim), "Issue Hook", object_kind="work_item"))

    assert [(r["kind"], r["iid"]) for r in await gw.rows()] == [("issue", 2)]


async def test_a_system_hook_naming_a_merge_request_is_routed(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()

    await gw.post(_variant(sim.update_merge_request(1001, 3, title="x"), "System Hook"))

    rows = await gw.rows()
    assert [(r["event"], r["kind"], r["iid"]) for r in rows] == [("System Hook", "merge_request", 3)]


async def test_a_system_hook_about_something_else_is_ignored(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()
    hook = _variant(issue_hook(sim), "System Hook", object_kind=None, event_name="user_create")

    response = await gw.post(hook)

    assert await response.json() == {"accepted": True, "ignored": True}
    assert await gw.rows() == []


@pytest.mark.parametrize("noteable_type", ["Commit", "Snippet"])
async def test_a_note_on_something_the_mirror_does_not_keep_is_ignored(
    noteable_type: str, gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()
    note = sim.add_note(1001, "issue", 1, "x")
    attrs = {**note.payload["object_attributes"], "noteable_type": noteable_type}

    response = await gw.post(_variant(note, "Note Hook", object_attributes=attrs))

    assert await response.json() == {"accepted": True, "ignored": True}
    assert await gw.rows() == []


async def test_a_note_whose_noteable_type_is_missing_is_stored_with_its_body(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()
    note = sim.add_note(1001, "issue", 1, "x")
    attrs = {k: v for k, v in note.payload["object_attributes"].items() if k != "noteable_type"}

    hook = _variant(note, "Note Hook", object_attributes=attrs)
    await gw.post(hook)

    rows = await gw.rows()
    assert [(r["project_id"], r["kind"], r["iid"]) for r in rows] == [(1001, None, None)]
    assert rows[0]["payload"] == hook.body()  # kept: nothing routed it, an operator may want to look


async def test_a_push_that_mentions_no_issue_or_mr_starts_nothing(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()

    response = await gw.post(sim.push_event(1001, message="Update README.md\n"))

    assert await response.json() == {"accepted": True, "ignored": True}
    assert await gw.rows() == [] and gw.published == []


@pytest.mark.parametrize("message", ["Fixes #12", "See !4", "acme/other#9 too",
                                     "http://gitlab.sim/acme/widgets/-/issues/3"])
def test_each_form_of_mention_makes_a_push_a_project_pass(message: str) -> None:
    payload = {"project_id": 1001, "commits": [{"message": message}], "total_commits_count": 1}

    assert webhooks.route("Push Hook", payload) == ItemRef(1001, "project", None)


def test_a_push_with_commits_left_out_is_a_project_pass_whatever_it_carries() -> None:
    payload = {"project_id": 1001, "commits": [{"message": "nothing"}], "total_commits_count": 21}

    assert webhooks.route("Push Hook", payload) == ItemRef(1001, "project", None)


async def test_the_body_of_an_event_that_cannot_matter_is_never_parsed(gateway: MakeClient) -> None:
    gw = await gateway()
    hook = Webhook(event="Pipeline Hook", payload={})

    response = await gw.client.post(URL, data=b"not even JSON", headers=hook.headers(secret=SECRET))

    assert (response.status, await response.json()) == (202, {"accepted": True, "ignored": True})


async def test_an_unknown_event_kind_is_accepted_ignored_and_counted(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()

    response = await gw.post(_variant(issue_hook(sim), "Wiki Page Hook", object_kind="wiki_page"))

    assert (response.status, await response.json()) == (202, {"accepted": True, "ignored": True})
    assert await gw.rows() == []
    assert gw.published == []
    assert gw.app[webhooks.STATS].ignored == 1


@pytest.mark.parametrize("iid", ["7", None, 2**70, -1, True, [7]])
async def test_an_ill_typed_routing_field_is_stored_with_no_kind(
    iid: Any, gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()
    hook = issue_hook(sim)
    attrs = {**hook.payload["object_attributes"], "iid": iid}

    response = await gw.post(_variant(hook, "Issue Hook", object_attributes=attrs))

    assert response.status == 202
    assert [(r["project_id"], r["kind"], r["iid"]) for r in await gw.rows()] == [(1001, None, None)]


MALFORMED = [{}, {"object_kind": ["issue"]}, {"project": "x", "object_attributes": 3},
             {"object_kind": "note", "object_attributes": {"noteable_type": {}}}]
KNOWN_EVENTS = ["Issue Hook", "Merge Request Hook", "Note Hook", "Push Hook", "System Hook"]


@pytest.mark.parametrize("payload", MALFORMED)
@pytest.mark.parametrize("event", KNOWN_EVENTS)
async def test_a_malformed_payload_of_a_known_kind_never_fails(
    event: str, payload: dict[str, Any], gateway: MakeClient
) -> None:
    gw = await gateway()
    hook = Webhook(event=event, payload=payload)

    response = await gw.post(hook)

    assert response.status == 202
    assert all(row["kind"] is None for row in await gw.rows())


# -- limits, failures, load ----------------------------------------------------------------------------------

async def test_over_the_rate_limit_a_webhook_gets_429_with_retry_after(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway(rate="3/minute")
    for _ in range(3):
        assert (await gw.post(issue_hook(sim))).status == 202

    response = await gw.post(issue_hook(sim))

    assert await error_of(response) == (429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert len(await gw.rows()) == 3


async def test_unauthenticated_requests_over_their_address_budget_get_429(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway(rate="1/minute")
    assert (await gw.post(issue_hook(sim), secret="wrong")).status == 401

    response = await gw.post(issue_hook(sim), secret="wrong")

    assert await error_of(response) == (429, "rate_limited")


async def test_an_authenticated_delivery_is_accepted_while_its_address_unauthenticated_budget_is_spent(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway(rate="2/minute")
    statuses = [(await gw.post(issue_hook(sim), secret="wrong")).status for _ in range(3)]
    assert statuses == [401, 401, 429]

    by_token = await gw.post(issue_hook(sim))
    hook = issue_hook(sim)
    signed = await gw.client.post(URL, data=hook.body(), headers=_signed(hook))

    assert (by_token.status, signed.status) == (202, 202)
    assert len(await gw.rows()) == 2


async def test_a_forged_signature_spends_the_unauthenticated_budget(gateway: MakeClient, sim: GitLabSimulator) -> None:
    gw = await gateway(rate="1/minute")
    hook = issue_hook(sim)
    forged = _signed(hook, OTHER_SIGNING_TOKEN)
    assert (await gw.client.post(URL, data=hook.body(), headers=forged)).status == 401

    again = await gw.client.post(URL, data=hook.body(), headers=forged)

    assert await error_of(again) == (429, "rate_limited")
    assert (await gw.post(issue_hook(sim))).status == 202


async def test_a_store_that_cannot_commit_answers_503_not_500(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()
    async with gw.app[DB].transaction() as conn:
        await conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON webhook_events BEGIN SELECT RAISE(ABORT, 'x'); END")

    response = await gw.post(issue_hook(sim))

    assert await error_of(response) == (503, "not_ready")
    assert gw.published == []


async def test_concurrent_webhooks_are_all_stored_in_few_transactions(
    gateway: MakeClient, sim: GitLabSimulator
) -> None:
    gw = await gateway()
    hooks = [sim.update_issue(1001, 1 + i % 5, title=f"t{i}") for i in range(200)]

    responses = await asyncio.gather(*(gw.post(hook) for hook in hooks))

    assert [r.status for r in responses] == [202] * 200
    assert len(await gw.rows()) == 200
    inbox = gw.app[webhooks.INBOX]
    assert inbox.commits < 200 / 4, f"{inbox.commits} transactions for 200 rows: no group commit"
    print(f"200 webhooks in {inbox.commits} transactions")


def test_routing_ignores_what_it_does_not_know() -> None:
    assert webhooks.route("Job Hook", {"object_kind": "build"}) is None


def test_setup_twice_registers_once(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path))
    webhooks.setup(app)
    webhooks.setup(app)

    assert len([r for r in app.router.routes() if r.resource and r.resource.canonical == URL]) == 1


def test_credentials_never_show_a_secret_or_key(tmp_path: Path) -> None:
    creds = webhooks.Credentials.from_config(make_config(tmp_path).webhook)

    assert repr(creds) == "Credentials()"


@pytest.mark.parametrize(("fsync", "level"), [(False, 1), (True, 2)])
async def test_webhook_fsync_makes_the_gateways_inbox_commit_under_synchronous_full(
        gateway: MakeClient, sim: GitLabSimulator, monkeypatch: pytest.MonkeyPatch, fsync: bool,
        level: int) -> None:
    gw = await gateway(fsync=fsync)
    seen = observe_synchronous(gw.app[DB], monkeypatch)
    assert (await gw.post(issue_hook(sim))).status == 202
    assert seen[0] == level
