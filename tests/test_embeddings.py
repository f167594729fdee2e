"""Embeddings: the `full` stage against a fake Ollama-compatible server, and semantic search over the vectors."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
import pytest
from aiohttp import web

from sync.clock import SystemClock
from sync.control.runner import SyncRunner
from sync.errors import TransientError
from sync.events import EventBus
from sync.ingest.embeddings import EmbeddingClient, refresh_embeddings
from sync.ingest.pipeline import SyncRequest
from sync.read.semantic import VectorIndex
from sync.store.db import Database

DIM = 64


def bag_of_words(text: str) -> list[float]:
    """A deterministic stand-in for a model: texts sharing words point the same way."""
    vector = [0.0] * DIM
    for word in re.findall(r"\w+", text.lower()):
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIM] += 1.0
    return vector


@dataclass
class FakeEmbedder:
    """POST /api/embed as Ollama answers it; records batch sizes; can fail after some requests."""

    batches: list[int] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    fail_after: int | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.fail_after is not None and len(self.batches) >= self.fail_after:
            return web.json_response({"error": "model crashed"}, status=500)
        self.batches.append(len(body["input"]))
        self.models.append(body["model"])
        return web.json_response({"model": body["model"], "embeddings": [bag_of_words(t) for t in body["input"]]})


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
async def embed_url(embedder: FakeEmbedder, aiohttp_server) -> str:
    app = web.Application()
    app.router.add_post("/api/embed", embedder.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


def full_runner(db: Database, config_for, embed_url: str, **env: str) -> SyncRunner:
    config = config_for(embeddings_url=embed_url, embeddings_batch_size="16", **env)
    return SyncRunner(db, EventBus(), SystemClock(), config)


# -- the stage -----------------------------------------------------------------------------------------


async def test_a_full_sync_embeds_every_document_in_batches_of_batch_size(
    simulator, config_for, db, embed_url, embedder
):
    run = await full_runner(db, config_for, embed_url).run(SyncRequest(profile="full"))
    assert run.status == "succeeded" and not [w for w in run.warnings if w.startswith("embeddings")]
    documents = await db.fetchval("SELECT count(*) FROM documents")
    assert run.counts["embeddings"] == documents == sum(embedder.batches)
    assert max(embedder.batches) == 16 and set(embedder.models) == {"nomic-embed-text"}
    rows = await db.fetchall("SELECT dim, vector FROM embeddings")
    vectors = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])
    assert {r[0] for r in rows} == {DIM}
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


async def test_a_second_full_sync_embeds_only_what_changed(simulator, config_for, db, embed_url, embedder):
    sync = full_runner(db, config_for, embed_url)
    await sync.run(SyncRequest(profile="full"))
    embedder.batches.clear()
    quiet = await sync.run(SyncRequest(profile="full"))
    assert embedder.batches == [] and quiet.counts["embeddings"] == 0

    simulator.update_issue(1001, 2, description="A completely new description about zeppelins")
    changed = await sync.run(SyncRequest(profile="full"))
    assert changed.counts["embeddings"] == 1 and embedder.batches == [1]


async def test_a_failing_endpoint_leaves_a_warning_and_the_next_run_finishes_the_job(
    simulator, config_for, db, embed_url, embedder
):
    embedder.fail_after = 2
    sync = full_runner(db, config_for, embed_url)
    run = await sync.run(SyncRequest(profile="full"))
    assert run.status == "succeeded"
    assert [w for w in run.warnings if w.startswith("embeddings: incomplete (32 of")]
    assert await db.fetchval("SELECT count(*) FROM embeddings") == 32

    embedder.fail_after = None
    await sync.run(SyncRequest(profile="full"))
    assert await db.fetchval("SELECT count(*) FROM embeddings") == await db.fetchval("SELECT count(*) FROM documents")


async def test_changing_the_model_embeds_everything_again(simulator, config_for, db, embed_url, embedder):
    await full_runner(db, config_for, embed_url).run(SyncRequest(profile="full"))
    embedder.batches.clear()
    run = await full_runner(db, config_for, embed_url, embeddings_model="all-minilm").run(SyncRequest(profile="full"))
    assert run.counts["embeddings"] == await db.fetchval("SELECT count(*) FROM documents")
    assert [tuple(r) for r in await db.fetchall("SELECT DISTINCT model FROM embeddings")] == [("all-minilm",)]


async def test_a_balanced_sync_never_calls_the_embedding_endpoint(simulator, config_for, db, embed_url, embedder):
    run = await full_runner(db, config_for, embed_url).run(SyncRequest(profile="balanced"))
    assert run.status == "succeeded" and embedder.batches == [] and "embeddings" not in run.counts


async def test_a_malformed_answer_is_a_transient_error(aiohttp_server):
    async def wrong(request: web.Request) -> web.Response:
        return web.json_response({"embeddings": [[1.0, 2.0]]})  # one vector for two texts

    app = web.Application()
    app.router.add_post("/api/embed", wrong)
    server = await aiohttp_server(app)
    async with EmbeddingClient(str(server.make_url("")), "m") as client:
        with pytest.raises(TransientError, match="expected 2 vectors"):
            await client.embed(["a", "b"])


# -- semantic search -----------------------------------------------------------------------------------


async def seed_documents(db: Database, client: EmbeddingClient) -> None:
    docs = [
        ("issue", 1, 1, 0, "Login page loops", "after upgrade the login page redirects forever"),
        ("issue", 1, 2, 0, "Dark mode colours", "contrast of the dark theme is too low"),
        ("note", 1, 1, 10, "Login page loops", "the login redirect also loops on mobile"),
        ("issue", 2, 1, 0, "Login audit log", "record every login attempt"),
    ]
    async with db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO documents (kind, project_id, iid, note_id, parent_kind, title, body, web_url, updated_at)"
            " VALUES (?, ?, ?, ?, 'issue', ?, ?, NULL, '2026-01-01T00:00:00.000Z')",
            docs,
        )
    await refresh_embeddings(db, client, batch_size=2)


async def test_semantic_search_ranks_by_cosine_similarity_and_filters(db, embed_url):
    async with EmbeddingClient(embed_url, "m") as client:
        await seed_documents(db, client)
        index = VectorIndex("m")
        query = (await client.embed(["login page loops"]))[0]
        hits, next_offset = await index.search(db, query)
        assert (hits[0].type, hits[0].iid) == ("issue", 1) and next_offset is None
        assert hits[0].score > hits[-1].score and hits[-1].iid == 2
        notes, _ = await index.search(db, query, kind="note")
        assert [(h.iid, h.note_id) for h in notes] == [(1, 10)]
        other, _ = await index.search(db, query, project_id=2)
        assert [(h.project_id, h.iid) for h in other] == [(2, 1)]
        first, offset = await index.search(db, query, limit=2)
        rest, _ = await index.search(db, query, limit=2, offset=offset or 0)
        assert len({(h.type, h.project_id, h.iid, h.note_id) for h in first + rest}) == 4


async def test_the_index_reloads_when_vectors_change(db, embed_url):
    async with EmbeddingClient(embed_url, "m") as client:
        await seed_documents(db, client)
        index = VectorIndex("m")
        query = (await client.embed(["zeppelin hangar"]))[0]
        before, _ = await index.search(db, query)
        async with db.transaction() as conn:
            await conn.execute("UPDATE documents SET body = 'zeppelin hangar doors' WHERE iid = 2 AND project_id = 1")
        await refresh_embeddings(db, client, batch_size=2)
        after, _ = await index.search(db, query)
        assert (after[0].iid, after[0].project_id) == (2, 1) and after[0].score > before[0].score
