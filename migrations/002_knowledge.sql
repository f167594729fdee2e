-- Knowledge on top of the mirror: work-item status, expert scoring paths, embeddings.
-- Everything here is derived from the mirror or from GitLab's GraphQL API, and can be rebuilt.

-- The work-item status of an issue, {"name": ..., "category": ...} as JSON text, or NULL (none, or not
-- known). The read API serves it as `work_item_status`; sync.workitems owns it.
ALTER TABLE issues ADD COLUMN work_item_status TEXT;

-- What GraphQL last said about each issue, and for which version of it. Kept apart from `issues`
-- because the mirror rewrites issue rows whole (INSERT OR REPLACE): this is the memory that survives
-- that, and the trigger below copies it back into every rewritten row.
CREATE TABLE work_item_statuses (
    project_id INTEGER NOT NULL,
    iid        INTEGER NOT NULL,
    checked_updated_at TEXT NOT NULL,                 -- issues.updated_at when this was fetched
    status     TEXT,                                  -- JSON {"name", "category"} or NULL
    error      TEXT,                                  -- why fetching it failed even alone (then skipped)
    PRIMARY KEY (project_id, iid)
) WITHOUT ROWID;

CREATE TRIGGER issues_keep_work_item_status AFTER INSERT ON issues
WHEN EXISTS (SELECT 1 FROM work_item_statuses w WHERE w.project_id = new.project_id AND w.iid = new.iid)
BEGIN
    UPDATE issues SET work_item_status = (
        SELECT w.status FROM work_item_statuses w WHERE w.project_id = new.project_id AND w.iid = new.iid)
    WHERE project_id = new.project_id AND iid = new.iid;
END;

-- Whether an optional GitLab feature answered the last time it was asked (e.g. "work_item_status",
-- or "work_item_status:<project id>" for a namespace without the widget), so a gateway in front of a
-- GitLab without it does not ask again on every run.
CREATE TABLE feature_probes (
    feature    TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,                         -- what GitLab said
    checked_at REAL NOT NULL
);

-- The file each DiffNote is about, pulled out of notes.raw once (at write time, by trigger) so expert
-- queries are an index range scan instead of a JSON parse of every note in the project.
CREATE TABLE diff_note_paths (
    note_id         INTEGER PRIMARY KEY,
    project_id      INTEGER NOT NULL,
    mr_iid          INTEGER NOT NULL,
    path            TEXT NOT NULL,                    -- position.new_path (old_path when there is none)
    old_path        TEXT NOT NULL,
    author_username TEXT,
    created_at      TEXT NOT NULL
);
CREATE INDEX diff_note_paths_by_path ON diff_note_paths (project_id, path);
CREATE INDEX diff_note_paths_by_old_path ON diff_note_paths (project_id, old_path);
CREATE INDEX mr_files_by_old_path ON mr_files (project_id, old_path);

CREATE TRIGGER notes_diff_path_ai AFTER INSERT ON notes
WHEN new.noteable_kind = 'merge_request' AND new.system = 0
    AND json_extract(CAST(new.raw AS TEXT), '$.type') = 'DiffNote'
BEGIN
    INSERT OR REPLACE INTO diff_note_paths (note_id, project_id, mr_iid, path, old_path, author_username, created_at)
    SELECT new.id, new.project_id, new.noteable_iid, coalesce(p.new_path, p.old_path), coalesce(p.old_path, p.new_path),
        new.author_username, new.created_at
    FROM (SELECT json_extract(CAST(new.raw AS TEXT), '$.position.new_path') AS new_path,
                 json_extract(CAST(new.raw AS TEXT), '$.position.old_path') AS old_path) p
    WHERE coalesce(p.new_path, p.old_path) IS NOT NULL;
END;
CREATE TRIGGER notes_diff_path_ad AFTER DELETE ON notes BEGIN
    DELETE FROM diff_note_paths WHERE note_id = old.id;
END;

INSERT INTO diff_note_paths (note_id, project_id, mr_iid, path, old_path, author_username, created_at)
SELECT id, project_id, noteable_iid, coalesce(new_path, old_path), coalesce(old_path, new_path), author_username,
    created_at
FROM (SELECT n.*, json_extract(CAST(n.raw AS TEXT), '$.position.new_path') AS new_path,
             json_extract(CAST(n.raw AS TEXT), '$.position.old_path') AS old_path
      FROM notes n
      WHERE n.noteable_kind = 'merge_request' AND n.system = 0
        AND json_extract(CAST(n.raw AS TEXT), '$.type') = 'DiffNote')
WHERE coalesce(new_path, old_path) IS NOT NULL;

-- The search index again, now with prefix indexes: a query such as `auth*` otherwise merges the
-- postings of every term it matches, and 2-3 character prefixes were the slowest searches by far
-- (bench/search_bench.py). Same columns, tokenizer and content; the triggers of 001 keep it in sync.
DROP TABLE documents_fts;
CREATE VIRTUAL TABLE documents_fts USING fts5(
    title, body, content='documents', content_rowid='id', tokenize='unicode61 remove_diacritics 2',
    prefix='2 3'
);
INSERT INTO documents_fts (rowid, title, body)
SELECT id, CASE WHEN kind = 'note' THEN '' ELSE title END, body FROM documents;

-- Search puts a document whose whole title is the query first: an index lookup, not a scan.
CREATE INDEX documents_by_title ON documents (title COLLATE NOCASE);

-- One vector a document (title + body), unit length, float32 little-endian. A document whose text
-- changes or that goes away loses its vector here, so "needs embedding" is simply "has no row".
CREATE TABLE embeddings (
    document_id INTEGER PRIMARY KEY,
    model       TEXT NOT NULL,
    dim         INTEGER NOT NULL,
    vector      BLOB NOT NULL
);
CREATE TRIGGER documents_embedding_au AFTER UPDATE OF title, body ON documents
WHEN old.title IS NOT new.title OR old.body IS NOT new.body
BEGIN
    DELETE FROM embeddings WHERE document_id = new.id;
END;
CREATE TRIGGER documents_embedding_ad AFTER DELETE ON documents BEGIN
    DELETE FROM embeddings WHERE document_id = old.id;
END;
