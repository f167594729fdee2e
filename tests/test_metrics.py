"""`GET /metrics`: Prometheus text that parses, from a registry per app, moved by what the gateway does."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.keys import BUS, DB, RUNNER
from gateway.metrics import BusCounts, Latency
from gateway.simulator.gitlab import GitLabSimulator
from gateway.sse import STREAMS
from sync.clock import FakeClock
from sync.config import Config
from sync.events import Event
from sync.ingest.pipeline import SyncRequest
from tests.conftest import make_config

SECRET = "webhook-secret"
Scrape = Callable[[], Awaitable[dict[tuple[str, tuple[tuple[str, str], ...]], float]]]


def quiet_config(data_dir: Path, **env: str) -> Config:
    """A gateway without GitLab (nothing syncs on its own) that accepts webhooks signed with SECRET."""
    return make_config(data_dir, webhook_secrets=SECRET, auth_signing_keys="k" * 32, **env)


async def scrape_of(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, keyed by (name, sorted labels), parsed by prometheus_client itself."""
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
async def gateway(tmp_path: Path, aiohttp_client) -> TestClient:
    return await aiohttp_client(create_app(quiet_config(tmp_path / "data"), scheduler=False))


async def read_headers(app: web.Application) -> dict[str, str]:
    created = await app[TOKENS].create("metrics-test", ["read"], None)
    return {"Authorization": f"Bearer {created.token}"}


def a_webhook(sim: GitLabSimulator) -> tuple[bytes, dict[str, str]]:
    hook = sim.update_issue(1001, 1, title="Changed")
    return hook.body(), hook.headers(secret=SECRET)


# -- the exposition -----------------------------------------------------------------------------------


async def test_the_output_parses_with_prometheus_clients_own_parser(gateway: TestClient) -> None:
    response = await gateway.get("/metrics")
    families = {f.name for f in text_string_to_metric_families(await response.text())}

    assert {"lore_gateway_webhooks", "lore_gateway_inbox_pending_events", "lore_gateway_sync_runs",
            "lore_gateway_sync_run_duration_seconds", "lore_gateway_sync_items", "lore_gateway_sse_clients",
            "lore_gateway_sse_clients_dropped", "lore_gateway_http_requests",
            "lore_gateway_http_request_duration_seconds", "lore_gateway_cache_hits", "lore_gateway_cache_misses",
            "lore_gateway_rate_limited_requests"} <= families


async def test_metrics_need_no_token_and_are_never_cached(gateway: TestClient) -> None:
    response = await gateway.get("/metrics")

    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"


async def test_each_app_has_its_own_registry(tmp_path: Path, aiohttp_client) -> None:
    first = await aiohttp_client(create_app(quiet_config(tmp_path / "one"), scheduler=False))
    second = await aiohttp_client(create_app(quiet_config(tmp_path / "two"), scheduler=False))
    await first.get("/healthz")

    route = ("lore_gateway_http_requests_total",
             (("method", "GET"), ("route", "/healthz"), ("status", "200")))
    assert (await scrape_of(first))[route] == 1
    assert route not in await scrape_of(second)


# -- webhooks -----------------------------------------------------------------------------------------


async def test_the_webhook_counter_moves_when_a_webhook_arrives(gateway: TestClient,
                                                                simulator: GitLabSimulator) -> None:
    accepted = ("lore_gateway_webhooks_total", (("event", "Issue Hook"), ("outcome", "accepted")))
    before = (await scrape_of(gateway)).get(accepted, 0)
    body, headers = a_webhook(simulator)

    assert (await gateway.post("/webhooks/gitlab", data=body, headers=headers)).status == 202

    after = await scrape_of(gateway)
    assert (before, after[accepted]) == (0, 1)
    assert after[("lore_gateway_inbox_pending_events", ())] == 1


async def test_a_repeated_webhook_counts_as_a_duplicate_and_a_bad_token_as_rejected(
        gateway: TestClient, simulator: GitLabSimulator) -> None:
    body, headers = a_webhook(simulator)
    for _ in range(2):
        await gateway.post("/webhooks/gitlab", data=body, headers=headers)
    await gateway.post("/webhooks/gitlab", data=body, headers={**headers, "X-Gitlab-Token": "wrong"})

    samples = await scrape_of(gateway)
    assert samples[("lore_gateway_webhooks_total", (("event", "Issue Hook"), ("outcome", "duplicate")))] == 1
    assert samples[("lore_gateway_webhooks_total", (("event", "unknown"), ("outcome", "rejected")))] == 1


# -- REST ---------------------------------------------------------------------------------------------


async def test_requests_are_counted_by_canonical_route_never_by_raw_url(gateway: TestClient) -> None:
    headers = await read_headers(gateway.app)
    await gateway.get("/api/v1/projects/987654?ticket=lgt_secret", headers=headers)

    response = await gateway.get("/metrics")
    text = await response.text()
    assert 'route="/api/v1/projects/{id}"' in text
    assert "987654" not in text and "lgt_secret" not in text


async def test_request_latency_is_a_histogram_by_route(gateway: TestClient) -> None:
    await gateway.get("/healthz")

    samples = await scrape_of(gateway)
    key = ("lore_gateway_http_request_duration_seconds_count", (("method", "GET"), ("route", "/healthz")))
    assert samples[key] == 1


async def test_unmatched_paths_share_one_label(gateway: TestClient) -> None:
    await gateway.get("/no/such/thing/1")
    await gateway.get("/another/missing/path")

    samples = await scrape_of(gateway)
    assert samples[("lore_gateway_http_requests_total",
                    (("method", "GET"), ("route", "<unmatched>"), ("status", "404")))] == 2


async def test_a_rate_limited_request_is_counted(tmp_path: Path, aiohttp_client) -> None:
    client = await aiohttp_client(create_app(quiet_config(tmp_path / "data", ratelimit_api="2/minute"),
                                             scheduler=False))
    headers = await read_headers(client.app)
    statuses = [(await client.get("/api/v1/projects", headers=headers)).status for _ in range(3)]

    assert statuses == [200, 200, 429]
    assert (await scrape_of(client))[("lore_gateway_rate_limited_requests_total", (("limit", "api"),))] == 1


async def test_a_repeated_get_is_a_cache_hit(gateway: TestClient) -> None:
    headers = await read_headers(gateway.app)
    for _ in range(2):
        assert (await gateway.get("/api/v1/projects", headers=headers)).status == 200

    samples = await scrape_of(gateway)
    assert samples[("lore_gateway_cache_misses_total", ())] == 1
    assert samples[("lore_gateway_cache_hits_total", ())] == 1


async def test_reads_moved_off_the_event_loop_are_counted(gateway: TestClient) -> None:
    before = (await scrape_of(gateway))[("lore_gateway_db_reads_moved_to_thread_total", ())]
    slow = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000) SELECT count(*) FROM n"
    assert await gateway.app[DB].fetchval(slow) == 300_000

    after = (await scrape_of(gateway))[("lore_gateway_db_reads_moved_to_thread_total", ())]
    assert after == before + 1


async def test_sse_clients_are_read_from_the_streams_counters(gateway: TestClient) -> None:
    gateway.app[STREAMS].opened, gateway.app[STREAMS].dropped = 5, 2

    samples = await scrape_of(gateway)
    assert samples[("lore_gateway_sse_clients", ())] == 0
    assert samples[("lore_gateway_sse_streams_opened_total", ())] == 5
    assert samples[("lore_gateway_sse_clients_dropped_total", ())] == 2
    assert samples[("lore_gateway_sse_clients_behind", ())] == 0


# -- sync runs ----------------------------------------------------------------------------------------


async def test_a_real_run_counts_its_trigger_outcome_items_and_gitlab_requests(
        config_for: Callable[..., Config], aiohttp_client) -> None:
    client = await aiohttp_client(create_app(config_for(auth_signing_keys="k" * 32), scheduler=False))
    await client.app[RUNNER].run(SyncRequest(trigger="manual", profile="fast"))

    samples = await scrape_of(client)
    assert samples[("lore_gateway_sync_runs_total", (("outcome", "succeeded"), ("trigger", "manual")))] == 1
    assert samples[("lore_gateway_sync_run_duration_seconds_count", ())] == 1
    assert samples[("lore_gateway_sync_items_total", (("kind", "issues"),))] == 50
    assert samples[("lore_gateway_gitlab_responses_total", (("status", "200"),))] > 0
    assert samples[("lore_gateway_sync_last_success_timestamp_seconds", ())] > 0


def counts_on_a_fake_clock() -> tuple[BusCounts, FakeClock, Histogram]:
    clock = FakeClock()
    duration = Histogram("d", "d", buckets=(1.0, 10.0), registry=CollectorRegistry())
    return BusCounts(clock, duration), clock, duration


async def test_a_failed_run_is_counted_with_the_trigger_of_its_start_and_its_duration() -> None:
    counts, clock, duration = counts_on_a_fake_clock()
    counts.on_event(Event("sync.started", {"run_id": 7, "run": {"trigger": "webhook"}}, 1))
    await clock.advance(4.0)
    counts.on_event(Event("sync.failed", {"run_id": 7, "error_code": "gitlab_timeout"}, 2))

    assert counts.runs == {("webhook", "failed"): 1}
    assert {s.name: s.value for s in duration.collect()[0].samples}["d_sum"] == 4.0


async def test_an_interrupted_run_is_its_own_outcome() -> None:
    counts, _, _ = counts_on_a_fake_clock()
    counts.on_event(Event("sync.started", {"run_id": 1, "run": {"trigger": "timer"}}, 1))
    counts.on_event(Event("sync.failed", {"run_id": 1, "error_code": "interrupted"}, 2))

    assert counts.runs == {("timer", "interrupted"): 1}


async def test_bus_events_published_on_the_app_reach_the_metrics(gateway: TestClient) -> None:
    gateway.app[BUS].publish("sync.started", {"run_id": 3, "run": {"trigger": "api"}})
    gateway.app[BUS].publish("sync.finished", {"run_id": 3, "counts": {"notes": 4}})

    samples = await scrape_of(gateway)
    assert samples[("lore_gateway_sync_runs_total", (("outcome", "succeeded"), ("trigger", "api")))] == 1
    assert samples[("lore_gateway_sync_items_total", (("kind", "notes"),))] == 4


def test_a_latency_on_a_bucket_bound_counts_within_that_bucket() -> None:
    latency = Latency(bounds=(0.1, 1.0))
    for seconds in (0.1, 0.5, 2.0):
        latency.observe(("/r", "GET"), seconds)

    samples = latency.family("t", "t").samples
    buckets = {s.labels["le"]: s.value for s in samples if s.name == "t_bucket"}
    assert buckets == {"0.1": 1, "1.0": 2, "+Inf": 3}
