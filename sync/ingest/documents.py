"""The documents stage: one searchable document per issue, MR and (non-system) note.

Documents are derived state. Instead of remembering which items a run touched,
the stage asks the database which documents are missing, stale (their source's
updated_at or parent title moved on) or orphaned, and fixes exactly those; so
an interrupted or `fast` run is caught up by the next `balanced` one, and the
FTS index is rewritten only for items that changed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson

from sync.store.db import Database
from sync.types import TABLES

BATCH = 500

_STALE_ITEMS = """
SELECT '{kind}', s.project_id, s.iid, 0, '{kind}', s.title, s.raw, s.updated_at, NULL
FROM {table} s
LEFT JOIN documents d ON d.kind = '{kind}' AND d.project_id = s.project_id AND d.iid = s.iid AND d.note_id = 0
WHERE d.id IS NULL OR d.updated_at != s.updated_at OR d.title != s.title
"""

_STALE_NOTES = """
SELECT 'note', n.project_id, n.noteable_iid, n.id, '{kind}', p.title, n.raw, n.updated_at,
    json_extract(CAST(p.raw AS TEXT), '$.web_url')
FROM notes n
JOIN {table} p ON p.project_id = n.project_id AND p.iid = n.noteable_iid
LEFT JOIN documents d ON d.kind = 'note' AND d.project_id = n.project_id AND d.iid = n.noteable_iid
    AND d.note_id = n.id
WHERE n.noteable_kind = '{kind}' AND n.system = 0
  AND (d.id IS NULL OR d.updated_at != n.updated_at OR d.title != p.title)
"""

_ORPHANS = """
DELETE FROM documents WHERE
    (kind = 'issue' AND NOT EXISTS (SELECT 1 FROM issues s WHERE s.project_id = documents.project_id
        AND s.iid = documents.iid))
 OR (kind = 'merge_request' AND NOT EXISTS (SELECT 1 FROM merge_requests s
        WHERE s.project_id = documents.project_id AND s.iid = documents.iid))
 OR (kind = 'note' AND NOT EXISTS (SELECT 1 FROM notes n WHERE n.id = documents.note_id AND n.system = 0))
"""


def _stale_query() -> str:
    parts = [_STALE_ITEMS.format(kind=k, table=t) for k, t in TABLES.items()]
    parts += [_STALE_NOTES.format(kind=k, table=t) for k, t in TABLES.items()]
    return " UNION ALL ".join(parts)


def _document_row(row: tuple) -> tuple:
    kind, project_id, iid, note_id, parent_kind, title, raw, updated_at, parent_url = row
    source = orjson.loads(raw)
    if kind == "note":
        body = source.get("body") or ""
        web_url = f"{parent_url}#note_{note_id}" if parent_url else None
    else:
        body = source.get("description") or ""
        web_url = source.get("web_url")
    return (kind, project_id, iid, note_id, parent_kind, title, body, web_url, updated_at)


async def refresh_documents(
    db: Database, progress: Callable[[int, int], Awaitable[None]] | None = None
) -> int:
    """Bring documents in line with the mirror; return how many were written or removed."""
    stale = await db.fetchall(_stale_query())
    written = 0
    for start in range(0, len(stale), BATCH):
        batch = [_document_row(tuple(r)) for r in stale[start : start + BATCH]]
        async with db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO documents (kind, project_id, iid, note_id, parent_kind, title, body, web_url, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT (kind, project_id, iid, note_id) DO UPDATE SET"
                " title = excluded.title, body = excluded.body, web_url = excluded.web_url,"
                " updated_at = excluded.updated_at",
                batch,
            )
        written += len(batch)
        if progress:
            await progress(written, len(stale))
    async with db.transaction() as conn:
        cur = await conn.execute(_ORPHANS)
        written += max(cur.rowcount, 0)
    return written
