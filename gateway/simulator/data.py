"""What the simulated GitLab holds: people, projects, issues, MRs, discussions and diffs, from a seed.

One module because every record comes from one seeded generator, so one seed always gives the same GitLab.

Records are kept in GitLab's own REST JSON shape (plain dicts, GitLab's field names), so the HTTP face serves
them unchanged. Timestamps are born as integer milliseconds and formatted once into a fixed-width form, so
ordering and `updated_after` filtering on the stored string are ordering and filtering by time.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

JSON = dict[str, Any]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SPAN_MS = 90 * 86_400_000  # initial data spreads over the 90 days before "now"
STATE_IDS = {"opened": 1, "closed": 2, "merged": 3, "locked": 4}

PEOPLE: tuple[tuple[str, str], ...] = (
    ("alice.chen", "Alice Chen"),
    ("bruno.silva", "Bruno Silva"),
    ("chioma.okafor", "Chioma Okafor"),
    ("dmitri.volkov", "Dmitri Volkov"),
    ("elena.rossi", "Elena Rossi"),
    ("farid.haddad", "Farid Haddad"),
    ("grace.kim", "Grace Kim"),
    ("hiro.tanaka", "Hiro Tanaka"),
    ("ines.moreau", "Ines Moreau"),
    ("jonas.berg", "Jonas Berg"),
    ("kavya.rao", "Kavya Rao"),
    ("liam.walsh", "Liam Walsh"),
)
LABELS: tuple[str, ...] = (
    "bug", "feature", "backend", "frontend", "docs", "security",
    "performance", "tech-debt", "needs-review", "priority::high", "priority::low", "regression",
)
LABEL_COLORS = ("#d9534f", "#428bca", "#5cb85c", "#f0ad4e", "#8e44ad", "#34495e")
FILE_TREE: dict[str, tuple[str, ...]] = {
    "src/auth/": ("session.py", "tokens.py", "oauth.py", "permissions.py"),
    "src/api/": ("routes.py", "handlers.py", "pagination.py", "errors.py"),
    "src/sync/": ("pipeline.py", "cursor.py", "client.py", "scheduler.py"),
    "src/ui/": ("app.ts", "router.ts", "issue_list.ts", "styles.css"),
    "docs/": ("index.md", "api.md", "setup.md", "faq.md"),
    "tests/": ("test_auth.py", "test_api.py", "test_sync.py", "conftest.py"),
}
SUBJECTS: dict[str, tuple[str, ...]] = {
    "src/auth/": ("token refresh", "session expiry", "OAuth callback", "permission checks"),
    "src/api/": ("pagination", "error responses", "rate limiting", "issue endpoint"),
    "src/sync/": ("incremental cursor", "retry backoff", "webhook dedupe", "scheduler wakeups"),
    "src/ui/": ("issue list", "dark mode", "keyboard shortcuts", "loading spinner"),
    "docs/": ("setup guide", "API reference", "FAQ entry", "upgrade notes"),
    "tests/": ("flaky auth test", "API fixtures", "sync test timing", "test isolation"),
}
VERBS = ("Fix", "Add", "Refactor", "Document", "Speed up", "Harden", "Remove", "Support")
COMMENTS = (
    "Looks good to me.",
    "Can we add a test for this?",
    "I think this breaks {path}.",
    "Reproduced on main, see the logs above.",
    "@{user} could you take a look?",
    "This also affects {path}, we should fix both.",
    "Nice catch, thanks!",
    "Should this go behind a feature flag?",
    "I pushed a fix, please re-check.",
    "Not sure about the naming here.",
)
SYSTEM_NOTES = (
    "added ~{label} label",
    "assigned to @{user}",
    "changed the description",
    "mentioned in commit {sha}",
    "added 1 commit",
)


# -- time ------------------------------------------------------------------------------------------

def _dt(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def rest_time(ms: int) -> str:
    """REST form, `2026-05-17T18:08:09.081Z`; fixed width, so string order is time order."""
    return _dt(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def hook_time(ms: int) -> str:
    """Issue/MR hook `object_attributes` form, `2013-12-03T17:15:43Z` (whole seconds)."""
    return _dt(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def ruby_time(ms: int) -> str:
    """Note hook, embedded parents and `changes` form, `2015-05-17 18:08:09 UTC`."""
    return _dt(ms).strftime("%Y-%m-%d %H:%M:%S UTC")


def parse_time_ms(value: str, *, ceil: bool = False) -> int:
    """ISO 8601 (with `Z`, an offset, or naive meaning UTC) to epoch milliseconds; ValueError if malformed.

    `ceil` rounds sub-millisecond input up, so "stored >= parsed" stays exact for an inclusive lower bound.
    """
    parsed = datetime.fromisoformat(value.strip().replace(" UTC", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    micros = (parsed - EPOCH) // timedelta(microseconds=1)
    return -(-micros // 1000) if ceil else micros // 1000


# -- records ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Person:
    id: int
    username: str
    name: str

    def rest(self, base_url: str) -> JSON:
        """GitLab's UserBasic entity, as in `author`, `assignees`, `closed_by`."""
        return {
            "id": self.id, "username": self.username, "name": self.name, "state": "active", "locked": False,
            "avatar_url": f"https://www.gravatar.com/avatar/{_hex(self.username, 32)}?s=80&d=identicon",
            "web_url": f"{base_url}/{self.username}",
        }

    def hook(self) -> JSON:
        """The `user` object of a webhook payload."""
        return {
            "id": self.id, "name": self.name, "username": self.username,
            "avatar_url": f"https://www.gravatar.com/avatar/{_hex(self.username, 32)}?s=80&d=identicon",
            "email": "[REDACTED]",
        }


@dataclass
class Project:
    """One simulated project. Items are GitLab REST dicts; mutate them only through GitLabSimulator."""

    id: int
    path: str
    web_url: str
    created_at: str
    last_activity_at: str
    issues: dict[int, JSON] = field(default_factory=dict)
    merge_requests: dict[int, JSON] = field(default_factory=dict)
    # keyed by ("issue" | "merge_request", iid), threads in creation order
    discussions: dict[tuple[str, int], list[JSON]] = field(default_factory=dict)
    diffs: dict[int, list[JSON]] = field(default_factory=dict)  # MR iid -> changed files
    diff_refs: dict[int, JSON] = field(default_factory=dict)  # MR iid -> {base_sha, head_sha, start_sha}

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def namespace(self) -> str:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else self.path

    def rest(self) -> JSON:
        """GET /projects/:id."""
        ns = self.namespace
        return {
            "id": self.id, "description": f"Simulated project {self.path}", "name": self.name,
            "name_with_namespace": self.path.replace("/", " / "), "path": self.name,
            "path_with_namespace": self.path, "created_at": self.created_at, "default_branch": "main",
            "tag_list": [], "topics": [], "ssh_url_to_repo": f"git@{_host(self.web_url)}:{self.path}.git",
            "http_url_to_repo": f"{self.web_url}.git", "web_url": self.web_url, "readme_url": None,
            "forks_count": 0, "avatar_url": None, "star_count": 0, "last_activity_at": self.last_activity_at,
            "namespace": {"id": self.id - 1000, "name": ns, "path": ns.rsplit("/", 1)[-1], "kind": "group",
                          "full_path": ns, "parent_id": None, "avatar_url": None,
                          "web_url": self.web_url.rsplit("/", 1)[0]},
            "visibility": "private", "issues_enabled": True, "merge_requests_enabled": True,
            "archived": False, "empty_repo": False,
        }

    def hook(self) -> JSON:
        """The `project` object of a webhook payload."""
        ssh = f"git@{_host(self.web_url)}:{self.path}.git"
        return {
            "id": self.id, "name": self.name, "description": f"Simulated project {self.path}",
            "web_url": self.web_url, "avatar_url": None, "git_ssh_url": ssh,
            "git_http_url": f"{self.web_url}.git",
            "namespace": self.namespace, "visibility_level": 0, "path_with_namespace": self.path,
            "default_branch": "main", "ci_config_path": None, "homepage": self.web_url, "url": ssh,
            "ssh_url": ssh, "http_url": f"{self.web_url}.git",
        }

    def repository(self) -> JSON:
        return {"name": self.name, "url": f"{self.web_url}.git",
                "description": f"Simulated project {self.path}", "homepage": self.web_url}


def _hex(seed: str, length: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:length]


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def random_sha(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


# -- generation ------------------------------------------------------------------------------------

class DataFactory:
    """Builds GitLab-shaped records. Global ids come from here so they stay unique across projects."""

    def __init__(self, seed: int, base_url: str) -> None:
        self.seed = seed
        self.base_url = base_url.rstrip("/")
        self.people: dict[str, Person] = {}
        for username, name in PEOPLE:
            self.person(username, name)
        self._rest_people = {p.username: p.rest(self.base_url) for p in self.people.values()}
        self._label_ids: dict[str, int] = {title: 100 + i for i, title in enumerate(LABELS)}
        self._next_issue_id = 40_001
        self._next_mr_id = 70_001
        self._next_note_id = 900_001

    # people and labels

    def person(self, username: str, name: str | None = None) -> Person:
        """The person with this username, created on first use (ids are small and stable per simulator)."""
        if username not in self.people:
            display = name or username.replace(".", " ").title()
            self.people[username] = Person(id=len(self.people) + 1, username=username, name=display)
        return self.people[username]

    def user_rest(self, username: str) -> JSON:
        if username not in self._rest_people:
            self._rest_people[username] = self.person(username).rest(self.base_url)
        return self._rest_people[username]

    def label_hook(self, title: str, project_id: int) -> JSON:
        """A label object as webhooks carry it (REST items carry plain titles)."""
        label_id = self._label_ids.setdefault(title, 100 + len(self._label_ids))
        return {
            "id": label_id, "title": title, "color": LABEL_COLORS[label_id % len(LABEL_COLORS)],
            "project_id": project_id, "created_at": "2025-01-06T09:00:00Z",
            "updated_at": "2025-01-06T09:00:00Z",
            "template": False, "description": None, "type": "ProjectLabel", "group_id": None,
        }

    # ids

    def issue_id(self) -> int:
        self._next_issue_id += 1
        return self._next_issue_id - 1

    def mr_id(self) -> int:
        self._next_mr_id += 1
        return self._next_mr_id - 1

    def note_id(self) -> int:
        self._next_note_id += 1
        return self._next_note_id - 1

    # items

    def issue(self, project: Project, iid: int, *, title: str, description: str, author: str,
              created_ms: int, updated_ms: int, state: str = "opened", labels: list[str] | None = None,
              assignees: list[str] | None = None, confidential: bool = False) -> JSON:
        assigned = [self.user_rest(u) for u in assignees or []]
        web_url = f"{project.web_url}/-/issues/{iid}"
        return {
            "id": self.issue_id(), "iid": iid, "project_id": project.id, "title": title,
            "description": description, "state": state, "created_at": rest_time(created_ms),
            "updated_at": rest_time(updated_ms),
            "closed_at": rest_time(updated_ms) if state == "closed" else None,
            "closed_by": self.user_rest(author) if state == "closed" else None,
            "labels": sorted(labels or []), "milestone": None, "assignees": assigned,
            "author": self.user_rest(author), "type": "ISSUE", "assignee": assigned[0] if assigned else None,
            "user_notes_count": 0, "merge_requests_count": 0, "upvotes": 0, "downvotes": 0, "due_date": None,
            "confidential": confidential, "discussion_locked": None, "issue_type": "issue",
            "web_url": web_url,
            "time_stats": _time_stats(), "task_completion_status": {"count": 0, "completed_count": 0},
            "references": _references(project.path, f"#{iid}"), "severity": "UNKNOWN", "moved_to_id": None,
            "service_desk_reply_to": None, "imported": False, "imported_from": "none",
            "_links": self._issue_links(project, iid),
        }

    def _issue_links(self, project: Project, iid: int) -> JSON:
        api = f"{self.base_url}/api/v4/projects/{project.id}"
        return {"self": f"{api}/issues/{iid}", "notes": f"{api}/issues/{iid}/notes",
                "award_emoji": f"{api}/issues/{iid}/award_emoji", "project": api, "closed_as_duplicate_of": None}

    def merge_request(self, project: Project, iid: int, *, title: str, description: str, author: str,
                      created_ms: int, updated_ms: int, source_branch: str, sha: str, state: str = "opened",
                      labels: list[str] | None = None, assignees: list[str] | None = None,
                      reviewers: list[str] | None = None, draft: bool = False) -> JSON:
        assigned = [self.user_rest(u) for u in assignees or []]
        merged = state == "merged"
        closed = state == "closed"
        return {
            "id": self.mr_id(), "iid": iid, "project_id": project.id, "title": title,
            "description": description, "state": state, "created_at": rest_time(created_ms),
            "updated_at": rest_time(updated_ms),
            "merged_by": self.user_rest(author) if merged else None,
            "merge_user": self.user_rest(author) if merged else None,
            "merged_at": rest_time(updated_ms) if merged else None,
            "closed_by": self.user_rest(author) if closed else None,
            "closed_at": rest_time(updated_ms) if closed else None,
            "target_branch": "main", "source_branch": source_branch, "user_notes_count": 0,
            "upvotes": 0, "downvotes": 0, "author": self.user_rest(author), "assignees": assigned,
            "assignee": assigned[0] if assigned else None,
            "reviewers": [self.user_rest(u) for u in reviewers or []],
            "source_project_id": project.id, "target_project_id": project.id, "labels": sorted(labels or []),
            "draft": draft, "work_in_progress": draft, "milestone": None,
            "merge_when_pipeline_succeeds": False, "merge_status": "can_be_merged",
            "detailed_merge_status": "mergeable" if state == "opened" else "not_open",
            "sha": sha, "merge_commit_sha": _hex(f"{project.path}!{iid}", 40) if merged else None,
            "squash_commit_sha": None, "discussion_locked": None,
            "should_remove_source_branch": None, "force_remove_source_branch": True,
            "reference": f"!{iid}", "references": _references(project.path, f"!{iid}"),
            "web_url": f"{project.web_url}/-/merge_requests/{iid}", "time_stats": _time_stats(),
            "squash": False,
            "task_completion_status": {"count": 0, "completed_count": 0}, "has_conflicts": False,
            "blocking_discussions_resolved": True, "imported": False, "imported_from": "none", "merge_after": None,
            "prepared_at": rest_time(created_ms), "approvals_before_merge": None,
        }

    def note(self, project: Project, parent: JSON, kind: str, *, body: str, author: str, at_ms: int,
             note_type: str | None = None, system: bool = False, position: JSON | None = None,
             resolved: bool = False) -> JSON:
        """One note. Individual and system notes are not resolvable; thread notes are (GitLab's rule)."""
        resolvable = note_type in ("DiscussionNote", "DiffNote") and not system
        note: JSON = {
            "id": self.note_id(), "type": note_type, "body": body, "attachment": None,
            "author": self.user_rest(author), "created_at": rest_time(at_ms), "updated_at": rest_time(at_ms),
            "system": system, "noteable_id": parent["id"],
            "noteable_type": "Issue" if kind == "issue" else "MergeRequest", "project_id": project.id,
        }
        if position is not None:
            note["commit_id"] = position["head_sha"]
            note["position"] = position
        note["resolvable"] = resolvable
        if resolvable:
            note["resolved"] = resolved
            note["resolved_by"] = self.user_rest(author) if resolved else None
            note["resolved_at"] = rest_time(at_ms) if resolved else None
        note.update({"confidential": False, "internal": False, "imported": False, "imported_from": "none",
                     "noteable_iid": parent["iid"], "commands_changes": {}})
        return note

    # whole projects

    def populate(self, project: Project, *, issues: int, merge_requests: int, notes_per_item: int,
                 files_per_mr: int, now_ms: int) -> int:
        """Fill a new project; returns the newest timestamp generated (always before `now_ms`)."""
        gen = _ProjectGenerator(self, project, random.Random(f"{self.seed}:{project.path}"), now_ms)
        slots = gen.update_slots(issues + merge_requests)
        for iid in range(1, issues + 1):
            gen.add_issue(iid, slots.pop(), notes_per_item)
        for iid in range(1, merge_requests + 1):
            gen.add_merge_request(iid, slots.pop(), notes_per_item, files_per_mr)
        return gen.newest


class _ProjectGenerator:
    """Random but seed-determined content for one project."""

    def __init__(self, factory: DataFactory, project: Project, rng: random.Random, now_ms: int) -> None:
        self.f = factory
        self.project = project
        self.rng = rng
        self.start = now_ms - SPAN_MS
        self.now_ms = now_ms
        self.usernames = [u for u, _ in PEOPLE]
        self.newest = 0

    def update_slots(self, n: int) -> list[int]:
        """n distinct updated_at values spread over the span, in random order."""
        step = SPAN_MS / max(n, 1)
        slots = [self.start + int((i + self.rng.random()) * step) for i in range(n)]
        self.rng.shuffle(slots)
        return slots

    def add_issue(self, iid: int, updated: int, notes: int) -> None:
        rng = self.rng
        area = rng.choice(tuple(FILE_TREE))
        created = self.start + int(rng.random() * (updated - self.start))
        title = f"{rng.choice(VERBS)} {rng.choice(SUBJECTS[area])}"
        path = area + rng.choice(FILE_TREE[area])
        issue = self.f.issue(
            self.project, iid, title=title, description=f"{title}.\n\nSeen around `{path}`.",
            author=rng.choice(self.usernames), created_ms=created, updated_ms=updated,
            state="closed" if rng.random() < 0.3 else "opened", labels=rng.sample(LABELS, rng.randint(0, 3)),
            assignees=rng.sample(self.usernames, rng.choice((0, 1, 1, 2))), confidential=rng.random() < 0.03,
        )
        self.project.issues[iid] = issue
        threads = self.discussions(issue, "issue", notes, created, updated, [])
        self.project.discussions[("issue", iid)] = threads
        self.newest = max(self.newest, updated)

    def add_merge_request(self, iid: int, updated: int, notes: int, files: int) -> None:
        rng = self.rng
        area = rng.choice(tuple(FILE_TREE))
        created = self.start + int(rng.random() * (updated - self.start))
        title = f"{rng.choice(VERBS)} {rng.choice(SUBJECTS[area])}"
        refs = {"base_sha": random_sha(rng), "head_sha": random_sha(rng), "start_sha": random_sha(rng)}
        diffs = self.diffs(area, files)
        state = rng.choices(("opened", "merged", "closed"), weights=(30, 55, 15))[0]
        author = rng.choice(self.usernames)
        mr = self.f.merge_request(
            self.project, iid, title=title, description=f"{title}.\n\nTouches `{diffs[0]['new_path']}`."
            if diffs else f"{title}.", author=author, created_ms=created, updated_ms=updated,
            source_branch=f"{author.split('.')[0]}/{iid}-{title.lower().replace(' ', '-')}",
            sha=refs["head_sha"], state=state, labels=rng.sample(LABELS, rng.randint(0, 3)),
            assignees=[author], reviewers=rng.sample(self.usernames, rng.choice((0, 1, 2))),
            draft=state == "opened" and rng.random() < 0.15,
        )
        self.project.merge_requests[iid] = mr
        self.project.diffs[iid] = diffs
        self.project.diff_refs[iid] = refs
        self.project.discussions[("merge_request", iid)] = self.discussions(
            mr, "merge_request", notes, created, updated, [(d, refs) for d in diffs if not d["deleted_file"]])
        self.newest = max(self.newest, updated)

    def diffs(self, area: str, count: int) -> list[JSON]:
        """Changed files, mostly in the MR's own area, so path expertise has a signal."""
        pool = [area + name for name in FILE_TREE[area]]
        others = [d + name for d in FILE_TREE if d != area for name in FILE_TREE[d]]
        paths = self.rng.sample(pool, min(count, len(pool)))
        if count > len(paths):
            paths += self.rng.sample(others, min(count - len(paths), len(others)))
        return [self.diff_entry(p) for p in paths]

    def diff_entry(self, path: str) -> JSON:
        roll = self.rng.random()
        new_file, deleted, renamed = roll < 0.15, 0.15 <= roll < 0.2, 0.2 <= roll < 0.25
        old_path = path.replace(".", "_old.", 1) if renamed else path
        line = self.rng.randint(1, 200)
        return {
            "old_path": old_path, "new_path": path, "a_mode": "0" if new_file else "100644",
            "b_mode": "0" if deleted else "100644", "new_file": new_file, "renamed_file": renamed,
            "deleted_file": deleted, "generated_file": False,
            "diff": f"@@ -{line},3 +{line},4 @@\n context\n-old line\n+new line\n+added line\n context\n",
        }

    def discussions(self, parent: JSON, kind: str, notes: int, created: int, updated: int,
                    diff_targets: list[tuple[JSON, JSON]]) -> list[JSON]:
        """Group `notes` notes into threads: single comments, system notes, 2-3 note threads, DiffNotes."""
        times = sorted(self.rng.randint(created, updated) for _ in range(notes))
        threads: list[JSON] = []
        while times:
            roll = self.rng.random()
            if roll < 0.12:
                threads.append(self.thread(parent, kind, times[:1], individual=True, system=True))
                times = times[1:]
            elif roll < 0.4:
                threads.append(self.thread(parent, kind, times[:1], individual=True))
                times = times[1:]
            else:
                size = self.rng.choice((2, 2, 3))
                target = self.rng.choice(diff_targets) if diff_targets and roll < 0.7 else None
                threads.append(self.thread(parent, kind, times[:size], diff_target=target))
                times = times[size:]
        parent["user_notes_count"] = sum(
            1 for t in threads for n in t["notes"] if not n["system"])
        return threads

    def thread(self, parent: JSON, kind: str, times: list[int], *, individual: bool = False,
               system: bool = False, diff_target: tuple[JSON, JSON] | None = None) -> JSON:
        note_type = None if individual else ("DiffNote" if diff_target else "DiscussionNote")
        position = self.position(*diff_target) if diff_target else None
        resolved = not individual and self.rng.random() < 0.5
        notes = [
            self.f.note(self.project, parent, kind, body=self.body(system),
                        author=self.rng.choice(self.usernames), at_ms=at, note_type=note_type,
                        system=system, position=position, resolved=resolved)
            for at in times
        ]
        return {"id": random_sha(self.rng), "individual_note": individual, "notes": notes}

    def position(self, diff: JSON, refs: JSON) -> JSON:
        line = self.rng.randint(1, 200)
        return {
            "base_sha": refs["base_sha"], "start_sha": refs["start_sha"], "head_sha": refs["head_sha"],
            "old_path": diff["old_path"], "new_path": diff["new_path"], "position_type": "text",
            "old_line": None if diff["new_file"] else line, "new_line": line, "line_range": None,
        }

    def body(self, system: bool) -> str:
        template = self.rng.choice(SYSTEM_NOTES if system else COMMENTS)
        area = self.rng.choice(tuple(FILE_TREE))
        return template.format(
            path=area + self.rng.choice(FILE_TREE[area]), user=self.rng.choice(self.usernames),
            label=self.rng.choice(LABELS), sha=random_sha(self.rng)[:8],
        )


def _time_stats() -> JSON:
    return {"time_estimate": 0, "total_time_spent": 0, "human_time_estimate": None,
            "human_total_time_spent": None}


def _references(project_path: str, short: str) -> JSON:
    return {"short": short, "relative": short, "full": f"{project_path}{short}"}


# -- webhook payload pieces ------------------------------------------------------------------------

TimeFormat = Callable[[int], str]  # hook_time or ruby_time, depending on where the object sits in a payload


def reformat(value: str | None, fmt: TimeFormat) -> str | None:
    """A stored REST timestamp in one of the webhook formats."""
    return None if value is None else fmt(parse_time_ms(value))


def hook_users(users: list[JSON]) -> list[JSON]:
    return [{"id": u["id"], "name": u["name"], "username": u["username"], "avatar_url": u["avatar_url"]}
            for u in users]


def issue_hook_attrs(factory: DataFactory, project: Project, issue: JSON, fmt: TimeFormat) -> JSON:
    """An issue as webhooks show it: `object_attributes` of an Issue Hook, or `issue` of a Note Hook."""
    assignee_ids = [u["id"] for u in issue["assignees"]]
    return {
        "author_id": issue["author"]["id"], "closed_at": reformat(issue["closed_at"], fmt),
        "confidential": issue["confidential"], "created_at": reformat(issue["created_at"], fmt),
        "description": issue["description"], "discussion_locked": issue["discussion_locked"],
        "due_date": None,
        "id": issue["id"], "iid": issue["iid"], "last_edited_at": None, "last_edited_by_id": None,
        "milestone_id": None, "moved_to_id": None, "duplicated_to_id": None, "project_id": project.id,
        "relative_position": 0, "state_id": STATE_IDS[issue["state"]], "time_estimate": 0,
        "title": issue["title"], "updated_at": reformat(issue["updated_at"], fmt), "updated_by_id": None,
        "weight": None, "health_status": None, "type": "Issue", "url": issue["web_url"],
        "total_time_spent": 0, "time_change": 0, "human_total_time_spent": None, "human_time_change": None,
        "human_time_estimate": None,
        "assignee_ids": assignee_ids, "assignee_id": assignee_ids[0] if assignee_ids else None,
        "labels": [factory.label_hook(t, project.id) for t in issue["labels"]], "state": issue["state"],
        "severity": "unknown",
    }


def mr_hook_attrs(factory: DataFactory, project: Project, mr: JSON, fmt: TimeFormat) -> JSON:
    """An MR as webhooks show it: `object_attributes` of an MR Hook, or `merge_request` of a Note Hook."""
    assignee_ids = [u["id"] for u in mr["assignees"]]
    return {
        "assignee_id": assignee_ids[0] if assignee_ids else None, "author_id": mr["author"]["id"],
        "created_at": reformat(mr["created_at"], fmt), "description": mr["description"], "draft": mr["draft"],
        "head_pipeline_id": None, "id": mr["id"], "iid": mr["iid"], "last_edited_at": None,
        "last_edited_by_id": None, "merge_commit_sha": mr["merge_commit_sha"], "merge_error": None,
        "merge_params": {"force_remove_source_branch": "1"}, "merge_status": mr["merge_status"],
        "merge_user_id": mr["merge_user"]["id"] if mr["merge_user"] else None,
        "merge_when_pipeline_succeeds": False, "milestone_id": None, "source_branch": mr["source_branch"],
        "source_project_id": project.id, "state_id": STATE_IDS[mr["state"]],
        "target_branch": mr["target_branch"], "target_project_id": project.id, "time_estimate": 0,
        "title": mr["title"], "updated_at": reformat(mr["updated_at"], fmt), "updated_by_id": None,
        "prepared_at": reformat(mr["created_at"], fmt), "assignee_ids": assignee_ids,
        "blocking_discussions_resolved": True, "detailed_merge_status": mr["detailed_merge_status"],
        "first_contribution": False, "human_time_change": None, "human_time_estimate": None,
        "human_total_time_spent": None, "labels": [factory.label_hook(t, project.id) for t in mr["labels"]],
        "last_commit": {
            "id": mr["sha"], "message": f"{mr['title']}\n", "title": mr["title"],
            "timestamp": reformat(mr["updated_at"], hook_time),
            "url": f"{project.web_url}/-/commit/{mr['sha']}",
            "author": {"name": mr["author"]["name"], "email": "[REDACTED]"},
        },
        "reviewer_ids": [u["id"] for u in mr["reviewers"]], "source": project.hook(), "state": mr["state"],
        "target": project.hook(), "time_change": 0, "total_time_spent": 0, "url": mr["web_url"],
        "work_in_progress": mr["draft"],
    }


def note_hook_attrs(project: Project, note: JSON, discussion_id: str, parent_url: str) -> JSON:
    """`object_attributes` of a Note Hook (Ruby-style timestamps, as GitLab sends them)."""
    return {
        "attachment": None, "author_id": note["author"]["id"], "change_position": None, "commit_id": None,
        "created_at": reformat(note["created_at"], ruby_time), "discussion_id": discussion_id,
        "id": note["id"],
        "line_code": None, "note": note["body"], "noteable_id": note["noteable_id"],
        "noteable_type": note["noteable_type"], "original_position": None, "position": note.get("position"),
        "project_id": project.id, "resolved_at": None, "resolved_by_id": None, "resolved_by_push": None,
        "st_diff": None, "system": note["system"], "type": note["type"],
        "updated_at": reformat(note["updated_at"], ruby_time), "updated_by_id": None,
        "description": note["body"], "url": f"{parent_url}#note_{note['id']}", "action": "create",
    }
