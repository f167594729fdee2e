"""Time as a seam.

Everything that waits or reads the time takes a `Clock`, so tests drive time
with `FakeClock.advance()` instead of sleeping, and stay fast and deterministic.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the Unix epoch."""

    def monotonic(self) -> float:
        """A clock that never goes backwards, for intervals."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told; `sleep` resolves on `advance`."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._start = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._start

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper in deadline order."""
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            if not future.done():
                future.set_result(None)
                # Let the woken task run before waking the next one.
                for _ in range(5):
                    await asyncio.sleep(0)
        self._now = target
        for _ in range(5):
            await asyncio.sleep(0)


def utc_iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC with a `Z` suffix, milliseconds kept: the one format we emit."""
    if ts is None:
        return None
    ms = round(ts * 1000)
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_time(text: str) -> float:
    """Any timestamp GitLab sends (REST, hook attributes, Ruby's '... UTC') as Unix seconds.

    Raises ValueError for anything else.
    """
    value = text.strip()
    if value.endswith(" UTC"):
        value = value[:-4].replace(" ", "T") + "+00:00"
    elif value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value.replace(" ", "T", 1))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


_CANONICAL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def normalize_time(text: str) -> str:
    """A GitLab timestamp in our one sortable form (RFC 3339, UTC, milliseconds, Z)."""
    if _CANONICAL.fullmatch(text):
        return text  # GitLab's REST API already writes this form: skip the parse on the hot path
    return utc_iso(parse_time(text))  # type: ignore[return-value]
