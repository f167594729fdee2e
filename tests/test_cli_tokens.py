"""`lore-gateway token create | list | revoke`: output, JSON documents and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.tokens import KEY_FILE_NAME, Principal, TokenStore, signing_keys
from sync.clock import SystemClock
from sync.config import load_config
from sync.store.db import Database


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in [name for name in os.environ if name.startswith("LORE_GATEWAY_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("LORE_GATEWAY_GATEWAY_DATA_DIR", str(tmp_path))
    return tmp_path


@dataclass
class Cli:
    capsys: pytest.CaptureFixture[str]

    def run(self, *argv: str) -> tuple[int, str]:
        self.capsys.readouterr()
        code = main(list(argv))
        return code, self.capsys.readouterr().out

    def json(self, *argv: str) -> tuple[int, dict[str, Any]]:
        code, out = self.run(*argv, "--json")
        return code, json.loads(out)


@pytest.fixture
def cli(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


def verify(token: str) -> Principal | None:
    """What `serve` would say about the token: same data dir, same key source."""
    async def check() -> Principal | None:
        config = load_config()
        db = await Database.open(config.db_path)
        try:
            return await TokenStore(db, SystemClock(), signing_keys(config)).verify(token)
        finally:
            await db.close()
    return asyncio.run(check())


def test_create_json_prints_exactly_the_contract_fields(cli: Cli) -> None:
    code, document = cli.json("token", "create", "--name", "ci", "--scope", "read", "--scope", "sync")
    assert code == 0
    assert set(document) == {"id", "name", "scopes", "expires_at", "token"}
    assert (document["name"], document["scopes"], document["expires_at"]) == ("ci", ["read", "sync"], None)
    assert document["token"].startswith("lgw_")


def test_a_created_token_is_accepted_by_what_serve_would_build(cli: Cli) -> None:
    _, document = cli.json("token", "create", "--name", "ci", "--scope", "admin")
    assert verify(document["token"]) == Principal(document["id"], "ci", frozenset({"admin"}))


def test_create_text_explains_and_puts_the_token_alone_on_the_last_line(cli: Cli) -> None:
    code, out = cli.run("token", "create", "--name", "laptop", "--scope", "read")
    assert code == 0
    lines = out.rstrip("\n").splitlines()
    assert lines[-1].startswith("lgw_") and " " not in lines[-1]
    assert "only this once" in out


def test_create_with_a_ttl_sets_an_rfc3339_expiry(cli: Cli) -> None:
    _, document = cli.json("token", "create", "--name", "ci", "--scope", "read", "--ttl", "30d")
    assert document["expires_at"].endswith("Z")


def test_create_makes_the_signing_key_file_private(cli: Cli, data_dir: Path) -> None:
    cli.json("token", "create", "--name", "ci", "--scope", "read")
    assert stat.S_IMODE((data_dir / KEY_FILE_NAME).stat().st_mode) == 0o600


@pytest.mark.parametrize("argv", [
    ["--scope", "write"],
    ["--scope", "read", "--ttl", "30x"],
    ["--scope", "read", "--ttl", "0s"],
    [],
])
def test_create_with_a_bad_scope_or_ttl_is_a_usage_error(cli: Cli, argv: list[str]) -> None:
    code, document = cli.json("token", "create", "--name", "ci", *argv)
    assert code == 2
    assert document["error"]["code"] == "usage_error"


def test_create_with_a_blank_name_is_a_usage_error(cli: Cli) -> None:
    code, _ = cli.json("token", "create", "--name", " ", "--scope", "read")
    assert code == 2


def test_list_json_shows_tokens_without_their_secret(cli: Cli) -> None:
    _, created = cli.json("token", "create", "--name", "ci", "--scope", "read")
    code, out = cli.run("token", "list", "--json")
    assert code == 0
    [item] = json.loads(out)["items"]
    assert (item["id"], item["name"], item["status"]) == (created["id"], "ci", "active")
    assert item["scopes"] == ["read"]
    assert item["created_at"].endswith("Z") and item["last_used_at"] is None
    assert created["token"] not in out and "secret" not in out


def test_list_text_is_a_table_with_one_row_a_token(cli: Cli) -> None:
    cli.json("token", "create", "--name", "ci-bot", "--scope", "sync")
    code, out = cli.run("token", "list")
    assert code == 0
    header, row = out.strip().splitlines()
    assert header.split()[:4] == ["ID", "NAME", "SCOPES", "STATUS"]
    assert row.split()[:4] == ["1", "ci-bot", "sync", "active"]


def test_revoke_json_gives_id_and_time_and_the_token_stops_working(cli: Cli) -> None:
    _, created = cli.json("token", "create", "--name", "ci", "--scope", "read")
    code, document = cli.json("token", "revoke", str(created["id"]))
    assert code == 0
    assert set(document) == {"id", "revoked_at"} and document["id"] == created["id"]
    assert document["revoked_at"].endswith("Z")
    assert verify(created["token"]) is None
    _, listed = cli.json("token", "list")
    assert listed["items"][0]["status"] == "revoked"


def test_revoking_an_unknown_id_fails_with_not_found(cli: Cli) -> None:
    code, document = cli.json("token", "revoke", "42")
    assert code == 1
    assert document["error"]["code"] == "not_found"


def test_revoke_without_a_numeric_id_is_a_usage_error(cli: Cli) -> None:
    code, _ = cli.json("token", "revoke", "ci")
    assert code == 2


def test_a_short_signing_key_is_a_configuration_error_with_exit_2(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LORE_GATEWAY_AUTH_SIGNING_KEYS", "only-20-bytes-of-key")
    capsys.readouterr()
    assert main(["token", "list"]) == 2
    message = capsys.readouterr().err
    assert "LORE_GATEWAY_AUTH_SIGNING_KEYS" in message and "20 bytes long" in message
    assert "only-20-bytes-of-key" not in message


def test_list_marks_a_token_made_before_random_parts_as_legacy(cli: Cli, data_dir: Path) -> None:
    _, created = cli.json("token", "create", "--name", "old", "--scope", "read")
    with sqlite3.connect(data_dir / "lore.db") as conn:
        conn.execute("UPDATE api_tokens SET random_bits = 0 WHERE id = ?", (created["id"],))
    code, out = cli.run("token", "list")
    assert code == 0 and "active (legacy)" in out
    _, document = cli.json("token", "list")
    assert document["items"][0]["legacy"] is True
