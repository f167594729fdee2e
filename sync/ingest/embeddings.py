"""Embeddings of the documents (profile `full`), and semantic search over them.

Vectors come from an Ollama-compatible `POST {url}/api/embed`, are normalized to unit length and
stored as float32 blobs, so cosine similarity is one matrix-vector product. Which documents need one
is derived, like the documents stage: a trigger drops a document's vector when its text changes or it
goes away, so "needs embedding" is "has no vector for the configured model".
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import numpy as np

from sync.errors import PermanentError, SyncError, TransientError
from sync.ingest.mirror import bump_versions
from sync.read.search import SearchHit
from sync.store.db import Database
from sync.types import Progress

STAGE = "embeddings"
MAX_CHARS = 8_000  # of a document's text sent to the model; long bodies say what they are about early on
READ_CHUNK = 2_000  # documents read from the database at a time, so a first run does not load them all
SNIPPET_CHARS = 200
SKIPPED = "embeddings: skipped (no embeddings.url configured)"



class EmbeddingClient:
    """Talks to `POST {url}/api/embed` ({"model", "input": [...]} -> {"embeddings": [[...], ...]})."""

    def __init__(
        self, url: str, model: str, *, timeout: float = 120.0, session: aiohttp.ClientSession | None = None
    ) -> None:
        self._endpoint = url.rstrip("/") + "/api/embed"
        self.model = model
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> EmbeddingClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-length float32 row per text; TransientError/PermanentError when the server fails."""
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        body = {"model": self.model, "input": list(texts)}
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(self._endpoint, json=body, timeout=self._timeout) as resp:
                status = resp.status
                answer = await resp.json(content_type=None) if status == 200 else await resp.text()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise TransientError("embeddings_unavailable", f"POST {self._endpoint} failed: {exc!r}") from exc
        if status != 200:
            detail = " ".join(str(answer).split())[:200]
            error = PermanentError if 400 <= status < 500 and status != 429 else TransientError
            raise error("embeddings_unavailable", f"POST {self._endpoint} -> HTTP {status}: {detail}")
        return _unit_rows(answer, len(texts), self._endpoint)


def _unit_rows(answer: Any, count: int, endpoint: str) -> np.ndarray:
    vectors = answer.get("embeddings") if isinstance(answer, dict) else None
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise TransientError("embeddings_bad_response", f"{endpoint}: `embeddings` is not a matrix") from exc
    if matrix.ndim != 2 or matrix.shape[0] != count or matrix.shape[1] == 0:
        raise TransientError(
            "embeddings_bad_response", f"{endpoint}: expected {count} vectors, got shape {matrix.shape}"
        )
    return normalize(matrix)


def normalize(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero, and so matches nothing)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def document_text(title: str, body: str) -> str:
    """What is embedded for a document: its title (a note's parent's) and its body, capped."""
    text = f"{title}\n\n{body}" if body else title
    return text[:MAX_CHARS]


# -- the stage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingResult:
    embedded: int
    warnings: tuple[str, ...]


async def refresh_embeddings(
    db: Database, client: EmbeddingClient, *, batch_size: int, progress: Progress | None = None
) -> EmbeddingResult:
    """Embed every document without a vector for `client.model`, `batch_size` texts a request.

    A failing endpoint ends the stage with a warning, never the run: what was stored stays, and the
    rest is embedded by the next `full` run.
    """
    async with db.transaction() as conn:
        # A changed model makes every old vector incomparable with new queries.
        await conn.execute("DELETE FROM embeddings WHERE model != ?", (client.model,))
    total = await db.fetchval(
        "SELECT count(*) FROM documents d WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.document_id = d.id)"
    )
    done, after = 0, 0
    try:
        while True:
            rows = await _missing(db, after)
            if not rows:
                break
            after = rows[-1][0]
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                vectors = await client.embed([document_text(r[1], r[2]) for r in batch])
                await _store(db, client.model, [r[0] for r in batch], vectors)
                done += len(batch)
                if progress is not None:
                    await progress(STAGE, done, total)
    except SyncError as exc:
        return EmbeddingResult(done, (f"{STAGE}: incomplete ({done} of {total} embedded): {exc.message}",))
    return EmbeddingResult(done, ())


async def _missing(db: Database, after: int) -> list[tuple[int, str, str]]:
    rows = await db.fetchall(
        "SELECT d.id, d.title, d.body FROM documents d"
        " WHERE d.id > ? AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.document_id = d.id)"
        " ORDER BY d.id LIMIT ?",
        (after, READ_CHUNK),
    )
    return [(r[0], r[1], r[2]) for r in rows]


async def _store(db: Database, model: str, ids: list[int], vectors: np.ndarray) -> None:
    dim = int(vectors.shape[1])
    rows = [(doc_id, model, dim, vectors[i].astype("<f4").tobytes()) for i, doc_id in enumerate(ids)]
    async with db.transaction() as conn:
        # A document gone since it was read must not get a vector (no trigger would ever remove it).
        await conn.executemany(
            "INSERT OR REPLACE INTO embeddings (document_id, model, dim, vector)"
            " SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM documents WHERE id = ?)",
            [(*row, row[0]) for row in rows],
        )
        await bump_versions(conn, 0, ["embeddings"])


# -- semantic search ------------------------------------------------------------------------------


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
