"""Full-text search: query rewriting, ranking, filters, snippets, paging, and freshness after a sync."""

from __future__ import annotations

import sqlite3

import pytest

from sync.clock import SystemClock
from sync.control.runner import SyncRunner
from sync.events import EventBus
from sync.ingest.pipeline import SyncRequest
from sync.read import search as search_module
from sync.read.search import SearchQueryError, fts_query, match_error, search
from sync.store.db import Database


async def add_documents(db: Database, *docs: tuple[str, int, int, int, str, str]) -> None:
    """(kind, project_id, iid, note_id, title, body) rows, straight into the index."""
    async with db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO documents (kind, project_id, iid, note_id, parent_kind, title, body, web_url, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, '2026-01-01T00:00:00.000Z')",
            [
                (kind, pid, iid, nid, "merge_request" if kind == "merge_request" else "issue", title, body,
                 f"http://gitlab.test/{pid}/{iid}#{nid}")
                for kind, pid, iid, nid, title, body in docs
            ],
        )


# -- the query language -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "query"),
    [
        ("token refresh", "token refresh"),
        ("src/auth/session.py", '"src/auth/session.py"'),
        ("token-refresh OR oauth", '"token-refresh" OR oauth'),
        ('"exact phrase" tok*', '"exact phrase" tok*'),
        ("title:token NOT body", "title:token NOT body"),
        ("NEAR(token refresh, 5)", "NEAR ( token refresh , 5 )"),
    ],
)
def test_words_fts5_cannot_take_bare_are_quoted_and_its_syntax_is_kept(text, query):
    assert fts_query(text) == query


@pytest.mark.parametrize("text", ['"unbalanced quote', "AND", "token AND", "NOT token", "(token", "token )",
                                  "NEAR(a, b)", "NEAR(a b, -1)", "NEAR(a b, 1x)", "NEAR()",
                                  "token OR OR refresh", "NEAR(token,"])
async def test_a_malformed_query_raises_a_search_query_error_that_says_what_to_do(db, text):
    await add_documents(db, ("issue", 1, 1, 0, "Fix token refresh", "body"))
    with pytest.raises(SearchQueryError, match="not a valid search query"):
        await search(db, text)


async def test_an_empty_query_is_an_error(db):
    with pytest.raises(SearchQueryError, match="empty"):
        await search(db, "   ")


# -- ranking ----------------------------------------------------------------------------------------


async def test_an_exact_title_match_ranks_first_even_against_bodies_full_of_the_words(db):
    await add_documents(
        db,
        ("issue", 1, 1, 0, "Fix token refresh in the session layer", "token refresh " * 20),
        ("merge_request", 1, 2, 0, "Token refresh retries", "token refresh token refresh"),
        ("note", 1, 1, 11, "Fix token refresh in the session layer", "token refresh is broken, token refresh!"),
        ("issue", 1, 3, 0, "Token refresh", "Nothing more to say."),
    )
    page = await search(db, "token refresh")
    assert (page.items[0].type, page.items[0].iid) == ("issue", 3)
    assert len(page.items) == 4


async def test_a_title_hit_outranks_the_same_word_in_a_body(db):
    await add_documents(
        db,
        ("issue", 1, 1, 0, "Unrelated thing", "we saw a quokka near the build server yesterday afternoon"),
        ("issue", 1, 2, 0, "Quokka sighting report", "details to follow about the build server afternoon"),
    )
    page = await search(db, "quokka")
    assert [hit.iid for hit in page.items] == [2, 1]
    assert page.items[0].score > page.items[1].score > 0


async def test_a_note_does_not_match_its_parents_title_words(db):
    await add_documents(db, ("note", 1, 1, 11, "Zeppelin mooring", "a comment about something else"))
    assert (await search(db, "zeppelin")).items == []


# -- filters, snippets, paging ----------------------------------------------------------------------


async def test_type_and_project_filters_narrow_the_results(db):
    await add_documents(
        db,
        ("issue", 1, 1, 0, "Cache stampede", "cache"),
        ("merge_request", 1, 2, 0, "Fix cache stampede", "cache"),
        ("note", 1, 1, 5, "Cache stampede", "the cache again"),
        ("issue", 2, 1, 0, "Cache sizing", "cache"),
    )
    assert {h.type for h in (await search(db, "cache", kind="note")).items} == {"note"}
    assert {h.project_id for h in (await search(db, "cache", project_id=2)).items} == {2}
    notes = (await search(db, "cache", kind="note", project_id=1)).items
    assert [(n.iid, n.note_id, n.parent_type) for n in notes] == [(1, 5, "issue")]


async def test_results_carry_the_contract_fields_and_a_highlighted_snippet(db):
    await add_documents(db, ("issue", 7, 42, 0, "Login loop", "After the upgrade the login page loops forever."))
    hit = (await search(db, "loops")).items[0]
    assert set(hit.to_json()) >= {"type", "project_id", "iid", "note_id", "title", "snippet", "score", "web_url"}
    assert hit.note_id is None and hit.web_url == "http://gitlab.test/7/42#0"
    assert "<mark>loops</mark>" in hit.snippet


async def test_a_long_body_gets_a_marked_snippet_around_its_first_match_without_fts5_snippet(db):
    # FTS5's snippet() is quadratic in a body's matches (a 1 MB body repeating a word took ~28 s):
    # past SNIPPET_BODY_LIMIT the snippet is made in one regex pass, and snippet() is never asked.
    body = "Intro words here. " * 10 + "Then the Deadlock shows up in the scheduler " + "deadlock " * 2000
    assert len(body) > search_module.SNIPPET_BODY_LIMIT
    await add_documents(db, ("issue", 1, 1, 0, "Scheduler hangs", body))
    hit = (await search(db, "deadlock")).items[0]
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")
    assert "<mark>Deadlock</mark> shows up in the scheduler <mark>deadlock</mark>" in hit.snippet
    assert len(hit.snippet.split()) <= search_module.SNIPPET_TOKENS + 2


async def test_a_long_body_matched_by_a_prefix_or_only_in_its_title_still_gets_a_snippet(db):
    await add_documents(db, ("issue", 1, 1, 0, "Quota", "nothing about it " * 600 + "quotas exceeded " * 10),
                        ("issue", 1, 2, 0, "Refactor", "plain text " * 900))
    prefix = (await search(db, "quota*")).items
    assert [h.iid for h in prefix] == [1] and "<mark>quotas</mark>" in prefix[0].snippet
    title_only = (await search(db, "title:refactor")).items[0]
    assert title_only.snippet == "plain text " * 7 + "plain text…"


async def test_pages_follow_one_another_without_overlap(db):
    await add_documents(db, *[("issue", 1, i, 0, f"Flaky test number {i}", "flaky") for i in range(1, 26)])
    first = await search(db, "flaky", limit=10)
    second = await search(db, "flaky", limit=10, offset=first.next_offset or 0)
    third = await search(db, "flaky", limit=10, offset=second.next_offset or 0)
    seen = [h.iid for page in (first, second, third) for h in page.items]
    assert len(seen) == len(set(seen)) == 25
    assert (first.next_offset, second.next_offset, third.next_offset) == (10, 20, None)


async def test_a_filter_keeps_the_unfiltered_ranking_of_what_it_keeps(db):
    await add_documents(db, *[("issue", 1 + i % 2, i, 0, f"Cache {'cache ' * (i % 4)}item {i}", "cache " * i)
                              for i in range(1, 13)])
    everything = [(h.project_id, h.iid) for h in (await search(db, "cache", limit=100)).items]
    only_two = [(h.project_id, h.iid) for h in (await search(db, "cache", project_id=2, limit=100)).items]
    assert only_two == [key for key in everything if key[0] == 2] and len(only_two) == 6


async def test_the_filter_tokens_are_not_searchable_words(db):
    await add_documents(db, ("issue", 1001, 1, 0, "Anything", "at all"))
    assert (await search(db, "kindissue")).items == (await search(db, "project1001")).items == []
    assert (await search(db, "tags : kindissue")).items == []


async def test_a_query_matching_more_than_the_window_is_ranked_among_its_newest_matches(db, monkeypatch):
    monkeypatch.setattr(search_module, "RANK_WINDOW", 3)
    await add_documents(db, ("issue", 1, 1, 0, "Flaky flaky flaky", "flaky flaky"),  # the best match, but oldest
                        *[("issue", 1, i, 0, f"Item {i}", "a flaky test") for i in range(2, 6)])
    page = await search(db, "flaky", limit=10)
    assert sorted(h.iid for h in page.items) == [3, 4, 5] and page.next_offset is None
    monkeypatch.setattr(search_module, "RANK_WINDOW", 5)
    assert (await search(db, "flaky", limit=10)).items[0].iid == 1


async def test_equal_scores_put_the_newer_document_first_on_every_page(db):
    await add_documents(db, *[("issue", 1, i, 0, f"Twin {i}", "identical quokka words") for i in range(1, 6)])
    first = await search(db, "quokka", limit=2)
    rest = await search(db, "quokka", limit=10, offset=2)
    assert len({h.score for h in first.items + rest.items}) == 1
    assert [h.iid for h in first.items + rest.items] == [5, 4, 3, 2, 1]


async def test_an_exact_title_match_outside_the_window_still_comes_first(db, monkeypatch):
    monkeypatch.setattr(search_module, "RANK_WINDOW", 3)
    await add_documents(db, ("issue", 1, 1, 0, "Wombat", "the oldest"),
                        *[("issue", 1, i, 0, f"Wombat number {i}", "wombat wombat") for i in range(2, 7)])
    first = await search(db, "wombat", limit=2)
    second = await search(db, "wombat", limit=2, offset=2)
    assert [h.iid for h in first.items] == [1, 6] and first.next_offset == 2
    assert [h.iid for h in second.items] == [5, 4] and second.next_offset is None


CORPUS = [
    ("issue", 1, 1, 0, "Cache stampede on deploy", "the cache falls over when every worker refills it"),
    ("merge_request", 1, 2, 0, "Warm the cache before deploy", "cache warming, cache stampede avoided"),
    ("note", 1, 1, 3, "Cache stampede on deploy", "seen again: cache stampede cache stampede"),
    ("issue", 2, 4, 0, "Cache sizing", "how big should the cache be, cachet aside"),
    ("issue", 2, 5, 0, "Login loop", "unrelated to caching at all, a cache mention in passing"),
    ("merge_request", 2, 6, 0, "Stampede guard", "a lock per key stops the stampede of the cache"),
    ("note", 2, 5, 7, "Login loop", "the login cache expires too early"),
    ("issue", 1, 8, 0, "Sizing the deploy", "deploy sizing notes, no mention of the word"),
]


def bm25_order(db, query: str, kind: str | None = None, project_id: int | None = None) -> list[tuple]:
    """FTS5's own ranking of every match (the corpus is smaller than the window), with its snippets:
    (iid, note_id, score, snippet)."""
    conn = sqlite3.connect(db.path)
    try:
        rows = conn.execute(
            "SELECT d.iid, d.note_id, -bm25(documents_fts, 10.0, 1.0, 0.0),"
            " snippet(documents_fts, 1, '<mark>', '</mark>', '…', 16) FROM documents_fts"
            " JOIN documents d ON d.id = documents_fts.rowid WHERE documents_fts MATCH ?"
            " ORDER BY bm25(documents_fts, 10.0, 1.0, 0.0), documents_fts.rowid DESC",
            (search_module.scoped_query(fts_query(query), kind, project_id),),
        ).fetchall()
    finally:
        conn.close()
    return [(iid, note_id or None, float(f"{score:.6g}"), snippet) for iid, note_id, score, snippet in rows]


@pytest.mark.parametrize("seek", [False, True])
@pytest.mark.parametrize(
    ("query", "filters"),
    [
        ("cache", {}),
        ("cach*", {}),
        ('"cache stampede"', {}),
        ("cache OR sizing", {}),
        ("NEAR(cache stampede, 2)", {}),
        ("title:cache", {}),
        ("cache NOT stampede", {}),
        ("cache", {"project_id": 2}),
        ("cache", {"kind": "note"}),
        ("cache deploy", {"kind": "issue", "project_id": 1}),
    ],
)
async def test_pages_follow_bm25s_own_order_and_scores_whichever_way_the_page_is_fetched(
    db, monkeypatch, query, filters, seek
):
    await add_documents(db, *CORPUS)
    monkeypatch.setattr(search_module, "_may_read_non_matches", lambda _query: seek)
    expected = bm25_order(db, query, filters.get("kind"), filters.get("project_id"))
    seen, offset = [], 0
    while offset is not None:
        page = await search(db, query, limit=2, offset=offset, **filters)
        seen += [(h.iid, h.note_id, h.score, h.snippet) for h in page.items]
        offset = page.next_offset
    assert expected and seen == expected
    assert any("<mark>" in snippet for *_, snippet in seen) or query.startswith("title:")


@pytest.mark.parametrize(
    ("text", "reads_non_matches"),
    [
        ("token", False),
        ("token refresh", False),
        ("tok* OR oauth", False),
        ('"token"', False),
        ('"token refresh"', True),
        ("src/auth/session.py", True),  # quoted for FTS5: a phrase of four words
        ("snake_case", True),  # one bare word, two tokens
        ("NEAR(token refresh, 5)", True),
        ("token NOT refresh", True),
        ("title:token", True),
        ("^token", True),
    ],
)
def test_queries_that_can_make_fts5_read_documents_they_do_not_match_are_told_apart(text, reads_non_matches):
    assert search_module._may_read_non_matches(fts_query(text)) is reads_non_matches


# -- freshness through a real sync ------------------------------------------------------------------


async def test_a_changed_title_is_found_by_its_new_words_after_the_next_sync_and_not_its_old_ones(
    simulator, config_for, db
):
    simulator.add_issue(1001, title="Quokka migration stalls", description="No details yet.")
    sync = SyncRunner(db, EventBus(), SystemClock(), config_for())
    await sync.run(SyncRequest(profile="balanced"))
    assert [h.title for h in (await search(db, "quokka")).items] == ["Quokka migration stalls"]

    simulator.update_issue(1001, 31, title="Wombat burrow collapses")
    await sync.run(SyncRequest(profile="balanced"))

    assert (await search(db, "quokka")).items == []
    found = (await search(db, "wombat burrow")).items
    assert [(h.type, h.iid, h.title) for h in found] == [("issue", 31, "Wombat burrow collapses")]


def test_a_fault_that_is_not_the_querys_is_not_blamed_on_it():
    """match_error runs the expression alone: a valid one is fine there, so a failure elsewhere stays ours."""
    assert match_error(fts_query("NEAR(token refresh, 5) OR title:token*")) is None
    assert "expected integer" in match_error(fts_query("NEAR(a, b)"))
