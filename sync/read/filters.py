"""What a list of issues or merge requests may be narrowed to, parsed from a client's parameters.

The REST API and the MCP tools parse the same parameters with these functions, so both refuse the same
values with the same InvalidFilter (the parameter it names becomes the 400's message).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from sync.clock import utc_iso
from sync.types import Kind

STATES: dict[str, tuple[str, ...]] = {
    "issue": ("opened", "closed", "all"),
    "merge_request": ("opened", "closed", "merged", "locked", "all"),
}
MAX_LABELS = 20
MAX_TEXT = 255
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")


class InvalidFilter(ValueError):
    """A filter value the API must refuse; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True)
class ItemFilters:
    """What a list of issues or merge requests is narrowed to; `state` "all" means no narrowing."""

    state: str = "all"
    labels: tuple[str, ...] = ()  # sorted and deduplicated: every one must be on the item
    author: str | None = None
    updated_after: str | None = None  # normalized, inclusive
    status: str | None = None  # issues only: a work-item status name or category, lower case, or "none"

    def canonical(self) -> str:
        """One spelling per meaning, for cache keys and cursor fingerprints."""
        return orjson.dumps([self.state, self.labels, self.author, self.updated_after, self.status]).decode()


def parse_state(kind: Kind, value: str) -> str:
    if value not in STATES[kind]:
        raise InvalidFilter("state", f"must be one of {', '.join(STATES[kind])}")
    return value


def parse_status(value: str) -> str:
    """A work-item status name or category (case-insensitive), or `none` for issues without one."""
    wanted = value.strip().lower()
    if not wanted or len(wanted) > MAX_TEXT:
        raise InvalidFilter("status", f"a status name or category of 1 to {MAX_TEXT} characters, or none")
    return wanted


def parse_labels(value: str) -> tuple[str, ...]:
    """A comma list; blanks are dropped, so `labels=` means no label filter."""
    labels = sorted({label.strip() for label in value.split(",") if label.strip()})
    if len(labels) > MAX_LABELS:
        raise InvalidFilter("labels", f"at most {MAX_LABELS} labels")
    if any(len(label) > MAX_TEXT for label in labels):
        raise InvalidFilter("labels", f"a label is at most {MAX_TEXT} characters")
    return tuple(labels)


def parse_author(value: str) -> str:
    name = value.strip()
    if not name or len(name) > MAX_TEXT:
        raise InvalidFilter("author", f"a username of 1 to {MAX_TEXT} characters")
    return name


def parse_rfc3339(parameter: str, value: str) -> str:
    """An RFC 3339 date-time (with a `Z` or an offset) in our normalized form; InvalidFilter otherwise."""
    text = value.strip()
    if not RFC3339.fullmatch(text):
        raise InvalidFilter(parameter, "must be an RFC 3339 date-time, e.g. 2024-05-01T12:00:00Z")
    try:
        moment = datetime.fromisoformat(text.upper().replace(" ", "T").replace("Z", "+00:00"))
        return utc_iso(moment.astimezone(UTC).timestamp()) or ""
    except (ValueError, OverflowError, OSError):
        raise InvalidFilter(parameter, "is not a valid date-time") from None
