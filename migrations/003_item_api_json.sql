-- The read API's JSON of each issue and MR, rendered once when the row is written (derived from `raw`),
-- so serving a page is concatenating stored bytes instead of parsing and projecting GitLab's JSON on
-- every request. NULL for rows written before this migration: those are rendered from `raw` when read.
ALTER TABLE issues ADD COLUMN api BLOB;
ALTER TABLE merge_requests ADD COLUMN api BLOB;
