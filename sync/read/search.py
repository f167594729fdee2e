"""Full-text search over the documents index (FTS5, bm25): the engine behind GET /api/v1/search.

The query is FTS5 syntax passed through (phrases, AND/OR/NOT, prefix*, NEAR), except that words FTS5
cannot take bare (src/auth/session.py, token-refresh) are quoted first; what is still malformed raises
SearchQueryError (a 400). Ranking: exact title matches first, then bm25 with titles weighted 10 to 1
(of two equal scores, the newer document first). Type and project filters are FTS5 terms too
(migrations/007), so they narrow before anything is ranked; and a query matching more than RANK_WINDOW
documents is ranked among its RANK_WINDOW newest matches, which bounds a search's cost whatever it
matches (bench/search_bench.py).

What a search costs, and why it is built so: FTS5's bm25() counts, at its first call in a statement,
the documents holding each of the query's phrases, by walking that phrase's matches over the whole
index (however few rows the statement then scores). So a search runs bm25() in one statement only,
which walks the matches newest first, scores the window's rows and stops (_ranked); the page's
snippets come from a second statement that scores nothing (_page_rows). The floor under a query is
that one walk: for a phrase of two common words, FTS5 reads every document holding both words.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from sync.store.db import Database

KINDS = ("issue", "merge_request", "note")
TITLE_WEIGHT = 10.0
BODY_WEIGHT = 1.0
TAGS_WEIGHT = 0.0  # the filter tokens of migrations/007 never add to a score
# bm25 costs time for every matching row, so ranking every match of a word found nearly everywhere is
# slow (bench/search_bench.py measures it). Past this many matches, rank the newest ones only (FTS5
# walks matches newest first, and the walk stops there).
RANK_WINDOW = 1_000
SNIPPET_TOKENS = 16
MARK_OPEN, MARK_CLOSE, ELLIPSIS = "<mark>", "</mark>", "…"
# FTS5's snippet() scores a window at every instance of the query's terms: quadratic in their count, so
# one long body repeating the searched word holds a reader thread for seconds (bench/search_bench.py).
# Bodies longer than this get their snippet made here instead (_plain_snippet), in one regex pass.
SNIPPET_BODY_LIMIT = 8_192

# A quoted phrase (closed or not), a parenthesis or comma, or a run of anything else.
_TOKEN = re.compile(r'"(?:[^"]|"")*"|"[^"]*$|[(),]|[^\s"(),]+')
# What FTS5 takes bare: a word (optionally a `title:`/`body:` column filter, `^` anchor, `*` prefix).
_BAREWORD = re.compile(r"(?:(?:title|body):)?\^?\w+\*?")
_OPERATORS = frozenset({"AND", "OR", "NOT", "NEAR", "+"})
# A word as FTS5's unicode61 tokenizer sees it: letters and digits (an underscore separates).
_FTS_WORD = re.compile(r"[^\W_]+")


class SearchQueryError(ValueError):
    """The search text is not a query FTS5 can run; the message says why, for a person."""


@dataclass(frozen=True)
class SearchHit:
    type: str  # issue | merge_request | note
    project_id: int
    iid: int  # the item's, or the note's parent's
    note_id: int | None
    parent_type: str  # issue | merge_request (a note's parent; an item's own type)
    title: str
    snippet: str
    score: float  # higher is better: -bm25 for text search, cosine similarity for semantic search
    web_url: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "project_id": self.project_id,
            "iid": self.iid,
            "note_id": self.note_id,
            "parent_type": self.parent_type,
            "title": self.title,
            "snippet": self.snippet,
            "score": self.score,
            "web_url": self.web_url,
        }


@dataclass(frozen=True)
class SearchPage:
    items: list[SearchHit]
    next_offset: int | None  # where the next page starts, None on the last page


def fts_query(text: str) -> str:
    """The user's query as an FTS5 MATCH expression (words FTS5 cannot take bare are quoted)."""
    parts = []
    for token in _TOKEN.findall(text):
        if token.startswith('"') or token in ("(", ")", ",") or token in _OPERATORS or _BAREWORD.fullmatch(token):
            parts.append(token)
        else:
            parts.append('"' + token + '"')
    query = " ".join(parts)
    if not query:
        raise SearchQueryError("the query is empty")
    return query


async def search(
    db: Database,
    text: str,
    *,
    kind: str | None = None,
    project_id: int | None = None,
    limit: int = 20,
    offset: int = 0,
) -> SearchPage:
    """One page of documents matching `text`, best first; SearchQueryError if it is malformed.

    The page is the exact title matches, then everything else by bm25; `offset` counts through both.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    query = fts_query(text)
    match = scoped_query(query, kind, project_id)
    exact = await _exact_title_hits(db, match, _plain(text), kind, project_id)
    head = exact[offset : offset + limit]
    wanted = limit - len(head)
    ranked = await _ranked(db, match, {row[0] for row in exact}, wanted + 1, max(0, offset - len(exact)))
    rest = await _page_rows(db, match, ranked[:wanted], seek=_may_read_non_matches(query))
    words = _query_words(text)
    more = len(ranked) > wanted
    return SearchPage([_hit(row, words) for row in head + rest], offset + limit if more else None)


_BM25 = f"bm25(documents_fts, {TITLE_WEIGHT}, {BODY_WEIGHT}, {TAGS_WEIGHT})"
# A document's fields and its snippet (made here instead when its body is long: SNIPPET_BODY_LIMIT).
_DOCUMENT_COLUMNS = (
    "d.id, d.kind, d.project_id, d.iid, d.note_id, d.parent_kind, d.title, d.web_url,"
    f" CASE WHEN length(d.body) <= {SNIPPET_BODY_LIMIT}"
    f" THEN snippet(documents_fts, 1, ?, ?, ?, {SNIPPET_TOKENS}) END,"
    f" CASE WHEN length(d.body) > {SNIPPET_BODY_LIMIT} THEN d.body END"
)
# CROSS JOIN keeps the FTS index in the outer loop: FTS5 seeks to each wanted rowid.
_FROM_MATCH = " FROM documents_fts CROSS JOIN documents d ON d.id = documents_fts.rowid WHERE documents_fts MATCH ?"


def scoped_query(match: str, kind: str | None, project_id: int | None) -> str:
    """The user's expression over titles and bodies only, AND the filter tokens (migrations/007)."""
    token = ("" if kind is None else "kind" + kind.replace("_", "")) + (
        "" if project_id is None else f"project{int(project_id)}"
    )
    scoped = "{title body} : (" + match + ")"
    return f"{scoped} AND tags : {token}" if token else scoped


def _filters(kind: str | None, project_id: int | None) -> tuple[str, list[Any]]:
    sql, params = "", []
    if kind is not None:
        sql += " AND d.kind = ?"
        params.append(kind)
    if project_id is not None:
        sql += " AND d.project_id = ?"
        params.append(project_id)
    return sql, params


async def _ranked(db: Database, match: str, exclude: set[int], limit: int, offset: int) -> list[tuple[int, float]]:
    """(rowid, bm25) of one page of the RANK_WINDOW newest matches, best first (of two equal scores,
    the newer), leaving out `exclude`.

    One walk: FTS5 yields matches newest first, scoring each, and stops at the window, so only the
    window is ever scored and nothing is walked twice; SQLite then sorts those rows (cheaper than
    handing all of them to Python) and returns the page alone."""
    window = (
        f"SELECT rowid, {_BM25} AS score FROM documents_fts WHERE documents_fts MATCH ? ORDER BY rowid DESC LIMIT ?"
    )
    skip = f" WHERE rowid NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
    rows = await _run(
        db,
        f"SELECT rowid, score FROM ({window}){skip} ORDER BY score, rowid DESC LIMIT ? OFFSET ?",
        (match, RANK_WINDOW, *exclude, limit, offset),
        match,
        inline=False,
    )
    return [(row[0], row[1]) for row in rows]


async def _page_rows(db: Database, match: str, hits: list[tuple[int, float]], *, seek: bool) -> list[tuple]:
    """The page's documents with their snippets, in the order of `hits`, each with its score.

    Found by one walk of the rowid range the page spans, snippets made for its rows only; or, with
    `seek`, by a lookup of each rowid (each a fresh FTS5 query, dearer than a step of a walk, but
    cheaper when the walk would read many documents that do not match: _may_read_non_matches). A
    document deleted by a sync since _ranked read it is left out of the page."""
    if not hits:
        return []
    ids = [doc_id for doc_id, _ in hits]
    marks = ",".join("?" * len(ids))
    if seek:
        where, params = f" AND documents_fts.rowid IN ({marks})", ids
    else:
        # `+` keeps the list out of FTS5's plan (it would look each one up): a filter on the walk.
        where = f" AND documents_fts.rowid BETWEEN ? AND ? AND +documents_fts.rowid IN ({marks})"
        params = [min(ids), max(ids), *ids]
    sql = f"SELECT {_DOCUMENT_COLUMNS}{_FROM_MATCH}{where}"
    # A page of lookups mostly outlasts the loop's read budget: tried there first, it would run twice.
    rows = await _run(db, sql, (MARK_OPEN, MARK_CLOSE, ELLIPSIS, match, *params), match, inline=not seek)
    by_id = {row[0]: tuple(row) for row in rows}
    return [(*by_id[doc_id], score) for doc_id, score in hits if doc_id in by_id]


def _may_read_non_matches(query: str) -> bool:
    """Whether FTS5 may read many documents that do not match `query` (an fts_query) to find those
    that do: for a phrase of two or more words (quoted, or one bare word its tokenizer splits, like
    snake_case) it reads every document holding all the words, and likewise for NEAR, NOT, a column
    filter or a ^ anchor. An approximation of the tokenizer is enough here: it only picks the plan."""
    for token in _TOKEN.findall(query):
        if token in ("NEAR", "NOT") or ":" in token or token.startswith("^"):
            return True
        if token not in _OPERATORS and len(_FTS_WORD.findall(token)) > 1:
            return True
    return False


async def _exact_title_hits(
    db: Database, match: str, plain: str, kind: str | None, project_id: int | None
) -> list[tuple]:
    """Issues and MRs whose whole title is the query, that also match it (an index lookup each)."""
    if not plain or kind == "note":
        return []
    filters, params = _filters(kind, project_id)
    ids = await _run(
        db,
        f"SELECT d.id FROM documents d WHERE d.title = ? COLLATE NOCASE AND d.kind != 'note'{filters} ORDER BY d.id",
        (plain, *params),
        match,
    )
    hits = []
    for (doc_id,) in ids:
        # One row each, by rowid: FTS5 seeks the doclists to it instead of walking every match.
        rows = await _run(
            db,
            f"SELECT {_DOCUMENT_COLUMNS}, {_BM25}{_FROM_MATCH} AND documents_fts.rowid = ?",
            (MARK_OPEN, MARK_CLOSE, ELLIPSIS, match, doc_id),
            match,
            inline=False,
        )
        hits += [tuple(row) for row in rows]
    return hits


def _hit(row: tuple, words: re.Pattern[str] | None) -> SearchHit:
    _, kind, project_id, iid, note_id, parent_kind, title, web_url, snippet, long_body, rank = row
    if long_body is not None:
        snippet = _plain_snippet(long_body, words)
    score = -rank
    return SearchHit(
        type=kind,
        project_id=project_id,
        iid=iid,
        note_id=note_id or None,
        parent_type=parent_kind,
        title=title,
        snippet=snippet or "",
        score=float(f"{score:.6g}"),
        web_url=web_url,
    )


async def _run(db: Database, sql: str, params: tuple, match: str, *, inline: bool = True) -> list[sqlite3.Row]:
    """The rows, or SearchQueryError if the statement failed for the query's sake. `inline=False` for
    a statement calling bm25(): its first call counts each phrase's matches over the whole index in
    one step, which the event loop's read budget cannot cut short (sync/store/db.py)."""
    try:
        return await db.fetchall(sql, params, inline=inline)
    except sqlite3.OperationalError as exc:
        problem = match_error(match)
        if problem is not None:
            raise SearchQueryError(
                f"not a valid search query ({problem}): quote a phrase with \"...\", put AND, OR, NOT"
                " between two terms, and write NEAR(a b, 10) with a whole number"
            ) from exc
        raise


def match_error(match: str) -> str | None:
    """What FTS5 says about `match` on its own (None if it runs): run against an empty table with the
    same columns, so any error of the MATCH expression, whatever FTS5's wording (`fts5: syntax error`,
    `expected integer, got "b"` for NEAR(a, b), `no such column`), is told apart from a fault of ours."""
    probe = sqlite3.connect(":memory:")
    try:
        probe.execute("CREATE VIRTUAL TABLE q USING fts5(title, body, tags, tokenize='unicode61 remove_diacritics 2')")
        probe.execute("SELECT rowid FROM q WHERE q MATCH ?", (match,)).fetchall()
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        probe.close()
    return None


def _query_words(text: str) -> re.Pattern[str] | None:
    """The query's words (a trailing * a prefix) as one case-insensitive pattern, for _plain_snippet."""
    alternatives = []
    for word in re.findall(r"\w+\*?", text):
        if word.rstrip("*") in _OPERATORS or word.rstrip("*").lower() in ("title", "body"):
            continue
        stem = re.escape(word.rstrip("*"))
        alternatives.append(stem + r"\w*" if word.endswith("*") else stem)
    if not alternatives:
        return None
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE)


def _plain_snippet(body: str, words: re.Pattern[str] | None) -> str:
    """About SNIPPET_TOKENS words of a long body around its first query word, marked as snippet() does.

    Linear in the body, where FTS5's snippet() is quadratic in the matches (SNIPPET_BODY_LIMIT). The
    words are the query's own; FTS5's tokenizer also folds diacritics, which this does not, so a
    match it found may go unmarked here: the snippet is then the body's start."""
    first = words.search(body) if words is not None else None
    start = 0 if first is None else first.start()
    before = body[max(0, start - 400) : start].split()[-(SNIPPET_TOKENS // 2) :]
    after = body[start : start + 800].split()[: SNIPPET_TOKENS - len(before)]
    window = " ".join(before + after)
    if words is not None:
        window = words.sub(lambda m: MARK_OPEN + m.group(0) + MARK_CLOSE, window)
    lead = ELLIPSIS if start > 0 and before else ""
    tail = ELLIPSIS if start + 800 < len(body) or len(after) == SNIPPET_TOKENS - len(before) else ""
    return lead + window + tail


def _plain(text: str) -> str:
    """The query as words, for comparing with titles (quotes and extra spaces dropped)."""
    return " ".join(text.replace('"', " ").split())


async def project_paths(db: Database) -> dict[int, str]:
    """path_with_namespace of every mirrored project, by id (for showing results to people)."""
    rows = await db.fetchall("SELECT id, path_with_namespace FROM projects")
    return {row[0]: row[1] for row in rows}
