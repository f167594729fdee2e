"""`GET /api/v1/events`: the event bus as Server-Sent Events, written once to every client's socket.

A client gets a `scheduler.state` snapshot, then what it missed (a replay from the bus's ring buffer, or
`reset`), then live events. The bus hands each event to `EventStreams.deliver`, which serializes it once
and writes the same bytes straight to every open stream's transport: no task, queue or timer per client,
and one app-wide timer writes the heartbeat comment to all of them. The handler of a stream only waits for
its end (shutdown, a cut-off, a vanished client).

The bus never waits for anyone, so no client can stall the others or the sync: a client's unsent bytes
pile up in its transport's buffer (past what the kernel's socket buffers hold), and a client whose
backlog passes `max_backlog` bytes, or has not cleared for `send_timeout` seconds, is cut off and counted
(docs/api.md "Live events"). Each stream holds a descriptor for as long as it lives, so streams are capped
per token (429, tickets count toward their token) and in total (503): descriptors run out for nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
from aiohttp import web
from aiohttp.http import HttpVersion11

from gateway.auth import PRINCIPAL, requires
from gateway.http import ApiError
from gateway.keys import BUS, CLOCK, CONFIG, DB, SCHEDULER
from sync import (
    Clock,
    Event,
    EventBus,
    GatewayConfig,
    Reset,
    SchedulerState,
    SystemClock,
    stored_scheduler_view,
)

PATH = "/api/v1/events"
_MAX_ID_DIGITS = 18  # anything longer is no id of ours (and int() of a huge string is slow)
_ENCODED_CACHE = 1024  # events kept serialized; a fan-out encodes each event once, not once per client
# Seconds a refused client is asked to wait. Browsers' EventSource does not reconnect after a 429 or 503
# at all; other clients should wait about as long as a stream takes to free up.
RETRY_AFTER_TOKEN = 30
RETRY_AFTER_FULL = 10
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux only

# An event's bytes in both framings, indexed by a stream's `chunked`: [False] as-is (HTTP/1.0, where the
# end of the connection ends the body), [True] as one HTTP/1.1 chunk.
Frames = tuple[bytes, bytes]


@dataclass(frozen=True)
class StreamSettings:
    # Bytes a client may leave unsent in the gateway (beyond the kernel's socket buffers) before it is cut
    # off: the most a stalled client costs, as aiohttp's own writer waits past 64 KiB.
    max_backlog: int = 64 * 1024
    send_timeout: float = 10.0  # a backlog that has not cleared for this long means the client stopped reading
    ping_interval: float = 15.0  # heartbeat comments; docs/api.md "Live events" promises at least every 15 s
    max_clients: int = GatewayConfig.max_sse_clients  # open streams in this process; beyond: 503
    max_per_token: int = GatewayConfig.max_sse_per_token  # open streams per token; beyond: 429

    @classmethod
    def from_config(cls, config: GatewayConfig) -> StreamSettings:
        return cls(max_clients=config.max_sse_clients, max_per_token=config.max_sse_per_token)


def sse_bytes(event: Event, data: bytes) -> bytes:
    """One event as text/event-stream. `data` is one line of JSON (orjson never writes a raw newline)."""
    named = b"event: " + event.name.encode() + b"\r\ndata: " + data + b"\r\n\r\n"
    return named if event.id is None else b"id: %d\r\n" % event.id + named


def frames(body: bytes) -> Frames:
    return body, b"%x\r\n%s\r\n" % (len(body), body)


PING = frames(b": ping\r\n\r\n")


class OpenStream:
    """One client's stream: where its bytes go, since when they have been backing up, and its end."""

    __slots__ = ("allowance", "behind_since", "chunked", "ended", "transport")

    def __init__(self, transport: asyncio.Transport, chunked: bool) -> None:
        self.transport = transport
        self.chunked = chunked
        self.behind_since: float | None = None  # the clock's monotonic time its backlog was first seen
        # Bytes it may hold beyond max_backlog until its backlog first clears: its opening replay, written
        # at once, must not get a reconnecting client cut off at the next event.
        self.allowance = 0
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class EventStreams:
    """The open streams of one app: the fan-out, the heartbeat, counters (for metrics) and shutdown."""

    def __init__(self, settings: StreamSettings | None = None, clock: Clock | None = None) -> None:
        self.settings = settings or StreamSettings()
        self.clock = clock or SystemClock()
        self.opened = 0  # streams ever started
        self.dropped = 0  # streams cut off because the client did not keep up
        self.refused_token = 0  # streams refused at max_per_token
        self.refused_total = 0  # streams refused at max_clients
        self.closing = False
        self._open: set[OpenStream] = set()
        self._admitted = 0  # streams holding a place, from admission (before their headers are sent) to the end
        self._per_token: dict[int, int] = {}
        self._encoded: dict[int, tuple[Event, Frames]] = {}

    @property
    def connected(self) -> int:
        return len(self._open)

    @property
    def behind(self) -> int:
        """Open streams whose bytes are backing up in the gateway now."""
        return sum(1 for stream in self._open if stream.transport.get_write_buffer_size())

    def encode(self, event: Event) -> Frames:
        """The event's bytes, serialized once however many clients get it.

        A hit must be the very same Event: a `reset` reuses the id of a bus event it is not.
        """
        cached = self._encoded.get(event.id) if event.id is not None else None
        if cached is not None and cached[0] is event:
            return cached[1]
        encoded = frames(sse_bytes(event, orjson.dumps(event.data)))
        if event.id is not None:
            self._encoded[event.id] = (event, encoded)
            if len(self._encoded) > _ENCODED_CACHE:
                del self._encoded[next(iter(self._encoded))]  # the oldest insertion
        return encoded

    def admit(self, token_id: int) -> None:
        """Hold a place for one stream of `token_id` until `release`; ApiError 429 or 503 at a cap.

        Called before the first await of the handler, so concurrent connects cannot overshoot a cap. (A
        method pair, not a context manager: a generator and its frame for every open stream add up.)"""
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

    def release(self, token_id: int) -> None:
        self._admitted -= 1
        left = self._per_token[token_id] - 1
        if left:
            self._per_token[token_id] = left
        else:
            del self._per_token[token_id]

    def go_live(self, transport: asyncio.Transport, chunked: bool, opening: list[Event]) -> OpenStream:
        """Write the opening events and add the stream to the fan-out, in one step: call it with no await
        between computing `opening` and here, so no event falls between the replay and the live ones."""
        encoded = frames(b"".join(self.encode(event)[0] for event in opening))
        stream = OpenStream(transport, chunked)
        self._open.add(stream)
        self.opened += 1
        self._write_all(encoded, [stream])
        stream.allowance = len(encoded[chunked])
        if self.closing:  # began after close_all ran: end it like the others
            self.end(stream)
        return stream

    def deliver(self, event: Event) -> None:
        """The bus's fan-out (EventBus.add_fanout): one event to every open stream, now."""
        if self._open:
            self._write_all(self.encode(event), self._open)

    def heartbeat(self) -> None:
        """A comment to every open stream: proxies keep the connection, clients can tell it is alive."""
        if self._open:
            self._write_all(PING, self._open)

    async def beat(self) -> None:
        """The one heartbeat timer of the app (docs/api.md "Live events": at least every ping_interval)."""
        while True:
            await self.clock.sleep(self.settings.ping_interval)
            self.heartbeat()

    def _write_all(self, encoded: Frames, streams: set[OpenStream] | list[OpenStream]) -> None:
        """Write to every stream that keeps up; end the gone ones and cut off (abort) the lagging ones.

        A client's backlog is what its transport still holds: the kernel's socket buffers are full."""
        now = self.clock.monotonic()
        limit, patience = self.settings.max_backlog, self.settings.send_timeout
        gone: list[OpenStream] = []
        lagging: list[OpenStream] = []
        for stream in streams:
            transport = stream.transport
            if transport.is_closing():
                gone.append(stream)
                continue
            backlog = transport.get_write_buffer_size()
            if not backlog:
                stream.behind_since = None
                stream.allowance = 0
            elif backlog > limit + stream.allowance or (
                    stream.behind_since is not None and now - stream.behind_since >= patience):
                lagging.append(stream)
                continue
            elif stream.behind_since is None:
                stream.behind_since = now
            try:
                transport.write(encoded[stream.chunked])
            except (OSError, RuntimeError):  # the loop's word for a transport that is going away
                gone.append(stream)
        for stream in gone:
            self.end(stream)
        for stream in lagging:
            self.dropped += 1
            stream.transport.abort()  # a close would wait for a flush that may never come
            self.end(stream)

    def end(self, stream: OpenStream) -> None:
        """Take the stream out of the fan-out and let its handler return. Safe to call twice."""
        self._open.discard(stream)
        if not stream.ended.done():
            stream.ended.set_result(None)

    def close_all(self) -> None:
        """End every stream now (send nothing more), and any that starts later. Safe to call twice."""
        self.closing = True
        for stream in list(self._open):
            self.end(stream)


STREAMS = web.AppKey("event_streams", EventStreams)


# -- what a client is sent on connect -----------------------------------------------------------------


def opening_events(bus: EventBus, last_event_id: str | None, newest_at_connect: int | None = None) -> list[Event]:
    """What a (re)connecting client missed.

    With a Last-Event-ID the ring buffer still covers: the events after it, in order. Otherwise (aged
    out, malformed, or from before a restart) one `reset` carrying the bus's current id, so the client's
    next reconnect resumes from here instead of resetting again. Without one: the events after
    `newest_at_connect` (the bus's newest id when the client connected), which were published while its
    stream was being opened; it asked for nothing, so it is never sent a `reset`.
    """
    if last_event_id is None or not last_event_id.strip():
        published_meanwhile = bus.since(newest_at_connect) if newest_at_connect is not None else None
        return published_meanwhile or []
    requested = last_event_id.strip()
    position = _parse_id(requested)
    missed = bus.since(position) if position is not None else None
    if missed is not None:
        return missed
    current = bus.last_id or 0
    gone = Reset(requested, _reset_reason(position, current),
                 "events after this id are no longer available: re-read the REST API")
    return [Event(gone.name, gone.payload(), current)]


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


class EventStreamResponse(web.StreamResponse):
    """`text/event-stream`, never compressed: each event must reach the client as it is written.

    The connection closes when the stream ends, so the send timeout set on its socket dies with it."""

    def __init__(self) -> None:
        super().__init__(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                  "X-Accel-Buffering": "no"})  # nginx: pass each event on at once
        self.force_close()

    def enable_compression(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("an event stream is never compressed: EventStreams writes its frames as they are")


@requires("read", allow_ticket=True)
async def stream_events(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/events` (Bearer token or `?ticket=`)."""
    streams = request.app[STREAMS]
    if streams.closing:
        raise ApiError(503, "not_ready", "the gateway is shutting down")
    token_id = request[PRINCIPAL].token_id
    streams.admit(token_id)
    try:
        return await _stream(request, streams)
    finally:
        streams.release(token_id)


async def _stream(request: web.Request, streams: EventStreams) -> web.StreamResponse:
    bus = request.app[BUS]
    # Taken before the first await: what is published while the snapshot is read and the headers go out
    # is replayed to a client without a Last-Event-ID too.
    newest_at_connect = bus.last_id or 0
    first = await snapshot(request.app)
    response = EventStreamResponse()
    chunked = request.version >= HttpVersion11
    if chunked:
        response.enable_chunked_encoding()
    await response.prepare(request)  # sends the headers: EventStreams writes the body itself
    transport = request.transport
    if transport is None or transport.is_closing():
        return response  # the client went away while the headers were being sent
    _abort_when_unacknowledged(transport, streams.settings.send_timeout)
    opening = [first, *opening_events(bus, request.headers.get("Last-Event-ID"), newest_at_connect)]
    stream = streams.go_live(transport, chunked, opening)
    try:
        await stream.ended
    finally:
        streams.end(stream)  # a gone client (its handler cancelled) leaves the fan-out too
    return response


def _abort_when_unacknowledged(transport: asyncio.Transport, seconds: float) -> None:
    """Ask the kernel (Linux) to abort the connection when what was sent stays unacknowledged for
    `seconds`: a peer that vanished is noticed even while its stream is quiet and nothing backs up here."""
    sock = transport.get_extra_info("socket")
    if _TCP_USER_TIMEOUT is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, int(seconds * 1000))


async def _end_streams(app: web.Application) -> None:
    """on_shutdown: end every stream now, or aiohttp would wait 2 x shutdown_timeout for them."""
    app[STREAMS].close_all()


async def _fan_out(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the bus feeds the streams, and the heartbeat timer runs, while the app does."""
    streams, bus = app[STREAMS], app[BUS]
    bus.add_fanout(streams.deliver)
    beating = asyncio.create_task(streams.beat())
    try:
        yield
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        bus.remove_fanout(streams.deliver)
        streams.close_all()


def setup(app: web.Application, settings: StreamSettings | None = None) -> None:
    """The route and the streams' registry; without `settings`, the caps come from the app's config."""
    if settings is None and CONFIG in app:
        settings = StreamSettings.from_config(app[CONFIG].gateway)
    app[STREAMS] = EventStreams(settings, app.get(CLOCK))
    # No HEAD: an event stream has no length and no end to describe.
    app.router.add_get(PATH, stream_events, allow_head=False)
    app.on_shutdown.append(_end_streams)
    app.cleanup_ctx.append(_fan_out)
