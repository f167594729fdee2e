"""Semantic search: documents by cosine similarity to a query's embedding, over every stored vector.

The read half of sync/ingest/embeddings.py, which writes the vectors (unit length, float32 blobs, so
similarity is one matrix-vector product); the query's own vector comes from the same EmbeddingClient.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from sync.read.search import SearchHit
from sync.store.db import Database

SNIPPET_CHARS = 200


@dataclass(frozen=True)
class _Matrix:
    key: tuple[str, int, int]  # (model, embeddings data version, row count): reload when it moves
    ids: np.ndarray  # document ids, one per row
    kinds: np.ndarray
    projects: np.ndarray
    vectors: np.ndarray  # (n, dim) float32, unit rows


class VectorIndex:
    """Every stored vector of one model, held in memory and reloaded only when the embeddings change.

    Safe to share between concurrent requests: a reload replaces the matrix whole.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._matrix: _Matrix | None = None
        self._lock = asyncio.Lock()

    async def search(
        self,
        db: Database,
        query: np.ndarray,
        *,
        kind: str | None = None,
        project_id: int | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[SearchHit], int | None]:
        """One page of documents by cosine similarity to `query` (a unit vector), and the next offset."""
        matrix = await self._current(db)
        if matrix.vectors.shape[0] == 0 or matrix.vectors.shape[1] != query.shape[-1]:
            return [], None
        mask = np.ones(matrix.ids.shape[0], dtype=bool)
        if kind is not None:
            mask &= matrix.kinds == kind
        if project_id is not None:
            mask &= matrix.projects == project_id
        candidates = np.flatnonzero(mask)
        scores = matrix.vectors[candidates] @ query.reshape(-1)
        wanted = min(offset + limit + 1, len(candidates))
        top = np.argpartition(-scores, wanted - 1)[:wanted] if wanted else np.zeros(0, dtype=int)
        order = top[np.lexsort((matrix.ids[candidates[top]], -scores[top]))]
        page = order[offset : offset + limit]
        hits = await _semantic_hits(
            db, [(int(matrix.ids[candidates[i]]), float(scores[i])) for i in page]
        )
        return hits, (offset + limit if len(order) > offset + limit else None)

    async def _current(self, db: Database) -> _Matrix:
        key = await self._key(db)
        if self._matrix is not None and self._matrix.key == key:
            return self._matrix
        async with self._lock:
            if self._matrix is None or self._matrix.key != key:
                self._matrix = await _load(db, key)
        return self._matrix

    async def _key(self, db: Database) -> tuple[str, int, int]:
        row = await db.fetchone(
            "SELECT (SELECT version FROM data_versions WHERE project_id = 0 AND resource = 'embeddings'),"
            " (SELECT count(*) FROM embeddings WHERE model = ?)",
            (self.model,),
        )
        return (self.model, int(row[0] or 0), int(row[1] or 0)) if row else (self.model, 0, 0)


async def _load(db: Database, key: tuple[str, int, int]) -> _Matrix:
    rows = await db.fetchall(
        "SELECT e.document_id, d.kind, d.project_id, e.dim, e.vector FROM embeddings e"
        " JOIN documents d ON d.id = e.document_id WHERE e.model = ? ORDER BY e.document_id",
        (key[0],),
    )
    if rows:
        # Mixed sizes can only come from a model replaced under the same name; the majority wins.
        dim = Counter(r[3] for r in rows).most_common(1)[0][0]
        rows = [r for r in rows if r[3] == dim]
    dim = rows[0][3] if rows else 0
    vectors = np.frombuffer(b"".join(r[4] for r in rows), dtype="<f4").reshape(len(rows), dim)
    return _Matrix(
        key=key,
        ids=np.array([r[0] for r in rows], dtype=np.int64),
        kinds=np.array([r[1] for r in rows], dtype=object),
        projects=np.array([r[2] for r in rows], dtype=np.int64),
        vectors=vectors,
    )


async def _semantic_hits(db: Database, page: list[tuple[int, float]]) -> list[SearchHit]:
    if not page:
        return []
    marks = ",".join("?" * len(page))
    rows = await db.fetchall(
        "SELECT id, kind, project_id, iid, note_id, parent_kind, title, web_url, body FROM documents"
        f" WHERE id IN ({marks})",
        [doc_id for doc_id, _ in page],
    )
    by_id = {r[0]: r for r in rows}
    hits = []
    for doc_id, score in page:
        row = by_id.get(doc_id)
        if row is None:
            continue  # gone since the matrix was loaded
        _, kind, project_id, iid, note_id, parent_kind, title, web_url, body = row
        hits.append(
            SearchHit(
                type=kind,
                project_id=project_id,
                iid=iid,
                note_id=note_id or None,
                parent_type=parent_kind,
                title=title,
                snippet=_lead(body),
                score=float(f"{score:.6g}") if math.isfinite(score) else 0.0,
                web_url=web_url,
            )
        )
    return hits


def _lead(body: str) -> str:
    text = " ".join(body.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rstrip() + "…"
