"""`GET /api/v1/events`: the event bus as Server-Sent Events, with a bounded queue per client.

A client gets a `scheduler.state` snapshot, then what it missed (a replay from the bus's ring buffer, or
`reset`), then live events. One pump task per client writes while the handler waits on the stream, so a
shutdown or a vanished client ends it at once, whatever the pump is blocked on. A client that falls
behind (its queue overflowed, or a write blocked past `send_timeout`) is cut off and counted: the bus
never waits for anyone, so no client can stall the others or the sync. Each stream holds a descriptor for
as long as it lives, so streams are capped per token (429, tickets count toward their token) and in total
(503): descriptors run out for nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from gateway.auth import PRINCIPAL, requires
from gateway.http import ApiError
from gateway.keys import BUS, CLOCK, CONFIG, DB, SCHEDULER
from sync import (
    Event,
    EventBus,
    GatewayConfig,
    Reset,
    SchedulerState,
    Subscription,
    stored_scheduler_view,
)

PATH = "/api/v1/events"
_MAX_ID_DIGITS = 18  # anything longer is no id of ours (and int() of a huge string is slow)
_ENCODED_CACHE = 1024  # events kept serialized; a fan-out encodes each event once, not once per client
# Seconds a refused client is asked to wait. Browsers' EventSource does not reconnect after a 429 or 503
# at all; other clients should wait about as long as a stream takes to free up.
RETRY_AFTER_TOKEN = 30
RETRY_AFTER_FULL = 10


@dataclass(frozen=True)
class StreamSettings:
    queue_size: int = 256  # events a client may lag behind before it is cut off
    send_timeout: float = 10.0  # a write that blocks this long means the client stopped reading
    ping_interval: float = 15.0  # heartbeat comments; docs/api.md "Live events" promises at least every 15 s
    max_clients: int = GatewayConfig.max_sse_clients  # open streams in this process; beyond: 503
    max_per_token: int = GatewayConfig.max_sse_per_token  # open streams per token; beyond: 429

    @classmethod
    def from_config(cls, config: GatewayConfig) -> StreamSettings:
        return cls(max_clients=config.max_sse_clients, max_per_token=config.max_sse_per_token)


class EventStreams:
    """The open streams of one app: their settings, counters (for metrics) and shutdown."""

    def __init__(self, settings: StreamSettings | None = None) -> None:
        self.settings = settings or StreamSettings()
        self.opened = 0  # streams ever started
        self.dropped = 0  # streams cut off because the client did not keep up
        self.refused_token = 0  # streams refused at max_per_token
        self.refused_total = 0  # streams refused at max_clients
        self.closing = False
        self._open: set[EventSourceResponse] = set()
        self._admitted = 0  # streams holding a place, from admission (before their headers are sent) to the end
        self._per_token: dict[int, int] = {}
        self._encoded: dict[int, tuple[Event, str]] = {}

    @property
    def connected(self) -> int:
        return len(self._open)

    def encode(self, event: Event) -> str:
        """The event's `data` as JSON, serialized once however many clients send it.

        A hit must be the very same Event: a `reset` reuses the id of a bus event it is not.
        """
        cached = self._encoded.get(event.id) if event.id is not None else None
        if cached is not None and cached[0] is event:
            return cached[1]
        text = orjson.dumps(event.data).decode()
        if event.id is not None:
            self._encoded[event.id] = (event, text)
            if len(self._encoded) > _ENCODED_CACHE:
                del self._encoded[next(iter(self._encoded))]  # the oldest insertion
        return text

    @contextlib.contextmanager
    def admit(self, token_id: int) -> Iterator[None]:
        """Hold a place for one stream of `token_id` while the block runs; ApiError 429 or 503 at a cap.

        Taken before the first await of the handler, so concurrent connects cannot overshoot a cap."""
        settings = self.settings
        held = self._per_token.get(token_id, 0)
        if held >= settings.max_per_token:
            self.refused_token += 1
            raise ApiError(429, "rate_limited", f"this token already has {held} open event streams (the "
                           f"limit is {settings.max_per_token}); close one first",
                           headers={"Retry-After": str(RETRY_AFTER_TOKEN)})
        if self._admitted >= settings.max_clients:
            self.refused_total += 1
            raise ApiError(503, "not_ready", f"the gateway serves its maximum of {settings.max_clients} event "
                           "streams; try again later", headers={"Retry-After": str(RETRY_AFTER_FULL)})
        self._admitted += 1
        self._per_token[token_id] = held + 1
        try:
            yield
        finally:
            self._admitted -= 1
            left = self._per_token[token_id] - 1
            if left:
                self._per_token[token_id] = left
            else:
                del self._per_token[token_id]

    @contextlib.contextmanager
    def track(self, resp: EventSourceResponse) -> Iterator[None]:
        self._open.add(resp)
        self.opened += 1
        if self.closing:  # began after close_all ran: end it like the others
            resp.stop_streaming()
        try:
            yield
        finally:
            self._open.discard(resp)

    def close_all(self) -> None:
        """End every stream now (send nothing more), and any that starts later. Safe to call twice."""
        self.closing = True
        for resp in list(self._open):
            resp.stop_streaming()


STREAMS = web.AppKey("event_streams", EventStreams)


# -- what a client is sent on connect -----------------------------------------------------------------


def opening_events(bus: EventBus, last_event_id: str | None) -> tuple[list[Event], int]:
    """What a (re)connecting client missed, and the highest id it will then have seen.

    Without a Last-Event-ID: nothing. With one the ring buffer still covers: the events after it, in
    order. Otherwise (aged out, malformed, or from before a restart) one `reset` carrying the bus's
    current id, so the client's next reconnect resumes from here instead of resetting again.
    """
    if last_event_id is None or not last_event_id.strip():
        return [], bus.last_id or 0
    requested = last_event_id.strip()
    position = _parse_id(requested)
    missed = bus.since(position) if position is not None else None
    if position is not None and missed is not None:
        return missed, max([position, *(e.id or 0 for e in missed)])
    current = bus.last_id or 0
    gone = Reset(requested, _reset_reason(position, current),
                 "events after this id are no longer available: re-read the REST API")
    reset = Event(gone.name, gone.payload(), current)
    return [reset], current


def _parse_id(text: str) -> int | None:
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_ID_DIGITS:
        return None
    return int(text)


def _reset_reason(position: int | None, current: int) -> str:
    if position is None:
        return "invalid_id"
    return "unknown_id" if position > current else "aged_out"


async def snapshot(app: web.Application) -> Event:
    """The `scheduler.state` event a client gets first (without an id: it is not on the bus)."""
    scheduler = app.get(SCHEDULER)
    view = scheduler.view() if scheduler is not None else await stored_scheduler_view(
        app[DB], app[CLOCK], app[CONFIG])
    return Event(SchedulerState.name, view.to_json())


# -- the stream -------------------------------------------------------------------------------------


@requires("read", allow_ticket=True)
async def stream_events(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/events` (Bearer token or `?ticket=`)."""
    streams = request.app[STREAMS]
    if streams.closing:
        raise ApiError(503, "not_ready", "the gateway is shutting down")
    with streams.admit(request[PRINCIPAL].token_id):
        return await _stream(request, streams)


async def _stream(request: web.Request, streams: EventStreams) -> web.StreamResponse:
    bus = request.app[BUS]
    settings = streams.settings
    # Subscribing and reading the ring buffer in one step (no await between) leaves no gap between the
    # replay and the live events; the pump still skips ids it has sent, should the two ever overlap.
    subscription = bus.subscribe(settings.queue_size)
    try:
        missed, seen = opening_events(bus, request.headers.get("Last-Event-ID"))
        first = await snapshot(request.app)
        async with sse_response(request, ping_interval=settings.ping_interval,
                                send_timeout=settings.send_timeout) as resp:
            with streams.track(resp):
                await _serve(resp, _pump(resp, streams, [first, *missed], seen, subscription))
    finally:
        subscription.close()
    return resp


async def _serve(resp: EventSourceResponse, pump_work: Coroutine[Any, Any, None]) -> None:
    """Run the pump until the stream ends: stop_streaming (shutdown, a dropped client) or a gone client."""
    pump = asyncio.create_task(pump_work)
    # However the pump ends, the stream ends with it: the handler must never outlive what feeds it.
    pump.add_done_callback(lambda _: resp.stop_streaming())
    try:
        await resp.wait()
    finally:
        pump.cancel()
        await asyncio.wait({pump})
    if not pump.cancelled() and (failure := pump.exception()) is not None:
        raise failure  # a bug, not a client: let aiohttp log it


async def _pump(resp: EventSourceResponse, streams: EventStreams, opening: list[Event], seen: int,
                subscription: Subscription) -> None:
    try:
        for event in opening:
            await _send(resp, streams, event)
        while not subscription.overflowed:
            event = await subscription.get()
            if event.id is not None and event.id <= seen:
                continue
            await _send(resp, streams, event)
            seen = event.id or seen
        # The bus cut this client off: the events it would need next are gone from its queue.
        streams.dropped += 1
    except TimeoutError:
        streams.dropped += 1  # aiohttp-sse has already aborted the connection
    except ConnectionResetError:
        pass  # the client went away; aiohttp-sse has already stopped the stream


async def _send(resp: EventSourceResponse, streams: EventStreams, event: Event) -> None:
    event_id = None if event.id is None else str(event.id)
    await resp.send(streams.encode(event), id=event_id, event=event.name)


async def _end_streams(app: web.Application) -> None:
    """on_shutdown: end every stream now, or aiohttp would wait 2 x shutdown_timeout for them."""
    app[STREAMS].close_all()


def setup(app: web.Application, settings: StreamSettings | None = None) -> None:
    """The route and the streams' registry; without `settings`, the caps come from the app's config."""
    if settings is None and CONFIG in app:
        settings = StreamSettings.from_config(app[CONFIG].gateway)
    app[STREAMS] = EventStreams(settings)
    app.router.add_get(PATH, stream_events)
    app.on_shutdown.append(_end_streams)
