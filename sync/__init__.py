"""The sync engine's public API: everything the gateway (HTTP, CLI, MCP, ops) may use, and nothing else.

The engine keeps a local SQLite mirror of GitLab fresh; its subpackages name the steps a webhook takes
(store, gitlab, ingest, control, read, scaleout; docs/architecture.md). Below this line the modules are
private to the engine: `gateway` imports from `sync` only, and `sync` never imports `gateway` or
`aiohttp.web` (both enforced by tests/test_architecture.py). `queries` and `changes` are exported as
namespaces: the read model's functions are called qualified (`queries.list_items`); the parameters they
take (filters, cursors) are exported by name.
"""

from sync.clock import Clock, SystemClock, utc_iso
from sync.config import (
    CONFIG_ENV,
    ENV_PREFIX,
    MIN_SECRET_BYTES,
    SYNC_DISABLED,
    Config,
    ConfigError,
    GatewayConfig,
    IPNetwork,
    WebhookConfig,
    config_warnings,
    ensure_data_dir,
    load_config,
    parse_duration,
    short_secret,
)
from sync.control.doctor import FAIL, OK, Check, run_checks
from sync.control.inbox import Accepted, Inbox, InboxError, InboxEvent
from sync.control.inbox_queries import pending_rows
from sync.control.lock import new_owner
from sync.control.runner import SyncRunner
from sync.control.runs import PROFILES, Run, RunLog
from sync.control.scheduler import (
    Scheduler,
    SyncRunnerLike,
    failure_of,
    reconcile_due_at,
    resume_service,
    settle_run,
)
from sync.control.status import (
    SchedulerView,
    ServiceState,
    read_service_state,
    stored_scheduler_view,
    sync_status,
)
from sync.errors import PermanentError, SyncError, SyncInProgress
from sync.events import (
    CatalogEvent,
    DataChanged,
    Event,
    EventBus,
    Reset,
    SchedulerState,
    Subscription,
    SyncFailed,
    SyncFinished,
    SyncProgress,
    SyncQueued,
    SyncStarted,
    WebhookReceived,
)
from sync.gitlab.budget import RequestBudget
from sync.gitlab.client import GitLabClient
from sync.gitlab.hooks import (
    HealthStore,
    HookManager,
    HookResult,
    Manifest,
    default_hook_url,
    disabled_message,
    health_of,
    refresh_health,
    wanted_hook,
)
from sync.gitlab.instance import read_instance
from sync.ingest.embeddings import EmbeddingClient
from sync.ingest.pipeline import SyncRequest
from sync.read import changes, queries
from sync.read.changes import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Change,
    CursorExpired,
    InvalidChangeCursor,
    read_changes,
)
from sync.read.cursors import CursorCodec, InvalidCursor, ItemKey, ThreadKey, project_key_from_json
from sync.read.experts import Expert, find_experts, mirrored_projects, resolve_project
from sync.read.filters import (
    MAX_TEXT,
    STATES,
    InvalidFilter,
    ItemFilters,
    parse_author,
    parse_labels,
    parse_rfc3339,
    parse_state,
    parse_status,
)
from sync.read.queries import project_exists
from sync.read.search import (
    KINDS,
    MARK_CLOSE,
    MARK_OPEN,
    RANK_WINDOW,
    SearchHit,
    SearchQueryError,
    project_paths,
    search,
)
from sync.read.semantic import VectorIndex
from sync.scaleout.redis_bus import DEFAULT_PREFIX, RedisEventBus, redis_client
from sync.scaleout.redis_lock import LeaderLease, RedisLock
from sync.store.backup import BackupError, backup_database, fsync_dir
from sync.store.db import Database, migrate
from sync.store.migrations import MigrationError
from sync.store.mounts import refuse_network_data_dir
from sync.store.versions import DataVersions, VersionKey
from sync.types import MAX_ID, TABLES, ItemRef, Kind, Progress

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_LIMIT",
    "DEFAULT_PREFIX",
    "ENV_PREFIX",
    "FAIL",
    "KINDS",
    "MARK_CLOSE",
    "MARK_OPEN",
    "MAX_ID",
    "MAX_LIMIT",
    "MAX_TEXT",
    "MIN_SECRET_BYTES",
    "OK",
    "PROFILES",
    "RANK_WINDOW",
    "STATES",
    "SYNC_DISABLED",
    "TABLES",
    "Accepted",
    "BackupError",
    "CatalogEvent",
    "Change",
    "Check",
    "Clock",
    "Config",
    "ConfigError",
    "CursorCodec",
    "CursorExpired",
    "DataChanged",
    "DataVersions",
    "Database",
    "EmbeddingClient",
    "Event",
    "EventBus",
    "Expert",
    "GatewayConfig",
    "GitLabClient",
    "HealthStore",
    "HookManager",
    "HookResult",
    "IPNetwork",
    "Inbox",
    "InboxError",
    "InboxEvent",
    "InvalidChangeCursor",
    "InvalidCursor",
    "InvalidFilter",
    "ItemFilters",
    "ItemKey",
    "ItemRef",
    "Kind",
    "LeaderLease",
    "Manifest",
    "MigrationError",
    "PermanentError",
    "Progress",
    "RedisEventBus",
    "RedisLock",
    "RequestBudget",
    "Reset",
    "Run",
    "RunLog",
    "Scheduler",
    "SchedulerState",
    "SchedulerView",
    "SearchHit",
    "SearchQueryError",
    "ServiceState",
    "Subscription",
    "SyncError",
    "SyncFailed",
    "SyncFinished",
    "SyncInProgress",
    "SyncProgress",
    "SyncQueued",
    "SyncRequest",
    "SyncRunner",
    "SyncRunnerLike",
    "SyncStarted",
    "SystemClock",
    "ThreadKey",
    "VectorIndex",
    "VersionKey",
    "WebhookConfig",
    "WebhookReceived",
    "backup_database",
    "changes",
    "config_warnings",
    "default_hook_url",
    "disabled_message",
    "ensure_data_dir",
    "failure_of",
    "find_experts",
    "fsync_dir",
    "health_of",
    "load_config",
    "migrate",
    "mirrored_projects",
    "new_owner",
    "parse_author",
    "parse_duration",
    "parse_labels",
    "parse_rfc3339",
    "parse_state",
    "parse_status",
    "pending_rows",
    "project_exists",
    "project_key_from_json",
    "project_paths",
    "queries",
    "read_changes",
    "read_instance",
    "read_service_state",
    "reconcile_due_at",
    "redis_client",
    "refresh_health",
    "refuse_network_data_dir",
    "resolve_project",
    "resume_service",
    "run_checks",
    "search",
    "settle_run",
    "short_secret",
    "stored_scheduler_view",
    "sync_status",
    "utc_iso",
    "wanted_hook",
]
