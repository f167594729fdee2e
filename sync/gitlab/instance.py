"""Which GitLab the gateway talks to (version, edition) and what the gateway cannot do on it.

Read from `GET /version` and `GET /metadata` (doc/api/version.md, doc/api/metadata.md; `enterprise` came in
15.6, /metadata itself in 15.2). The feature floors are GitLab's, as docs/gitlab.md lists them: merge request
`/diffs` came in 15.7, the work-item status object in EE 17.8 (Premium or Ultimate; the tier cannot be read
without admin rights, so an EE of that age counts as having it), and project webhooks take a signing token
from 19.0 (GitLab's doc/api/system_hooks.md, `signing_token_present`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sync.errors import PermanentError, SyncError
from sync.gitlab.client import GitLabClient

DIFFS_SINCE = (15, 7)
WORK_ITEM_STATUS_SINCE = (17, 8)
SIGNING_TOKEN_SINCE = (19, 0)
_VERSION = re.compile(r"(\d+)\.(\d+)")


@dataclass(frozen=True)
class Instance:
    """What GitLab says of itself; `enterprise` is None when it does not say (before 15.6)."""

    version: str
    revision: str | None
    enterprise: bool | None

    @property
    def release(self) -> tuple[int, int] | None:
        match = _VERSION.match(self.version)
        return (int(match[1]), int(match[2])) if match else None

    @property
    def edition(self) -> str:
        if self.enterprise is None:
            return "EE" if "-ee" in self.version else "unknown edition"
        return "EE" if self.enterprise else "CE"

    def at_least(self, release: tuple[int, int]) -> bool:
        return self.release is not None and self.release >= release

    @property
    def supports_signing_token(self) -> bool:
        return self.at_least(SIGNING_TOKEN_SINCE)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "revision": self.revision, "edition": self.edition}


@dataclass(frozen=True)
class Degraded:
    """A gateway feature this GitLab cannot serve, and why."""

    feature: str
    reason: str


async def read_instance(client: GitLabClient) -> Instance:
    """/version, then /metadata for the edition when this GitLab has it (a 404 there is an old GitLab)."""
    version = await client.get("/version")
    if not isinstance(version, dict) or not isinstance(version.get("version"), str):
        raise PermanentError("gitlab_bad_response", "GET /version: no version in the answer")
    enterprise: bool | None = None
    try:
        metadata = await client.get("/metadata")
    except SyncError as error:
        if error.code != "gitlab_not_found":
            raise
        metadata = None
    if isinstance(metadata, dict) and isinstance(metadata.get("enterprise"), bool):
        enterprise = metadata["enterprise"]
    return Instance(version["version"], version.get("revision"), enterprise)


def degraded_features(instance: Instance) -> list[Degraded]:
    """What degrades on this GitLab, each with the reason (empty: everything works)."""
    found = []
    version = instance.version
    if not instance.at_least(DIFFS_SINCE):
        found.append(Degraded("mr_diffs", f"GitLab {version} has no merge request /diffs (15.7+): the files an "
                                          "MR touches come from /changes, one unpaginated request per MR"))
    if instance.enterprise is False or not instance.at_least(WORK_ITEM_STATUS_SINCE):
        found.append(Degraded("work_item_status", f"GitLab {version} ({instance.edition}) has no work-item status "
                                                  "(EE 17.8+, Premium or Ultimate): issues show "
                                                  "work_item_status null"))
    if not instance.supports_signing_token:
        found.append(Degraded("signed_webhooks", f"GitLab {version} cannot sign webhooks (19.0+): hooks use the "
                                                 "plain secret token (X-Gitlab-Token)"))
    return found
