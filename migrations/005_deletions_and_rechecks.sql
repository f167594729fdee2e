-- What it takes to keep the mirror complete when GitLab stays silent (see docs/operations.md,
-- "Deletions and throttled notes").

-- GitLab touches an issue's or MR's updated_at at most once a minute (ThrottledTouch, TOUCH_INTERVAL in
-- app/models/concerns/throttled_touch.rb): a note written within a minute of the item's last update
-- leaves updated_at as it was, so no updated_after listing ever shows it. One row an item whose
-- discussions were last fetched inside that window after its updated_at; a pass fetches them once more
-- when the window has closed, and the row goes. Items fetched later than that need nothing: any note
-- after such a fetch moves updated_at.
CREATE TABLE discussion_rechecks (
    project_id      INTEGER NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('issue', 'merge_request')),
    iid             INTEGER NOT NULL,
    item_updated_at TEXT NOT NULL,                    -- the item's updated_at that fetch went with
    fetched_at      REAL NOT NULL,                    -- the gateway's clock when the request was sent
    PRIMARY KEY (project_id, kind, iid)
) WITHOUT ROWID;

-- GitLab sends no webhook when an issue or MR is deleted; a reconcile pass lists every iid and deletes
-- what GitLab no longer has. When each project last had one (the scheduler's sync.reconcile_interval).
CREATE TABLE reconciles (
    project_id    INTEGER PRIMARY KEY,
    reconciled_at REAL NOT NULL
);
