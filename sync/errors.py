"""Typed failures of the engine.

Every failure a run can meet is classified once, where it is first understood:
transient ones (timeouts, 5xx, 429) are worth retrying later, permanent ones
(401, a 403/404 on a configured project, bad config) need a person. The scheduler's
backoff and pause policy reads nothing but `transient`. A third kind, ItemGone,
never reaches the scheduler: the pipeline removes that one item and goes on.
"""

from __future__ import annotations


class SyncError(Exception):
    """A failure with a stable snake_case `code` and a human `message`."""

    transient: bool = False

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class TransientError(SyncError):
    """Worth retrying: the same request may well succeed later."""

    transient = True


class PermanentError(SyncError):
    """Will fail again until someone changes something (token, config, project)."""

    transient = False


class ItemGone(SyncError):
    """GitLab answered 404 or 403 for one issue or MR, or for its discussions, notes or diffs.

    The item was deleted, moved, or made confidential or otherwise hidden from this token: the mirror
    drops it (with its notes, files and documents) and the run goes on. Only the pipeline raises and
    catches it; a 403/404 on a configured project stays a PermanentError.
    """

    transient = False

    # The GitLabClient codes that mean "not there for this token" when the request names one item.
    CAUSES = frozenset({"gitlab_not_found", "gitlab_forbidden"})

    def __init__(self, project_id: int, kind: str, iid: int, cause: SyncError) -> None:
        super().__init__("item_gone", f"{kind} {project_id}#{iid} is gone or hidden: {cause.message}")
        self.project_id = project_id
        self.kind = kind
        self.iid = iid


class SyncInProgress(SyncError):
    """Another process or task holds the single-flight lock."""

    transient = True

    def __init__(self, owner: str) -> None:
        super().__init__("sync_in_progress", f"another sync is running (lock held by {owner})")
        self.owner = owner
