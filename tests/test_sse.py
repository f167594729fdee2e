"""`GET /api/v1/events`: snapshot first, replay or reset, live events, slow clients cut off, prompt shutdown.

Every stream here is served by a real server (web.AppRunner on 127.0.0.1). `serve` runs with
handler_cancellation=True (a gone client cancels its handler at once) and aiohttp's default is False (it is
noticed at the next write or ping): the `live` gateway runs each test both ways.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.keys import BUS
from gateway.sse import PATH, STREAMS, EventStreams, StreamSettings, opening_events
from sync.clock import FakeClock, SystemClock
from sync.config import Config, load_config
from sync.control.runs import RunLog
from sync.events import Event, EventBus
from sync.store.db import Database

SETTLE = 5.0  # a guard against a hung test, never a timing assumption
SNAPSHOT_FIELDS = {"state", "next_run_at", "paused_reason", "consecutive_failures"}


def gateway_config(data_dir: Path, **env: str) -> Config:
    values = {
        "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir),
        "LORE_GATEWAY_AUTH_SIGNING_KEYS": "test-key-0123456789abcdef0123456789abcdef",
        "LORE_GATEWAY_RATELIMIT_API": "100000/minute",  # hundreds of connects with one token
        "LORE_GATEWAY_GATEWAY_MAX_SSE_PER_TOKEN": "1000",  # and hundreds of its streams open at once
    }
    values.update({f"LORE_GATEWAY_{k.upper()}": v for k, v in env.items()})
    return load_config(None, values)


# -- a minimal EventSource client ---------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    event: str
    data: dict[str, Any]
    id: str | None


@dataclass
class Stream:
    response: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)

    async def next(self) -> Received:
        """The next event (comments are collected, not returned); EOFError when the server ended the stream."""
        fields: dict[str, str] = {}
        data: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.response.content.readline(), SETTLE)
            if not raw:
                raise EOFError("the server ended the stream")
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    return Received(fields.get("event", "message"), orjson.loads("\n".join(data)),
                                    fields.get("id"))
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value

    async def until(self, *names: str) -> list[Received]:
        """Every event up to and including the first one named in `names`."""
        seen = []
        while not seen or seen[-1].event not in names:
            seen.append(await self.next())
        return seen

    async def ends(self) -> None:
        """Read on until the server ends the stream."""
        while await asyncio.wait_for(self.response.content.read(65536), SETTLE):
            pass

    def close(self) -> None:
        self.response.close()


@dataclass
class Live:
    """The gateway on a real socket, and a client session to talk to it."""

    app: web.Application
    url: str
    session: aiohttp.ClientSession
    clock: FakeClock | SystemClock

    @property
    def bus(self) -> EventBus:
        return self.app[BUS]

    @property
    def streams(self) -> EventStreams:
        return self.app[STREAMS]

    async def token(self, *scopes: str) -> str:
        return (await self.app[TOKENS].create("test", list(scopes), None)).token

    async def open(self, token: str | None = None, *, last_event_id: str | None = None,
                   params: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        return await self.session.get(self.url + PATH, headers=headers, params=params)

    async def connect(self, token: str, *, last_event_id: str | None = None,
                      params: dict[str, str] | None = None) -> Stream:
        response = await self.open(token, last_event_id=last_event_id, params=params)
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        return Stream(response)

    async def connected(self, token: str, **kwargs: Any) -> Stream:
        """A stream whose snapshot has arrived: from here on it receives every event published."""
        stream = await self.connect(token, **kwargs)
        assert (await stream.next()).event == "scheduler.state"
        return stream


async def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SETTLE
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def wait_until_connected(live: Live, count: int) -> None:
    """Until `count` streams are open. Without handler_cancellation a closed client is noticed at the next
    write to it, so each check writes a heartbeat first."""
    def settled() -> bool:
        live.streams.heartbeat()
        return live.streams.connected == count
    await wait_until(settled)


class Server:
    """web.AppRunner + TCPSite on 127.0.0.1; `stop()` is the shutdown `serve` performs."""

    def __init__(self, app: web.Application, *, shutdown_timeout: float = 5.0,
                 handler_cancellation: bool = True) -> None:
        self.app = app
        self.runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout, handle_signals=False,
                                    access_log=None, handler_cancellation=handler_cancellation)
        self.url = ""
        self.stopped = False

    async def start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.runner.cleanup()


@pytest.fixture
async def server_for() -> AsyncIterator[Callable[[web.Application], Any]]:
    servers: list[Server] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(app: web.Application, clock: FakeClock | SystemClock, *,
                    handler_cancellation: bool = True) -> tuple[Live, Server]:
        server = Server(app, handler_cancellation=handler_cancellation)
        servers.append(server)
        url = await server.start()
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        sessions.append(session)
        return Live(app, url, session, clock), server

    yield start
    for session in sessions:
        await session.close()
    for server in servers:
        await server.stop()


@pytest.fixture(params=[True, False], ids=["handler_cancellation", "no_handler_cancellation"])
async def live(request: pytest.FixtureRequest, tmp_path: Path, server_for: Any) -> Live:
    clock = FakeClock()
    app = create_app(gateway_config(tmp_path / "data"), clock=clock)
    gateway, _ = await server_for(app, clock, handler_cancellation=request.param)
    return gateway


# -- the opening: snapshot, then replay or reset ------------------------------------------------------


async def test_the_first_event_is_a_scheduler_state_snapshot_without_an_id(live: Live) -> None:
    stream = await live.connect(await live.token("read"))
    first = await stream.next()
    assert (first.event, first.id) == ("scheduler.state", None)
    assert set(first.data) == SNAPSHOT_FIELDS
    assert first.data["state"] == "idle"


async def test_live_events_carry_the_bus_id_their_name_and_a_json_object(live: Live) -> None:
    stream = await live.connected(await live.token("read"))
    published = [live.bus.publish("sync.queued", {"run_id": None, "trigger": "api"}),
                 live.bus.publish("data.changed", {"project_id": 1001, "kind": "issue", "iids": [3, 4]})]
    received = [await stream.next(), await stream.next()]
    assert received == [Received(e.name, e.data, str(e.id)) for e in published]
    assert int(received[0].id) < int(received[1].id)


async def test_reconnecting_with_last_event_id_replays_exactly_the_missed_events_in_order(live: Live) -> None:
    token = await live.token("read")
    stream = await live.connected(token)
    seen = live.bus.publish("sync.started", {"run_id": 1})
    assert (await stream.next()).id == str(seen.id)
    stream.close()
    missed = [live.bus.publish("sync.progress", {"run_id": 1, "stage": "issues", "done": n, "total": 3})
              for n in range(1, 4)]
    again = await live.connect(token, last_event_id=str(seen.id))
    assert (await again.next()).event == "scheduler.state"
    assert [await again.next() for _ in missed] == [Received(e.name, e.data, str(e.id)) for e in missed]
    after = live.bus.publish("sync.finished", {"run_id": 1, "counts": {}})
    assert (await again.next()).id == str(after.id)  # live follows the replay with nothing repeated


async def test_a_last_event_id_that_is_already_the_newest_replays_nothing(live: Live) -> None:
    token = await live.token("read")
    newest = live.bus.publish("sync.started", {"run_id": 1})
    stream = await live.connected(token, last_event_id=str(newest.id))
    after = live.bus.publish("sync.finished", {"run_id": 1})
    assert (await stream.next()).id == str(after.id)


async def test_an_aged_out_last_event_id_gets_a_reset_that_moves_the_client_to_the_newest_id(
    live: Live,
) -> None:
    old = live.bus.publish("sync.started", {"run_id": 1})
    for n in range(3000):  # far more than the ring buffer keeps
        live.bus.publish("sync.progress", {"run_id": 1, "stage": "issues", "done": n, "total": 3000})
    stream = await live.connected(await live.token("read"), last_event_id=str(old.id))
    reset = await stream.next()
    assert (reset.event, reset.id) == ("reset", str(live.bus.last_id))
    assert reset.data["reason"] == "aged_out"
    after = live.bus.publish("sync.finished", {"run_id": 1})
    assert (await stream.next()).id == str(after.id)


@pytest.mark.parametrize(("last_event_id", "reason"), [("999999", "unknown_id"), ("abc", "invalid_id"),
                                                        ("-1", "invalid_id")])
async def test_an_id_the_bus_never_gave_out_gets_a_reset(live: Live, last_event_id: str, reason: str) -> None:
    live.bus.publish("sync.started", {"run_id": 1})
    stream = await live.connected(await live.token("read"), last_event_id=last_event_id)
    reset = await stream.next()
    assert (reset.event, reset.data["reason"]) == ("reset", reason)


def test_without_a_last_event_id_the_opening_replays_what_was_published_while_the_stream_opened() -> None:
    bus = EventBus(buffer_size=8)
    events = [bus.publish("e", {"n": n}) for n in range(5)]
    assert opening_events(bus, None) == []
    assert opening_events(bus, None, newest_at_connect=events[2].id) == events[3:]
    assert opening_events(bus, None, newest_at_connect=events[-1].id) == []
    assert opening_events(bus, str(events[1].id), newest_at_connect=events[-1].id) == events[2:]


def test_a_client_without_a_last_event_id_is_never_sent_a_reset() -> None:
    bus = EventBus(buffer_size=4)
    for n in range(10):
        bus.publish("e", {"n": n})
    assert opening_events(bus, None, newest_at_connect=1) == []  # aged out while it opened: nothing to say
    assert opening_events(bus, " ", newest_at_connect=99) == []


def test_an_event_is_encoded_once_and_a_reset_sharing_its_id_keeps_its_own_data() -> None:
    streams = EventStreams()
    bus = EventBus()
    event = bus.publish("sync.started", {"run_id": 1})
    reset = Event("reset", {"reason": "aged_out"}, event.id)
    assert streams.encode(event) is streams.encode(event)
    plain, chunked = streams.encode(reset)
    assert plain == b'id: 1\r\nevent: reset\r\ndata: {"reason":"aged_out"}\r\n\r\n'
    assert chunked == b"%x\r\n" % len(plain) + plain + b"\r\n"  # one HTTP/1.1 chunk
    assert streams.encode(event)[0] == b'id: 1\r\nevent: sync.started\r\ndata: {"run_id":1}\r\n\r\n'


async def test_without_a_scheduler_the_snapshot_is_read_from_the_database(tmp_path: Path, server_for: Any
                                                                           ) -> None:
    config = gateway_config(tmp_path / "data")
    db = await Database.open(config.db_path)
    async with db.transaction() as conn:
        await conn.execute("UPDATE service_state SET paused_reason = 'gitlab_forbidden: 403', "
                           "consecutive_failures = 2 WHERE id = 1")
    await db.close()
    clock = FakeClock()
    gateway, _ = await server_for(create_app(config, clock=clock, scheduler=False), clock)
    snapshot = await (await gateway.connect(await gateway.token("read"))).next()
    assert snapshot.data == {"state": "paused", "next_run_at": None, "paused_reason": "gitlab_forbidden: 403",
                             "consecutive_failures": 2}


# -- authentication -------------------------------------------------------------------------------------


async def test_a_ticket_opens_the_stream_without_an_authorization_header(live: Live) -> None:
    token = await live.token("read")
    answer = await live.session.post(live.url + "/api/v1/events/ticket",
                                     headers={"Authorization": f"Bearer {token}"})
    ticket = (await answer.json())["ticket"]
    stream = await live.connect("", params={"ticket": ticket})
    assert (await stream.next()).event == "scheduler.state"


@pytest.mark.parametrize("ticket", ["lgt_forged", "", "not-a-ticket"])
async def test_a_bad_ticket_is_401_unauthorized(live: Live, ticket: str) -> None:
    response = await live.open(params={"ticket": ticket})
    assert response.status == 401
    assert (await response.json())["error"]["code"] == "unauthorized"


async def test_an_expired_ticket_is_401(live: Live) -> None:
    ticket, _ = await live.app[TOKENS].issue_ticket(await live.app[TOKENS].verify(await live.token("read")))
    assert isinstance(live.clock, FakeClock)
    await live.clock.advance(61)
    assert (await live.open(params={"ticket": ticket})).status == 401


async def test_no_credentials_is_401_and_a_token_without_read_is_403(live: Live) -> None:
    assert (await live.open()).status == 401
    response = await live.open(await live.token("sync"))
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "forbidden"


# -- caps --------------------------------------------------------------------------------------------


async def ticket_for(live: Live, token: str) -> str:
    answer = await live.session.post(live.url + "/api/v1/events/ticket", headers={"Authorization": f"Bearer {token}"})
    return str((await answer.json())["ticket"])


async def test_a_token_at_its_stream_cap_gets_429_with_retry_after_and_its_tickets_count_toward_it(
    live: Live
) -> None:
    live.streams.settings = StreamSettings(max_per_token=2)
    token = await live.token("read")
    by_token = await live.connected(token)
    await live.connected("", params={"ticket": await ticket_for(live, token)})

    refused = await live.open(token)
    by_ticket = await live.open(params={"ticket": await ticket_for(live, token)})

    for response in (refused, by_ticket):
        assert response.status == 429 and (await response.json())["error"]["code"] == "rate_limited"
        assert int(response.headers["Retry-After"]) >= 1
    assert live.streams.refused_token == 2
    assert (await live.open(await live.token("read"))).status == 200  # another token has its own cap
    by_token.close()  # a closed stream frees its place
    await wait_until_connected(live, 2)
    assert (await live.open(token)).status == 200


async def test_beyond_the_total_stream_cap_a_stream_gets_503_with_retry_after(live: Live) -> None:
    live.streams.settings = StreamSettings(max_clients=2)
    await live.connected(await live.token("read"))
    await live.connected(await live.token("read"))

    response = await live.open(await live.token("read"))

    assert response.status == 503 and (await response.json())["error"]["code"] == "not_ready"
    assert int(response.headers["Retry-After"]) >= 1
    assert live.streams.refused_total == 1


def test_the_stream_caps_come_from_the_config(tmp_path: Path) -> None:
    app = create_app(gateway_config(tmp_path / "data", gateway_max_sse_clients="7", gateway_max_sse_per_token="3"))
    assert (app[STREAMS].settings.max_clients, app[STREAMS].settings.max_per_token) == (7, 3)


# -- heartbeats, counters, slow clients ---------------------------------------------------------------


def test_the_default_heartbeat_is_at_most_every_fifteen_seconds() -> None:
    assert StreamSettings().ping_interval <= 15


async def test_one_heartbeat_timer_reaches_every_idle_stream(live: Live) -> None:
    streams = [await live.connected(await live.token("read")) for _ in range(3)]
    readers = [asyncio.ensure_future(stream.next()) for stream in streams]
    assert isinstance(live.clock, FakeClock)
    await live.clock.advance(StreamSettings().ping_interval)
    await wait_until(lambda: all(stream.comments == ["ping"] for stream in streams))
    await live.clock.advance(StreamSettings().ping_interval)
    await wait_until(lambda: all(stream.comments == ["ping", "ping"] for stream in streams))
    for reader in readers:
        reader.cancel()
    assert live.streams.dropped == 0


async def test_connected_counts_open_streams_and_a_closed_client_is_forgotten(live: Live) -> None:
    token = await live.token("read")
    first, second = await live.connected(token), await live.connected(token)
    assert (live.streams.connected, live.streams.opened) == (2, 2)
    first.close()
    await wait_until_connected(live, 1)
    assert live.streams.dropped == 0
    event = live.bus.publish("sync.started", {"run_id": 1})
    assert (await second.next()).id == str(event.id)  # the other stream goes on


async def test_a_client_that_falls_behind_a_burst_is_cut_off_and_replays_the_rest_on_reconnect(
    live: Live,
) -> None:
    live.streams.settings = StreamSettings(max_backlog=64 * 1024)
    token = await live.token("read")
    stream = await live.connected(token)  # reads nothing while the burst goes out
    pad = "x" * 32_000
    burst = []
    while live.streams.dropped == 0:  # no await: the kernel's buffers fill, then the transport's
        assert len(burst) < 1500, "the client was never cut off"
        burst.append(live.bus.publish("data.changed", {"project_id": 1, "iids": [len(burst)], "pad": pad}))
    assert live.streams.connected == 0
    received = []
    with pytest.raises((EOFError, aiohttp.ClientPayloadError, ConnectionResetError)):
        while True:
            received.append(await stream.next())
    assert 0 < len(received) < len(burst)
    again = await live.connected(token, last_event_id=received[-1].id)
    rest = [await again.next() for _ in range(len(burst) - len(received))]
    assert [r.id for r in received + rest] == [str(e.id) for e in burst]


async def test_a_replay_larger_than_the_backlog_limit_does_not_get_a_reading_client_cut_off(live: Live) -> None:
    token = await live.token("read")
    first = live.bus.publish("sync.started", {"run_id": 1})
    pad = "x" * 8_000  # 2000 of them: more than the kernel's socket buffers on both ends take at once
    replayed = [live.bus.publish("data.changed", {"project_id": 1, "iids": [n], "pad": pad}) for n in range(2000)]
    stream = await live.connected(token, last_event_id=str(first.id))
    assert live.streams.behind == 1  # the replay is backing up in the gateway, far past max_backlog
    after = live.bus.publish("sync.finished", {"run_id": 1})
    received = [await stream.next() for _ in range(len(replayed) + 1)]
    assert [r.id for r in received] == [str(e.id) for e in [*replayed, after]]
    assert live.streams.dropped == 0


async def test_a_client_whose_backlog_passes_the_mark_is_cut_off_while_another_keeps_receiving(
    live: Live,
) -> None:
    live.streams.settings = StreamSettings(max_backlog=64 * 1024)
    token = await live.token("read")
    stalled = await stalled_client(live, token)
    reader = await live.connected(token)
    await wait_until(lambda: live.streams.connected == 2)
    pad = "x" * 32_000  # fills the stalled client's socket buffers within a few hundred events
    sent = 0
    while live.streams.dropped == 0:
        assert sent < 5000, "the stalled client was never cut off"
        event = live.bus.publish("data.changed", {"project_id": 1, "kind": "issue", "iids": [sent], "pad": pad})
        assert (await reader.next()).id == str(event.id)  # the reader misses nothing, and never waits long
        sent += 1
    after = live.bus.publish("sync.finished", {"run_id": 1})
    assert (await reader.next()).id == str(after.id)
    assert live.streams.connected == 1
    await stalled_connection_is_closed(stalled)


async def test_a_client_whose_backlog_does_not_clear_for_the_send_timeout_is_cut_off_at_a_heartbeat(
    live: Live,
) -> None:
    settings = live.streams.settings = StreamSettings(max_backlog=1 << 30, send_timeout=10.0)
    token = await live.token("read")
    stalled = await stalled_client(live, token)
    reader = await live.connected(token)
    await wait_until(lambda: live.streams.connected == 2)
    pad = "x" * 32_000
    sent = 0
    while live.streams.behind == 0:  # until the stalled client's bytes back up in the gateway
        assert sent < 5000, "the stalled client never fell behind"
        event = live.bus.publish("data.changed", {"project_id": 1, "iids": [sent], "pad": pad})
        assert (await reader.next()).id == str(event.id)
        sent += 1
    assert live.streams.dropped == 0  # far below max_backlog: only time can tell
    assert isinstance(live.clock, FakeClock)
    await live.clock.advance(settings.send_timeout / 2)
    live.streams.heartbeat()
    assert live.streams.dropped == 0  # not yet
    await live.clock.advance(settings.ping_interval)  # the timer's heartbeat, past the send timeout
    assert (live.streams.dropped, live.streams.connected) == (1, 1)
    after = live.bus.publish("sync.finished", {"run_id": 1})
    assert (await reader.next()).id == str(after.id)  # the reader, which keeps up, stays
    assert reader.comments  # and it got the heartbeat that ended the other
    await stalled_connection_is_closed(stalled)


async def stalled_client(live: Live, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client with a tiny receive buffer that sends its request and then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = live.url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


async def stalled_connection_is_closed(stalled: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    reader, writer = stalled
    try:
        while await asyncio.wait_for(reader.read(1 << 20), SETTLE):
            pass
    except ConnectionResetError:
        pass  # aborted: what a cut-off client sees
    writer.close()


async def test_a_stream_asks_the_kernel_to_drop_a_peer_that_stops_acknowledging_after_the_send_timeout(
    live: Live,
) -> None:
    await live.connected(await live.token("read"))
    (stream,) = live.streams._open
    sock = stream.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == live.streams.settings.send_timeout * 1000


def test_on_uvloop_the_default_loop_streams_are_fed_and_a_stalled_client_is_cut_off(tmp_path: Path) -> None:
    import uvloop

    async def scenario() -> None:
        clock = FakeClock()
        app = create_app(gateway_config(tmp_path / "data"), clock=clock)
        server = Server(app)
        url = await server.start()
        try:
            async with aiohttp.ClientSession() as session:
                live = Live(app, url, session, clock)
                live.streams.settings = StreamSettings(max_backlog=64 * 1024)
                token = await live.token("read")
                stalled = await stalled_client(live, token)
                reader = await live.connected(token)
                await wait_until(lambda: live.streams.connected == 2)
                sockets = [s.transport.get_extra_info("socket") for s in live.streams._open]
                assert [s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) for s in sockets] == [10_000] * 2
                sent = 0
                while live.streams.dropped == 0:
                    assert sent < 5000, "the stalled client was never cut off"
                    event = live.bus.publish("data.changed", {"iids": [sent], "pad": "x" * 32_000})
                    assert (await reader.next()).id == str(event.id)
                    sent += 1
                reading = asyncio.ensure_future(reader.next())
                await live.clock.advance(StreamSettings().ping_interval)  # the app's one heartbeat timer
                await wait_until(lambda: reader.comments == ["ping"])
                reading.cancel()
                await stalled_connection_is_closed(stalled)
                reader.close()
        finally:
            await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert "uvloop" in type(runner.get_loop()).__module__
        runner.run(scenario())


# -- shutdown -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("handler_cancellation", [True, False])
async def test_shutdown_ends_every_stream_promptly(tmp_path: Path, handler_cancellation: bool) -> None:
    clock = FakeClock()
    app = create_app(gateway_config(tmp_path / "data"), clock=clock)
    # Without the on_shutdown hook this takes 2 x shutdown_timeout.
    server = Server(app, shutdown_timeout=10.0, handler_cancellation=handler_cancellation)
    url = await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            gateway = Live(app, url, session, clock)
            token = await gateway.token("read")
            streams = [await gateway.connected(token) for _ in range(3)]
            started = time.monotonic()
            await server.stop()
            assert time.monotonic() - started < 2.0
            for stream in streams:
                with pytest.raises(EOFError):
                    await stream.next()
    finally:
        await server.stop()


# -- fan-out of a real run ------------------------------------------------------------------------------


async def test_300_clients_all_receive_a_real_runs_events_from_started_to_finished(
    config_for: Callable[..., Config], server_for: Any
) -> None:
    config = config_for(auth_signing_keys="test-key-0123456789abcdef0123456789abcdef", ratelimit_api="100000/minute",
                        gateway_max_sse_per_token="1000")
    await seed_a_fresh_mirror(config)  # no start-up run: the run starts when every client is listening
    clock = SystemClock()
    gateway, _ = await server_for(create_app(config, clock=clock), clock)
    token = await gateway.token("read", "sync")
    streams = await asyncio.gather(*(gateway.connected(token) for _ in range(300)))
    answer = await gateway.session.post(gateway.url + "/api/v1/sync", headers={"Authorization": f"Bearer {token}"})
    assert answer.status == 202
    seen = await asyncio.gather(*(s.until("sync.finished", "sync.failed") for s in streams))
    assert all(events == seen[0] for events in seen)
    by_name = {e.event: e for e in seen[0]}
    started, finished = by_name["sync.started"], by_name["sync.finished"]
    run_id = started.data["run_id"]
    assert finished.data["run_id"] == run_id and finished.data["run"]["status"] == "succeeded"
    assert set(finished.data) >= {"run_id", "counts", "run"} and finished.data["counts"]["issues"] == 50
    progress = [e for e in seen[0] if e.event == "sync.progress"]
    assert progress and all(set(p.data) == {"run_id", "stage", "done", "total"} for p in progress)
    assert all(p.data["run_id"] == run_id for p in progress)
    changed = [e for e in seen[0] if e.event == "data.changed"]
    assert changed and all(set(c.data) == {"project_id", "kind", "iids", "deleted", "seq"} for c in changed)
    ids = [int(e.id) for e in seen[0] if e.id is not None]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert gateway.streams.dropped == 0


async def seed_a_fresh_mirror(config: Config) -> None:
    db = await Database.open(config.db_path)
    try:
        runs = RunLog(db, SystemClock())
        await runs.finish(await runs.start("manual", "balanced", "earlier"), "succeeded", {}, [])
    finally:
        await db.close()


# -- framing ----------------------------------------------------------------------------------------------


async def test_an_http_1_0_client_gets_the_events_unchunked_until_the_connection_ends(live: Live) -> None:
    host, port = live.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    token = await live.token("read")
    writer.write(f"GET {PATH} HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SETTLE)
    assert head.startswith(b"HTTP/1.0 200") and b"Transfer-Encoding" not in head
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SETTLE)).startswith(b"event: scheduler.state\r\n")
    await wait_until(lambda: live.streams.connected == 1)
    event = live.bus.publish("sync.started", {"run_id": 7})
    body = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SETTLE)
    assert body == f'id: {event.id}\r\nevent: sync.started\r\ndata: {{"run_id":7}}\r\n\r\n'.encode()
    live.streams.close_all()
    assert await asyncio.wait_for(reader.read(), SETTLE) == b""  # the end of the connection ends the body
    writer.close()


async def test_head_is_not_allowed_on_the_event_stream(live: Live) -> None:
    response = await live.session.head(live.url + PATH, headers={"Authorization": f"Bearer {await live.token('read')}"})
    assert response.status == 405
