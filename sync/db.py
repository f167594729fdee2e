"""The SQLite database: one writer connection, one reader, WAL.

Writes go through `Database.transaction()`, which serializes them on the single
writer connection (an asyncio lock, since aiosqlite would otherwise interleave
two coroutines' statements in one transaction) and uses BEGIN IMMEDIATE so a
second process waits on busy_timeout instead of failing mid-transaction.
Readers use their own connection and are never blocked by a write in WAL mode.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from sync.migrations import apply_migrations

BUSY_TIMEOUT_MS = 10_000
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA temp_store=MEMORY",
)


def migrate(path: Path) -> list[str]:
    """Create the database if needed and apply pending migrations; return what was applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, migrate_first: bool = True) -> Database:
        if migrate_first:
            await asyncio.to_thread(migrate, path)
        writer = await _connect(path)
        try:
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(path, writer, reader)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One atomic write: committed on exit, rolled back on any exception."""
        async with self._write_lock:
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

    async def check_writable(self) -> None:
        """Take and release the write lock with a no-op write; raises sqlite3.Error when the store cannot write."""
        async with self.transaction() as conn:
            await conn.execute("UPDATE service_state SET id = id WHERE id = 1")

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return list(await self._reader.execute_fetchall(sql, tuple(params)))

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self._reader.execute_fetchall(sql, tuple(params))
        return rows[0] if rows else None

    async def fetchval(self, sql: str, params: Iterable[Any] = ()) -> Any:
        row = await self.fetchone(sql, params)
        return None if row is None else row[0]


async def _connect(path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for pragma in _PRAGMAS:
        await conn.execute(pragma)
    return conn
