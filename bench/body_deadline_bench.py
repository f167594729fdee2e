"""What webhook.body_timeout's deadline costs a webhook whose body is already here (nearly every one).

The same 10 KB body (GitLab's hooks are 2-20 KB) is read from an aiohttp StreamReader that holds it all,
the way gateway/webhooks.py reads it, three ways side by side in one run: with no deadline (the baseline,
as before webhook.body_timeout existed), through gateway.http.BodyDeadline (which skips the timer when
the body has all arrived), and inside an asyncio.timeout every time (what a timer on every body costs).

    .venv/bin/python bench/body_deadline_bench.py [--quick]

Prints microseconds per body read for each way, best of several rounds, and each as a ratio of the
baseline; the last line is the BodyDeadline ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from unittest import mock

from aiohttp.streams import StreamReader

from gateway.http import BodyDeadline

BODY = b"x" * 10_000
Read = Callable[[SimpleNamespace], Awaitable[bytearray]]


def arrived(loop: asyncio.AbstractEventLoop) -> SimpleNamespace:
    """A request whose whole body came with its head: what aiohttp hands the handler for a small hook."""
    content = StreamReader(mock.Mock(_reading_paused=False), 2**16, loop=loop)
    content.feed_data(BODY)
    content.feed_eof()
    return SimpleNamespace(content=content)


async def chunks(request: SimpleNamespace) -> bytearray:
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
    return body


async def baseline(request: SimpleNamespace) -> bytearray:
    return await chunks(request)


async def with_deadline(request: SimpleNamespace) -> bytearray:
    async with BodyDeadline(request, 30.0):  # type: ignore[arg-type]
        return await chunks(request)


async def always_timer(request: SimpleNamespace) -> bytearray:
    async with asyncio.timeout(30.0):
        return await chunks(request)


async def per_read(read: Read, count: int) -> float:
    """Seconds per read, the requests made beforehand so only the reads are timed."""
    loop = asyncio.get_running_loop()
    requests = [arrived(loop) for _ in range(count)]
    started = time.perf_counter()
    for request in requests:
        await read(request)
    return (time.perf_counter() - started) / count


async def main(quick: bool) -> None:
    count, rounds = (2_000, 3) if quick else (50_000, 7)
    ways: dict[str, Read] = {"no deadline (baseline)": baseline, "BodyDeadline": with_deadline,
                             "asyncio.timeout always": always_timer}
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(rounds):  # interleaved, so load on the machine falls on every way alike
        for name, read in ways.items():
            best[name] = min(best[name], await per_read(read, count))
    base = best["no deadline (baseline)"]
    print(f"{count} reads of a {len(BODY)} B body that has all arrived, best of {rounds} rounds")
    for name, seconds in best.items():
        print(f"  {name:24} {seconds * 1e6:7.2f} us  {seconds / base:5.2f}x")
    print(f"BodyDeadline vs no deadline: {best['BodyDeadline'] / base:.2f}x "
          f"(+{(best['BodyDeadline'] - base) * 1e6:.2f} us a body)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer reads: a smoke run for the tests")
    asyncio.run(main(parser.parse_args().quick))
