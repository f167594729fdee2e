"""GitLab's side of the work-item statuses: the GraphQL query for a batch of issues, sending it, and what
GitLab's answer or its errors mean.

It knows the GraphQL schema's versions (no `category` before 18.1, a String `status` on EE before 17.8)
and sizes batches to GitLab's complexity limit and its 30 s timeout (`BatchSizer`); sync/ingest/workitems.py
decides which issues to ask about and stores what comes back (docs/gitlab.md).
"""

from __future__ import annotations

import re
from typing import Any

from sync.errors import PermanentError, TransientError
from sync.gitlab.client import GitLabClient

MAX_BATCH = 100  # GitLab's page size limit for a connection

_COMPLEXITY = re.compile(r"Query has complexity of \d+, which exceeds max complexity of \d+")
_UNDEFINED = re.compile(r"doesn't exist on type|No such type|undefinedField|undefinedType|can't be a fragment")
# GitLab EE 15.x-17.7: WorkItemWidgetStatus exists, but its `status` is the requirement's verification
# status, a String, so selecting `{ name }` on it fails validation (graphql-ruby's selectionMismatch).
_SCALAR_STATUS = re.compile(r"Selections can't be made on scalars \(field 'status'")

Status = dict[str, Any]  # {"name", "category"}; category None before GitLab 18.1


def build_query(with_category: bool = True) -> str:
    """The batch query; without `category` for GitLab before 18.1, which does not know that field."""
    fields = "name category" if with_category else "name"
    return (
        "query workItemStatuses($fullPath: ID!, $iids: [String!], $first: Int) {"
        " project(fullPath: $fullPath) { workItems(iids: $iids, first: $first) {"
        f" nodes {{ iid widgets {{ ... on WorkItemWidgetStatus {{ status {{ {fields} }} }} }} }} }} }} }}"
    )


class StatusesUnavailable(Exception):
    """GitLab cannot answer this at all (no GraphQL, no workItems, no widget)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProjectStatusesUnavailable(Exception):
    """GitLab answers, but not for this project (no status widget there, or the path is unknown)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BatchRejected(Exception):
    """GitLab refused this batch (complexity, timeout, or an error it would not explain per item)."""

    def __init__(self, reason: str, *, complexity: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.complexity = complexity


class StatusQuery:
    """Asks GitLab for a batch of issues' statuses; learns once per run whether it knows `category`."""

    def __init__(self, client: GitLabClient) -> None:
        self._client = client
        self._with_category = True

    async def fetch(self, path: str, iids: list[int]) -> dict[int, Status | None]:
        """Statuses by iid (items GitLab did not return are absent).

        Raises BatchRejected (ask again in smaller batches, or alone), ProjectStatusesUnavailable,
        StatusesUnavailable, or the client's TransientError when its retries ran out.
        """
        variables = {"fullPath": path, "iids": [str(i) for i in iids], "first": len(iids)}
        try:
            answer = await self._client.post_json(
                "/api/graphql", {"query": build_query(self._with_category), "variables": variables}
            )
        except PermanentError as exc:
            raise StatusesUnavailable(exc.message) from exc
        except TransientError as exc:
            if exc.code == "gitlab_query_timeout":
                raise BatchRejected("GitLab timed out on the query") from exc
            raise
        if not isinstance(answer, dict):
            raise BatchRejected("the answer is not a JSON object")
        errors = answer.get("errors")
        if errors:
            self._classify(errors)
            return await self.fetch(path, iids)  # only after dropping `category`
        return _statuses(answer, path)

    def _classify(self, errors: Any) -> None:
        """Raise what GraphQL `errors` mean; return only when a retry without `category` may work."""
        messages = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in _as_list(errors)]
        text = "; ".join(messages) or "GraphQL errors"
        if any(_COMPLEXITY.search(m) for m in messages):
            raise BatchRejected(text, complexity=True)
        if any(_SCALAR_STATUS.search(m) for m in messages):
            # The query itself is refused, whatever the batch: halving it would only repeat the refusal.
            raise StatusesUnavailable(
                "this GitLab's status widget is a requirement's verification status (a String: EE before 17.8),"
                " not the work-item status"
            )
        if any(_UNDEFINED.search(m) for m in messages) or _has_undefined_code(errors):
            if self._with_category and all("'category'" in m for m in messages):
                self._with_category = False  # GitLab before 18.1: statuses without categories
                return
            raise StatusesUnavailable(text)
        raise BatchRejected(text)


# -- batch sizing ---------------------------------------------------------------------------------


class BatchSizer:
    """How many issues the next request asks for.

    Both rejections halve the size. A complexity error depends on the size alone (GitLab computes it
    from the query before running it), so the rejected size becomes a ceiling for the run, and a size
    already accepted is a floor the halving never goes below. A timeout may be load or one slow item,
    so its size is a ceiling only for the next few successes. Each success grows the size by a quarter
    (at least one, at most half the way to the ceiling): under a complexity limit it settles on the
    largest size GitLab accepts.
    """

    __slots__ = ("_ceiling", "_floor", "_slow", "_slow_left", "maximum", "size")

    SLOW_MEMORY = 8  # successes for which a timed-out size stays off limits

    def __init__(self, maximum: int = MAX_BATCH) -> None:
        self.maximum = maximum
        self.size = maximum
        self._ceiling = maximum + 1  # the smallest size rejected as too complex
        self._floor = 0  # the largest size accepted
        self._slow = maximum + 1  # the smallest size that timed out lately
        self._slow_left = 0

    def too_complex(self, size: int) -> None:
        self._ceiling = min(self._ceiling, size)
        if self._floor >= size:
            self._floor = 0  # the query changed under us; what was accepted before says nothing now
        self.size = max(1, size // 2, self._floor)

    def timed_out(self, size: int) -> None:
        self._slow = min(self._slow, size) if self._slow_left else size
        self._slow_left = self.SLOW_MEMORY
        self.size = max(1, size // 2)

    def item_failed(self) -> None:
        """An item failed even alone: the timeouts that led to it were its fault, not the size's."""
        self._slow, self._slow_left = self.maximum + 1, 0
        self.size = max(1, self._floor // 2)

    def accepted(self, size: int) -> None:
        if size < self.size:
            return  # a short tail batch says nothing about the size
        self._floor = max(self._floor, size)
        limit = self._ceiling
        if self._slow_left:
            self._slow_left -= 1
            limit = min(limit, self._slow)
        step = max(1, size // 4)
        if limit <= self.maximum:
            step = min(step, max(1, (limit - size) // 2))
        self.size = max(1, min(self.maximum, limit - 1, size + step))


# -- reading the answer ---------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _has_undefined_code(errors: Any) -> bool:
    codes = {
        (e.get("extensions") or {}).get("code") for e in _as_list(errors) if isinstance(e, dict)
    }
    return bool(codes & {"undefinedField", "undefinedType"})


def _statuses(answer: dict[str, Any], path: str) -> dict[int, Status | None]:
    data = answer.get("data") or {}
    project = data.get("project")
    if project is None:
        # The path no longer names a project this token sees (renamed since the run began, say).
        raise ProjectStatusesUnavailable(f"GraphQL does not know project {path}")
    nodes = ((project.get("workItems") or {}).get("nodes")) or []
    statuses: dict[int, Status | None] = {}
    widget_seen = False
    for node in nodes:
        widget = next((w for w in node.get("widgets") or [] if isinstance(w, dict) and "status" in w), None)
        widget_seen = widget_seen or widget is not None
        statuses[int(node["iid"])] = _status(widget["status"]) if widget else None
    if nodes and not widget_seen:
        raise ProjectStatusesUnavailable("its work items have no status widget (GitLab Free, or statuses not enabled)")
    return statuses


def _status(raw: Any) -> Status | None:
    if not isinstance(raw, dict) or not raw.get("name"):
        return None
    return {"name": raw["name"], "category": raw.get("category")}
