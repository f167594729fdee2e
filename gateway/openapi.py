"""The OpenAPI 3.1 document of every HTTP route, served at `GET /api/v1/openapi.json` without a token.

One module because it is one document: the shared pieces are built once and every route's entry is made of
them.

Written by hand, close to docs/api.md, rather than generated from handlers: the contract comes first and
a test holds the document and the app's routes to each other (and the fuzzer holds responses to the
statuses documented here). Shared pieces (errors, paging, rate-limit headers) are built once below.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

from gateway.cache import matches

PATH = "/api/v1/openapi.json"
JSON = dict[str, Any]

# -- small builders ---------------------------------------------------------------------------------


def _ref(kind: str, name: str) -> JSON:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> JSON:
    return _ref("schemas", name)


def _nullable(schema: JSON) -> JSON:
    if "$ref" in schema:
        return {"oneOf": [schema, {"type": "null"}]}
    return {**schema, "type": [schema["type"], "null"]}


def _object(properties: JSON, *, required: list[str] | None = None, description: str = "") -> JSON:
    out: JSON = {"type": "object", "properties": properties,
                 "required": list(properties) if required is None else required}
    if description:
        out["description"] = description
    return out


def _list_of(item: str, description: str) -> JSON:
    return _object({"items": {"type": "array", "items": _schema(item)},
                    "next_cursor": {"type": ["string", "null"],
                                    "description": "Pass as `cursor` to get the next page; null on the last."}},
                   description=description)


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, with a Z suffix."}
RATE_HEADERS = {name: _ref("headers", name) for name in ("RateLimit-Limit", "RateLimit-Remaining",
                                                          "RateLimit-Reset")}

_ERRORS = {
    400: ("BadRequest", "A parameter (or the body) is invalid; the message names it.",
          ["invalid_parameter", "invalid_json", "invalid_content_encoding", "invalid_body"]),
    401: ("Unauthorized", "No bearer token, or one that is malformed, tampered, expired or revoked.",
          ["unauthorized", "invalid_signature"]),
    403: ("Forbidden", "The token lacks the scope this operation needs.", ["forbidden"]),
    404: ("NotFound", "No such resource (also a path id that is not a positive integer).", ["not_found"]),
    405: ("MethodNotAllowed", "The path exists, but not with this method.", ["method_not_allowed"]),
    408: ("BodyTimeout", "The body had not all arrived `webhook.body_timeout` after the request head; the "
          "connection is closed.", ["body_timeout"]),
    413: ("PayloadTooLarge", "The body is larger than allowed.", ["payload_too_large"]),
    410: ("Gone", "The change-feed cursor is older than the changes kept (`changes.retention`): list again.",
          ["cursor_expired"]),
    415: ("UnsupportedMediaType", "The body's Content-Encoding is not one the gateway decodes.",
          ["unsupported_content_encoding"]),
    429: ("RateLimited", "Over the rate limit; retry after `Retry-After` seconds.", ["rate_limited"]),
    503: ("NotReady", "The store is not ready or is busy, or the operation is unavailable here.",
          ["not_ready", "embeddings_unavailable"]),
}


def _error_response(status: int) -> JSON:
    _, description, codes = _ERRORS[status]
    headers: JSON = {}
    if status in (401, 403):
        headers["WWW-Authenticate"] = {"schema": STRING, "description": "The Bearer challenge."}
    if status in (429, 503):
        headers["Retry-After"] = {"schema": INTEGER, "description": "Seconds to wait before retrying."}
    schema = {"allOf": [_schema("Error"), {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}]}
    out: JSON = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _errors(*statuses: int) -> JSON:
    return {str(s): _ref("responses", _ERRORS[s][0]) for s in statuses}


def _ok(schema: JSON, description: str, *, status: int = 200, etag: bool = False,
        media: str = "application/json") -> JSON:
    headers: JSON = {}
    if etag:
        headers["ETag"] = _ref("headers", "ETag")
    out: JSON = {"description": description, "content": {media: {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return {str(status): out}


def _with_rate_headers(responses: JSON) -> JSON:
    """Every /api/v1 response carries the RateLimit-* headers: add them to each (refs are expanded)."""
    out: JSON = {}
    for status, response in responses.items():
        if "$ref" in response:
            response = _RESPONSES[response["$ref"].rsplit("/", 1)[-1]]
        out[status] = {**response, "headers": {**response.get("headers", {}), **RATE_HEADERS}}
    return out


def _operation(operation_id: str, summary: str, responses: JSON, *, tag: str, scope: str | None,
               parameters: list[JSON] | None = None, description: str = "", api: bool = True,
               request_body: JSON | None = None) -> JSON:
    op: JSON = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if request_body is not None:
        op["requestBody"] = request_body
    if scope is None:
        op["security"] = []
    else:
        op["security"] = [{"bearerAuth": []}]
        op["x-required-scope"] = scope
        responses = {**responses, **_errors(401, 403)}
    if api:
        responses = _with_rate_headers({**responses, **_errors(429)})
    op["responses"] = dict(sorted(responses.items()))
    return op


# -- components -------------------------------------------------------------------------------------

USER = _object({"id": INTEGER, "username": STRING, "name": STRING}, description="A GitLab user (basic).")

_ITEM_FIELDS: JSON = {
    "id": {**INTEGER, "description": "GitLab's global id."},
    "iid": {**INTEGER, "description": "The id within the project."},
    "project_id": INTEGER,
    "title": STRING,
    "description": {"type": ["string", "null"]},
    "state": STRING,
    "labels": {"type": "array", "items": STRING},
    "author": _nullable(_schema("User")),
    "assignees": {"type": "array", "items": _schema("User")},
    "created_at": TIME,
    "updated_at": TIME,
    "closed_at": _nullable(TIME),
    "web_url": STRING,
}

SCHEMAS: JSON = {
    "Error": _object({"error": _object({"code": {**STRING, "description": "snake_case"},
                                        "message": STRING})}),
    "User": USER,
    "WorkItemStatus": _object({"name": STRING, "category": STRING}),
    "Project": _object({
        "id": INTEGER, "name": STRING, "path_with_namespace": STRING,
        "description": {"type": ["string", "null"]}, "default_branch": {"type": ["string", "null"]},
        "visibility": {"type": ["string", "null"]}, "archived": BOOLEAN, "web_url": STRING,
        "created_at": _nullable(TIME), "last_activity_at": _nullable(TIME),
        "synced_at": {**TIME, "description": "When the mirror last stored this project."},
    }),
    "Issue": _object({
        **_ITEM_FIELDS,
        "state": {"type": "string", "enum": ["opened", "closed"]},
        "work_item_status": _nullable(_schema("WorkItemStatus")),
    }),
    "MergeRequest": _object({
        **_ITEM_FIELDS,
        "state": {"type": "string", "enum": ["opened", "closed", "merged", "locked"]},
        "source_branch": STRING,
        "target_branch": STRING,
        "merged_at": _nullable(TIME),
        "reviewers": {"type": "array", "items": _schema("User")},
    }),
    "Note": _object({
        "id": INTEGER, "body": STRING, "author": _nullable(_schema("User")), "created_at": TIME,
        "updated_at": TIME, "system": BOOLEAN, "resolvable": BOOLEAN, "resolved": BOOLEAN,
        "position": {"type": ["object", "null"], "description": "GitLab's diff position of a diff note."},
    }),
    "Discussion": _object({
        "id": {**STRING, "description": "GitLab's discussion id."},
        "individual_note": BOOLEAN,
        "notes": {"type": "array", "items": _schema("Note")},
    }, description="A thread; its notes in GitLab's order."),
    "ProjectList": _list_of("Project", "Projects by id."),
    "IssueList": _list_of("Issue", "Issues, most recently updated first."),
    "MergeRequestList": _list_of("MergeRequest", "Merge requests, most recently updated first."),
    "DiscussionList": _list_of("Discussion", "Threads in GitLab's order; `per_page` counts threads."),
    "SearchResult": _object({
        "type": {"type": "string", "enum": ["issue", "merge_request", "note"]},
        "project_id": INTEGER,
        "iid": {**INTEGER, "description": "The item's, or the note's parent's."},
        "note_id": {"type": ["integer", "null"]},
        "title": STRING, "snippet": STRING, "score": {"type": "number"}, "web_url": {"type": ["string", "null"]},
    }),
    "SearchResults": _list_of("SearchResult", "Best match first."),
    "Expert": _object({
        "username": STRING, "name": {"type": ["string", "null"]}, "score": {"type": "number"},
        "last_contribution_at": _nullable(TIME), "stale": BOOLEAN,
        "contributions": {"type": "object", "additionalProperties": INTEGER,
                          "description": "How many contributions of each kind."},
    }),
    "Experts": _object({"path": STRING, "project_id": INTEGER,
                        "items": {"type": "array", "items": _schema("Expert")}},
                       description="Highest score first."),
    "Run": _object({
        "id": INTEGER,
        "trigger": {"type": "string", "enum": ["webhook", "timer", "startup", "manual", "api"]},
        "profile": {"type": "string", "enum": ["fast", "balanced", "full"]},
        "status": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "interrupted"]},
        "stage": {"type": ["string", "null"]},
        "counts": {"type": "object", "additionalProperties": INTEGER},
        "error_code": {"type": ["string", "null"]},
        "error_message": {"type": ["string", "null"]},
        "transient": {"type": ["boolean", "null"]},
        "started_at": TIME,
        "finished_at": _nullable(TIME),
    }, required=["id", "trigger", "profile", "status", "stage", "counts", "error_code", "error_message",
                 "transient", "started_at", "finished_at"]),
    "RunList": _list_of("Run", "Runs, newest first."),
    "SyncStatus": _object({
        "scheduler_state": {"type": "string", "enum": ["idle", "debouncing", "running", "backoff", "paused"]},
        "last_sync": _nullable(_schema("Run")),
        "last_success_at": _nullable(TIME),
        "recent_runs": {"type": "array", "items": _schema("Run")},
        "next_run_at": _nullable(TIME),
        "backoff": {"oneOf": [_object({"consecutive_failures": INTEGER, "next_retry_at": TIME}),
                              {"type": "null"}]},
        "paused_reason": {"type": ["string", "null"]},
        "pending_events": {**INTEGER, "description": "Inbox events not yet processed by a committed run."},
        "projects": {"type": "array", "description": "Per mirrored project: items, last sync, lag behind GitLab.",
                     "items": _object({"id": INTEGER, "path": STRING, "last_synced_at": _nullable(TIME),
                                       "items": _object({"issues": INTEGER, "merge_requests": INTEGER,
                                                         "notes": INTEGER}),
                                       "pending_events": INTEGER,
                                       "lag_seconds": {"type": "number", "description":
                                                       "Age of the project's oldest unprocessed webhook event."}})},
        "webhook_intake": _object({"bucket_seconds": INTEGER, "counts": {"type": "array", "items": INTEGER},
                                   "last_hour": INTEGER}),
        "webhooks": {"type": "array", "description": "Each project's webhook in GitLab, as last checked.",
                     "items": _object({"project": STRING,
                                       "state": {"type": "string", "enum": ["ok", "disabled", "missing", "unknown"]},
                                       "checked_at": TIME, "hook_id": {"type": ["integer", "null"]},
                                       "events": {"type": "array", "items": STRING},
                                       "alert_status": {"type": ["string", "null"]},
                                       "disabled_until": _nullable(TIME), "message": STRING})},
        "gitlab_requests": _object({
            "last_hour": {**INTEGER, "description": "GitLab requests (REST and GraphQL) in the last 60 minutes."},
            "requests_per_minute": {"type": ["integer", "null"], "description": "The budget; null: none."},
            "remaining_this_minute": {"type": ["integer", "null"]},
        }),
    }),
    "SyncQueued": _object({"queued": {"const": True},
                           "run_id": {"type": ["integer", "null"],
                                      "description": "The run that will include the request, where known."}}),
    "Ticket": _object({"ticket": STRING, "expires_at": TIME}),
    "WebhookAccepted": _object({
        "accepted": {"const": True},
        "event_id": STRING,
        "duplicate": BOOLEAN,
        "ignored": {**BOOLEAN, "description": "Present (true) for an event kind the gateway does not use."},
    }, required=["accepted"]),
    "Health": _object({"status": {"const": "ok"}}),
    "Ready": _object({"status": {"const": "ready"}, "sync_enabled": BOOLEAN, "message": STRING},
                     required=["status", "sync_enabled"]),
    "Change": _object({
        "seq": {**INTEGER, "description": "The database's number of this change: monotonic, the same in every "
                "process; SSE `data.changed` carries the same numbers."},
        "kind": {"type": "string", "enum": ["issue", "merge_request", "note"]},
        "project_id": INTEGER,
        "iid": {**INTEGER, "description": "The item's, or the note's parent's."},
        "note_id": {"type": ["integer", "null"]},
        "parent_kind": {"type": "string", "enum": ["issue", "merge_request"],
                        "description": "A note's parent's kind; an item's own."},
        "action": {"type": "string", "enum": ["created", "updated", "deleted"]},
        "at": {**TIME, "description": "When the mirror committed it (RFC 3339, UTC, Z)."},
    }),
    "ChangeFeed": _object({
        "items": {"type": "array", "items": _schema("Change")},
        "next_cursor": {**STRING, "description": "Pass as `since` to read on (always present; a page shorter "
                        "than `limit` means caught up)."},
    }, description="Changes in commit order, oldest first."),
}

_RESPONSES: JSON = {name: _error_response(status) for status, (name, _, _) in _ERRORS.items()}
_RESPONSES["NotModified"] = {
    "description": "The representation has not changed since the ETag sent in If-None-Match.",
    "headers": {"ETag": _ref("headers", "ETag")},
}

PARAMETERS: JSON = {
    "ProjectId": {"name": "id", "in": "path", "required": True, "description": "GitLab's numeric project id.",
                  "schema": {"type": "integer", "minimum": 1}},
    "Iid": {"name": "iid", "in": "path", "required": True, "description": "The item's id within the project.",
            "schema": {"type": "integer", "minimum": 1}},
    "PerPage": {"name": "per_page", "in": "query", "description": "Items per page.",
                "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
    "Cursor": {"name": "cursor", "in": "query",
               "description": "An opaque `next_cursor` from the previous page of this very list and filters.",
               "schema": STRING},
    "IssueState": {"name": "state", "in": "query",
                   "schema": {"type": "string", "enum": ["opened", "closed", "all"], "default": "all"}},
    "MergeRequestState": {"name": "state", "in": "query",
                          "schema": {"type": "string", "enum": ["opened", "closed", "merged", "locked", "all"],
                                     "default": "all"}},
    "Labels": {"name": "labels", "in": "query", "description": "Comma list; every label must be on the item.",
               "schema": STRING},
    "Author": {"name": "author", "in": "query", "description": "The author's username.", "schema": STRING},
    "WorkItemStatus": {"name": "status", "in": "query",
                       "description": "A work-item status name or category (case-insensitive), or `none`.",
                       "schema": STRING},
    "UpdatedAfter": {"name": "updated_after", "in": "query",
                     "description": "RFC 3339; items updated at or after this time.",
                     "schema": {"type": "string", "format": "date-time"}},
    "IfNoneMatch": {"name": "If-None-Match", "in": "header",
                    "description": "An ETag from an earlier answer: 304 if it is still current.",
                    "schema": STRING},
}

HEADERS: JSON = {
    "ETag": {"description": "A strong validator derived from the data versions the answer depends on.",
             "schema": STRING},
    "RateLimit-Limit": {"description": "Requests allowed in the window.", "schema": INTEGER},
    "RateLimit-Remaining": {"description": "Requests left in the window.", "schema": INTEGER},
    "RateLimit-Reset": {"description": "Seconds until the window resets.", "schema": INTEGER},
}


# -- operations -------------------------------------------------------------------------------------


def _param(name: str) -> JSON:
    return _ref("parameters", name)


def _read(operation_id: str, summary: str, schema: str, params: list[str], *, missing: bool = True) -> JSON:
    """A cached read: 200 with an ETag, 304, and the usual errors."""
    responses = {**_ok(_schema(schema), summary, etag=True), "304": _ref("responses", "NotModified"),
                 **_errors(400, *([404] if missing else []))}
    return {"get": _operation(operation_id, summary, responses, tag="mirror", scope="read",
                              parameters=[_param(p) for p in [*params, "IfNoneMatch"]])}


_LIST = ["PerPage", "Cursor"]


def _mirror_paths() -> JSON:
    base = "/api/v1/projects/{id}"
    filters = ["Labels", "Author", "UpdatedAfter"]
    return {
        "/api/v1/projects": _read("listProjects", "The mirrored projects", "ProjectList", _LIST, missing=False),
        base: _read("getProject", "One project", "Project", ["ProjectId"]),
        f"{base}/issues": _read("listIssues", "A project's issues", "IssueList",
                                ["ProjectId", "IssueState", *filters, "WorkItemStatus", *_LIST]),
        f"{base}/issues/{{iid}}": _read("getIssue", "One issue", "Issue", ["ProjectId", "Iid"]),
        f"{base}/issues/{{iid}}/discussions": _read("listIssueDiscussions", "An issue's threads",
                                                    "DiscussionList", ["ProjectId", "Iid", *_LIST]),
        f"{base}/merge_requests": _read("listMergeRequests", "A project's merge requests", "MergeRequestList",
                                        ["ProjectId", "MergeRequestState", *filters, *_LIST]),
        f"{base}/merge_requests/{{iid}}": _read("getMergeRequest", "One merge request", "MergeRequest",
                                                ["ProjectId", "Iid"]),
        f"{base}/merge_requests/{{iid}}/discussions": _read(
            "listMergeRequestDiscussions", "A merge request's threads", "DiscussionList",
            ["ProjectId", "Iid", *_LIST]),
    }


def _query(name: str, schema: JSON, description: str, *, required: bool = False) -> JSON:
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _search_paths() -> JSON:
    search = _operation(
        "search", "Full-text (FTS5) or semantic search over issues, merge requests and notes",
        {**_ok(_schema("SearchResults"), "Matches, best first", etag=True),
         "304": _ref("responses", "NotModified"), **_errors(400, 503)},
        tag="search", scope="read",
        parameters=[_query("q", STRING, "The search text.", required=True),
                    _query("type", {"type": "string", "enum": ["issue", "merge_request", "note"]},
                           "Only this kind of document."),
                    _query("project", {"type": "integer", "minimum": 1}, "Only this project."),
                    _query("mode", {"type": "string", "enum": ["text", "semantic"], "default": "text"},
                           "`semantic` needs an embedding endpoint ([embeddings] url)."),
                    *[_param(p) for p in [*_LIST, "IfNoneMatch"]]])
    experts = _operation(
        "experts", "Who knows a path best (time-decayed contributions)",
        {**_ok(_schema("Experts"), "Experts, highest score first", etag=True),
         "304": _ref("responses", "NotModified"), **_errors(400, 404)},
        tag="search", scope="read",
        parameters=[_query("path", STRING, "A file or directory path in the repository.", required=True),
                    _query("project", {"type": "integer", "minimum": 1}, "The project.", required=True),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                           "How many experts at most."),
                    _param("IfNoneMatch")])
    return {"/api/v1/search": {"get": search}, "/api/v1/experts": {"get": experts}}


def _sync_paths() -> JSON:
    status = _operation("getSyncStatus", "The scheduler's state and recent runs",
                        {**_ok(_schema("SyncStatus"), "The status document", etag=True),
                         "304": _ref("responses", "NotModified")},
                        tag="sync", scope="read", parameters=[_param("IfNoneMatch")])
    runs = _operation("listSyncRuns", "Sync runs, newest first",
                      {**_ok(_schema("RunList"), "The newest runs", etag=True),
                       "304": _ref("responses", "NotModified"), **_errors(400)},
                      tag="sync", scope="read",
                      parameters=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                                         "How many runs."), _param("IfNoneMatch")])
    profile_body = {"required": False, "content": {"application/json": {"schema": {
        "type": "object", "properties": {"profile": {"type": "string", "enum": ["fast", "balanced", "full"]}}}}}}
    queue = _operation("requestSync", "Ask for a sync run (coalesced with any pending one)",
                       {**_ok(_schema("SyncQueued"), "Queued", status=202), **_errors(400, 408, 503)},
                       tag="sync", scope="sync", request_body=profile_body,
                       parameters=[_query("profile", {"type": "string", "enum": ["fast", "balanced", "full"]},
                                          "The profile of the run.")])
    resume = _operation("resumeSync", "Clear a paused or backed-off scheduler",
                        {**_ok(_schema("SyncStatus"), "The status after resuming")},
                        tag="sync", scope="admin")
    return {"/api/v1/sync/status": {"get": status}, "/api/v1/sync/runs": {"get": runs},
            "/api/v1/sync": {"post": queue}, "/api/v1/sync/resume": {"post": resume}}


def _events_paths() -> JSON:
    stream = _operation(
        "streamEvents", "Sync progress and data changes as Server-Sent Events",
        {**_ok({"type": "string"}, "An event stream: a `scheduler.state` snapshot first, then events with "
               "monotonic ids (`sync.*`, `data.changed`, `webhook.received`, `scheduler.state`, `reset`).",
               media="text/event-stream"), **_errors(503)},
        tag="events", scope="read",
        description="Authenticate with a bearer token, or (EventSource cannot send headers) a `ticket`. "
                    "A token may hold `gateway.max_sse_per_token` streams at once, its tickets' included "
                    "(then 429), the process `gateway.max_sse_clients` (then 503).",
        parameters=[_query("ticket", STRING, "A ticket from POST /api/v1/events/ticket."),
                    {"name": "Last-Event-ID", "in": "header", "schema": STRING,
                     "description": "Replay what was missed after this id."}])
    stream["security"] = [{"bearerAuth": []}, {"ticket": []}]
    ticket = _operation("createEventsTicket", "A short-lived ticket for GET /api/v1/events?ticket=",
                        _ok(_schema("Ticket"), "The ticket", status=201), tag="events", scope="read")
    return {"/api/v1/events": {"get": stream}, "/api/v1/events/ticket": {"post": ticket}}


def _changes_paths() -> JSON:
    feed = _operation(
        "listChanges", "Every create, update and delete of an issue, MR or note since a cursor",
        {**_ok(_schema("ChangeFeed"), "Changes in commit order", etag=True),
         "304": _ref("responses", "NotModified"), **_errors(400, 410)},
        tag="mirror", scope="read",
        description="Deletions are tombstones. Entries are kept `changes.retention`; a cursor older than that "
                    "gets 410 `cursor_expired` (list again, then follow from the newest cursor).",
        parameters=[_query("since", STRING, "A `next_cursor`, or the `seq` of an SSE `data.changed` event; "
                           "leave it out to start at the oldest change kept."),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                           "How many changes at most."),
                    _param("IfNoneMatch")])
    return {"/api/v1/changes": {"get": feed}}


def _outside_paths() -> JSON:
    webhook = _operation(
        "receiveGitlabWebhook", "GitLab webhooks (X-Gitlab-Token, or Standard Webhooks signatures)",
        {**_ok(_schema("WebhookAccepted"), "Durably recorded (or a duplicate, or ignored)", status=202),
         **_errors(400, 401, 405, 408, 413, 415, 429, 503)},
        tag="webhooks", scope=None, api=False,
        request_body={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        parameters=[{"name": n, "in": "header", "schema": STRING} for n in
                    ("X-Gitlab-Event", "X-Gitlab-Token", "Idempotency-Key", "webhook-id", "webhook-timestamp",
                     "webhook-signature")])
    return {
        "/webhooks/gitlab": {"post": webhook},
        "/mcp": {"post": _operation(
            "mcp", "Model Context Protocol (Streamable HTTP): tools over the mirror for agents",
            {**_ok({"type": "object"}, "A JSON-RPC response (see docs/agents.md)"), **_errors(400, 408, 413)},
            tag="agents", scope="read",
            description="JSON-RPC 2.0; protocol versions 2024-11-05 to 2026-07-28, stateless. Same tokens, "
                        "rate limit and metrics as /api/v1.",
            request_body={"required": True, "content": {"application/json": {"schema": {"type": "object"}}}})},
        "/healthz": {"get": _operation("healthz", "The process answers", _ok(_schema("Health"), "Alive"),
                                       tag="operations", scope=None, api=False)},
        "/readyz": {"get": _operation("readyz", "The store is ready (also with sync disabled)",
                                      {**_ok(_schema("Ready"), "Ready"), **_errors(503)},
                                      tag="operations", scope=None, api=False)},
        "/metrics": {"get": _operation("metrics", "Prometheus metrics",
                                       _ok({"type": "string"}, "Text exposition format", media="text/plain"),
                                       tag="operations", scope=None, api=False)},
        "/": {"get": _operation("statusPage", "The status page (self-contained HTML)",
                                _ok({"type": "string"}, "The page", media="text/html"),
                                tag="operations", scope=None, api=False)},
        PATH: {"get": _operation("openapi", "This document",
                                 {**_ok({"type": "object"}, "The OpenAPI 3.1 document", etag=True),
                                  "304": _ref("responses", "NotModified")},
                                 tag="operations", scope=None)},
    }


@lru_cache(maxsize=1)
def document() -> JSON:
    """The whole document (built once; treat it as read-only)."""
    paths = {**_mirror_paths(), **_search_paths(), **_sync_paths(), **_events_paths(), **_outside_paths(),
             **_changes_paths()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "lore-gateway", "version": "1",
                 "description": "A local mirror of GitLab issues, merge requests and discussions. Errors are "
                                '{"error": {"code", "message"}}; every /api/v1 response carries RateLimit-* '
                                "headers; every timestamp is RFC 3339 UTC with a Z suffix."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": SCHEMAS,
            "responses": _RESPONSES,
            "parameters": PARAMETERS,
            "headers": HEADERS,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "A token from `lore-gateway token create`; scopes read, sync, admin."},
                "ticket": {"type": "apiKey", "in": "query", "name": "ticket",
                           "description": "A short-lived ticket, for EventSource clients."},
            },
        },
    }


@lru_cache(maxsize=1)
def _served() -> tuple[bytes, str]:
    body = orjson.dumps(document())
    return body, '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


async def get_document(request: web.Request) -> web.Response:
    body, etag = _served()
    headers = {"ETag": etag, "Cache-Control": "public, no-cache"}
    if matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers={**headers, "Content-Type": "application/json"})


def setup(app: web.Application) -> None:
    app.router.add_get(PATH, get_document)
