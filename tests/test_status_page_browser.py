"""The status page in a real browser: Debian's chromium, driven by playwright, against a real gateway.

The gateway runs on a real socket against the GitLab simulator (with latency, so a run takes a second
or two); the browser signs in with a token, shows the scheduler state, and follows a sync it asked for
over SSE until the bar is full. Missing chromium or playwright is a failure, never a skip: `.ci/run`
installs both. The screenshot lands in tests/artifacts/status-page.png.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.auth import TOKENS
from gateway.keys import CONFIG, SCHEDULER
from gateway.server import running
from gateway.simulator.gitlab import GitLabSimulator
from sync.clock import SystemClock
from sync.config import Config
from sync.control.runs import RunLog
from sync.gitlab.client import GitLabClient
from sync.gitlab.hooks import HookManager, Manifest, default_hook_url, wanted_hook
from sync.gitlab.instance import Instance
from sync.store.db import Database
from tests.conftest import SIM_TOKEN

try:
    from playwright.async_api import BrowserContext, Page, async_playwright, expect
except ImportError:  # reported by the `browser` fixture as a failure, with the fix
    async_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
# LIBRARY-NOTES: without the background-networking flags chromium keeps dialing out and is refused.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOT = Path(__file__).parent / "artifacts" / "status-page.png"
PANELS_SCREENSHOT = Path(__file__).parent / "artifacts" / "status-page-panels.png"
WEBHOOK_SECRET = "browser-webhook-secret"
SIMULATED_LATENCY = 0.06  # seconds per GitLab request: the first full run takes a second or two
WAIT_MS = 30_000  # a guard against a hung browser, never a timing assumption


@dataclass
class Gateway:
    app: web.Application
    url: str
    token: str


async def a_fresh_mirror(config: Config) -> None:
    """A succeeded run a moment ago: the scheduler starts no run of its own, so the only run is ours."""
    db = await Database.open(config.db_path)
    try:
        runs = RunLog(db, SystemClock())
        await runs.finish(await runs.start("manual", "balanced", "earlier"), "succeeded", {}, [])
    finally:
        await db.close()


@pytest.fixture
async def gateway(config_for: Callable[..., Config], simulator: GitLabSimulator) -> AsyncIterator[Gateway]:
    simulator.latency = SIMULATED_LATENCY
    config = config_for(auth_signing_keys="browser-test-key-0123456789abcdef0123456789abcdef",
                        webhook_secrets=WEBHOOK_SECRET, gitlab_requests_per_minute="600")
    config.gateway.data_dir.mkdir(parents=True, exist_ok=True)
    await a_fresh_mirror(config)
    app = create_app(config)
    async with running(app, "127.0.0.1", 0) as url:
        created = await app[TOKENS].create("status-page", ["read", "sync"], None)
        yield Gateway(app, url, created.token)


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium and python playwright, or a failure that says how to install them."""
    if async_playwright is None:
        pytest.fail("python playwright is missing: pip install -e '.[test]' (.ci/run does)")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does); never `playwright install`")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path, tmp_path: Path) -> AsyncIterator[BrowserContext]:
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user-data-dir
            executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 900})
        try:
            yield context
        finally:
            await context.close()


class Problems:
    """Console errors and uncaught page errors (a CSP violation shows up here)."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("console", lambda msg: self.seen.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.seen.append(str(exc)))


async def sign_in(page: Page, gateway: Gateway) -> None:
    await page.goto(gateway.url + "/")
    await page.fill("#token-input", gateway.token)
    await page.click("#token-form button[type=submit]")
    await expect(page.locator("#stream")).to_have_attribute("data-stream", "live", timeout=WAIT_MS)


RECORD_BAR = """() => {
  window.__bar = [];
  const bar = document.getElementById("sync-progress");
  new MutationObserver(() => window.__bar.push(
    {state: bar.dataset.state, value: bar.getAttribute("value"), max: bar.max})).observe(bar, {attributes: true});
}"""


# -- the page itself ------------------------------------------------------------------------------------


async def test_the_page_is_self_contained_under_a_strict_policy(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session, session.get(gateway.url + "/") as response:
        html = await response.text()
        policy = response.headers["Content-Security-Policy"]

    assert response.status == 200 and response.content_type == "text/html"
    assert re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html) is None, "an external resource"
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "unsafe-inline" not in policy and "'sha256-" in policy


# -- in the browser -------------------------------------------------------------------------------------


async def test_the_page_shows_the_state_and_follows_a_sync_to_done(gateway: Gateway,
                                                                   browser: BrowserContext) -> None:
    page = await browser.new_page()
    problems = Problems(page)
    await sign_in(page, gateway)
    await expect(page.locator("[data-scheduler-state]")).to_have_text("idle", timeout=WAIT_MS)
    await page.evaluate(RECORD_BAR)

    await page.click("#sync-now")

    bar = page.locator("#sync-progress")
    await expect(bar).to_have_attribute("data-state", "finished", timeout=WAIT_MS)
    value, maximum = await bar.evaluate("b => [b.value, b.max]")
    assert value == maximum
    seen: list[dict[str, Any]] = await page.evaluate("window.__bar")
    assert any(s["state"] == "running" and s["value"] is not None and float(s["value"]) < s["max"] for s in seen)
    first_run = page.locator("#runs tr").first
    await expect(first_run).to_contain_text("api", timeout=WAIT_MS)
    await expect(first_run).to_contain_text("succeeded", timeout=WAIT_MS)
    SCREENSHOT.parent.mkdir(exist_ok=True)  # gitignored: absent from a fresh clone
    await page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert problems.seen == []


async def test_the_token_is_asked_for_once_per_browser_session(gateway: Gateway, browser: BrowserContext) -> None:
    page = await browser.new_page()
    await sign_in(page, gateway)

    await page.reload()

    await expect(page.locator("#dashboard")).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator("#login")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('lore-gateway.token')") == gateway.token


async def test_a_refused_token_asks_again(gateway: Gateway, browser: BrowserContext) -> None:
    page = await browser.new_page()
    await page.goto(gateway.url + "/")
    await page.fill("#token-input", "lgw_not-a-real-token")
    await page.click("#token-form button[type=submit]")

    await expect(page.locator("#login-message")).to_contain_text("refused", timeout=WAIT_MS)
    assert await page.evaluate("sessionStorage.getItem('lore-gateway.token')") is None


async def install_hooks(config: Config, simulator: GitLabSimulator) -> None:
    """Both projects' webhooks, as `hooks install` makes them; GitLab then disables acme/widgets's."""
    async with GitLabClient(config.gitlab.url or "", SIM_TOKEN) as client:
        manager = HookManager(client, Manifest(config.gateway.data_dir, config.gitlab.url or ""))
        wanted = wanted_hook(config, default_hook_url(config), Instance("18.5.0-ee", None, True), push_events=False)
        for project in config.gitlab.projects:
            await manager.install(project, wanted)
        manager.manifest.save()
    simulator.hooks.disable(simulator.hooks.of_project(1001)[0].id)


async def test_the_page_shows_freshness_intake_durations_hooks_and_degraded_features(
        gateway: Gateway, browser: BrowserContext, simulator: GitLabSimulator) -> None:
    await install_hooks(gateway.app[CONFIG], simulator)
    hook = simulator.update_issue(1001, 2, title="seen by the intake chart")
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + "/webhooks/gitlab", data=hook.body(),
                                headers=hook.headers(secret=WEBHOOK_SECRET)) as response:
            assert response.status == 202
    page = await browser.new_page()
    problems = Problems(page)
    await sign_in(page, gateway)

    await page.click("#sync-now")
    await expect(page.locator("#sync-progress")).to_have_attribute("data-state", "finished", timeout=WAIT_MS)
    await gateway.app[SCHEDULER].idle()  # the run is over and the webhooks have been checked
    await page.click("#refresh")

    widgets = page.locator('#projects tr[data-project="acme/widgets"]')
    await expect(widgets).to_contain_text("30", timeout=WAIT_MS)
    await expect(widgets.locator("td").nth(4)).not_to_have_text("–")
    disabled = page.locator('#hooks tr[data-project="acme/widgets"]')
    await expect(disabled).to_have_attribute("data-hook-state", "disabled", timeout=WAIT_MS)
    await expect(disabled).to_contain_text("temporarily_disabled")
    await expect(page.locator('#hooks tr[data-project="acme/gadgets"]')).to_have_attribute("data-hook-state", "ok")
    await expect(page.locator("#intake-chart")).to_have_attribute("data-total", "1")
    assert await page.locator("#intake-chart rect").count() == 12
    assert await page.locator("#durations-chart rect").count() >= 2
    await expect(page.locator("#degraded li").first).to_contain_text("work_item_status: unavailable")
    await expect(page.locator("#warnings")).to_contain_text("webhook of acme/widgets")
    await expect(page.locator("#gitlab-requests")).to_have_text(re.compile(r"^[1-9]\d*$"))
    await expect(page.locator("#request-budget-text")).to_contain_text("budget 600/min")
    await expect(page.locator("#request-budget")).to_be_visible()
    PANELS_SCREENSHOT.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(PANELS_SCREENSHOT), full_page=True)
    assert problems.seen == []
