"""The SQLite database: one writer connection, readers beside it, WAL.

Writes go through `Database.transaction()`, which serializes them on the single
writer connection (an asyncio lock, since aiosqlite would otherwise interleave
two coroutines' statements in one transaction) and uses BEGIN IMMEDIATE so a
second process waits on busy_timeout instead of failing mid-transaction.
`Database.write()` is the same transaction as one function run on the writer's
thread: every awaited statement is a round trip between the event loop and that
thread (a wake-up each way, and the GIL handed over twice), and a short write on
a hot path (the webhook inbox) paid four of them per commit.
Readers use their own connections and are never blocked by a write in WAL mode.

A read runs first on the event loop itself, for at most INLINE_BUDGET: most reads
here are index lookups of a fraction of a millisecond, and handing one to
aiosqlite's thread and back cost more than the query (for a 100-issue page, the
gateway's requests/s went from 0.51k to 0.98k when it stopped doing so). A read
that runs longer is interrupted and runs again on the reader thread, so the loop
is never held for longer than the budget. SQLite can only interrupt between two
steps of a statement, so a read whose cost sits in one step (an FTS5 auxiliary
function) asks for the reader thread outright: `fetchall(..., inline=False)`.

The mirror may hold confidential issues, so the data directory is 0700 and the database files 0600
whatever the umask (see `make_private`).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from sync.store.migrations import apply_migrations

BUSY_TIMEOUT_MS = 10_000
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA temp_store=MEMORY",
)
INLINE_BUDGET = 0.001  # seconds a read may hold the event loop before it moves to the reader thread
# SQLite VM instructions between looks at the clock: few enough that a read stops soon after INLINE_BUDGET,
# many enough that looking costs little against the work in between.
_BUDGET_CHECK_STEPS = 1000
T = TypeVar("T")
_RUN_ON_THREAD = frozenset({"SQLITE_INTERRUPT", "SQLITE_BUSY", "SQLITE_LOCKED"})  # over budget, or a lock


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_SIDE_FILES = ("-wal", "-shm", "-journal")


def make_private(path: Path) -> None:
    """The database's directory 0700 and the database with its -wal/-shm/-journal 0600, whatever the umask.

    The database file is created 0600 before SQLite opens it: SQLite gives the -wal and -shm files it
    creates later the main file's mode, so that covers them. Files left wider by an older version are
    narrowed, when this process owns them (another user's files are theirs to fix).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    _narrow(path.parent, PRIVATE_DIR_MODE)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass  # opened as it is: a reader that only may read it must not need to write it
    for file in (path, *(path.with_name(path.name + suffix) for suffix in _SIDE_FILES)):
        _narrow(file, PRIVATE_FILE_MODE)


def _narrow(path: Path, allowed: int) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(info.st_mode)
    if mode & ~allowed and info.st_uid == os.geteuid():
        os.chmod(path, mode & allowed)


def migrate(path: Path) -> list[str]:
    """Create the database if needed (private: see make_private) and apply pending migrations."""
    make_private(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        return apply_migrations(conn)
    finally:
        conn.close()


class Database:
    """Open with `await Database.open(path)`; close with `await db.close()`."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._inline = InlineReader(path)
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, migrate_first: bool = True) -> Database:
        if migrate_first:
            await asyncio.to_thread(migrate, path)
        else:
            await asyncio.to_thread(make_private, path)
        writer = await _connect(path)
        try:
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        self._inline.close()
        await self._reader.close()
        await self._writer.close()

    @asynccontextmanager
    async def transaction(self, *, full_sync: bool = False) -> AsyncIterator[aiosqlite.Connection]:
        """One atomic write: committed on exit, rolled back on any exception.

        With `full_sync`, this one commit runs under synchronous=FULL: SQLite fsyncs the WAL before the
        commit returns, so it survives a power cut, not only a crash of the process (NORMAL's promise).
        """
        async with self._write_lock:
            if full_sync:
                await self._writer.execute("PRAGMA synchronous=FULL")
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                yield self._writer
            except BaseException:
                # Also when cancelled during BEGIN: the worker thread still runs it, and this
                # rollback is queued behind it, so the connection never stays mid-transaction.
                await asyncio.shield(self._writer.rollback())
                raise
            else:
                await asyncio.shield(self._writer.commit())
            finally:
                if full_sync:
                    await asyncio.shield(self._writer.execute("PRAGMA synchronous=NORMAL"))

    async def write(self, work: Callable[[sqlite3.Connection], T], *, full_sync: bool = False) -> T:
        """`work(conn)` as one atomic write, like `transaction()`, in ONE trip to the writer's thread:
        BEGIN IMMEDIATE, `work`, COMMIT (ROLLBACK when `work` raises), on that thread without coming back
        to the event loop in between. `work` runs off the event loop: it must only use `conn`.

        If the caller is cancelled, the thread still finishes (commits or rolls back) what it started,
        and a later write queues behind it on the same thread, so none interleave."""
        async with self._write_lock:
            # aiosqlite runs every call on its connection's one thread through `_execute`; it has no
            # public way to run a function there. tests/test_db_write.py holds this to its behaviour.
            return await self._writer._execute(_in_transaction, self._writer._conn, work, full_sync)

    async def check_ready(self) -> None:
        """Raise sqlite3.Error unless the store is migrated, readable and may be written.

        Writes nothing and takes no lock (a probe answered without auth must not touch the WAL or wait
        for the writer): a read of the migration table, and the files' and directory's write permission,
        which is what a write would need beyond the lock."""
        await self.fetchval("SELECT count(*) FROM schema_migrations")
        for path in (self.path, self.path.with_name(self.path.name + "-wal"), self.path.parent):
            if path.exists() and not os.access(path, os.W_OK):
                raise sqlite3.OperationalError(f"attempt to write a readonly database ({path.name} is read-only)")

    @property
    def reads_moved_to_thread(self) -> int:
        """Reads that ran over INLINE_BUDGET on the event loop (or met a lock) and ran on the reader thread."""
        return self._inline.moved

    async def fetchall(self, sql: str, params: Iterable[Any] = (), *, inline: bool = True) -> list[sqlite3.Row]:
        """The rows of one read. `inline=False` sends it straight to the reader thread: for a statement
        with one step the budget cannot cut short, such as an FTS5 query calling bm25(), which counts
        every match of each of the query's phrases inside its first call (sync/read/search.py). Tried
        on the loop, that step would hold the loop past the budget and then run again on the thread."""
        params = tuple(params)
        rows = self._inline.fetchall(sql, params) if inline else None
        if rows is None:
            rows = list(await self._reader.execute_fetchall(sql, params))
        return rows

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]


class InlineReader:
    """A plain sqlite3 connection for reads on the event loop's own thread, each cut off at `budget`."""

    def __init__(self, path: Path, budget: float = INLINE_BUDGET) -> None:
        self.budget = budget
        self.moved = 0
        self._deadline = 0.0
        # check_same_thread=False only because a Database may be opened in one event loop's thread and
        # used in another's (a CLI command); it is never used from two threads at once.
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        for pragma in ("PRAGMA busy_timeout=0", "PRAGMA query_only=ON"):  # never wait, never write
            self._conn.execute(pragma)
        self._conn.set_progress_handler(self._over_budget, _BUDGET_CHECK_STEPS)

    def _over_budget(self) -> bool:
        return time.perf_counter() > self._deadline  # True interrupts the statement

    def fetchall(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row] | None:
        """The rows, or None when the read ran over budget or met a lock: run it on the reader thread
        then. An error of the statement itself is raised here, as the thread would have."""
        self._deadline = time.perf_counter() + self.budget
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as err:
            if err.sqlite_errorname not in _RUN_ON_THREAD:
                raise
            self.moved += 1
            return None

    def close(self) -> None:
        self._conn.close()


def _in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], full_sync: bool) -> T:
    """`Database.write` on the writer's thread."""
    if full_sync:
        conn.execute("PRAGMA synchronous=FULL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # `work` raised, or COMMIT itself failed
                conn.execute("ROLLBACK")
            raise
        return result
    finally:
        if full_sync:
            conn.execute("PRAGMA synchronous=NORMAL")


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in _PRAGMAS:
        await conn.execute(pragma)
    return conn
