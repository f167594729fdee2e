"""Search latency over the documents index: FTS5 + bm25 (what GET /api/v1/search runs) side by side
with the obvious baseline, a LIKE scan of titles and bodies (which does not even rank), and with the
floor under any ranked search: FTS5 finding the same matches without scoring them or making snippets.

Documents are generated straight into a temporary database (migrations applied, FTS kept by the
triggers), with a skewed vocabulary so some words are common and most are rare, like real text.
Each query runs through `sync.read.search.search` on the reader connection, as a request would. The
synthetic words are built from 14 syllables, so a 3-letter prefix is often a syllable found in
nearly every document: the worst case for ranking, which sync.read.search bounds with RANK_WINDOW.

    python bench/search_bench.py           # 50,000 documents
    python bench/search_bench.py --quick   # 2,000 documents, for the test suite
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync.read.search import RANK_WINDOW, fts_query, scoped_query, search
from sync.store.db import Database, migrate

PROJECTS = (1001, 1002, 1003, 1004)
SHAPES = ("common word", "title word", "two words", "phrase", "prefix*", "filtered")
TOPICS = (
    "token", "refresh", "session", "oauth", "pagination", "cursor", "webhook", "scheduler", "backoff",
    "timeout", "cache", "etag", "migration", "sqlite", "index", "search", "expert", "embedding", "login",
    "redirect", "dark", "mode", "keyboard", "spinner", "flaky", "fixture", "deploy", "rollback", "latency",
)


def vocabulary(rng: random.Random, size: int = 6_000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ren", "to", "vex", "sha", "dor", "pli", "qua", "zen", "bru", "fi", "gal"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(size * 2)})
    rng.shuffle(words)  # so how common a word is has nothing to do with how it starts (prefix queries)
    return words[:size]


def make_documents(count: int, seed: int = 5) -> list[tuple]:
    rng = random.Random(seed)
    words = vocabulary(rng) + list(TOPICS) * 40  # topic words are common
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(words))]
    rows = []
    for i in range(count):
        kind = rng.choices(("issue", "merge_request", "note"), weights=(3, 2, 5))[0]
        title = " ".join(rng.choices(words, weights, k=rng.randint(3, 8))).capitalize()
        body = " ".join(rng.choices(words, weights, k=rng.randint(15, 120)))
        project = rng.choice(PROJECTS)
        parent = "merge_request" if kind == "merge_request" else rng.choice(("issue", "merge_request"))
        rows.append((kind, project, i + 1, i + 1 if kind == "note" else 0, parent, title, body,
                     f"http://gitlab.bench/{project}/{i + 1}", "2026-01-01T00:00:00.000Z"))
    return rows


def build(path: Path, rows: list[tuple]) -> float:
    migrate(path)
    conn = sqlite3.connect(path, isolation_level=None)
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO documents (kind, project_id, iid, note_id, parent_kind, title, body, web_url, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        rows,
    )
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.execute("PRAGMA optimize")
    conn.close()
    return elapsed


def make_queries(rows: list[tuple], count: int, seed: int = 9) -> list[tuple[str, str, dict]]:
    """(shape, text, filters): common words, title words, two-word AND, phrases, prefixes, filtered."""
    rng = random.Random(seed)
    queries: list[tuple[str, str, dict]] = []
    while len(queries) < count:
        title_words = rng.choice(rows)[5].lower().split()
        shape = SHAPES[len(queries) % len(SHAPES)]
        if shape == "common word":
            queries.append((shape, rng.choice(TOPICS), {}))
        elif shape == "title word":
            queries.append((shape, rng.choice(title_words), {}))
        elif shape == "two words":
            queries.append((shape, f"{rng.choice(TOPICS)} {rng.choice(title_words)}", {}))
        elif shape == "phrase":
            start = rng.randrange(max(1, len(title_words) - 1))
            queries.append((shape, '"' + " ".join(title_words[start : start + 2]) + '"', {}))
        elif shape == "prefix*":
            queries.append((shape, rng.choice(title_words)[:3] + "*", {}))
        else:
            queries.append((shape, rng.choice(TOPICS), {"project_id": rng.choice(PROJECTS), "kind": "issue"}))
    return queries


def like_sql(text: str, filters: dict, *, ranked: bool) -> tuple[str, list]:
    """The baselines: every word in the title or the body, newest first (stops after 20 hits), or
    title hits first (a crude ranking, which has to look at every row)."""
    words = [w.strip('"*') for w in text.split()]
    clauses, params = [], []
    for word in words:
        clauses.append("(title LIKE ? OR body LIKE ?)")
        params += [f"%{word}%", f"%{word}%"]
    if "kind" in filters:
        clauses.append("kind = ?")
        params.append(filters["kind"])
    if "project_id" in filters:
        clauses.append("project_id = ?")
        params.append(filters["project_id"])
    order = "id DESC"
    if ranked:
        order = " + ".join("(title LIKE ?)" for _ in words) + " DESC, id DESC"
        params += [f"%{w}%" for w in words]
    where = " AND ".join(clauses)
    return f"SELECT id, kind, project_id, iid, title FROM documents WHERE {where} ORDER BY {order} LIMIT 20", params


Timings = dict[str, list[float]]
# The floor under any ranked search: FTS5 finding the window's matches, newest first, scoring nothing.
UNRANKED = "SELECT rowid FROM documents_fts WHERE documents_fts MATCH ? ORDER BY rowid DESC LIMIT ?"


async def measure(
    path: Path, queries: list[tuple[str, str, dict]]
) -> tuple[Timings, Timings, Timings, Timings, int]:
    db = await Database.open(path, migrate_first=False)
    fts: Timings = {}
    like: Timings = {}
    ranked_like: Timings = {}
    unranked: Timings = {}
    found = 0
    try:
        for _, text, filters in queries[:5]:  # warm the page cache for all three
            await search(db, text, **filters)
        for shape, text, filters in queries:
            started = time.perf_counter()
            page = await search(db, text, **filters)
            fts.setdefault(shape, []).append(time.perf_counter() - started)
            found += bool(page.items)
            match = scoped_query(fts_query(text), filters.get("kind"), filters.get("project_id"))
            started = time.perf_counter()
            await db.fetchall(UNRANKED, (match, RANK_WINDOW), inline=False)
            unranked.setdefault(shape, []).append(time.perf_counter() - started)
            for ranked, into in ((False, like), (True, ranked_like)):
                sql, params = like_sql(text, filters, ranked=ranked)
                started = time.perf_counter()
                await db.fetchall(sql, params)
                into.setdefault(shape, []).append(time.perf_counter() - started)
    finally:
        await db.close()
    return fts, like, ranked_like, unranked, found


async def long_body(path: Path, repeats: int) -> tuple[float, float]:
    """One body repeating a word `repeats` times: a search for it, against FTS5's snippet() on that row
    alone (what every search did before SNIPPET_BODY_LIMIT: quadratic in the body's matches)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "INSERT INTO documents (kind, project_id, iid, note_id, parent_kind, title, body, web_url, updated_at)"
        " VALUES ('issue', 1001, 999999, 0, 'issue', 'A long log', ?, 'u', '2026-01-01T00:00:00.000Z')",
        ("Pasted log: " + "zzdeadlock at frame " * repeats,),
    )
    started = time.perf_counter()
    conn.execute("SELECT snippet(documents_fts, 1, '<mark>', '</mark>', '…', 16) FROM documents_fts"
                 " WHERE documents_fts MATCH 'zzdeadlock'").fetchall()
    fts5_snippet = time.perf_counter() - started
    conn.close()
    db = await Database.open(path, migrate_first=False)
    try:
        started = time.perf_counter()
        await search(db, "zzdeadlock")
        ours = time.perf_counter() - started
    finally:
        await db.close()
    return ours, fts5_snippet


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.2f}ms"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--documents", type=int, default=50_000)
    parser.add_argument("--queries", type=int, default=1_200)  # 200 per shape: p99 is not just the max
    args = parser.parse_args()
    count = 2_000 if args.quick else args.documents
    n_queries = 60 if args.quick else args.queries
    rows = make_documents(count)
    queries = make_queries(rows, n_queries)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "search.db"
        built = build(path, rows)
        fts, like, ranked_like, unranked, found = asyncio.run(measure(path, queries))
        repeats = 2_000 if args.quick else 20_000
        long_ours, long_snippet = asyncio.run(long_body(path, repeats))
    print(f"search over {count:,} documents ({n_queries} queries, {found} with results; "
          f"indexed in {built:.1f}s, {count / built:,.0f} docs/s)")
    every = {name: [t for ts in timings.values() for t in ts]
             for name, timings in (("fts", fts), ("like", like), ("ranked", ranked_like), ("unranked", unranked))}
    print(f"  {'':38} {'p50':>9} {'p99':>9} {'mean':>9}")
    for name, key in (("FTS5 bm25 + snippets (ours)", "fts"), ("LIKE, newest first (no ranking)", "like"),
                      ("LIKE, title hits first (full scan)", "ranked"),
                      ("FTS5 match walk alone (the floor)", "unranked")):
        samples = every[key]
        print(f"  {name:38} {ms(percentile(samples, 50))} {ms(percentile(samples, 99))} "
              f"{ms(statistics.fmean(samples))}")
    heads = "".join(f"{name:>22}" for name in ("ours", "LIKE newest", "LIKE ranked", "FTS5 walk alone"))
    print(f"  by query shape, p50 / p99: {heads}   ranked LIKE / ours at p50, p99")
    for shape in SHAPES:
        ours, plain, ranked, floor = (t.get(shape, [0.0]) for t in (fts, like, ranked_like, unranked))
        cells = "".join(f"  {ms(percentile(x, 50))} /{ms(percentile(x, 99))}" for x in (ours, plain, ranked, floor))
        p50 = percentile(ranked, 50) / percentile(ours, 50)
        p99 = percentile(ranked, 99) / percentile(ours, 99)
        print(f"    {shape:14}{cells}   {p50:5.1f}x, {p99:5.1f}x")
    worst = max(percentile(fts[shape], 99) for shape in SHAPES if shape in fts)
    print(f"  slowest shape's p99 (ours): {ms(worst).strip()}")
    print(f"  a {repeats * 20 / 1e3:,.0f} KB body repeating the word {repeats:,} times: search {ms(long_ours).strip()},"
          f" FTS5 snippet() alone {ms(long_snippet).strip()} ({long_snippet / long_ours:.0f}x)")
    fts_all, ranked_all = every["fts"], every["ranked"]
    print(f"  ranked LIKE / FTS at p50: {percentile(ranked_all, 50) / percentile(fts_all, 50):.1f}x, "
          f"at p99: {percentile(ranked_all, 99) / percentile(fts_all, 99):.1f}x")

if __name__ == "__main__":
    main()
