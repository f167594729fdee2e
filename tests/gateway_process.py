"""A gateway in a child process, for tests that measure the process itself: memory, descriptors, its log.

The child serves through `gateway.server.running`, as `serve` does (keep-alive timeout, accept guard), on a
free port of 127.0.0.1, with its settings from LORE_GATEWAY_* variables, an optional descriptor limit and
response-cache bound. It prints one JSON line {"url", "token"} (a read token) once it serves, logs JSON lines
to stderr, and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

SIGNING_KEY = "k" * 40  # an auth signing key of a length every branch accepts
STARTUP = 60.0  # seconds: a guard against a child that never comes up, not a timing assumption


@dataclass(frozen=True)
class Child:
    pid: int
    url: str
    token: str
    log: Path

    def rss(self) -> int:
        """Resident memory in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/PID/status")

    def open_descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def log_lines(self) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@contextlib.asynccontextmanager
async def gateway_process(data_dir: Path, *, nofile: int | None = None, cache_bytes: int | None = None,
                          **settings: str) -> AsyncIterator[Child]:
    """Run the child until the block exits. `settings` are env-style (gateway_keepalive_timeout="1s")."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("LORE_GATEWAY_")}
    env.update({"LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir), "LORE_GATEWAY_AUTH_SIGNING_KEYS": SIGNING_KEY})
    env.update({f"LORE_GATEWAY_{name.upper()}": value for name, value in settings.items()})
    args = [*(["--nofile", str(nofile)] if nofile else []),
            *(["--cache-bytes", str(cache_bytes)] if cache_bytes is not None else [])]
    log = data_dir.parent / "gateway-process.log"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(sys.executable, __file__, *args, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=stderr)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), STARTUP)
        assert line, f"the gateway process exited: {log.read_text()[-2000:]}"
        ready = json.loads(line)
        yield Child(proc.pid, ready["url"], ready["token"], log)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# -- the child ----------------------------------------------------------------------------------------


async def _serve(cache_bytes: int | None) -> None:
    from gateway.app import create_app
    from gateway.auth import TOKENS
    from gateway.cache import CACHE_MAX_BYTES
    from gateway.server import running, wait_for_stop_signal
    from sync.config import load_config

    app = create_app(load_config(None, os.environ), scheduler=False)
    if cache_bytes is not None:
        app[CACHE_MAX_BYTES] = cache_bytes
    async with running(app, "127.0.0.1", 0) as url:
        token = (await app[TOKENS].create("test", ["read"], None)).token
        print(json.dumps({"url": url, "token": token}), flush=True)
        await wait_for_stop_signal()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nofile", type=int)
    parser.add_argument("--cache-bytes", type=int)
    args = parser.parse_args()
    if args.nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    from gateway.server import configure_logging

    configure_logging("info")
    asyncio.run(_serve(args.cache_bytes))


if __name__ == "__main__":
    main()
