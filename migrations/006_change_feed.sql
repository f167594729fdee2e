-- The change feed (GET /api/v1/changes): one row per change of an issue, MR or note, numbered by the
-- database itself, so the order is the commit order (SQLite has one writer at a time) and the number
-- is the same in every process and survives restarts. AUTOINCREMENT: a number is never reused, even
-- after the rows below it are pruned, so a client's cursor can never point at a different change.
--
-- Written by triggers, not by the code that writes the mirror, so no write path can forget one:
-- * an INSERT (the mirror's INSERT OR REPLACE) is `created`, or `updated` when the row was there,
--   and nothing at all when GitLab's JSON (`raw`) is byte for byte what is stored;
-- * an UPDATE that changes `raw` is `updated`;
-- * a DELETE is `deleted` (a tombstone). INSERT OR REPLACE does not fire DELETE triggers while
--   PRAGMA recursive_triggers is off (SQLite's default, and ours), so a rewrite is not a deletion.
-- A work-item status is part of an issue as served: a stored status that differs from the issue's is
-- an `updated` of the issue (sync.workitems records work_item_statuses before it copies the status
-- into issues; the trigger of 002 that copies it back after a rewrite touches only issues).
--
-- Rows older than `changes.retention` are pruned (sync.changes.prune); `changes_pruned` remembers the
-- highest number pruned, below which a cursor has missed changes and is expired.

CREATE TABLE changes (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL CHECK (kind IN ('issue', 'merge_request', 'note')),
    project_id  INTEGER NOT NULL,
    iid         INTEGER NOT NULL,                     -- the item's, or the note's parent's
    note_id     INTEGER,                              -- NULL unless a note
    parent_kind TEXT NOT NULL,                        -- issue | merge_request (an item's own kind)
    action      TEXT NOT NULL CHECK (action IN ('created', 'updated', 'deleted')),
    at          TEXT NOT NULL                         -- when it was committed: RFC 3339, UTC, ms, Z
);
CREATE INDEX changes_by_at ON changes (at);

CREATE TABLE changes_pruned (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    through_seq INTEGER NOT NULL                      -- every change up to this one has been pruned
);
INSERT INTO changes_pruned (id, through_seq) VALUES (1, 0);

-- Issues -------------------------------------------------------------------------------------------

CREATE TRIGGER issues_change_ai BEFORE INSERT ON issues
WHEN NOT EXISTS (SELECT 1 FROM issues o WHERE o.project_id = new.project_id AND o.iid = new.iid AND o.raw = new.raw)
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('issue', new.project_id, new.iid, NULL, 'issue',
            CASE WHEN EXISTS (SELECT 1 FROM issues o WHERE o.project_id = new.project_id AND o.iid = new.iid)
                 THEN 'updated' ELSE 'created' END,
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
CREATE TRIGGER issues_change_au AFTER UPDATE OF raw ON issues WHEN old.raw IS NOT new.raw
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('issue', new.project_id, new.iid, NULL, 'issue', 'updated', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
CREATE TRIGGER issues_change_ad AFTER DELETE ON issues
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('issue', old.project_id, old.iid, NULL, 'issue', 'deleted', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

CREATE TRIGGER work_item_status_change_ai AFTER INSERT ON work_item_statuses
WHEN EXISTS (SELECT 1 FROM issues i WHERE i.project_id = new.project_id AND i.iid = new.iid
             AND i.work_item_status IS NOT new.status)
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('issue', new.project_id, new.iid, NULL, 'issue', 'updated', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
CREATE TRIGGER work_item_status_change_au AFTER UPDATE OF status ON work_item_statuses
WHEN EXISTS (SELECT 1 FROM issues i WHERE i.project_id = new.project_id AND i.iid = new.iid
             AND i.work_item_status IS NOT new.status)
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('issue', new.project_id, new.iid, NULL, 'issue', 'updated', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

-- Merge requests -----------------------------------------------------------------------------------

CREATE TRIGGER merge_requests_change_ai BEFORE INSERT ON merge_requests
WHEN NOT EXISTS (SELECT 1 FROM merge_requests o
                 WHERE o.project_id = new.project_id AND o.iid = new.iid AND o.raw = new.raw)
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('merge_request', new.project_id, new.iid, NULL, 'merge_request',
            CASE WHEN EXISTS (SELECT 1 FROM merge_requests o WHERE o.project_id = new.project_id AND o.iid = new.iid)
                 THEN 'updated' ELSE 'created' END,
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
CREATE TRIGGER merge_requests_change_au AFTER UPDATE OF raw ON merge_requests WHEN old.raw IS NOT new.raw
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('merge_request', new.project_id, new.iid, NULL, 'merge_request', 'updated',
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
CREATE TRIGGER merge_requests_change_ad AFTER DELETE ON merge_requests
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('merge_request', old.project_id, old.iid, NULL, 'merge_request', 'deleted',
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

-- Notes --------------------------------------------------------------------------------------------

CREATE TRIGGER notes_change_ai BEFORE INSERT ON notes
WHEN NOT EXISTS (SELECT 1 FROM notes o WHERE o.id = new.id AND o.raw = new.raw)
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('note', new.project_id, new.noteable_iid, new.id, new.noteable_kind,
            CASE WHEN EXISTS (SELECT 1 FROM notes o WHERE o.id = new.id) THEN 'updated' ELSE 'created' END,
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
CREATE TRIGGER notes_change_au AFTER UPDATE OF raw ON notes WHEN old.raw IS NOT new.raw
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('note', new.project_id, new.noteable_iid, new.id, new.noteable_kind, 'updated',
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
CREATE TRIGGER notes_change_ad AFTER DELETE ON notes
BEGIN
    INSERT INTO changes (kind, project_id, iid, note_id, parent_kind, action, at)
    VALUES ('note', old.project_id, old.noteable_iid, old.id, old.noteable_kind, 'deleted',
            strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;
