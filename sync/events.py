"""The event catalog and the in-process bus that fans the events out to subscribers.

Every event is a small frozen dataclass with its `name` and documented fields (docs/api.md "Live
events" is the public contract); publishers `emit()` them and subscribers compare with `Class.name`,
so reshaping an event is one edit here that every user of it sees.

Publishing never blocks and never fails because of a subscriber: each one has a
bounded queue, and one that falls behind is cut off (`overflowed`) rather than
allowed to stall the sync or grow memory without bound. A fan-out (`add_fanout`)
gets each event synchronously instead, for a consumer that serves many clients
and bounds each of them itself (the SSE streams). Events get monotonic
ids and are kept in a bounded ring buffer so a reconnecting client can replay
what it missed, or learn that it must re-read (the id has aged out).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any]
    id: int | None = None


# -- the catalog ----------------------------------------------------------------------------------------


class CatalogEvent:
    """Base of the catalog: a `name` and fields; `payload()` is the `data` the bus carries (field order)."""

    name: ClassVar[str]

    def payload(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _field_names(type(self))}


@functools.cache
def _field_names(event_type: type) -> tuple[str, ...]:
    """A catalog event's field names in order, looked up once per type: `fields()` walks the class's
    dataclass metadata on every call, and a webhook emits one event per request."""
    return tuple(f.name for f in fields(event_type))


@dataclass(frozen=True)
class SyncQueued(CatalogEvent):
    """A run was asked for and will start when the scheduler can (no run id yet)."""

    name: ClassVar[str] = "sync.queued"
    run_id: int | None
    trigger: str


@dataclass(frozen=True)
class SyncStarted(CatalogEvent):
    """A run started: `run` is its record (`Run.to_json()`)."""

    name: ClassVar[str] = "sync.started"
    run_id: int
    run: dict[str, Any]


@dataclass(frozen=True)
class SyncProgress(CatalogEvent):
    """How far the current stage is: `done` of `total` (throttled to about 50 steps a stage)."""

    name: ClassVar[str] = "sync.progress"
    run_id: int
    stage: str
    done: int
    total: int


@dataclass(frozen=True)
class SyncFinished(CatalogEvent):
    """A run succeeded: what it counted and warned about, and its final record."""

    name: ClassVar[str] = "sync.finished"
    run_id: int
    counts: dict[str, int]
    warnings: list[str]
    run: dict[str, Any]


@dataclass(frozen=True)
class SyncFailed(CatalogEvent):
    """A run failed (or was cancelled); `transient` says whether a retry may help."""

    name: ClassVar[str] = "sync.failed"
    run_id: int
    error_code: str
    message: str
    transient: bool


@dataclass(frozen=True)
class DataChanged(CatalogEvent):
    """Items of one project changed (`deleted` among them); `seq`: the change feed after this commit."""

    name: ClassVar[str] = "data.changed"
    project_id: int
    kind: str
    iids: list[int]
    deleted: list[int]
    seq: int


@dataclass(frozen=True)
class WebhookReceived(CatalogEvent):
    """A webhook was stored in the inbox (or recognised as a duplicate); the local scheduler wakes on it."""

    name: ClassVar[str] = "webhook.received"
    event_id: str
    event: str
    project_id: int | None
    kind: str | None
    iid: int | None
    duplicate: bool


@dataclass(frozen=True)
class SchedulerState(CatalogEvent):
    """The scheduler's snapshot (state, next run, backoff, pause), the fields of docs/api.md's status."""

    name: ClassVar[str] = "scheduler.state"
    snapshot: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return self.snapshot


@dataclass(frozen=True)
class Reset(CatalogEvent):
    """To one SSE client only: the events after `last_event_id` are gone; re-read the REST API."""

    name: ClassVar[str] = "reset"
    last_event_id: str
    reason: str
    message: str


@dataclass(eq=False)
class Subscription:
    """A subscriber's bounded queue; `overflowed` once it fell too far behind."""

    queue: asyncio.Queue[Event]
    overflowed: bool = False
    _bus: EventBus | None = field(default=None, repr=False)

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        """Safe to call more than once."""
        if self._bus is not None:
            self._bus._subscribers.discard(self)
            self._bus = None


class EventBus:
    """One process's bus. A shared bus (sync.scaleout.redis_bus) subclasses it and keeps this public API."""

    def __init__(self, *, buffer_size: int = 2048, first_id: int = 1) -> None:
        self._ids: Iterator[int] = itertools.count(first_id)
        self._buffer: deque[Event] = deque(maxlen=buffer_size)
        self._subscribers: set[Subscription] = set()
        self._listeners: list[Callable[[Event], None]] = []
        self._remote_listeners: list[Callable[[Event], None]] = []
        self._fanouts: list[Callable[[Event], None]] = []
        self.dropped_subscribers = 0

    @property
    def buffer_size(self) -> int:
        return self._buffer.maxlen or 0

    def emit(self, event: CatalogEvent) -> Event:
        """Publish a catalog event: the way publishers use the bus."""
        return self.publish(event.name, event.payload())

    def publish(self, name: str, data: dict[str, Any]) -> Event:
        event = Event(name, data, next(self._ids))
        self._notify(event)
        self._record(event)
        return event

    def _notify(self, event: Event) -> None:
        for listener in self._listeners:
            listener(event)

    def _record(self, event: Event) -> None:
        """Into the ring buffer and out to every subscriber; ids must only grow."""
        self._buffer.append(event)
        self._deliver(event)

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """A synchronous in-process callback for every event (the scheduler's doorbell); never dropped.

        A listener must be quick and must not raise.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[Event], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def add_remote_listener(self, listener: Callable[[Event], None]) -> None:
        """A callback for events other processes published (a shared bus only; this one has none).

        Listeners of `add_listener` see what this process did (its scheduler's doorbell, its metrics);
        a remote listener sees what the others did, e.g. a data change that must invalidate a cache here.
        """
        self._remote_listeners.append(listener)

    def remove_remote_listener(self, listener: Callable[[Event], None]) -> None:
        if listener in self._remote_listeners:
            self._remote_listeners.remove(listener)

    def _notify_remote(self, event: Event) -> None:
        for listener in self._remote_listeners:
            listener(event)

    def add_fanout(self, deliver: Callable[[Event], None]) -> None:
        """A synchronous callback for exactly what subscribers get: every event, in order, with its id
        (on a shared bus: once the id is allocated, other processes' events included).

        For a consumer that fans each event out to many clients at once instead of holding a queue for
        each (the SSE streams, gateway/sse.py). It must not raise; the bus does not wait for anyone, so
        it must not block either.
        """
        self._fanouts.append(deliver)

    def remove_fanout(self, deliver: Callable[[Event], None]) -> None:
        if deliver in self._fanouts:
            self._fanouts.remove(deliver)

    def _deliver(self, event: Event) -> None:
        for deliver in self._fanouts:
            deliver(event)
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.overflowed = True
                sub.close()
                self.dropped_subscribers += 1

    def subscribe(self, maxsize: int = 256) -> Subscription:
        sub = Subscription(asyncio.Queue(maxsize), _bus=self)
        self._subscribers.add(sub)
        return sub

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def last_id(self) -> int | None:
        return self._buffer[-1].id if self._buffer else None

    def since(self, last_id: int) -> list[Event] | None:
        """Events after `last_id`, or None when some of them have aged out of the buffer."""
        newest = self.last_id or 0
        if last_id > newest:
            return None  # an id from an earlier life of the bus: nothing to line it up with
        if last_id == newest:
            return []
        if last_id < (self._buffer[0].id or 0) - 1:
            return None
        return [e for e in self._buffer if (e.id or 0) > last_id]
