"""The simulated GitLab's GraphQL: the work-item status query the engine sends, with GitLab's limits.

Apart from the REST face (gateway/simulator/gitlab.py) because it is a different API with its own
errors: complexity, the 503 timeout, and each edition's schema (no status widget on CE and Free, a String
`status` on EE before 17.8, no `category` before 18.1; docs/gitlab.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.simulator.data import JSON, Project
from gateway.simulator.profiles import StatusWidget

if TYPE_CHECKING:
    from gateway.simulator.gitlab import GitLabSimulator

# A GraphQL answer: the JSON body (HTTP 200), or (status, body) for an HTTP-level failure such as the 503 timeout.
GraphQLReply = JSON | tuple[int, JSON]
# GitLab's system-defined work-item statuses and their categories (WorkItemStatusCategoryEnum values).
WORK_ITEM_STATUSES: dict[str, str] = {
    "To do": "TO_DO", "In progress": "IN_PROGRESS", "Done": "DONE", "Won't do": "CANCELED", "Duplicate": "CANCELED",
}
GRAPHQL_TIMEOUT = "Request timed out. Please try a less complex query or a smaller set of records."


def graphql_without_work_items(body: JSON) -> JSON:
    """The answer until `enable_work_items()`: GitLab's validation error for a schema without `workItems`."""
    return {"errors": [{
        "message": "Field 'workItems' doesn't exist on type 'Project'",
        "locations": [{"line": 1, "column": 1}], "path": ["query", "project", "workItems"],
        "extensions": {"code": "undefinedField", "typeName": "Project", "fieldName": "workItems"},
    }]}


@dataclass(frozen=True)
class GraphQLBatch:
    """One workItems request as the simulator saw it: which items, and what it answered."""

    project: str
    iids: tuple[int, ...]
    first: int | None
    outcome: str  # ok | complexity | timeout


class WorkItemsGraphQL:
    """`project(fullPath:) { workItems(iids:, first:) { nodes { iid widgets { ... on WorkItemWidgetStatus ...`.

    Its limits are GitLab's, made tunable: a query's complexity is `base_complexity + first *
    complexity_per_item` against `max_complexity` (the error text is GitLab's); batches larger than
    `timeout_above`, or holding a `poisoned` item, answer GitLab's 503 timeout. `widget=False` is a GitLab
    Free namespace (no status widget on any item); `category=False` is GitLab before 18.1. Every request
    is logged in `batches`.
    """

    def __init__(self, sim: GitLabSimulator, *, max_complexity: int = 250, complexity_per_item: int = 2,
                 base_complexity: int = 5, timeout_above: int | None = None, widget: bool = True,
                 category: bool = True, status_widget: StatusWidget = "object") -> None:
        self._sim = sim
        self.status_widget = status_widget
        self.max_complexity = max_complexity
        self.complexity_per_item = complexity_per_item
        self.base_complexity = base_complexity
        self.timeout_above = timeout_above
        self.widget = widget
        self.category = category
        self.statuses: dict[tuple[int, int], str | None] = {}  # unset items get a default from their state
        self.poisoned: set[tuple[int, int]] = set()
        self.batches: list[GraphQLBatch] = []

    def status_of(self, project_id: int, issue: JSON) -> JSON | None:
        """What GraphQL reports for this issue: {"name", "category"} or None."""
        key = (project_id, issue["iid"])
        name = self.statuses[key] if key in self.statuses else _default_status(issue)
        if name is None:
            return None
        return {"name": name, "category": WORK_ITEM_STATUSES[name]} if self.category else {"name": name}

    def __call__(self, body: JSON) -> GraphQLReply:
        query = str(body.get("query", ""))
        variables = body.get("variables") or {}
        if "workItems" not in query:
            return {"errors": [{"message": "this simulator answers only project workItems queries"}]}
        mismatch = self._schema_error(query)
        if mismatch is not None:
            return mismatch
        if not self.category and re.search(r"\bcategory\b", query):
            return _undefined_field("category", "WorkItemStatus")
        project = self._sim_project(str(variables.get("fullPath", "")))
        iids = tuple(int(i) for i in variables.get("iids") or ())
        first = variables.get("first")
        size = int(first) if first is not None else 100
        complexity = self.base_complexity + size * self.complexity_per_item
        path = project.path if project else str(variables.get("fullPath"))
        if complexity > self.max_complexity:
            self.batches.append(GraphQLBatch(path, iids, first, "complexity"))
            return {"errors": [{"message": f"Query has complexity of {complexity}, which exceeds max complexity "
                                           f"of {self.max_complexity}"}]}
        too_slow = self.timeout_above is not None and size > self.timeout_above
        if too_slow or (project and any((project.id, i) in self.poisoned for i in iids)):
            self.batches.append(GraphQLBatch(path, iids, first, "timeout"))
            return 503, {"errors": [{"message": GRAPHQL_TIMEOUT}]}
        self.batches.append(GraphQLBatch(path, iids, first, "ok"))
        if project is None:
            return {"data": {"project": None}}
        wanted = [project.issues[i] for i in sorted(set(iids), reverse=True) if i in project.issues][:size]
        return {"data": {"project": {"workItems": {"nodes": [self._node(project, i) for i in wanted]}}}}

    def _schema_error(self, query: str) -> JSON | None:
        """GraphQL validation errors (HTTP 200) of an edition whose status widget differs from 18.x EE's."""
        if "WorkItemWidgetStatus" not in query or self.status_widget == "object":
            return None
        if self.status_widget == "none":  # CE and Free: the type does not exist at all
            return {"errors": [{
                "message": "No such type WorkItemWidgetStatus, so it can't be a fragment condition",
                "locations": [{"line": 1, "column": 1}], "path": ["query workItemStatuses"],
                "extensions": {"code": "undefinedType", "typeName": "WorkItemWidgetStatus"},
            }]}
        selected = re.search(r"status\s*\{\s*([^}]*)\}", query)
        if selected is None:
            return None
        fields = json.dumps(selected.group(1).split()).replace(",", ", ")
        return {"errors": [{  # EE before 17.8: `status` is the requirement's verification status, a String
            "message": f"Selections can't be made on scalars (field 'status' returns String but has "
                       f"selections {fields})",
            "locations": [{"line": 1, "column": 1}], "path": ["query workItemStatuses"],
            "extensions": {"code": "selectionMismatch", "nodeName": "field 'status'", "typeName": "String"},
        }]}

    def _node(self, project: Project, issue: JSON) -> JSON:
        # Other widgets match no fragment and come back as empty objects, as in GitLab.
        widgets: list[JSON] = [{}, {}]
        if self.widget:
            widgets.insert(1, {"status": self.status_of(project.id, issue)})
        return {"iid": str(issue["iid"]), "widgets": widgets}

    def _sim_project(self, full_path: str) -> Project | None:
        return next((p for p in self._sim.projects.values() if p.path.lower() == full_path.lower()), None)


def _default_status(issue: JSON) -> str | None:
    """Seeded statuses without bookkeeping: closed issues are Done, open ones To do or In progress."""
    if issue["state"] == "closed":
        return "Done"
    return "In progress" if issue["iid"] % 3 == 0 else "To do"


def _undefined_field(field_name: str, type_name: str) -> JSON:
    return {"errors": [{
        "message": f"Field '{field_name}' doesn't exist on type '{type_name}'",
        "locations": [{"line": 1, "column": 1}],
        "extensions": {"code": "undefinedField", "typeName": type_name, "fieldName": field_name},
    }]}
