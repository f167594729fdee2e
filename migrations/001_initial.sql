-- The mirror, the engine's bookkeeping, and the gateway's durable state.
-- GitLab times are kept as normalized RFC 3339 text (sortable); the gateway's own times as Unix seconds (REAL).

CREATE TABLE projects (
    id                  INTEGER PRIMARY KEY,          -- GitLab's project id
    path_with_namespace TEXT NOT NULL UNIQUE,
    name                TEXT NOT NULL,
    web_url             TEXT NOT NULL,
    raw                 BLOB NOT NULL,                -- GitLab's JSON, as fetched
    synced_at           REAL NOT NULL
);

CREATE TABLE issues (
    project_id      INTEGER NOT NULL REFERENCES projects(id),
    iid             INTEGER NOT NULL,
    id              INTEGER NOT NULL,
    title           TEXT NOT NULL,
    state           TEXT NOT NULL,
    author_username TEXT,
    labels          TEXT NOT NULL DEFAULT '[]',       -- JSON array of label names
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    raw             BLOB NOT NULL,
    PRIMARY KEY (project_id, iid)
) WITHOUT ROWID;
CREATE INDEX issues_by_updated ON issues (project_id, updated_at, iid);

CREATE TABLE merge_requests (
    project_id      INTEGER NOT NULL REFERENCES projects(id),
    iid             INTEGER NOT NULL,
    id              INTEGER NOT NULL,
    title           TEXT NOT NULL,
    state           TEXT NOT NULL,
    author_username TEXT,
    labels          TEXT NOT NULL DEFAULT '[]',
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    merged_at       TEXT,
    raw             BLOB NOT NULL,
    PRIMARY KEY (project_id, iid)
) WITHOUT ROWID;
CREATE INDEX merge_requests_by_updated ON merge_requests (project_id, updated_at, iid);

-- One row a note; a discussion is the notes sharing discussion_id, in (discussion_seq, note_seq) order.
CREATE TABLE notes (
    id              INTEGER PRIMARY KEY,              -- GitLab's note id
    project_id      INTEGER NOT NULL,
    noteable_kind   TEXT NOT NULL CHECK (noteable_kind IN ('issue', 'merge_request')),
    noteable_iid    INTEGER NOT NULL,
    discussion_id   TEXT NOT NULL,
    individual_note INTEGER NOT NULL,
    discussion_seq  INTEGER NOT NULL,
    note_seq        INTEGER NOT NULL,
    author_username TEXT,
    system          INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    raw             BLOB NOT NULL
);
CREATE INDEX notes_by_parent ON notes (project_id, noteable_kind, noteable_iid, discussion_seq, note_seq);

CREATE TABLE mr_files (
    project_id INTEGER NOT NULL,
    mr_iid     INTEGER NOT NULL,
    path       TEXT NOT NULL,                         -- new_path
    old_path   TEXT NOT NULL,
    PRIMARY KEY (project_id, mr_iid, path)
) WITHOUT ROWID;
CREATE INDEX mr_files_by_path ON mr_files (project_id, path);

-- Searchable text: one document per issue, MR and note.
CREATE TABLE documents (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('issue', 'merge_request', 'note')),
    project_id INTEGER NOT NULL,
    iid        INTEGER NOT NULL,                      -- the item's, or the note's parent's
    note_id    INTEGER NOT NULL DEFAULT 0,            -- 0 for issues and MRs
    parent_kind TEXT NOT NULL,                        -- issue | merge_request
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    web_url    TEXT,
    updated_at TEXT NOT NULL,
    UNIQUE (kind, project_id, iid, note_id)
);
CREATE VIRTUAL TABLE documents_fts USING fts5(
    title, body, content='documents', content_rowid='id', tokenize='unicode61 remove_diacritics 2'
);
-- A note's title is its parent's (for display); only issues and MRs index a title, so a note does
-- not match its parent's title words.
CREATE TRIGGER documents_ai AFTER INSERT ON documents BEGIN
    INSERT INTO documents_fts (rowid, title, body)
    VALUES (new.id, CASE WHEN new.kind = 'note' THEN '' ELSE new.title END, new.body);
END;
CREATE TRIGGER documents_ad AFTER DELETE ON documents BEGIN
    INSERT INTO documents_fts (documents_fts, rowid, title, body)
    VALUES ('delete', old.id, CASE WHEN old.kind = 'note' THEN '' ELSE old.title END, old.body);
END;
CREATE TRIGGER documents_au AFTER UPDATE ON documents BEGIN
    INSERT INTO documents_fts (documents_fts, rowid, title, body)
    VALUES ('delete', old.id, CASE WHEN old.kind = 'note' THEN '' ELSE old.title END, old.body);
    INSERT INTO documents_fts (rowid, title, body)
    VALUES (new.id, CASE WHEN new.kind = 'note' THEN '' ELSE new.title END, new.body);
END;

-- Per project and resource, bumped only by a write that changed rows: the source of ETags.
CREATE TABLE data_versions (
    project_id INTEGER NOT NULL,                      -- 0 for gateway-wide resources
    resource   TEXT NOT NULL,
    version    INTEGER NOT NULL,
    PRIMARY KEY (project_id, resource)
) WITHOUT ROWID;

CREATE TABLE sync_runs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger       TEXT NOT NULL CHECK (trigger IN ('webhook', 'timer', 'startup', 'manual', 'api')),
    profile       TEXT NOT NULL CHECK (profile IN ('fast', 'balanced', 'full')),
    status        TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'interrupted')),
    stage         TEXT,
    counts        TEXT NOT NULL DEFAULT '{}',
    warnings      TEXT NOT NULL DEFAULT '[]',         -- e.g. a stage that is not available
    error_code    TEXT,
    error_message TEXT,
    transient     INTEGER,
    owner         TEXT,
    started_at    REAL NOT NULL,
    finished_at   REAL
);

CREATE TABLE sync_cursors (
    project_id    INTEGER NOT NULL,
    resource      TEXT NOT NULL,                      -- issues | merge_requests
    updated_after TEXT NOT NULL,                      -- the newest committed updated_at
    PRIMARY KEY (project_id, resource)
) WITHOUT ROWID;

CREATE TABLE service_state (
    id                   INTEGER PRIMARY KEY CHECK (id = 1),
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    next_retry_at        REAL,
    paused_reason        TEXT,
    updated_at           REAL
);
INSERT INTO service_state (id) VALUES (1);

-- The durable inbox. idempotency_key is NULL for GitLab before 17.4 (no dedupe then).
CREATE TABLE webhook_events (
    id              INTEGER PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    event           TEXT NOT NULL,
    project_id      INTEGER,
    kind            TEXT,                             -- issue | merge_request | project (an incremental pass)
    iid             INTEGER,
    received_at     REAL NOT NULL,
    processed_at    REAL,
    run_id          INTEGER,
    payload         BLOB NOT NULL
);
CREATE INDEX webhook_events_pending ON webhook_events (processed_at) WHERE processed_at IS NULL;

CREATE TABLE locks (
    name         TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    run_id       INTEGER,
    acquired_at  REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);

CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT NOT NULL,
    scopes       TEXT NOT NULL,                       -- JSON array
    secret_hash  TEXT NOT NULL,                       -- sha256 of the signed token; the token itself is never stored
    created_at   REAL NOT NULL,
    expires_at   REAL,
    revoked_at   REAL,
    last_used_at REAL
);
