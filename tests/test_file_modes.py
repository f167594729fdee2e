"""Private files: the data directory 0700 and lore.db with its -wal/-shm 0600 under a umask of 022.

The README's own steps (`migrate`, `sync`) run as real subprocesses with that umask; `serve` opens the
store the way create_app does. The mirror may hold confidential issues, so nothing here is world-readable.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import create_app
from sync.store.db import Database, make_private
from tests.conftest import make_config
from tests.test_cli_sync import cli_env

UMASK = 0o022


def modes(data_dir: Path) -> dict[str, int]:
    """The data directory's mode and each database file's, by name."""
    found = {".": stat.S_IMODE(data_dir.stat().st_mode)}
    for path in data_dir.glob("lore.db*"):
        found[path.name] = stat.S_IMODE(path.stat().st_mode)
    return found


PRIVATE = {".": 0o700, "lore.db": 0o600, "lore.db-wal": 0o600, "lore.db-shm": 0o600}


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(UMASK)
    try:
        yield
    finally:
        os.umask(previous)


async def run_cli(env: dict[str, str], *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", *args, env=env,
                                                umask=UMASK, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


async def test_migrate_under_umask_022_leaves_a_private_directory_and_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await run_cli(cli_env(data_dir, None), "migrate")
    found = modes(data_dir)
    assert found["."] == 0o700 and found["lore.db"] == 0o600
    assert all(mode == 0o600 for name, mode in found.items() if name != ".")  # any -wal/-shm left behind


async def test_sync_under_umask_022_leaves_a_private_directory_and_database(tmp_path: Path,
                                                                             gitlab_url: str) -> None:
    data_dir = tmp_path / "data"
    env = cli_env(data_dir, gitlab_url)
    await run_cli(env, "sync")
    found = modes(data_dir)
    assert found["."] == 0o700 and found["lore.db"] == 0o600
    assert all(mode == 0o600 for name, mode in found.items() if name != ".")


async def test_a_serving_store_under_umask_022_keeps_its_wal_and_shm_private(tmp_path: Path, aiohttp_client,
                                                                             umask_022: None) -> None:
    data_dir = tmp_path / "data"
    client = await aiohttp_client(create_app(make_config(data_dir), scheduler=False))
    assert (await client.get("/healthz")).status == 200
    assert modes(data_dir) == PRIVATE  # the -wal and -shm exist while the store is open
    assert stat.S_IMODE((data_dir / "signing.key").stat().st_mode) == 0o600


async def test_files_an_older_version_left_world_readable_are_narrowed_on_open(tmp_path: Path,
                                                                               umask_022: None) -> None:
    data_dir = tmp_path / "data"
    db = await Database.open(data_dir / "lore.db")
    await db.close()
    for path in (data_dir, *data_dir.glob("lore.db*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    (data_dir / "lore.db-wal").touch(mode=0o644)
    db = await Database.open(data_dir / "lore.db")
    try:
        async with db.transaction() as conn:
            await conn.execute("UPDATE service_state SET updated_at = 1 WHERE id = 1")
        assert modes(data_dir) == PRIVATE
    finally:
        await db.close()


def test_make_private_creates_the_database_file_0600_before_sqlite_does(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "nested" / "lore.db"
    make_private(path)
    assert modes(path.parent) == {".": 0o700, "lore.db": 0o600}
