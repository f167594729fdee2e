"""`demo`: the gateway against the built-in GitLab simulator, which changes something every few seconds.

The one product module that starts the simulator (gateway/simulator/); docs/architecture.md says why.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.cli.base import Context, json_flag, listening
from gateway.server import configure_logging, wait_for_stop_signal
from gateway.simulator.demo import DEMO_PROJECTS, Churn, build_simulator
from gateway.simulator.profiles import DEFAULT_PROFILE, PROFILES
from sync import Config, load_config


def register(commands: Any) -> None:
    p = commands.add_parser("demo", help="run the gateway against a built-in simulated GitLab")
    p.add_argument("--port", type=int, default=8080, help="gateway port (default 8080; 0 picks a free one)")
    p.add_argument("--data-dir", type=Path, help="where the demo's database goes (default: a new temp dir)")
    p.add_argument("--every", type=float, default=5.0, help="seconds between simulated GitLab changes")
    p.add_argument("--gitlab-version", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                   help=f"which GitLab the simulator behaves like (default {DEFAULT_PROFILE}; see docs/gitlab.md)")
    json_flag(p)
    p.set_defaults(handler=cmd_demo)


async def cmd_demo(ctx: Context) -> None:
    args = ctx.args
    configure_logging("info")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="lore-gateway-demo-"))
    sim = build_simulator(gitlab_version=args.gitlab_version)
    sim_runner = web.AppRunner(sim.app(), access_log=None)
    await sim_runner.setup()
    try:
        await web.TCPSite(sim_runner, "127.0.0.1", 0).start()
        gitlab_url = f"http://127.0.0.1:{sim_runner.addresses[0][1]}"
        secret = secrets.token_urlsafe(24)
        config = _demo_config(data_dir, gitlab_url, sim.token, secret)
        app = create_app(config)
        async with listening(app, "127.0.0.1", args.port) as url:
            token = await app[TOKENS].create("demo", ["read", "sync"], None)
            document = _demo_banner(url, token.token, data_dir)
            if ctx.json:
                sys.stdout.buffer.write(orjson.dumps(document) + b"\n")
                sys.stdout.flush()
            else:
                print(_demo_text(document), flush=True)
            churn = asyncio.create_task(Churn(sim, f"{url}/webhooks/gitlab", secret, every=args.every).run())
            try:
                await wait_for_stop_signal()
            finally:
                churn.cancel()
                with suppress(asyncio.CancelledError):
                    await churn
    finally:
        await sim_runner.cleanup()
    return None  # the banner was printed while running


def _demo_config(data_dir: Path, gitlab_url: str, gitlab_token: str, secret: str) -> Config:
    projects = ",".join(path for path, _, _ in DEMO_PROJECTS)
    return load_config(
        None,
        {
            "LORE_GATEWAY_GATEWAY_DATA_DIR": str(data_dir),
            "LORE_GATEWAY_GITLAB_URL": gitlab_url,
            "LORE_GATEWAY_GITLAB_TOKEN": gitlab_token,
            "LORE_GATEWAY_GITLAB_PROJECTS": projects,
            "LORE_GATEWAY_WEBHOOK_SECRETS": secret,
            "LORE_GATEWAY_SYNC_DEBOUNCE": "2s",
            "LORE_GATEWAY_SYNC_INTERVAL": "10m",
        },
    )


def _demo_banner(url: str, token: str, data_dir: Path) -> dict[str, Any]:
    return {
        "url": url,
        "token": token,
        "data_dir": str(data_dir),
        "urls": {
            "status_page": f"{url}/",
            "sync_status": f"{url}/api/v1/sync/status",
            "projects": f"{url}/api/v1/projects",
            "events": f"{url}/api/v1/events",
            "openapi": f"{url}/api/v1/openapi.json",
        },
    }


def _demo_text(doc: dict[str, Any]) -> str:
    token, urls = doc["token"], doc["urls"]
    return "\n".join(
        [
            "",
            f"lore-gateway demo is running at {doc['url']} against a simulated GitLab that changes every few seconds.",
            f"  read+sync token (shown once): {token}",
            "",
            f"  status page:   {urls['status_page']}",
            f"  sync status:   curl -H 'Authorization: Bearer {token}' {urls['sync_status']}",
            f"  projects:      curl -H 'Authorization: Bearer {token}' {urls['projects']}",
            f"  live events:   curl -N -H 'Authorization: Bearer {token}' {urls['events']}",
            f"  API document:  {urls['openapi']}",
            f"  data:          {doc['data_dir']}",
            "",
            "Press Ctrl-C to stop.",
        ]
    )
