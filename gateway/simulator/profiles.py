"""What the simulated GitLab serves differently per version and edition (`--gitlab-version`).

One frozen record per profile names each difference the gateway has to live with, so the simulator
consults flags instead of comparing version strings. The facts come from GitLab's own docs; docs/gitlab.md
lists them with what the gateway does about each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StatusWidget = Literal["object", "string", "none"]
RateLimitHeaders = Literal["always", "on_429"]


@dataclass(frozen=True)
class VersionProfile:
    """One GitLab version/edition as far as the gateway can tell it apart."""

    name: str
    version: str  # as GET /version and /metadata report it ("18.5.0-ee"; CE carries no suffix)
    revision: str
    enterprise: bool  # /metadata `enterprise` (the field exists from 15.6)
    mr_diffs: bool  # GET /projects/:id/merge_requests/:iid/diffs (15.7+); before it only /changes
    # WorkItemWidgetStatus.status: the work-item status object (EE 17.8+); a String, the requirement's
    # verification status (EE 15.x-17.7); or no such type at all (CE, Free).
    status_widget: StatusWidget
    status_category: bool  # WorkItemStatus.category (18.1+)
    idempotency_key: bool  # webhooks carry Idempotency-Key (17.4+)
    # Self-managed Rack::Attack sends RateLimit-* only on the 429 it throttles with; gitlab.com on every answer.
    ratelimit_headers: RateLimitHeaders
    default_throttle: int | None = None  # authenticated API requests a minute GitLab enforces; None: off

    @property
    def user_agent(self) -> str:
        """The `User-Agent` of its webhooks: `GitLab/<version>` without the edition suffix."""
        return f"GitLab/{self.version.removesuffix('-ee').removesuffix('-pre')}"

    def metadata(self) -> dict[str, object]:
        """GET /metadata as api/metadata.md documents it (and GET /version, its mirror since 15.5)."""
        return {
            "version": self.version,
            "revision": self.revision,
            "kas": {"enabled": False, "externalUrl": None, "externalK8sProxyUrl": None, "version": None},
            "enterprise": self.enterprise,
        }


PROFILES: dict[str, VersionProfile] = {
    p.name: p
    for p in (
        VersionProfile("15.6", "15.6.8", "3b4a7b5c2d1", enterprise=False, mr_diffs=False, status_widget="none",
                       status_category=False, idempotency_key=False, ratelimit_headers="on_429"),
        VersionProfile("17.5-ee", "17.5.5-ee", "8f1e2b3c4d5", enterprise=True, mr_diffs=True,
                       status_widget="string", status_category=False, idempotency_key=True,
                       ratelimit_headers="on_429"),
        VersionProfile("18.5-ee", "18.5.0-ee", "c0ffee18a5b", enterprise=True, mr_diffs=True,
                       status_widget="object", status_category=True, idempotency_key=True,
                       ratelimit_headers="on_429"),
        VersionProfile("ce", "18.5.0", "c0ffee18a5b", enterprise=False, mr_diffs=True, status_widget="none",
                       status_category=False, idempotency_key=True, ratelimit_headers="on_429"),
        # GitLab.com: 2,000 authenticated API requests a minute per user (user/gitlab_com/index.md).
        VersionProfile("gitlab.com", "18.6.0-pre", "d1e2f3a4b5c", enterprise=True, mr_diffs=True,
                       status_widget="object", status_category=True, idempotency_key=True,
                       ratelimit_headers="always", default_throttle=2000),
    )
}
DEFAULT_PROFILE = "18.5-ee"


def profile_named(name: str) -> VersionProfile:
    """The profile called `name`; ValueError naming the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown GitLab version profile {name!r}; known: {known}") from None
