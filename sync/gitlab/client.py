"""The GitLab REST v4 client: the only place the engine speaks HTTP to GitLab.

One module because every request must pass the same wire policy; a second module speaking HTTP to GitLab
could bypass it.

It owns the wire-level policy so pipeline stages never see it: bounded concurrency per request,
offset pagination that trusts only `x-next-page`, retries with jittered backoff and Retry-After,
slowing down as RateLimit-Remaining nears zero, and turning every failure into a TransientError
or PermanentError whose message names the request but never carries the token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

from sync.clock import Clock, SystemClock
from sync.errors import PermanentError, TransientError
from sync.gitlab.budget import RequestBudget

logger = logging.getLogger(__name__)

Params = Mapping[str, str | int]

# A server asking for a longer pause than this is more likely wrong than serious; the caller's
# own backoff takes over after the attempts run out.
_MAX_RETRY_AFTER = 300.0
# Upper bound on one rate-limit pause, so a bogus RateLimit-Reset cannot stall a run for long.
_MAX_PACE = 60.0
_MESSAGE_LIMIT = 200
_REDACTED = "[redacted]"

# GitLab's GraphQL answers a query that ran past its time limit with a 503 whose error says this.
_QUERY_TIMEOUT = b"Request timed out"

_PERMANENT_CODES = {401: "gitlab_unauthorized", 403: "gitlab_forbidden", 404: "gitlab_not_found"}

# GitLab base URL -> whether it serves GET .../merge_requests/:iid/diffs (15.7+). Learnt once per process,
# so on an older GitLab every later MR goes straight to /changes instead of spending a 404 first.
_HAS_DIFFS: dict[str, bool] = {}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one request tries before its transient failure reaches the caller."""

    attempts: int = 5  # total tries, the first one included
    base: float = 0.5  # seconds before the second try
    cap: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base < 0 or self.cap < 0:
            raise ValueError("RetryPolicy.base and cap must not be negative")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed try number `attempt` (1-based): capped doubling, +-20% jitter."""
        # The exponent is bounded so a huge attempt number cannot overflow a float.
        raw = min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))
        return raw * rng.uniform(0.8, 1.2)


@dataclass(frozen=True)
class _RateLimit:
    remaining: int
    limit: int | None
    reset: float | None  # Unix time at which the window resets


@dataclass(frozen=True)
class _Response:
    body: Any
    headers: Mapping[str, str]


class _Retryable(Exception):
    """Internal: a transient failure, plus the wait the server asked for, if it asked."""

    def __init__(self, error: TransientError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class GitLabClient:
    """Async client for GitLab's REST API v4, authenticated with a personal/project access token.

    Create it inside a running event loop or use it as `async with GitLabClient(...) as gl:`;
    the HTTP session is created on first use unless one is injected.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        concurrency: int = 8,
        timeout: float = 30.0,
        clock: Clock | None = None,
        retry: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
        session: aiohttp.ClientSession | None = None,
        budget: RequestBudget | None = None,
    ) -> None:
        """`budget` (sync.gitlab.budget) is taken before every request, retries included; None: no budget, no count."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._root = URL(base_url.rstrip("/"))
        self._api = self._root / "api" / "v4"
        self._token = token
        self._headers = {"PRIVATE-TOKEN": token, "Accept": "application/json", "User-Agent": "lore-gateway"}
        self._concurrency = concurrency
        self._timeout_seconds = timeout
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock: Clock = clock or SystemClock()
        self._retry = retry
        self._rng = rng or random.Random()
        self._session = session
        self._owns_session = session is None
        self._budget = budget
        self._semaphore = asyncio.Semaphore(concurrency)
        self._diffs_probe = asyncio.Lock()
        self._ratelimit: _RateLimit | None = None
        self.requests_made = 0
        self.responses: Counter[int] = Counter()  # HTTP status -> responses received (for /metrics)
        self.last_ratelimit_remaining: int | None = None

    def __repr__(self) -> str:
        return f"GitLabClient({str(self._api.with_user(None))!r}, concurrency={self._concurrency})"

    async def __aenter__(self) -> GitLabClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this client created it; an injected one belongs to its owner."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    # -- public requests ---------------------------------------------------------------------------

    async def get(self, path: str, params: Params | None = None) -> Any:
        """GET one JSON document from `path` (relative to /api/v4, e.g. "/projects/12")."""
        return (await self._request(path, params)).body

    async def pages(
        self, path: str, params: Params | None = None, *, on_total: Callable[[int], None] | None = None
    ) -> AsyncIterator[list[Any]]:
        """Yield each page of an offset-paginated list, 100 rows a page unless `per_page` is given.

        Only `x-next-page` is followed: GitLab omits `x-total-pages` above 10,000 rows. `on_total`
        hears the first page's `x-total` when GitLab sends one (progress reporting only).
        """
        query: dict[str, str | int] = {"per_page": 100, **(params or {})}
        page = int(query.get("page", 1))
        while True:
            query["page"] = page
            response = await self._request(path, query)
            if not isinstance(response.body, list):
                raise self._transient("gitlab_bad_response", f"GET {path} page {page}: expected a JSON list")
            if on_total is not None:
                total = _parse_int(response.headers.get("x-total"))
                if total is not None:
                    on_total(total)
                on_total = None  # the first page's total is the one that counts
            yield response.body
            next_page = self._next_page(path, page, response.headers)
            if next_page is None:
                return
            page = next_page

    async def get_all(self, path: str, params: Params | None = None) -> list[Any]:
        """Every row of a paginated list, in GitLab's order."""
        rows: list[Any] = []
        async for page in self.pages(path, params):
            rows.extend(page)
        return rows

    async def project(self, id_or_path: str | int) -> dict[str, Any]:
        """The project by numeric id or full path ("group/sub/project"); missing is permanent."""
        ref = str(id_or_path) if isinstance(id_or_path, int) else quote(id_or_path, safe="")
        try:
            body = await self.get(f"/projects/{ref}")
        except PermanentError as exc:
            if exc.code != "gitlab_not_found":
                raise
            raise self._permanent(
                "project_not_found",
                f"GitLab project {id_or_path} not found, or not visible to this token",
            ) from exc
        if not isinstance(body, dict):
            raise self._transient("gitlab_bad_response", f"GET /projects/{ref}: expected a JSON object")
        return body

    async def merge_request_files(self, project_id: int, iid: int) -> list[dict[str, Any]]:
        """The files an MR changes (old_path, new_path, new_file, renamed_file, deleted_file, ...).

        From `/diffs` (paginated, GitLab 15.7+); on a 404 from `/changes` (the MR with an unpaginated
        `changes` array, api/merge_requests.md), and when that answers, this GitLab is remembered as one
        without `/diffs`. A 404 from both means the MR itself is gone: PermanentError "gitlab_not_found".
        """
        base = f"/projects/{project_id}/merge_requests/{iid}"
        instance = str(self._root)
        if instance not in _HAS_DIFFS:
            async with self._diffs_probe:  # the MRs of a page arrive together: one of them finds out
                if instance not in _HAS_DIFFS:
                    return await self._probe_diffs(instance, base)
        if _HAS_DIFFS[instance]:
            return await self.get_all(f"{base}/diffs")
        return await self._changes(base)

    async def _probe_diffs(self, instance: str, base: str) -> list[dict[str, Any]]:
        try:
            files = await self.get_all(f"{base}/diffs")
        except PermanentError as exc:
            if exc.code != "gitlab_not_found":
                raise
        else:
            _HAS_DIFFS[instance] = True
            return files
        files = await self._changes(base)  # a 404 here too: the MR is gone, and we still do not know
        _HAS_DIFFS[instance] = False
        logger.info("GitLab at %s has no merge request /diffs (before 15.7): using /changes",
                    self._api.with_user(None))
        return files

    async def _changes(self, base: str) -> list[dict[str, Any]]:
        body = await self.get(f"{base}/changes")
        changes = body.get("changes") if isinstance(body, dict) else None
        if not isinstance(changes, list):
            raise self._transient("gitlab_bad_response", f"GET {base}/changes: expected an object with `changes`")
        return changes

    async def post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST `body` as JSON to `path` under the instance root (GraphQL: "/api/graphql"); the JSON answer.

        Retried like a GET, with one exception: a 503 whose body says the request timed out is GitLab
        giving up on a query too expensive to finish in its 30 s; the same query would time out again,
        so it raises at once (TransientError "gitlab_query_timeout") and the caller should ask for less.
        """
        if not path.startswith("/"):
            path = "/" + path
        url = URL(str(self._root) + path, encoded=True)
        return (await self._request(path, None, url=url, payload=json.dumps(body).encode())).body

    async def send(self, method: str, path: str, body: Mapping[str, Any] | None = None
                   ) -> tuple[Any, Mapping[str, str]]:
        """`method` (GET, POST, PUT or DELETE) on `path` under /api/v4, `body` as JSON: (answer, headers).

        For calls that change GitLab's settings (webhooks) or need a response header (`Date`); an empty
        answer (GitLab's 204 to a DELETE) is None. Errors and retries as for `get`.
        """
        payload = None if body is None else json.dumps(body).encode()
        response = await self._request(path, None, payload=payload, method=method.upper())
        return response.body, response.headers

    def list_params(self, updated_after: str | None) -> dict[str, str | int]:
        """Query for an incremental issue/MR listing, oldest change first so a cursor can advance."""
        params: dict[str, str | int] = {
            "scope": "all",
            "state": "all",
            "order_by": "updated_at",
            "sort": "asc",
            "per_page": 100,
        }
        if updated_after is not None:
            params["updated_after"] = updated_after
        return params

    # -- one request, retried ----------------------------------------------------------------------

    async def _request(
        self, path: str, params: Params | None, *, url: URL | None = None, payload: bytes | None = None,
        method: str | None = None,
    ) -> _Response:
        """GET `path` (under /api/v4), or with a `payload`, POST it as JSON to `url` (or `method` it)."""
        url = url or self._url(path, params)
        attempt = 1
        while True:
            try:
                return await self._send_once(url, path, payload, method)
            except _Retryable as failure:
                if attempt >= self._retry.attempts:
                    raise failure.error from failure.__cause__
                delay = failure.retry_after
                if delay is None:
                    delay = self._retry.delay(attempt, self._rng)
                retries = self._retry.attempts - 1
                logger.warning("%s; retry %d of %d in %.2fs", failure.error.message, attempt, retries, delay)
                await self._clock.sleep(delay)
                attempt += 1

    def _url(self, path: str, params: Params | None) -> URL:
        # encoded=True keeps a quoted project path ("group%2Fproject") from being decoded to a slash.
        if not path.startswith("/"):
            path = "/" + path
        url = URL(str(self._api) + path, encoded=True)
        return url.with_query(dict(params)) if params else url

    async def _send_once(
        self, url: URL, path: str, payload: bytes | None = None, method: str | None = None
    ) -> _Response:
        if self._budget is not None:
            await self._budget.acquire()
        pause = self._ratelimit_pause()
        if pause > 0:
            await self._clock.sleep(pause)
        async with self._semaphore:
            self.requests_made += 1
            status, headers, raw = await self._fetch(url, path, payload, method)
        self.responses[status] += 1
        self._observe_ratelimit(headers)
        return self._interpret(_method(payload, path, method), status, headers, raw)

    async def _fetch(
        self, url: URL, path: str, payload: bytes | None = None, method: str | None = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One HTTP exchange; network failures become retryable errors naming the request."""
        request = _method(payload, path, method)
        headers = self._headers if payload is None else {**self._headers, "Content-Type": "application/json"}
        try:
            async with self._http().request(
                request.partition(" ")[0],
                url,
                data=payload,
                headers=headers,
                timeout=self._timeout,
                raise_for_status=False,
            ) as resp:
                return resp.status, resp.headers, await resp.read()
        # TimeoutError first: aiohttp's ServerTimeoutError is also a ClientConnectionError.
        except TimeoutError as exc:
            message = f"{request} timed out after {self._timeout_seconds}s"
            raise _Retryable(self._transient("gitlab_timeout", message)) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            message = f"{request} failed: {type(exc).__name__}: {exc}"
            raise _Retryable(self._transient("gitlab_connection", message)) from exc

    def _http(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession wants a running loop, the constructor may run before one.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _interpret(self, request: str, status: int, headers: Mapping[str, str], raw: bytes) -> _Response:
        """`request` is what error messages call it, e.g. "GET /projects/12"."""
        if 200 <= status < 300:
            if not raw.strip() and not request.startswith(("GET", "POST")):
                return _Response(None, headers)  # a 204 to a DELETE, say
            try:
                return _Response(json.loads(raw), headers)
            except ValueError as exc:
                # A proxy's truncated or HTML answer; another try may well get the real one.
                message = f"{request} -> HTTP {status}: body is not JSON"
                raise _Retryable(self._transient("gitlab_bad_response", message)) from exc
        raise self._status_error(request, status, headers, raw)

    def _status_error(self, request: str, status: int, headers: Mapping[str, str], raw: bytes) -> Exception:
        message = f"{request} -> HTTP {status}{_gitlab_detail(raw)}"
        if status == 503 and request.startswith("POST") and _QUERY_TIMEOUT in raw:
            return self._transient("gitlab_query_timeout", f"{request} -> HTTP 503: {_QUERY_TIMEOUT.decode()}")
        if status == 429:
            return _Retryable(self._transient("gitlab_rate_limited", message), self._retry_after(headers))
        if status >= 500:
            retry_after = self._retry_after(headers) if status == 503 else None
            return _Retryable(self._transient("gitlab_unavailable", message), retry_after)
        if status == 408:
            # A request timeout is the server's, not our mistake: pausing the scheduler would be wrong.
            return _Retryable(self._transient("gitlab_timeout", message))
        if 400 <= status < 500:
            return self._permanent(_PERMANENT_CODES.get(status, "gitlab_bad_request"), message)
        return _Retryable(self._transient("gitlab_bad_response", message))

    def _retry_after(self, headers: Mapping[str, str]) -> float | None:
        return _parse_retry_after(headers.get("Retry-After"), self._clock.now())

    def _next_page(self, path: str, page: int, headers: Mapping[str, str]) -> int | None:
        raw = headers.get("x-next-page", "").strip()
        if not raw:
            return None
        next_page = _parse_int(raw)
        # Following a page that does not move forward would loop forever; stopping would lose rows.
        if next_page is None or next_page <= page:
            message = f"GET {path} page {page}: unusable x-next-page {raw[:20]!r}"
            raise self._transient("gitlab_bad_response", message)
        return next_page

    # -- rate limits -------------------------------------------------------------------------------

    def _observe_ratelimit(self, headers: Mapping[str, str]) -> None:
        remaining = _parse_int(headers.get("RateLimit-Remaining"))
        if remaining is None:
            return
        self.last_ratelimit_remaining = remaining
        reset = _parse_int(headers.get("RateLimit-Reset"))
        self._ratelimit = _RateLimit(remaining, _parse_int(headers.get("RateLimit-Limit")), reset)

    def _ratelimit_pause(self) -> float:
        """Seconds to wait before the next request so the quota left lasts until the window resets.

        Zero while quota is comfortable; below max(concurrency, 5% of the limit) the time left is
        shared out evenly among the requests left, and with none left we wait for the reset.
        Clamped to [0, 60] so a bogus RateLimit-Reset (a Unix time) cannot stall a run.
        """
        state = self._ratelimit
        if state is None or state.reset is None:
            return 0.0
        threshold = max(self._concurrency, 0.05 * (state.limit or 0))
        if state.remaining >= threshold:
            return 0.0
        until_reset = state.reset - self._clock.now()
        return min(max(until_reset / max(state.remaining, 1), 0.0), _MAX_PACE)

    # -- errors ------------------------------------------------------------------------------------

    def _redact(self, message: str) -> str:
        # GitLab or a proxy may echo request details back; the token must never leave this object.
        return message.replace(self._token, _REDACTED) if self._token else message

    def _transient(self, code: str, message: str) -> TransientError:
        return TransientError(code, self._redact(message))

    def _permanent(self, code: str, message: str) -> PermanentError:
        return PermanentError(code, self._redact(message))


def _method(payload: bytes | None, path: str, method: str | None = None) -> str:
    return f"{method or ('GET' if payload is None else 'POST')} {path}"


def _gitlab_detail(raw: bytes) -> str:
    """The ": <GitLab's message>" suffix for an error, or "" when the body has none worth showing."""
    try:
        doc = json.loads(raw)
    except ValueError:
        text = " ".join(raw.decode("utf-8", "replace").split())
        # Plain text such as 429's "Retry later" helps; an HTML error page does not.
        return f": {_truncate(text)}" if text and not text.startswith("<") else ""
    if not isinstance(doc, dict):
        return ""
    detail = doc.get("message", doc.get("error"))
    if detail is None:
        return ""
    return f": {_truncate(detail if isinstance(detail, str) else json.dumps(detail))}"


def _truncate(text: str) -> str:
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _parse_int(value: str | None) -> int | None:
    """A non-negative integer header, or None when missing or garbage."""
    if value is None:
        return None
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After (delta seconds or HTTP date) asks for; None if absent or unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        seconds = _http_date_delay(value, now)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, _MAX_RETRY_AFTER)


def _http_date_delay(value: str, now: float) -> float | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # HTTP dates are always GMT; "-0000" parses as naive.
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - now
