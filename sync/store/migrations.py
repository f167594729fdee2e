"""Applies the numbered SQL files of the `migrations` package, in order, once.

Each applied file is recorded with its SHA-256 in `schema_migrations`; a file
that changed after it was applied is an error, never a silent skip, because the
database would no longer match what the code believes it is.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import time
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class MigrationError(Exception):
    """The database and the shipped migrations disagree."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def shipped_migrations() -> list[Migration]:
    """The migrations inside the installed package, sorted by version."""
    found = []
    for entry in resources.files("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number: {[m.name for m in found]}")
    return found


def apply_migrations(conn: sqlite3.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply what is pending on a plain sqlite3 connection; return the names applied.

    Runs synchronously on purpose: it happens once, before anything else opens the
    database, and `executescript` cannot run inside aiosqlite's transaction handling.
    """
    migrations = shipped_migrations() if migrations is None else migrations
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    applied = {v: (n, c) for v, n, c in conn.execute("SELECT version, name, checksum FROM schema_migrations")}
    done = []
    for migration in migrations:
        if migration.version in applied:
            name, checksum = applied[migration.version]
            if checksum != migration.checksum:
                raise MigrationError(
                    f"migration {migration.name} was changed after it was applied (as {name}); "
                    "restore the original file and add a new numbered migration instead"
                )
            continue
        _apply_one(conn, migration)
        done.append(migration.name)
    unknown = set(applied) - {m.version for m in migrations}
    if unknown:
        raise MigrationError(
            f"the database has migrations this version does not know: {sorted(unknown)} (a newer lore-gateway?)"
        )
    return done


def _apply_one(conn: sqlite3.Connection, migration: Migration) -> None:
    # executescript commits first; wrap the file and its record in one explicit transaction.
    script = (
        "BEGIN IMMEDIATE;\n"
        + migration.sql
        + "\n;INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES "
        + f"({migration.version}, '{migration.name}', '{migration.checksum}', {time.time()});\nCOMMIT;"
    )
    try:
        conn.executescript(script)
    except sqlite3.Error as exc:
        if conn.in_transaction:
            conn.rollback()
        raise MigrationError(f"migration {migration.name} failed: {exc}") from exc
