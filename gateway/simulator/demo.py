"""`lore-gateway demo`: the whole flow against the built-in GitLab simulator, with no set-up.

The simulator keeps changing a few items every few seconds and delivers the
webhooks GitLab would send, signed with the demo's secret, to the gateway; so
a newcomer sees webhook -> debounced run -> SSE progress -> fresh REST data.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets

import aiohttp

from gateway.simulator.gitlab import GitLabSimulator
from gateway.simulator.profiles import DEFAULT_PROFILE

log = logging.getLogger("lore_gateway.demo")

DEMO_PROJECTS = (("demo/storefront", 80, 30), ("demo/platform", 60, 20))
WORDS = ("login", "checkout", "cache", "timeout", "search", "billing", "export", "crash", "latency", "docs")


def build_simulator(seed: int = 42, gitlab_version: str = DEFAULT_PROFILE) -> GitLabSimulator:
    sim = GitLabSimulator(token=secrets.token_urlsafe(16), seed=seed, latency=0.005, gitlab_version=gitlab_version)
    for path, issues, mrs in DEMO_PROJECTS:
        sim.add_project(path, issues=issues, merge_requests=mrs, notes_per_item=3)
    sim.enable_work_items()  # a Premium-like GitLab, so issues show their work-item status
    return sim


class Churn:
    """Changes a few items every `every` seconds and delivers their webhooks to the gateway."""

    def __init__(
        self,
        sim: GitLabSimulator,
        webhook_url: str,
        secret: str,
        *,
        every: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._sim = sim
        self._url = webhook_url
        self._secret = secret
        self._every = every
        self._rng = rng or random.Random(7)
        self.delivered = 0

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await asyncio.sleep(self._every)
                for _ in range(self._rng.randint(1, 3)):
                    status = await self._sim.deliver(
                        self._change(), self._url, secret=self._secret, session=session
                    )
                    self.delivered += 1
                    log.info("demo: delivered a webhook (HTTP %s)", status)

    def _change(self):  # -> Webhook
        project = self._rng.choice(list(self._sim.projects.values()))
        roll = self._rng.random()
        if roll < 0.5 and project.issues:
            iid = self._rng.choice(list(project.issues))
            title = f"{self._rng.choice(WORDS).capitalize()} {self._rng.choice(WORDS)} issue #{iid}"
            return self._sim.update_issue(project.id, iid, title=title)
        if roll < 0.8 and project.issues:
            iid = self._rng.choice(list(project.issues))
            return self._sim.add_note(
                project.id, "issue", iid, f"Seeing {self._rng.choice(WORDS)} again today."
            )
        iid = self._rng.choice(list(project.merge_requests))
        return self._sim.update_merge_request(project.id, iid, title=f"Fix {self._rng.choice(WORDS)}")
