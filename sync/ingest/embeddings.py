"""Embeddings of the documents (profile `full`); searching them is sync/read/semantic.py.

Vectors come from an Ollama-compatible `POST {url}/api/embed`, are normalized to unit length and
stored as float32 blobs, so cosine similarity is one matrix-vector product. Which documents need one
is derived, like the documents stage: a trigger drops a document's vector when its text changes or it
goes away, so "needs embedding" is "has no vector for the configured model".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import numpy as np

from sync.errors import PermanentError, SyncError, TransientError
from sync.ingest.mirror import bump_versions
from sync.store.db import Database
from sync.types import Progress

STAGE = "embeddings"
MAX_CHARS = 8_000  # of a document's text sent to the model; long bodies say what they are about early on
READ_CHUNK = 2_000  # documents read from the database at a time, so a first run does not load them all
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
