"""Typed failures of the engine.

Every failure a run can meet is classified once, where it is first understood:
transient ones (timeouts, 5xx, 429) are worth retrying later, permanent ones
(401/403, a missing project, bad config) need a person. The scheduler's backoff
and pause policy reads nothing but `transient`.
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


class SyncInProgress(SyncError):
    """Another process or task holds the single-flight lock."""

    transient = True

    def __init__(self, owner: str) -> None:
        super().__init__("sync_in_progress", f"another sync is running (lock held by {owner})")
        self.owner = owner
