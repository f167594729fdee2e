"""Peak memory of one large webhook through the real endpoint, as a multiple of its body, beside the old path.

The gateway serves in this process under tracemalloc; a thread sends each body with a blocking
`sendall`, which adds no Python allocation of its own. The peak counts every allocation the
request makes: the read buffer, the parse, the route, the answer. The baseline is the intake path
as it was before bodies of 25 MB were allowed. It is rebuilt here on a route of its own in the same
app: the body read into a bytearray and copied to bytes, then parsed whole. The ratio old/new is
what the copy cost.

    python bench/webhook_memory_bench.py [--mb 20] [--quick] [--json]

Bodies: an Issue Hook for a description edit (GitLab carries the text three times: the attributes
and `changes`). It is sent once all ASCII, and once with an emoji in each copy of the text: Python
then stores each character in 4 bytes, the worst case for the parse. A Pipeline Hook of the same
size is ignored from its header and never parsed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import webhooks
from gateway.app import create_app
from sync.config import Config, GatewayConfig, RateLimitConfig, WebhookConfig

SECRET = "bench-secret-0123456789"
MB = 1_000_000


def issue_edit(size: int, *, emoji: bool) -> bytes:
    """An Issue Hook of about `size` bytes: a description replaced by another, carried three times."""
    text_len = size // 3 - 200
    text = ("\U0001f600" if emoji else "") + "d" * (text_len - (4 if emoji else 0))
    payload = {
        "object_kind": "issue", "event_type": "issue", "project": {"id": 1001, "path_with_namespace": "a/b"},
        "object_attributes": {"id": 1, "iid": 2, "title": "t", "description": text, "action": "update"},
        "changes": {"description": {"previous": text.replace("d", "p"), "current": text}},
    }
    return orjson.dumps(payload)


def pipeline(size: int) -> bytes:
    return orjson.dumps({"object_kind": "pipeline", "project": {"id": 1001}, "log": "x" * (size - 100)})


async def old_receive(request: web.Request) -> web.Response:
    """The intake path before this bench existed, for token-authenticated events: read, copy, parse, route."""
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
    raw = bytes(body)  # the old _read_body returned bytes: a second copy of the whole body
    del body
    target = webhooks.route(request.headers["X-Gitlab-Event"], orjson.loads(raw))
    return web.json_response({"accepted": True, "kind": target.kind if target else None}, status=202)


def send(port: int, path: str, event: str, body: bytes) -> int:
    head = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"X-Gitlab-Event: {event}\r\nX-Gitlab-Token: {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode())
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


async def measure(port: int, path: str, event: str, body: bytes) -> tuple[int, int]:
    """(status, peak bytes traced while the request ran, above what was allocated before it)."""
    before, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    status = await asyncio.to_thread(send, port, path, event, body)
    _, peak = tracemalloc.get_traced_memory()
    return status, peak - before


async def run(size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="webhook-memory-") as tmp:
        config = Config(gateway=GatewayConfig(data_dir=Path(tmp)), webhook=WebhookConfig(secrets=(SECRET,)),
                        ratelimit=RateLimitConfig(webhook="1000000/minute"))
        app = create_app(config, scheduler=False)
        app.router.add_post("/old", old_receive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            await measure(port, webhooks.PATH, "Issue Hook", issue_edit(4096, emoji=False))  # warm up
            rows = []
            for name, event, body in (("Issue Hook, ASCII", "Issue Hook", issue_edit(size, emoji=False)),
                                      ("Issue Hook, emoji", "Issue Hook", issue_edit(size, emoji=True)),
                                      ("Pipeline Hook", "Pipeline Hook", pipeline(size))):
                new_status, new_peak = await measure(port, webhooks.PATH, event, body)
                old_status, old_peak = await measure(port, "/old", event, body)
                rows.append({"body": name, "bytes": len(body), "new_status": new_status, "old_status": old_status,
                             "new_peak": new_peak, "old_peak": old_peak})
        finally:
            await runner.cleanup()
    return {"rows": rows}


def print_report(result: dict[str, Any]) -> None:
    print("peak memory of one webhook, traced, as a multiple of its body (new path vs the old one)")
    for r in result["rows"]:
        size = r["bytes"] / MB
        new, old = r["new_peak"] / r["bytes"], r["old_peak"] / r["bytes"]
        print(f"  {r['body']:<18} {size:6.1f} MB body: new {r['new_peak'] / MB:7.1f} MB = {new:4.2f}x body"
              f" | old {r['old_peak'] / MB:7.1f} MB = {old:4.2f}x body | new/old {r['new_peak'] / r['old_peak']:.2f}"
              f"  (statuses {r['new_status']}/{r['old_status']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=20.0, help="body size in MB (default 20)")
    parser.add_argument("--quick", action="store_true", help="a 2 MB body, for the test suite")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    size = int((2.0 if args.quick else args.mb) * MB)
    tracemalloc.start()
    result = asyncio.run(run(size))
    if args.json:
        print(json.dumps(result))
    else:
        print_report(result)
    return 0 if all(r["new_status"] == r["old_status"] == 202 for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
