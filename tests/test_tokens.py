"""The token store: signing, verification, expiry, revocation, rotation, tickets and the key file."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import orjson
import pytest
from itsdangerous import TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer

from gateway.tokens import (
    KEY_FILE_NAME,
    TICKET_SALT,
    TOKEN_SALT,
    BadTokenRequest,
    Principal,
    TokenStore,
    UnknownToken,
    signing_keys,
)
from sync.clock import FakeClock
from sync.config import AuthConfig, Config, ConfigError, GatewayConfig
from sync.store.db import Database

KEYS = ("key-one-" + "k" * 32,)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db: Database, clock: FakeClock) -> TokenStore:
    return TokenStore(db, clock, KEYS)


def _other_char(char: str) -> str:
    return "A" if char != "A" else "B"


# --- create and verify -------------------------------------------------------------------------


async def test_a_created_token_verifies_to_its_id_name_and_scopes(store: TokenStore) -> None:
    created = await store.create("ci", ["read", "sync"], None)
    assert await store.verify(created.token) == Principal(created.id, "ci", frozenset({"read", "sync"}))


async def test_a_token_starts_with_lgw_and_only_its_sha256_is_stored(store: TokenStore, db: Database) -> None:
    created = await store.create("ci", ["read"], None)
    assert created.token.startswith("lgw_")
    row = await db.fetchone("SELECT * FROM api_tokens WHERE id = ?", (created.id,))
    assert row["secret_hash"] == hashlib.sha256(created.token.encode()).hexdigest()
    assert created.token not in [str(value) for value in tuple(row)]


async def test_a_token_carries_128_random_bits_that_neither_the_key_nor_the_database_holds(
        store: TokenStore, db: Database) -> None:
    first = await store.create("ci", ["read"], None)
    payload = URLSafeTimedSerializer(list(KEYS), salt=TOKEN_SALT).loads(first.token[len("lgw_"):])
    random_part = payload["r"]
    assert len(base64.urlsafe_b64decode(random_part + "==")) >= 16
    stored = b"".join(p.read_bytes() for p in Path(db.path).parent.glob("lore.db*"))
    assert random_part.encode() not in stored
    row = await db.fetchone("SELECT random_bits FROM api_tokens WHERE id = ?", (first.id,))
    assert row["random_bits"] == 128


async def test_the_key_and_the_row_together_cannot_recreate_a_token(store: TokenStore, db: Database,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    created = await store.create("ci", ["read"], None)
    row = await db.fetchone("SELECT * FROM api_tokens WHERE id = ?", (created.id,))
    # The attack that worked before: re-sign the row's id and scopes at the token's own timestamp.
    signer = URLSafeTimedSerializer(list(KEYS), salt=TOKEN_SALT)
    stamp = signer.make_signer().unsign(created.token[len("lgw_"):], return_timestamp=True)[1]
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(stamp.timestamp()))
    reminted = "lgw_" + signer.dumps({"id": row["id"], "s": orjson.loads(row["scopes"])})
    assert hashlib.sha256(reminted.encode()).hexdigest() != row["secret_hash"]
    assert await store.verify(reminted) is None


async def test_a_token_made_before_random_parts_keeps_working_and_is_listed_as_legacy(
        store: TokenStore, db: Database) -> None:
    created = await store.create("old", ["read"], None)
    async with db.transaction() as conn:  # what migration 008 leaves on a token made before it
        await conn.execute("UPDATE api_tokens SET random_bits = 0 WHERE id = ?", (created.id,))
    assert await store.verify(created.token) is not None
    assert [info.legacy for info in await store.list()] == [True]
    assert await store.legacy_count() == 1
    await store.revoke(created.id)
    assert await store.legacy_count() == 0


async def test_the_token_never_appears_in_a_repr(store: TokenStore) -> None:
    created = await store.create("ci", ["read"], None)
    principal = await store.verify(created.token)
    assert created.token not in repr(created)
    assert created.token not in repr(principal)


async def test_scopes_are_deduplicated_and_kept_in_canonical_order(store: TokenStore) -> None:
    created = await store.create("ci", ["admin", "read", "admin"], None)
    assert created.scopes == ("read", "admin")


@pytest.mark.parametrize("scopes", [["write"], ["read", "Read"], []])
async def test_an_unknown_scope_or_none_is_a_value_error(store: TokenStore, scopes: list[str]) -> None:
    with pytest.raises(ValueError, match="scope"):
        await store.create("ci", scopes, None)


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "tab\there"])
async def test_a_blank_overlong_or_unprintable_name_is_refused(store: TokenStore, name: str) -> None:
    with pytest.raises(BadTokenRequest, match="name"):
        await store.create(name, ["read"], None)


@pytest.mark.parametrize("ttl", [0.0, -1.0, float("inf"), float("nan"), 1e12])
async def test_a_ttl_that_is_not_positive_and_bounded_is_refused(store: TokenStore, ttl: float) -> None:
    with pytest.raises(BadTokenRequest, match="time to live"):
        await store.create("ci", ["read"], ttl)


# --- what verify refuses -----------------------------------------------------------------------


async def test_changing_any_single_character_invalidates_the_token(store: TokenStore) -> None:
    token = (await store.create("ci", ["read"], None)).token
    for i, char in enumerate(token):
        tampered = token[:i] + _other_char(char) + token[i + 1:]
        assert await store.verify(tampered) is None, f"position {i} of {len(token)}"


@pytest.mark.parametrize("text", ["", "lgw_", "lgw_abc", "lgw_abc.def.ghi", "Bearer lgw_x", "lgw_é.ü.ß",
                                  "lgw_" + "a" * 5000, "lgt_abc"])
async def test_malformed_input_is_refused_without_raising(store: TokenStore, text: str) -> None:
    assert await store.verify(text) is None


async def test_a_token_signed_with_another_key_is_refused(db: Database, clock: FakeClock) -> None:
    token = (await TokenStore(db, clock, ("someone-else",)).create("ci", ["read"], None)).token
    assert await TokenStore(db, clock, KEYS).verify(token) is None


async def test_a_correctly_signed_token_for_an_unknown_id_is_refused(store: TokenStore) -> None:
    forged = "lgw_" + URLSafeTimedSerializer(list(KEYS), salt=TOKEN_SALT).dumps({"id": 99, "s": ["admin"]})
    assert await store.verify(forged) is None


async def test_a_correctly_signed_token_whose_hash_is_not_stored_is_refused(store: TokenStore) -> None:
    created = await store.create("ci", ["read"], None)
    # What a key holder could mint for an existing id: the signature is good, the row does not know it.
    signer = URLSafeTimedSerializer(list(KEYS), salt=TOKEN_SALT)
    reminted = "lgw_" + signer.dumps({"id": created.id, "s": ["admin"]})
    assert await store.verify(reminted) is None


@pytest.mark.parametrize("payload", [[1], {"id": "1", "s": []}, {"id": True, "s": []}, {"id": 1, "s": "read"},
                                     {"id": 2**70, "s": []}])
async def test_a_signed_payload_of_the_wrong_shape_is_refused(store: TokenStore, payload: object) -> None:
    await store.create("ci", ["read"], None)
    token = "lgw_" + URLSafeTimedSerializer(list(KEYS), salt=TOKEN_SALT).dumps(payload)
    assert await store.verify(token) is None


async def test_a_token_is_refused_once_its_expiry_has_passed(store: TokenStore, clock: FakeClock) -> None:
    token = (await store.create("ci", ["read"], 3600)).token
    await clock.advance(3600)
    assert await store.verify(token) is not None
    await clock.advance(0.001)
    assert await store.verify(token) is None


# --- revocation --------------------------------------------------------------------------------


async def test_revocation_takes_effect_at_once_in_the_revoking_process(store: TokenStore) -> None:
    created = await store.create("ci", ["read"], None)
    assert await store.verify(created.token) is not None  # now cached
    await store.revoke(created.id)
    assert await store.verify(created.token) is None


async def test_revocation_by_another_process_applies_within_five_seconds(db: Database, tmp_path: Path,
                                                                          clock: FakeClock) -> None:
    other_db = await Database.open(db.path)  # a second process: its own connections, its own cache
    try:
        revoker, server = TokenStore(db, clock, KEYS), TokenStore(other_db, clock, KEYS)
        created = await revoker.create("ci", ["read"], None)
        assert await server.verify(created.token) is not None  # cached by the server
        await revoker.revoke(created.id)
        await clock.advance(5)
        assert await server.verify(created.token) is None
    finally:
        await other_db.close()


async def test_revoking_an_unknown_id_raises_unknown_token(store: TokenStore) -> None:
    with pytest.raises(UnknownToken, match="no token with id 42"):
        await store.revoke(42)


async def test_revoking_twice_keeps_the_first_revocation_time(store: TokenStore, clock: FakeClock) -> None:
    created = await store.create("ci", ["read"], None)
    first = await store.revoke(created.id)
    await clock.advance(10)
    assert (await store.revoke(created.id)).revoked_at == first.revoked_at == clock.now() - 10


async def test_list_shows_every_token_and_never_its_secret(store: TokenStore, clock: FakeClock) -> None:
    kept = await store.create("kept", ["read"], 60)
    gone = await store.create("gone", ["admin"], None)
    await store.revoke(gone.id)
    infos = await store.list()
    assert [(i.id, i.name, i.status(clock.now())) for i in infos] == [(kept.id, "kept", "active"),
                                                                      (gone.id, "gone", "revoked")]
    document = infos[0].to_json()
    assert set(document) == {"id", "name", "scopes", "created_at", "expires_at", "revoked_at",
                             "last_used_at", "legacy"}
    assert kept.token not in repr(infos) and kept.token not in str(document)


# --- rotation ----------------------------------------------------------------------------------


async def test_a_token_signed_with_the_old_key_verifies_after_rotation(db: Database,
                                                                       clock: FakeClock) -> None:
    token = (await TokenStore(db, clock, ("old",)).create("ci", ["read"], None)).token
    assert await TokenStore(db, clock, ("new", "old")).verify(token) is not None


async def test_after_rotation_new_tokens_are_signed_by_the_first_key(db: Database, clock: FakeClock) -> None:
    token = (await TokenStore(db, clock, ("new", "old")).create("ci", ["read"], None)).token
    assert await TokenStore(db, clock, ("new",)).verify(token) is not None
    assert await TokenStore(db, clock, ("old",)).verify(token) is None


# --- scopes ------------------------------------------------------------------------------------


def test_admin_implies_every_scope() -> None:
    admin = Principal(1, "ops", frozenset({"admin"}))
    assert all(admin.allows(scope) for scope in ("read", "sync", "admin"))


def test_read_and_sync_are_independent_of_each_other() -> None:
    reader, syncer = Principal(1, "r", frozenset({"read"})), Principal(2, "s", frozenset({"sync"}))
    assert (reader.allows("sync"), reader.allows("admin")) == (False, False)
    assert (syncer.allows("read"), syncer.allows("admin")) == (False, False)


def test_an_unknown_scope_is_never_allowed_even_to_admin() -> None:
    assert not Principal(1, "ops", frozenset({"admin"})).allows("write")


# --- last use ----------------------------------------------------------------------------------


async def test_last_used_at_is_written_at_most_once_a_minute(store: TokenStore, clock: FakeClock) -> None:
    created = await store.create("ci", ["read"], None)
    principal = await store.verify(created.token)
    assert principal is not None

    async def last_used() -> float | None:
        return (await store.list())[0].last_used_at

    first = clock.now()
    await store.touch(principal)
    await clock.advance(59)
    await store.touch(principal)
    assert await last_used() == first
    await clock.advance(1)
    await store.touch(principal)
    assert await last_used() == first + 60


# --- tickets -----------------------------------------------------------------------------------


async def test_a_ticket_verifies_to_its_tokens_principal_for_sixty_seconds(store: TokenStore,
                                                                            clock: FakeClock) -> None:
    created = await store.create("browser", ["read"], None)
    principal = await store.verify(created.token)
    assert principal is not None
    ticket, expires_at = await store.issue_ticket(principal)
    assert expires_at == clock.now() + 60
    assert created.token not in ticket
    await clock.advance(60)
    assert await store.verify_ticket(ticket) == principal
    await clock.advance(0.001)
    assert await store.verify_ticket(ticket) is None


async def test_a_tampered_ticket_is_refused(store: TokenStore) -> None:
    principal = await store.verify((await store.create("browser", ["read"], None)).token)
    assert principal is not None
    ticket, _ = await store.issue_ticket(principal)
    for i in range(len("lgt_"), len(ticket), 7):
        assert await store.verify_ticket(ticket[:i] + _other_char(ticket[i]) + ticket[i + 1:]) is None


async def test_a_ticket_of_a_since_revoked_token_is_refused(store: TokenStore) -> None:
    created = await store.create("browser", ["read"], None)
    principal = await store.verify(created.token)
    assert principal is not None
    ticket, _ = await store.issue_ticket(principal)
    await store.revoke(created.id)
    assert await store.verify_ticket(ticket) is None


async def test_a_ticket_is_not_a_token_and_a_token_is_not_a_ticket(store: TokenStore) -> None:
    created = await store.create("browser", ["read"], None)
    principal = await store.verify(created.token)
    assert principal is not None
    ticket, _ = await store.issue_ticket(principal)
    assert await store.verify(ticket) is None
    assert await store.verify(ticket.replace("lgt_", "lgw_", 1)) is None
    assert await store.verify_ticket(created.token) is None
    assert await store.verify_ticket(created.token.replace("lgw_", "lgt_", 1)) is None


async def test_a_ticket_forged_with_a_valid_signing_key_is_refused(store: TokenStore, clock: FakeClock) -> None:
    victim = await store.create("admin-bot", ["admin"], None)
    expires_at = clock.now() + 60
    signer = URLSafeSerializer(list(KEYS), salt=TICKET_SALT)
    without_binding = "lgt_" + signer.dumps({"id": victim.id, "s": ["admin"], "exp": expires_at})
    guessed_binding = "lgt_" + signer.dumps({"id": victim.id, "s": ["admin"], "exp": expires_at, "b": "0" * 32})
    assert await store.verify_ticket(without_binding) is None
    assert await store.verify_ticket(guessed_binding) is None


async def test_a_ticket_is_bound_to_its_own_token_not_just_its_id(store: TokenStore, db: Database) -> None:
    mine = await store.create("browser", ["read"], None)
    principal = await store.verify(mine.token)
    assert principal is not None
    ticket, _ = await store.issue_ticket(principal)
    # Another token now holds that id (the row replaced, as after a restore): the old ticket is not its.
    async with db.transaction() as conn:
        await conn.execute("UPDATE api_tokens SET secret_hash = ? WHERE id = ?", ("f" * 64, mine.id))
    assert await TokenStore(db, FakeClock(), KEYS).verify_ticket(ticket) is None


async def test_no_ticket_is_issued_for_a_token_whose_row_is_gone(store: TokenStore, db: Database) -> None:
    created = await store.create("browser", ["read"], None)
    principal = await store.verify(created.token)
    assert principal is not None
    async with db.transaction() as conn:
        await conn.execute("DELETE FROM api_tokens WHERE id = ?", (created.id,))
    with pytest.raises(UnknownToken):
        await TokenStore(db, FakeClock(), KEYS).issue_ticket(principal)


async def test_a_signed_ticket_without_an_expiry_is_refused(store: TokenStore) -> None:
    created = await store.create("browser", ["read"], None)
    signer = URLSafeSerializer(list(KEYS), salt=TICKET_SALT)
    unbounded = "lgt_" + signer.dumps({"id": created.id, "s": ["read"]})
    assert await store.verify_ticket(unbounded) is None


# --- signing keys ------------------------------------------------------------------------------


def _config(data_dir: Path, keys: tuple[str, ...] = ()) -> Config:
    return Config(gateway=GatewayConfig(data_dir=data_dir), auth=AuthConfig(signing_keys=keys))


def test_configured_signing_keys_are_used_in_order_and_no_key_file_is_made(tmp_path: Path) -> None:
    assert signing_keys(_config(tmp_path, ("new", "old"))) == ("new", "old")
    assert not (tmp_path / KEY_FILE_NAME).exists()


def test_without_configured_keys_a_private_key_file_is_made_once_and_reused(tmp_path: Path) -> None:
    first = signing_keys(_config(tmp_path))
    assert signing_keys(_config(tmp_path)) == first
    assert len(first[0]) >= 43  # 32 random bytes, urlsafe base64
    assert stat.S_IMODE((tmp_path / KEY_FILE_NAME).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE_NAME]


def test_a_key_file_made_by_another_process_meanwhile_wins_the_race(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / KEY_FILE_NAME

    def lose_the_race(source: Path, target: Path) -> None:
        Path(target).write_text("theirs-0123456789abcdef0123456789abcdef\n")
        raise FileExistsError(target)

    monkeypatch.setattr(os, "link", lose_the_race)
    assert signing_keys(_config(tmp_path)) == ("theirs-0123456789abcdef0123456789abcdef",)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_short_key_file_is_a_config_error_that_names_it_and_not_the_key(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).write_text("short-key\n")
    with pytest.raises(ConfigError, match=f"{KEY_FILE_NAME} is 9 bytes long") as caught:
        signing_keys(_config(tmp_path))
    assert "short-key" not in str(caught.value)


def test_an_empty_key_file_is_a_config_error_that_names_it(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAME).write_text("\n")
    with pytest.raises(ConfigError, match=KEY_FILE_NAME):
        signing_keys(_config(tmp_path))
