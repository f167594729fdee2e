-- Issues and MRs become ordinary rowid tables, their columns in the order reads need them, GitLab's
-- `raw` JSON last.
--
-- Why: a WITHOUT ROWID table keeps a row inside a B-tree page only up to about 1 KB (with 4 KB pages);
-- rows here are 2-3 KB, so every one spilled into overflow pages, and `api` (added last, by 003) sat at
-- the end of the chain. Reading a page of 100 issues walked 100 overflow chains: about 0.5 ms of a
-- 0.6 ms query. In a rowid table a row fits a page (up to about 4 KB), and what spills of a very large
-- one is the tail of `raw`, which the read API never reads.
--
-- The rows are copied as they are; (project_id, iid) stays unique, which INSERT OR REPLACE relies on.

CREATE TABLE issues_new (
    project_id       INTEGER NOT NULL REFERENCES projects(id),
    iid              INTEGER NOT NULL,
    id               INTEGER NOT NULL,
    updated_at       TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    state            TEXT NOT NULL,
    author_username  TEXT,
    labels           TEXT NOT NULL DEFAULT '[]',       -- JSON array of label names
    title            TEXT NOT NULL,
    work_item_status TEXT,                             -- see 002_knowledge.sql
    api              BLOB,                             -- see 003_item_api_json.sql
    raw              BLOB NOT NULL,
    UNIQUE (project_id, iid)
);
INSERT INTO issues_new (project_id, iid, id, updated_at, created_at, state, author_username, labels, title,
                        work_item_status, api, raw)
SELECT project_id, iid, id, updated_at, created_at, state, author_username, labels, title,
       work_item_status, api, raw
FROM issues;
DROP TABLE issues;
ALTER TABLE issues_new RENAME TO issues;
CREATE INDEX issues_by_updated ON issues (project_id, updated_at, iid);

-- Dropped with the old table: the same trigger as in 002_knowledge.sql.
CREATE TRIGGER issues_keep_work_item_status AFTER INSERT ON issues
WHEN EXISTS (SELECT 1 FROM work_item_statuses w WHERE w.project_id = new.project_id AND w.iid = new.iid)
BEGIN
    UPDATE issues SET work_item_status = (
        SELECT w.status FROM work_item_statuses w WHERE w.project_id = new.project_id AND w.iid = new.iid)
    WHERE project_id = new.project_id AND iid = new.iid;
END;

CREATE TABLE merge_requests_new (
    project_id       INTEGER NOT NULL REFERENCES projects(id),
    iid              INTEGER NOT NULL,
    id               INTEGER NOT NULL,
    updated_at       TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    state            TEXT NOT NULL,
    author_username  TEXT,
    labels           TEXT NOT NULL DEFAULT '[]',
    title            TEXT NOT NULL,
    merged_at        TEXT,
    api              BLOB,
    raw              BLOB NOT NULL,
    UNIQUE (project_id, iid)
);
INSERT INTO merge_requests_new (project_id, iid, id, updated_at, created_at, state, author_username, labels,
                                title, merged_at, api, raw)
SELECT project_id, iid, id, updated_at, created_at, state, author_username, labels, title, merged_at, api, raw
FROM merge_requests;
DROP TABLE merge_requests;
ALTER TABLE merge_requests_new RENAME TO merge_requests;
CREATE INDEX merge_requests_by_updated ON merge_requests (project_id, updated_at, iid);
