-- The search index again, now with a third column of filter tokens (`kindissue project1001`), so a
-- search narrowed by type or project is narrowed inside FTS5 (`... AND tags : project1001`) instead of
-- ranking every match and then dropping the other projects' rows: with 50,000 documents, a common
-- word in one project ranked ~5,000 rows to keep ~350 (bench/search_bench.py, "filtered").
--
-- `tags` is a virtual generated column of `documents`, so the external-content table has every column
-- FTS5 reads. Search gives it weight 0 in bm25, so the tokens never change a score's phrases; they add
-- two tokens to every document's length, the same for all. Same tokenizer, prefixes and note-title rule
-- as 002; the triggers of 001 are replaced by ones that also index `tags`.
ALTER TABLE documents ADD COLUMN tags TEXT GENERATED ALWAYS AS
    ('kind' || replace(kind, '_', '') || ' project' || project_id) VIRTUAL;

DROP TRIGGER documents_ai;
DROP TRIGGER documents_ad;
DROP TRIGGER documents_au;
DROP TABLE documents_fts;
CREATE VIRTUAL TABLE documents_fts USING fts5(
    title, body, tags, content='documents', content_rowid='id', tokenize='unicode61 remove_diacritics 2',
    prefix='2 3'
);
INSERT INTO documents_fts (rowid, title, body, tags)
SELECT id, CASE WHEN kind = 'note' THEN '' ELSE title END, body, tags FROM documents;

CREATE TRIGGER documents_ai AFTER INSERT ON documents BEGIN
    INSERT INTO documents_fts (rowid, title, body, tags)
    VALUES (new.id, CASE WHEN new.kind = 'note' THEN '' ELSE new.title END, new.body, new.tags);
END;
CREATE TRIGGER documents_ad AFTER DELETE ON documents BEGIN
    INSERT INTO documents_fts (documents_fts, rowid, title, body, tags)
    VALUES ('delete', old.id, CASE WHEN old.kind = 'note' THEN '' ELSE old.title END, old.body, old.tags);
END;
CREATE TRIGGER documents_au AFTER UPDATE ON documents BEGIN
    INSERT INTO documents_fts (documents_fts, rowid, title, body, tags)
    VALUES ('delete', old.id, CASE WHEN old.kind = 'note' THEN '' ELSE old.title END, old.body, old.tags);
    INSERT INTO documents_fts (rowid, title, body, tags)
    VALUES (new.id, CASE WHEN new.kind = 'note' THEN '' ELSE new.title END, new.body, new.tags);
END;
