"""`GET /metrics`: Prometheus text from a registry of this app's own, never the process-global one.

Most numbers already exist as plain counters on the objects that own them (webhook stats, SSE streams,
the GitLab client, the response cache, the rate limiter, the inbox): a custom Collector reads them at
scrape time, so their hot paths pay nothing for metrics. What nobody else counts is counted here: sync
runs and webhooks by event (from bus events), REST requests by route and status (gateway.front).
Labels are bounded: canonical routes, never raw URLs; nothing that names a token, an item or a secret.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.cache import RESPONSE_CACHE
from gateway.keys import BUS, CLOCK, DB, GITLAB, SCHEDULER
from gateway.ratelimit import LIMITER
from gateway.server import ACCEPT_ERRORS
from gateway.sse import STREAMS
from gateway.webhooks import INBOX, STATS
from gateway.webhooks import PATH as WEBHOOK_PATH
from sync import Clock, Event, RunLog

PATH = "/metrics"
PREFIX = "lore_gateway_"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RUN_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
SCHEDULER_STATES = ("idle", "debouncing", "running", "backoff", "paused")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNSEEN_TRIGGER = "unknown"  # a run whose sync.started this process did not see
_MAX_OPEN_RUNS = 64  # sync.started without an end yet; single flight keeps this at one or two

log = logging.getLogger("lore_gateway.metrics")


# -- counted from bus events ------------------------------------------------------------------------


class BusCounts:
    """Sync runs by trigger and outcome, their durations, items synced, and stored webhooks by event.

    A bus listener: quick, and never raises (the bus calls it inside `publish`).
    """

    def __init__(self, clock: Clock, run_duration: Histogram) -> None:
        self.runs: Counter[tuple[str, str]] = Counter()  # (trigger, outcome)
        self.items: Counter[str] = Counter()  # count kind ("issues", "notes", ...) -> rows synced
        self.webhooks: Counter[tuple[str, str]] = Counter()  # (GitLab event, accepted|duplicate)
        self._clock = clock
        self._run_duration = run_duration
        self._open: dict[int, tuple[str, float]] = {}  # run id -> (trigger, monotonic start)

    def on_event(self, event: Event) -> None:
        if event.name == "sync.started":
            self._started(event.data)
        elif event.name == "sync.finished":
            self._ended(event.data, "succeeded")
            self._count_items(event.data.get("counts"))
        elif event.name == "sync.failed":
            self._ended(event.data, "interrupted" if event.data.get("error_code") == "interrupted" else "failed")
        elif event.name == "webhook.received":
            outcome = "duplicate" if event.data.get("duplicate") else "accepted"
            self.webhooks[(str(event.data.get("event") or "unknown"), outcome)] += 1

    def _started(self, data: dict[str, object]) -> None:
        run, run_id = data.get("run"), data.get("run_id")
        trigger = run.get("trigger") if isinstance(run, dict) else None
        if isinstance(run_id, int) and len(self._open) < _MAX_OPEN_RUNS:
            self._open[run_id] = (str(trigger or _UNSEEN_TRIGGER), self._clock.monotonic())

    def _ended(self, data: dict[str, object], outcome: str) -> None:
        run_id = data.get("run_id")
        opened = self._open.pop(run_id, None) if isinstance(run_id, int) else None
        if opened is None:
            self.runs[(_UNSEEN_TRIGGER, outcome)] += 1
            return
        trigger, started = opened
        self.runs[(trigger, outcome)] += 1
        self._run_duration.observe(max(0.0, self._clock.monotonic() - started))

    def _count_items(self, counts: object) -> None:
        if not isinstance(counts, dict):
            return
        for kind, value in counts.items():
            if isinstance(value, int) and not isinstance(value, bool):
                self.items[str(kind)] += value


# -- counted by the middleware ----------------------------------------------------------------------


class Latency:
    """A histogram per (route, method) in plain lists: on the event loop's one thread it needs none of
    prometheus_client's locks, which cost several times a bisect on every request."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.buckets: dict[tuple[str, str], list[int]] = {}  # per bound, then +Inf; not cumulative
        self.sums: Counter[tuple[str, str]] = Counter()

    def observe(self, key: tuple[str, str], seconds: float) -> None:
        counts = self.buckets.get(key)
        if counts is None:
            counts = self.buckets[key] = [0] * (len(self.bounds) + 1)
        counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sums[key] += seconds

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=["route", "method"])
        les = [*(repr(bound) for bound in self.bounds), "+Inf"]
        for key, counts in sorted(self.buckets.items()):
            cumulative = list(itertools.accumulate(counts))
            family.add_metric(list(key), list(zip(les, cumulative, strict=True)), self.sums[key])
        return family


class RequestCounts:
    """HTTP requests by route, method and status, and their latency by route and method."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.rate_limited: Counter[str] = Counter()  # "api" | "webhook" -> 429s answered
        self.body_timeouts: Counter[str] = Counter()  # route -> 408s (gateway.http.BodyTimeout, the only 408)
        self.latency = Latency()

    def observe(self, route: str, method: str, status: int, elapsed: float | None) -> None:
        method = method if method in _METHODS else "other"
        self.requests[(route, method, status)] += 1
        if status == 429:
            self.rate_limited["webhook" if route == WEBHOOK_PATH else "api"] += 1
        elif status == 408:
            self.body_timeouts[route] += 1
        if elapsed is not None:
            self.latency.observe((route, method), elapsed)


# -- the registry -------------------------------------------------------------------------------------


@dataclass
class Reads:
    """Values that take a database query, read by the /metrics handler before it renders."""

    pending_events: int | None = None
    last_success_at: float | None = None


class Metrics:
    """One app's registry, the counts kept here, and the refresh of what needs an await."""

    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        run_duration = Histogram(PREFIX + "sync_run_duration_seconds", "Wall time of sync runs seen by this "
                                 "process, from sync.started to sync.finished or sync.failed.",
                                 buckets=RUN_BUCKETS, registry=self.registry)
        self.bus = BusCounts(app[CLOCK], run_duration)
        self.requests = RequestCounts()
        self.reads = Reads()
        self.registry.register(GatewayCollector(app, self))

    async def refresh(self, app: web.Application) -> None:
        """Read the inbox depth and the last success; on a busy database keep the previous values."""
        try:
            if INBOX in app:
                self.reads.pending_events = await app[INBOX].count_pending()
            self.reads.last_success_at = await RunLog(app[DB], app[CLOCK]).last_success_at()
        except sqlite3.OperationalError as err:
            log.warning("metrics: could not read the database: %s", err)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


class GatewayCollector(Collector):
    """Reads the app's counters at scrape time. No `describe`: the app is not running when it registers."""

    def __init__(self, app: web.Application, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._webhooks()
        yield from self._sync()
        yield from self._scheduler()
        yield from self._gitlab()
        yield from self._sse()
        yield from self._http()
        yield from self._cache()
        yield from self._rate_limits()
        yield from self._database()
        yield from self._server()

    def _webhooks(self) -> Iterator[Metric]:
        family = CounterMetricFamily(PREFIX + "webhooks", "Webhook requests by GitLab event and outcome "
                                     "(accepted, duplicate, ignored, rejected; the event of an ignored or "
                                     "rejected request is not trusted and reads 'unknown').",
                                     labels=["event", "outcome"])
        for (event, outcome), value in sorted(self._metrics.bus.webhooks.items()):
            family.add_metric([event, outcome], value)
        stats = self._app.get(STATS)
        if stats is not None:
            family.add_metric(["unknown", "ignored"], stats.ignored)
            family.add_metric(["unknown", "rejected"], stats.rejected)
        yield family
        reads = self._metrics.reads
        if reads.pending_events is not None:
            yield GaugeMetricFamily(PREFIX + "inbox_pending_events", "Stored webhook events no committed "
                                    "sync run has processed yet.", value=reads.pending_events)

    def _sync(self) -> Iterator[Metric]:
        bus = self._metrics.bus
        runs = CounterMetricFamily(PREFIX + "sync_runs", "Sync runs seen by this process, by trigger and "
                                   "outcome (succeeded, failed, interrupted).", labels=["trigger", "outcome"])
        for (trigger, outcome), value in sorted(bus.runs.items()):
            runs.add_metric([trigger, outcome], value)
        yield runs
        items = CounterMetricFamily(PREFIX + "sync_items", "Rows written by succeeded sync runs, by kind.",
                                    labels=["kind"])
        for kind, value in sorted(bus.items.items()):
            items.add_metric([kind], value)
        yield items
        last = self._metrics.reads.last_success_at
        if last is not None:
            yield GaugeMetricFamily(PREFIX + "sync_last_success_timestamp_seconds", "When the last "
                                    "succeeded sync run finished (Unix time; any process).", value=last)

    def _scheduler(self) -> Iterator[Metric]:
        scheduler = self._app.get(SCHEDULER)
        if scheduler is None:
            return
        view = scheduler.view()
        state = GaugeMetricFamily(PREFIX + "scheduler_state", "1 for the scheduler's current state.",
                                  labels=["state"])
        for name in SCHEDULER_STATES:
            state.add_metric([name], 1.0 if view.state == name else 0.0)
        yield state
        yield GaugeMetricFamily(PREFIX + "scheduler_consecutive_failures", "Failed automatic runs in a row "
                                "(backoff grows with it).", value=view.consecutive_failures)

    def _gitlab(self) -> Iterator[Metric]:
        client = self._app.get(GITLAB)
        if client is None:
            return
        yield CounterMetricFamily(PREFIX + "gitlab_requests", "HTTP requests sent to GitLab, retries "
                                  "included.", value=client.requests_made)
        responses = CounterMetricFamily(PREFIX + "gitlab_responses", "Responses from GitLab by HTTP status "
                                        "(requests minus responses: timeouts and connection errors).",
                                        labels=["status"])
        for status, value in sorted(client.responses.items()):
            responses.add_metric([str(status)], value)
        yield responses
        if client.last_ratelimit_remaining is not None:
            yield GaugeMetricFamily(PREFIX + "gitlab_ratelimit_remaining", "The last RateLimit-Remaining "
                                    "GitLab sent.", value=client.last_ratelimit_remaining)

    def _sse(self) -> Iterator[Metric]:
        streams = self._app.get(STREAMS)
        if streams is None:
            return
        yield GaugeMetricFamily(PREFIX + "sse_clients", "Open event streams.", value=streams.connected)
        yield CounterMetricFamily(PREFIX + "sse_streams_opened", "Event streams ever opened.",
                                  value=streams.opened)
        yield CounterMetricFamily(PREFIX + "sse_clients_dropped", "Event streams cut off because the client "
                                  "did not keep up.", value=streams.dropped)
        yield GaugeMetricFamily(PREFIX + "sse_clients_behind", "Open event streams whose unsent bytes are "
                                "backing up in the gateway; past a limit they are cut off (docs/api.md).",
                                value=streams.behind)
        refused = CounterMetricFamily(PREFIX + "sse_streams_refused", "Event streams refused at a cap (token: "
                                      "gateway.max_sse_per_token, 429; total: gateway.max_sse_clients, 503).",
                                      labels=["cap"])
        refused.add_metric(["token"], streams.refused_token)
        refused.add_metric(["total"], streams.refused_total)
        yield refused

    def _http(self) -> Iterator[Metric]:
        family = CounterMetricFamily(PREFIX + "http_requests", "HTTP requests by route (its canonical path), "
                                     "method and status.", labels=["route", "method", "status"])
        for (route, method, status), value in sorted(self._metrics.requests.requests.items()):
            family.add_metric([route, method, str(status)], value)
        yield family
        yield self._metrics.requests.latency.family(
            PREFIX + "http_request_duration_seconds",
            "Time to answer HTTP requests, by route and method (streams excluded).")

    def _cache(self) -> Iterator[Metric]:
        cache = self._app.get(RESPONSE_CACHE)
        if cache is None:
            return
        yield CounterMetricFamily(PREFIX + "cache_hits", "Response cache lookups that found a body.",
                                  value=cache.hits)
        yield CounterMetricFamily(PREFIX + "cache_misses", "Response cache lookups that had to render.",
                                  value=cache.misses)
        yield CounterMetricFamily(PREFIX + "cache_evictions", "Bodies evicted to stay within the budget.",
                                  value=cache.evictions)
        yield GaugeMetricFamily(PREFIX + "cache_bytes", "Bytes the response cache holds (keys, bodies "
                                "and per-entry overhead).", value=cache.bytes)

    def _rate_limits(self) -> Iterator[Metric]:
        limited = CounterMetricFamily(PREFIX + "rate_limited_requests", "Requests answered 429 by the "
                                      "gateway's own limits, by limit (api: per token or address; webhook: "
                                      "per source address).", labels=["limit"])
        for name in ("api", "webhook"):
            limited.add_metric([name], self._metrics.requests.rate_limited[name])
        yield limited
        timed_out = CounterMetricFamily(PREFIX + "request_body_timeouts", "Requests answered 408 and closed "
                                        "because their body had not all arrived within webhook.body_timeout, "
                                        "by route.", labels=["route"])
        for route, value in sorted(self._metrics.requests.body_timeouts.items()):
            timed_out.add_metric([route], value)
        yield timed_out
        limiter = self._app.get(LIMITER)
        if limiter is not None:
            yield CounterMetricFamily(PREFIX + "ratelimit_storage_errors", "Rate-limit decisions taken "
                                      "without the storage (an outage: decided by ratelimit.fail_open).",
                                      value=limiter.errors)
            yield CounterMetricFamily(PREFIX + "ratelimit_redis_flushes", "Round trips that sent this process's "
                                      "rate-limit counts to Redis and read the shared ones back (one per 0.1 s "
                                      "at most; ratelimit.strict makes one per request instead, not counted "
                                      "here).", value=limiter.round_trips)


    def _database(self) -> Iterator[Metric]:
        db = self._app.get(DB)
        if db is not None:
            yield CounterMetricFamily(PREFIX + "db_reads_moved_to_thread", "Reads that ran longer than the "
                                      "event loop's budget (or met a lock) and ran again on the reader thread.",
                                      value=db.reads_moved_to_thread)


    def _server(self) -> Iterator[Metric]:
        guard = self._app.get(ACCEPT_ERRORS)
        if guard is not None:
            yield CounterMetricFamily(PREFIX + "accept_errors", "Connections the server could not accept for "
                                      "want of a file descriptor (or kernel memory); logged at most once "
                                      "every few seconds.", value=guard.count)


# -- HTTP ---------------------------------------------------------------------------------------------


async def get_metrics(request: web.Request) -> web.Response:
    """`GET /metrics`: no token (Prometheus scrapes it); keep it off the public internet (docs/api.md)."""
    metrics = request.app[METRICS]
    await metrics.refresh(request.app)
    return web.Response(body=metrics.render(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def setup(app: web.Application) -> None:
    """The registry, the bus listener and the route; gateway.front's middleware counts each request.
    Call after the bus and clock are set (create_app does that first)."""
    if METRICS in app:
        return
    metrics = Metrics(app)
    app[METRICS] = metrics
    app[BUS].add_listener(metrics.bus.on_event)
    app.router.add_get(PATH, get_metrics)
