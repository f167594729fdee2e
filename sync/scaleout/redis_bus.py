"""The event bus shared by every gateway process through a Redis Stream.

An event is published once: a Lua script allocates its integer id (INCR) and appends it to the stream
(XADD) in one atomic step, so stream order is id order. Every process XREADs the stream into its own ring
buffer and subscribers with those same ids, which is what lets a client replay with Last-Event-ID on any
process. Redis is never on the path that must not fail: `publish` stays synchronous, local listeners run
at once, and while Redis is unreachable events are delivered in this process only, until it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import deque
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from sync.events import Event, EventBus

log = logging.getLogger("lore_gateway.bus")

DEFAULT_PREFIX = "lore-gateway:"
BLOCK_MS = 1000  # one XREAD waits at most this long, so a stop is noticed within a second
READ_COUNT = 512
PUBLISH_BATCH = 256
MAX_OUTBOX = 10_000  # events waiting for Redis beyond this are delivered locally instead (Redis too slow)
RETRY_FIRST, RETRY_MAX = 0.2, 2.0  # reconnect backoff, seconds
SOCKET_TIMEOUT = 2.0
REDIS_ERRORS = (RedisError, OSError)

# KEYS: stream, counter. ARGV: floor (the highest id the publisher has seen), maxlen, name, data, origin.
# The floor keeps ids growing after Redis lost its counter (a restart without persistence).
_PUBLISH = """
local id = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[1])
if id <= floor then
  id = floor + 1
  redis.call('SET', KEYS[2], id)
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'id', id, 'name', ARGV[3], 'data', ARGV[4],
           'origin', ARGV[5])
return id
"""

# KEYS: counter. ARGV: floor. On reconnecting, a process lifts the counter past the ids it handed out
# locally during the outage, so shared ids stay above anything its clients have seen.
_RAISE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
"""


def new_origin() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def redis_client(url: str, *, socket_timeout: float = SOCKET_TIMEOUT) -> Redis:
    """A client that fails fast: the callers here retry on their own schedule, never inside a command."""
    return Redis.from_url(
        url, socket_timeout=socket_timeout, socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


class RedisEventBus(EventBus):
    """`EventBus` whose events go through a Redis Stream; `await start()` before use, `await close()` after."""

    def __init__(self, url: str, *, buffer_size: int = 2048, prefix: str = DEFAULT_PREFIX) -> None:
        super().__init__(buffer_size=buffer_size)
        self.origin = new_origin()
        self._stream = f"{prefix}events"
        self._counter = f"{prefix}events:id"
        self._commands = redis_client(url)
        self._blocking = redis_client(url, socket_timeout=BLOCK_MS / 1000 + SOCKET_TIMEOUT)
        self._script = self._commands.register_script(_PUBLISH)
        self._raise = self._blocking.register_script(_RAISE)
        self._outbox: deque[tuple[str, dict[str, Any]]] = deque()
        self._outbox_ready = asyncio.Event()
        self._outbox_empty = asyncio.Event()  # set while nothing waits to be handed to Redis
        self._outbox_empty.set()
        self._high = 0  # the highest id this process has delivered (shared or local)
        self._cursor: str | None = None  # the stream entry read last; None until the tail is loaded
        self._shared = False
        self._tasks: list[asyncio.Task[None]] = []
        self.outages = 0  # times the bus fell back to local delivery

    @property
    def shared(self) -> bool:
        """True while events go through Redis; False while delivered in this process only."""
        return self._shared

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect once (a failure is an outage, not an error: the reader keeps trying), then run."""
        try:
            await self._connect()
        except REDIS_ERRORS as err:
            self._fall_back(err)
        self._tasks = [asyncio.create_task(self._read_loop(), name="redis-bus-reader"),
                       asyncio.create_task(self._publish_loop(), name="redis-bus-publisher")]

    async def close(self) -> None:
        """Hand queued events to Redis (briefly), stop the tasks, close the clients. Safe to call twice."""
        if self._shared:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_empty.wait(), SOCKET_TIMEOUT)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._commands.aclose()
        await self._blocking.aclose()

    # -- publishing -------------------------------------------------------------------------------------

    def publish(self, name: str, data: dict[str, Any]) -> Event:
        """Local listeners now; subscribers once the event is back from the stream with its shared id.

        The returned event has no id yet while shared (it is allocated in Redis); a local one has it.
        """
        if not self._shared or len(self._outbox) >= MAX_OUTBOX:
            return self._publish_locally(name, data)
        event = Event(name, data)
        self._notify(event)
        self._outbox.append((name, data))
        self._outbox_empty.clear()
        self._outbox_ready.set()
        return event

    def _publish_locally(self, name: str, data: dict[str, Any], *, notify: bool = True) -> Event:
        self._high += 1
        event = Event(name, data, self._high)
        if notify:
            self._notify(event)
        self._record(event)
        return event

    async def _publish_loop(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            while self._outbox:
                batch = [self._outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(self._outbox)))]
                try:
                    await self._send(batch)
                except REDIS_ERRORS as err:
                    self._fall_back(err)
                    for name, data in batch:  # their listeners already ran
                        self._publish_locally(name, data, notify=False)
            self._outbox_empty.set()

    async def _send(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        async with self._commands.pipeline(transaction=False) as pipe:
            for name, data in batch:
                args = [self._high, self.buffer_size, name, orjson.dumps(data), self.origin]
                await self._script(keys=[self._stream, self._counter], args=args, client=pipe)
            await pipe.execute()

    # -- reading ---------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        """Ping; on the first connection, fill the ring buffer from the stream's tail (replay on a new
        process covers what others published before it started)."""
        await self._blocking.ping()
        if self._cursor is None:
            tail = await self._blocking.xrevrange(self._stream, count=self.buffer_size)
            for entry_id, fields in reversed(tail):
                self._accept(entry_id, fields, notify=False)
            self._cursor = tail[0][0].decode() if tail else "0-0"
        await self._raise(keys=[self._counter], args=[self._high])
        if not self._shared:
            if self.outages:
                log.info("redis is reachable again: events are shared between processes again")
            self._shared = True

    async def _read_loop(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                if not self._shared:
                    await self._connect()
                    delay = RETRY_FIRST
                assert self._cursor is not None
                replies = await self._blocking.xread({self._stream: self._cursor}, count=READ_COUNT,
                                                     block=BLOCK_MS)
            except REDIS_ERRORS as err:
                self._fall_back(err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            for _stream, entries in replies:
                for entry_id, fields in entries:
                    self._accept(entry_id, fields, notify=True)

    def _accept(self, entry_id: bytes, fields: dict[bytes, bytes], *, notify: bool) -> None:
        self._cursor = entry_id.decode()
        try:
            event = Event(fields[b"name"].decode(), orjson.loads(fields[b"data"]), int(fields[b"id"]))
            origin = fields[b"origin"].decode()
        except (KeyError, ValueError, orjson.JSONDecodeError):
            log.warning("skipping a malformed event bus entry %s", self._cursor)
            return
        assert event.id is not None
        if event.id > self._high:
            self._high = event.id
            self._record(event)
        elif notify:
            # Only after an outage, when this process numbered events itself: its clients are past this
            # id, so the event goes out live without one (it cannot be replayed; a reconnect may `reset`).
            self._deliver(Event(event.name, event.data))
        if notify and origin != self.origin:
            self._notify_remote(event)

    def _fall_back(self, err: BaseException) -> None:
        if self._shared or not self.outages:
            self.outages += 1
            log.warning("redis is unavailable (%s): events are delivered in this process only until it "
                        "returns", err)
        self._shared = False
        # Whatever waits for Redis is delivered here now, in order, rather than held for an unknown time.
        while self._outbox:
            name, data = self._outbox.popleft()
            self._publish_locally(name, data, notify=False)
        self._outbox_empty.set()
