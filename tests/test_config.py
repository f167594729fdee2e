"""Specification of configuration loading: defaults, TOML, env overrides, secrets and every error."""

from __future__ import annotations

import base64
import math
from pathlib import Path

import pytest

from sync.config import (
    Config,
    ConfigError,
    GitLabConfig,
    config_warnings,
    ensure_data_dir,
    load_config,
    parse_duration,
)

SIGNING_TOKEN = "whsec_" + base64.b64encode(b"k" * 24).decode()
OTHER_SIGNING_TOKEN = "whsec_" + base64.b64encode(b"z" * 32).decode()


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str | None = None, **env: str) -> Config:
    """Load `text` as the config file (or no file) with exactly `env` as the environment."""
    path = write(tmp_path, text) if text is not None else None
    return load_config(path, env=env)


def error(tmp_path: Path, text: str | None = None, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **env)
    return str(info.value)


# --- defaults ----------------------------------------------------------------------------------


def test_no_file_and_no_env_gives_the_embedded_defaults() -> None:
    config = load_config(None, env={})
    assert config == Config()
    assert config.source is None
    assert config.gateway.host == "127.0.0.1"
    assert config.gateway.port == 8080
    assert config.gateway.log_level == "info"
    assert config.ratelimit.storage == "memory://"
    assert config.ratelimit.api == "600/minute"
    assert config.ratelimit.webhook == "6000/minute"
    assert config.ratelimit.fail_open is True
    assert config.redis.url is None
    assert config.embeddings.model == "nomic-embed-text"
    assert config.embeddings.batch_size == 32


def test_defaults_leave_gitlab_disabled() -> None:
    gitlab = load_config(None, env={}).gitlab
    assert gitlab == GitLabConfig()
    assert gitlab.enabled is False
    assert gitlab.concurrency == 8
    assert gitlab.timeout == 30.0


def test_default_data_dir_is_under_the_home_directory_and_holds_the_database() -> None:
    config = load_config(None, env={})
    assert config.gateway.data_dir == Path.home() / ".local/share/lore-gateway"
    assert config.db_path == config.gateway.data_dir / "lore.db"


def test_default_durations_are_seconds() -> None:
    config = load_config(None, env={})
    sync = config.sync
    assert (sync.interval, sync.debounce, sync.max_wait) == (1800.0, 2.0, 30.0)
    assert (sync.backoff_base, sync.backoff_max, sync.stale_lock) == (60.0, 14400.0, 600.0)
    assert sync.profile == "balanced"
    assert config.webhook.retention == 7 * 86400.0
    assert config.webhook.max_body_bytes == 26214400  # GitLab's own limit: 25 MB
    assert config.webhook.body_timeout == 30.0  # above GitLab's own 10 s delivery timeout (docs/webhooks.md)
    assert config.experts.mr_author_half_life == 180 * 86400.0
    assert config.experts.diff_note_half_life == 90 * 86400.0
    assert config.experts.review_half_life == 90 * 86400.0
    assert config.experts.stale_after == 180 * 86400.0
    assert (config.experts.mr_author_weight, config.experts.diff_note_weight) == (1.0, 0.5)
    assert config.experts.review_weight == 0.7


def test_an_empty_file_gives_the_defaults_and_records_its_source(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.sync == Config().sync
    assert config.source == tmp_path / "config.toml"


# --- where the file comes from -----------------------------------------------------------------


def test_config_path_comes_from_LORE_GATEWAY_CONFIG_when_none_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\nport = 9000\n")
    config = load_config(None, env={"LORE_GATEWAY_CONFIG": str(path)})
    assert config.gateway.port == 9000
    assert config.source == path


def test_an_explicit_path_wins_over_LORE_GATEWAY_CONFIG(tmp_path: Path) -> None:
    chosen = write(tmp_path, "[gateway]\nport = 9001\n", "chosen.toml")
    other = write(tmp_path, "[gateway]\nport = 9002\n", "other.toml")
    config = load_config(chosen, env={"LORE_GATEWAY_CONFIG": str(other)})
    assert config.gateway.port == 9001


def test_an_empty_LORE_GATEWAY_CONFIG_means_no_file() -> None:
    assert load_config(None, env={"LORE_GATEWAY_CONFIG": ""}).source is None


def test_config_path_accepts_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, "[gateway]\nport = 9003\n")
    assert load_config(str(path), env={}).gateway.port == 9003


# --- TOML --------------------------------------------------------------------------------------

FULL = """
[gitlab]
url = "https://gitlab.example.com/"
token_file = "{token_file}"
projects = ["group/project", "other/thing", 42]
concurrency = 4
timeout = "10s"

[gateway]
host = "0.0.0.0"
port = 8181
data_dir = "{data_dir}"
log_level = "DEBUG"

[webhook]
secrets = ["s3cret-one", "s3cret-two"]
signing_tokens = ["{signing_token}"]
max_body_bytes = 2048
body_timeout = "5s"
retention = "3d"

[sync]
interval = "15m"
debounce = "500ms"
max_wait = "1m"
profile = "fast"
backoff_base = "30s"
backoff_max = "2h"
stale_lock = "5m"

[auth]
signing_keys = ["key-new-0123456789abcdef0123456789abcdef", "key-old-0123456789abcdef0123456789abcdef"]

[ratelimit]
storage = "redis://127.0.0.1:6379/1"
api = "100/minute"
webhook = "10/second"
fail_open = false

[redis]
url = "rediss://cache.example.com:6380/0"

[experts]
mr_author_weight = 2
mr_author_half_life = "30d"
diff_note_weight = 0.25
diff_note_half_life = "10d"
review_weight = 1.5
review_half_life = "20d"
stale_after = "365d"

[embeddings]
url = "http://127.0.0.1:11434"
model = "all-minilm"
batch_size = 8
"""


@pytest.fixture
def full_config(tmp_path: Path) -> Config:
    token_file = write(tmp_path, "glpat-abc123\n", "token")
    text = FULL.format(token_file=token_file, data_dir=tmp_path / "data", signing_token=SIGNING_TOKEN)
    return load(tmp_path, text)


def test_a_full_file_sets_every_gitlab_key(full_config: Config) -> None:
    gitlab = full_config.gitlab
    assert gitlab.url == "https://gitlab.example.com"
    assert gitlab.token == "glpat-abc123"
    assert gitlab.projects == ("group/project", "other/thing", "42")
    assert (gitlab.concurrency, gitlab.timeout) == (4, 10.0)
    assert gitlab.enabled is True


def test_a_full_file_sets_every_gateway_and_webhook_key(full_config: Config, tmp_path: Path) -> None:
    assert full_config.gateway.host == "0.0.0.0"
    assert full_config.gateway.port == 8181
    assert full_config.gateway.data_dir == tmp_path / "data"
    assert full_config.gateway.log_level == "debug"
    assert full_config.db_path == tmp_path / "data" / "lore.db"
    assert full_config.webhook.secrets == ("s3cret-one", "s3cret-two")
    assert full_config.webhook.signing_tokens == (SIGNING_TOKEN,)
    assert full_config.webhook.max_body_bytes == 2048
    assert full_config.webhook.body_timeout == 5.0
    assert full_config.webhook.retention == 3 * 86400.0


def test_a_full_file_sets_every_sync_key(full_config: Config) -> None:
    sync = full_config.sync
    assert (sync.interval, sync.debounce, sync.max_wait, sync.profile) == (900.0, 0.5, 60.0, "fast")
    assert (sync.backoff_base, sync.backoff_max, sync.stale_lock) == (30.0, 7200.0, 300.0)


def test_a_full_file_sets_auth_ratelimit_redis_experts_and_embeddings(full_config: Config) -> None:
    assert full_config.auth.signing_keys == ("key-new-0123456789abcdef0123456789abcdef",
                                             "key-old-0123456789abcdef0123456789abcdef")
    assert full_config.ratelimit.storage == "redis://127.0.0.1:6379/1"
    assert (full_config.ratelimit.api, full_config.ratelimit.webhook) == ("100/minute", "10/second")
    assert full_config.ratelimit.fail_open is False
    assert full_config.redis.url == "rediss://cache.example.com:6380/0"
    assert full_config.experts.mr_author_weight == 2.0
    assert isinstance(full_config.experts.mr_author_weight, float)
    assert full_config.experts.mr_author_half_life == 30 * 86400.0
    assert full_config.experts.stale_after == 365 * 86400.0
    assert full_config.embeddings.url == "http://127.0.0.1:11434"
    assert (full_config.embeddings.model, full_config.embeddings.batch_size) == ("all-minilm", 8)


def test_data_dir_expands_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load(tmp_path, '[gateway]\ndata_dir = "~/lore"\n')
    assert config.gateway.data_dir == tmp_path / "lore"


def test_durations_may_be_bare_numbers_of_seconds_in_toml(tmp_path: Path) -> None:
    config = load(tmp_path, "[sync]\ninterval = 90\ndebounce = 0.25\n")
    assert (config.sync.interval, config.sync.debounce) == (90.0, 0.25)


def test_duplicate_projects_are_dropped_keeping_the_first_order(tmp_path: Path) -> None:
    config = load(tmp_path, '[gitlab]\nprojects = ["b/x", "a/y", "b/x", 7, "7"]\n')
    assert config.gitlab.projects == ("b/x", "a/y", "7")


def test_nested_group_paths_are_valid_projects(tmp_path: Path) -> None:
    config = load(tmp_path, '[gitlab]\nprojects = ["top/sub/deep-er/my.project_x"]\n')
    assert config.gitlab.projects == ("top/sub/deep-er/my.project_x",)


def test_zero_debounce_is_allowed(tmp_path: Path) -> None:
    assert load(tmp_path, '[sync]\ndebounce = "0s"\n').sync.debounce == 0.0


def test_inline_gitlab_token_is_accepted(tmp_path: Path) -> None:
    config = load(tmp_path, '[gitlab]\nurl = "https://gl.example"\ntoken = "glpat-inline"\n')
    assert config.gitlab.token == "glpat-inline"
    assert config.gitlab.enabled is True


def test_gitlab_is_not_enabled_with_a_url_but_no_token(tmp_path: Path) -> None:
    assert load(tmp_path, '[gitlab]\nurl = "https://gl.example"\n').gitlab.enabled is False


# --- env overrides -----------------------------------------------------------------------------


def test_env_overrides_an_integer_from_the_file(tmp_path: Path) -> None:
    config = load(tmp_path, "[gateway]\nport = 9000\n", LORE_GATEWAY_GATEWAY_PORT="9100")
    assert config.gateway.port == 9100


def test_env_list_is_comma_separated_with_blanks_ignored(tmp_path: Path) -> None:
    config = load(tmp_path, LORE_GATEWAY_GITLAB_PROJECTS=" group/a , group/b,,12 ")
    assert config.gitlab.projects == ("group/a", "group/b", "12")


def test_env_overrides_a_duration_with_an_underscored_key(tmp_path: Path) -> None:
    config = load(tmp_path, '[sync]\nmax_wait = "1m"\n', LORE_GATEWAY_SYNC_MAX_WAIT="45s")
    assert config.sync.max_wait == 45.0


def test_env_sets_data_dir_of_the_gateway_section(tmp_path: Path) -> None:
    config = load(tmp_path, LORE_GATEWAY_GATEWAY_DATA_DIR=str(tmp_path / "d"))
    assert config.gateway.data_dir == tmp_path / "d"


def test_env_sets_webhook_signing_tokens_as_a_list(tmp_path: Path) -> None:
    value = f"{SIGNING_TOKEN},{OTHER_SIGNING_TOKEN}"
    config = load(tmp_path, LORE_GATEWAY_WEBHOOK_SIGNING_TOKENS=value)
    assert config.webhook.signing_tokens == (SIGNING_TOKEN, OTHER_SIGNING_TOKEN)


@pytest.mark.parametrize(("text", "expected"), [("false", False), ("0", False), ("No", False), ("on", True)])
def test_env_booleans_are_parsed_from_words(tmp_path: Path, text: str, expected: bool) -> None:
    assert load(tmp_path, LORE_GATEWAY_RATELIMIT_FAIL_OPEN=text).ratelimit.fail_open is expected


def test_env_floats_are_parsed(tmp_path: Path) -> None:
    assert load(tmp_path, LORE_GATEWAY_EXPERTS_REVIEW_WEIGHT="0.9").experts.review_weight == 0.9


def test_env_gitlab_token_sets_the_token_and_enables_sync(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        LORE_GATEWAY_GITLAB_URL="https://gitlab.example.com",
        LORE_GATEWAY_GITLAB_TOKEN=" glpat-from-env\n",
    )
    assert config.gitlab.token == "glpat-from-env"
    assert config.gitlab.enabled is True


def test_env_token_overrides_a_token_file_in_the_file_without_reading_it(tmp_path: Path) -> None:
    text = f'[gitlab]\ntoken_file = "{tmp_path / "absent"}"\n'
    config = load(tmp_path, text, LORE_GATEWAY_GITLAB_TOKEN="glpat-env")
    assert config.gitlab.token == "glpat-env"


def test_env_token_file_overrides_an_inline_token_in_the_file(tmp_path: Path) -> None:
    token_file = write(tmp_path, "glpat-file", "token")
    config = load(
        tmp_path, '[gitlab]\ntoken = "glpat-inline"\n', LORE_GATEWAY_GITLAB_TOKEN_FILE=str(token_file)
    )
    assert config.gitlab.token == "glpat-file"


def test_an_empty_env_var_counts_as_unset(tmp_path: Path) -> None:
    config = load(tmp_path, "[gateway]\nport = 9000\n", LORE_GATEWAY_GATEWAY_PORT="")
    assert config.gateway.port == 9000


def test_env_vars_without_the_prefix_are_ignored(tmp_path: Path) -> None:
    config = load(tmp_path, PATH="/bin", LORE_GATEWAYX_PORT="1", lore_gateway_gateway_port="1")
    assert config.gateway.port == 8080


def test_a_bad_env_integer_names_the_key_and_the_variable(tmp_path: Path) -> None:
    message = error(tmp_path, LORE_GATEWAY_GATEWAY_PORT="80x")
    assert message == "gateway.port (env LORE_GATEWAY_GATEWAY_PORT): expected an integer, got '80x'"


def test_a_bad_env_boolean_is_an_error(tmp_path: Path) -> None:
    assert "ratelimit.fail_open" in error(tmp_path, LORE_GATEWAY_RATELIMIT_FAIL_OPEN="maybe")


def test_an_unknown_env_var_with_the_prefix_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    message = error(tmp_path, LORE_GATEWAY_SYNC_INTERVALL="5m")
    assert message.startswith("unknown setting LORE_GATEWAY_SYNC_INTERVALL")
    assert "did you mean LORE_GATEWAY_SYNC_INTERVAL?" in message


def test_an_unknown_env_var_is_an_error_even_when_empty(tmp_path: Path) -> None:
    assert "LORE_GATEWAY_NOPE" in error(tmp_path, LORE_GATEWAY_NOPE="")


def test_an_unknown_env_var_never_echoes_its_value(tmp_path: Path) -> None:
    assert "hunter2" not in error(tmp_path, LORE_GATEWAY_GITLAB_TOKN="hunter2")


# --- *_file secrets ----------------------------------------------------------------------------


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    token_file = write(tmp_path, "\n  glpat-xyz  \n\n", "token")
    config = load(tmp_path, f'[gitlab]\ntoken_file = "{token_file}"\n')
    assert config.gitlab.token == "glpat-xyz"


def test_token_file_path_expands_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path, "glpat-home", "token")
    assert load(tmp_path, '[gitlab]\ntoken_file = "~/token"\n').gitlab.token == "glpat-home"


def test_secrets_file_holds_one_secret_per_non_empty_line(tmp_path: Path) -> None:
    secrets = write(tmp_path, "first\n\n  second  \n", "secrets")
    config = load(tmp_path, f'[webhook]\nsecrets_file = "{secrets}"\n')
    assert config.webhook.secrets == ("first", "second")


def test_signing_tokens_file_is_read_and_validated(tmp_path: Path) -> None:
    tokens = write(tmp_path, f"{SIGNING_TOKEN}\n{OTHER_SIGNING_TOKEN}\n", "tokens")
    config = load(tmp_path, f'[webhook]\nsigning_tokens_file = "{tokens}"\n')
    assert config.webhook.signing_tokens == (SIGNING_TOKEN, OTHER_SIGNING_TOKEN)


def test_a_signing_key_shorter_than_32_bytes_is_an_error_naming_it_but_not_showing_it(tmp_path: Path) -> None:
    message = error(tmp_path, f'[auth]\nsigning_keys = ["{"a" * 32}", "hunter2-key"]\n')
    assert message.startswith("auth.signing_keys: entry 2 is 11 bytes long") and "hunter2" not in message
    from_env = error(tmp_path, LORE_GATEWAY_AUTH_SIGNING_KEYS="tiny")
    assert "LORE_GATEWAY_AUTH_SIGNING_KEYS" in from_env and "tiny" not in from_env
    assert load(tmp_path, f'[auth]\nsigning_keys = ["{"a" * 32}"]\n').auth.signing_keys == ("a" * 32,)


def test_short_webhook_secrets_and_signing_keys_are_warned_about_not_refused(tmp_path: Path) -> None:
    config = load(tmp_path, f'[webhook]\nsecrets = ["short-hook", "{"s" * 32}"]\n'
                            f'signing_tokens = ["{SIGNING_TOKEN}", "{OTHER_SIGNING_TOKEN}"]\n')
    warnings = config_warnings(config)
    assert len(warnings) == 2
    assert warnings[0].startswith("webhook.secrets: entry 1 is 10 bytes long")
    assert warnings[1].startswith("webhook.signing_tokens: entry 1 holds a 24-byte key")
    assert not any("short-hook" in w or SIGNING_TOKEN in w for w in warnings)
    assert config_warnings(load(tmp_path, f'[webhook]\nsecrets = ["{"s" * 32}"]\n')) == ()


def test_signing_keys_file_keeps_the_order_of_its_lines(tmp_path: Path) -> None:
    newest, older = "newest-" + "n" * 32, "older-" + "o" * 32
    keys = write(tmp_path, f"{newest}\n{older}\n", "keys")
    assert load(tmp_path, f'[auth]\nsigning_keys_file = "{keys}"\n').auth.signing_keys == (newest, older)


def test_env_can_name_a_secrets_file(tmp_path: Path) -> None:
    secrets = write(tmp_path, "from-file\n", "secrets")
    config = load(tmp_path, LORE_GATEWAY_WEBHOOK_SECRETS_FILE=str(secrets))
    assert config.webhook.secrets == ("from-file",)


def test_a_missing_token_file_says_it_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "x"
    message = error(tmp_path, f'[gitlab]\ntoken_file = "{missing}"\n')
    assert message == f"gitlab.token_file: cannot read {missing}: No such file or directory"


def test_a_token_file_that_is_a_directory_cannot_be_read(tmp_path: Path) -> None:
    message = error(tmp_path, f'[gitlab]\ntoken_file = "{tmp_path}"\n')
    assert message.startswith(f"gitlab.token_file: cannot read {tmp_path}: ")


def test_an_empty_token_file_is_an_error(tmp_path: Path) -> None:
    token_file = write(tmp_path, "\n", "token")
    assert error(tmp_path, f'[gitlab]\ntoken_file = "{token_file}"\n').startswith("gitlab.token_file:")


def test_a_token_file_with_two_tokens_is_an_error_that_echoes_neither(tmp_path: Path) -> None:
    token_file = write(tmp_path, "glpat-one\nglpat-two\n", "token")
    message = error(tmp_path, f'[gitlab]\ntoken_file = "{token_file}"\n')
    assert message.startswith("gitlab.token_file:")
    assert "glpat" not in message


def test_an_empty_secrets_file_is_an_error(tmp_path: Path) -> None:
    secrets = write(tmp_path, "\n \n", "secrets")
    assert error(tmp_path, f'[webhook]\nsecrets_file = "{secrets}"\n').startswith("webhook.secrets_file:")


def test_a_secrets_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.write_bytes(b"\xff\xfe\xfa")
    assert "not UTF-8" in error(tmp_path, f'[webhook]\nsecrets_file = "{secrets}"\n')


def test_setting_a_secret_both_inline_and_as_a_file_is_an_error(tmp_path: Path) -> None:
    token_file = write(tmp_path, "glpat-file", "token")
    message = error(tmp_path, f'[gitlab]\ntoken = "glpat-inline"\ntoken_file = "{token_file}"\n')
    assert "gitlab.token" in message and "gitlab.token_file" in message
    assert "glpat" not in message


# --- errors in the file ------------------------------------------------------------------------


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, env={})
    assert str(info.value) == f"cannot read config file {missing}: No such file or directory"


def test_invalid_toml_reports_the_line(tmp_path: Path) -> None:
    message = error(tmp_path, '[gateway]\nport = 8080\nhost = "unterminated\n')
    assert "invalid TOML" in message
    assert "line 3" in message


def test_a_config_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[gateway]\nhost = "\xff"\n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path, env={})


def test_an_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    message = error(tmp_path, '[gitlab]\ntokne = "x"\n')
    assert message == "unknown key gitlab.tokne (did you mean gitlab.token?)"


def test_an_unknown_section_is_named(tmp_path: Path) -> None:
    assert error(tmp_path, "[gitlba]\nurl = 1\n").startswith("unknown section [gitlba]")


def test_a_top_level_key_says_which_section_it_belongs_in(tmp_path: Path) -> None:
    assert error(tmp_path, "port = 8080\n") == "unknown key port: keys belong in a section, here [gateway]"


def test_a_section_that_is_not_a_table_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, 'gitlab = "https://x"\n').startswith("gitlab: expected a table")


def test_a_nested_table_inside_a_section_is_an_unknown_key(tmp_path: Path) -> None:
    assert error(tmp_path, "[sync.extra]\nx = 1\n").startswith("unknown key sync.extra")


def test_a_string_where_an_integer_belongs_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, "[gateway]\nport = 'abc'\n") == "gateway.port: expected an integer, got 'abc'"


def test_a_boolean_is_not_an_integer(tmp_path: Path) -> None:
    assert error(tmp_path, "[gateway]\nport = true\n").startswith("gateway.port: expected an integer")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("gateway", "port", 0),
        ("gateway", "port", 65536),
        ("gitlab", "concurrency", 0),
        ("gitlab", "concurrency", 65),
        ("webhook", "max_body_bytes", 0),
        ("embeddings", "batch_size", 0),
    ],
)
def test_out_of_range_integers_are_errors(tmp_path: Path, section: str, key: str, value: int) -> None:
    message = error(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert message.startswith(f"{section}.{key}: {value} is out of range")


@pytest.mark.parametrize(("key", "value"), [("port", 1), ("port", 65535)])
def test_port_range_bounds_are_inclusive(tmp_path: Path, key: str, value: int) -> None:
    assert load(tmp_path, f"[gateway]\n{key} = {value}\n").gateway.port == value


def test_a_bad_duration_names_the_key_and_shows_the_accepted_forms(tmp_path: Path) -> None:
    message = error(tmp_path, '[sync]\ninterval = "30x"\n')
    assert message == "sync.interval: '30x' is not a duration (use e.g. 500ms, 2s, 30m, 12h, 30d)"


def test_a_zero_body_timeout_is_an_error(tmp_path: Path) -> None:
    """Zero would refuse every body that is not in the first packet, not switch the deadline off."""
    message = error(tmp_path, '[webhook]\nbody_timeout = "0s"\n')
    assert message.startswith("webhook.body_timeout: must be longer than zero")


def test_a_zero_interval_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, '[sync]\ninterval = "0s"\n').startswith("sync.interval: must be longer than zero")


def test_backoff_max_shorter_than_backoff_base_is_an_error(tmp_path: Path) -> None:
    message = error(tmp_path, '[sync]\nbackoff_base = "1h"\nbackoff_max = "10m"\n')
    assert message.startswith("sync.backoff_max:")


def test_an_unknown_profile_is_an_error_listing_the_choices(tmp_path: Path) -> None:
    message = error(tmp_path, '[sync]\nprofile = "turbo"\n')
    assert message == "sync.profile: 'turbo' is not one of fast, balanced, full"


def test_an_unknown_log_level_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, '[gateway]\nlog_level = "loud"\n').startswith("gateway.log_level:")


def test_an_empty_string_is_an_error_not_a_silent_default(tmp_path: Path) -> None:
    assert error(tmp_path, '[gateway]\nhost = ""\n').startswith("gateway.host: must not be empty")


@pytest.mark.parametrize(
    "url", ["gitlab.example.com", "ftp://gitlab.example.com", "https://", "https:///path"]
)
def test_a_gitlab_url_needs_an_http_scheme_and_a_host(tmp_path: Path, url: str) -> None:
    message = error(tmp_path, f'[gitlab]\nurl = "{url}"\n')
    assert message.startswith("gitlab.url:")
    assert "http:// or https://" in message


def test_a_gitlab_url_with_a_bad_port_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, '[gitlab]\nurl = "https://gl.example:99999"\n').startswith("gitlab.url:")


def test_a_gitlab_url_with_credentials_is_rejected_without_echoing_them(tmp_path: Path) -> None:
    message = error(tmp_path, '[gitlab]\nurl = "https://root:hunter2@gl.example"\n')
    assert message.startswith("gitlab.url: must not contain credentials")
    assert "hunter2" not in message


def test_an_embeddings_url_is_validated_like_the_gitlab_url(tmp_path: Path) -> None:
    assert error(tmp_path, '[embeddings]\nurl = "localhost:11434"\n').startswith("embeddings.url:")


@pytest.mark.parametrize("rate", ["600/minit", "0/minute", "10/second;5/minute", ""])
def test_a_bad_rate_limit_is_an_error(tmp_path: Path, rate: str) -> None:
    assert error(tmp_path, f'[ratelimit]\napi = "{rate}"\n').startswith("ratelimit.api:")


def test_a_bad_webhook_rate_limit_from_env_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, LORE_GATEWAY_RATELIMIT_WEBHOOK="lots").startswith("ratelimit.webhook (env")


@pytest.mark.parametrize("storage", ["memcached://x", "redis:/x", "postgres://db"])
def test_rate_limit_storage_must_be_memory_or_redis(tmp_path: Path, storage: str) -> None:
    message = error(tmp_path, f'[ratelimit]\nstorage = "{storage}"\n')
    assert message == "ratelimit.storage: must start with memory:// or redis:// or rediss://"


def test_redis_url_must_be_redis_or_rediss(tmp_path: Path) -> None:
    message = error(tmp_path, '[redis]\nurl = "http://:pw-xyz@cache:6379"\n')
    assert message.startswith("redis.url: must start with redis://")
    assert "pw-xyz" not in message


def test_a_non_boolean_fail_open_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, '[ratelimit]\nfail_open = "yes"\n').startswith(
        "ratelimit.fail_open: expected true"
    )


def test_a_negative_expert_weight_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, "[experts]\nreview_weight = -1\n").startswith("experts.review_weight:")


def test_a_non_finite_expert_weight_is_an_error(tmp_path: Path) -> None:
    assert error(tmp_path, "[experts]\nreview_weight = nan\n").startswith("experts.review_weight:")


def test_projects_must_be_a_list(tmp_path: Path) -> None:
    message = error(tmp_path, '[gitlab]\nprojects = "group/project"\n')
    assert message.startswith("gitlab.projects: expected a list")


@pytest.mark.parametrize("project", ['"noslash"', '"https://gl.example/g/p"', "true", '"a b/c"', "-3"])
def test_a_project_that_is_neither_a_path_nor_an_id_is_an_error(tmp_path: Path, project: str) -> None:
    message = error(tmp_path, f"[gitlab]\nprojects = [{project}]\n")
    assert message.startswith("gitlab.projects:")
    assert "is not a project path" in message


def test_a_signing_token_without_the_whsec_prefix_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    raw = base64.b64encode(b"secret-material").decode()
    message = error(tmp_path, f'[webhook]\nsigning_tokens = ["{SIGNING_TOKEN}", "{raw}"]\n')
    assert message.startswith("webhook.signing_tokens: entry 2 is not a signing token")
    assert raw not in message


@pytest.mark.parametrize("token", ["whsec_not*base64!", "whsec_abc"])
def test_a_signing_token_with_bad_base64_is_rejected_without_echoing_it(tmp_path: Path, token: str) -> None:
    message = error(tmp_path, f'[webhook]\nsigning_tokens = ["{token}"]\n')
    assert message.startswith("webhook.signing_tokens: entry 1 is not a signing token")
    assert token not in message


def test_a_signing_token_with_an_empty_key_is_rejected(tmp_path: Path) -> None:
    message = error(tmp_path, '[webhook]\nsigning_tokens = ["whsec_"]\n')
    assert message.startswith("webhook.signing_tokens: entry 1 is not a signing token")


def test_a_bad_signing_token_in_a_file_names_the_file_key(tmp_path: Path) -> None:
    tokens = write(tmp_path, "whsec_???\n", "tokens")
    message = error(tmp_path, f'[webhook]\nsigning_tokens_file = "{tokens}"\n')
    assert message.startswith("webhook.signing_tokens_file: entry 1")
    assert "???" not in message


# --- secrets never leak ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '[webhook]\nsecrets = "hunter2"\n',
        '[webhook]\nsecrets = ["ok", 12345678]\n',
        "[gitlab]\ntoken = 12345678\n",
        '[auth]\nsigning_keys = "hunter2"\n',
    ],
)
def test_type_errors_on_secret_keys_do_not_echo_the_value(tmp_path: Path, text: str) -> None:
    message = error(tmp_path, text)
    assert "hunter2" not in message and "12345678" not in message


SECRETS = ("glpat-SECRET1", "hook-SECRET2", "key-SECRET3-0123456789abcdef0123456789abcdef", "redispw-SECRET4")


@pytest.fixture
def secret_config(tmp_path: Path) -> Config:
    return load(
        tmp_path,
        f"""
[gitlab]
url = "https://gl.example"
token = "{SECRETS[0]}"
[webhook]
secrets = ["{SECRETS[1]}"]
signing_tokens = ["{SIGNING_TOKEN}"]
[auth]
signing_keys = ["{SECRETS[2]}"]
[ratelimit]
storage = "redis://:{SECRETS[3]}@cache:6379/0"
[redis]
url = "redis://user:{SECRETS[3]}@cache:6379/0"
""",
    )


def test_repr_of_a_config_shows_no_secret(secret_config: Config) -> None:
    text = repr(secret_config)
    for secret in (*SECRETS, SIGNING_TOKEN):
        assert secret not in text
    assert "cache:6379" in text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("30m", 1800.0),
        ("12h", 43200.0),
        ("30d", 2592000.0),
        ("1.5h", 5400.0),
        (" 10 s ", 10.0),
        ("0s", 0.0),
        ("45", 45.0),
        (90, 90.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration_accepts(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["30x", "", "s", "-5s", "1h30m", "5M", "1e3s", ".5s", True, -1, math.nan, math.inf, 10**400, None, [1]],
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ConfigError, match="is not a duration"):
        parse_duration(text)  # type: ignore[arg-type]


def test_config_error_is_a_value_error_so_argparse_reports_it() -> None:
    with pytest.raises(ValueError):
        parse_duration("soon")


# --- ensure_data_dir ---------------------------------------------------------------------------


def test_ensure_data_dir_creates_missing_parents_and_leaves_nothing_behind(tmp_path: Path) -> None:
    config = load(tmp_path, LORE_GATEWAY_GATEWAY_DATA_DIR=str(tmp_path / "a" / "b"))
    assert ensure_data_dir(config) == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_ensure_data_dir_accepts_an_existing_directory(tmp_path: Path) -> None:
    config = load(tmp_path, LORE_GATEWAY_GATEWAY_DATA_DIR=str(tmp_path))
    assert ensure_data_dir(config) == tmp_path


def test_ensure_data_dir_under_a_file_is_not_writable(tmp_path: Path) -> None:
    blocker = write(tmp_path, "", "blocker")
    config = load(tmp_path, LORE_GATEWAY_GATEWAY_DATA_DIR=str(blocker / "data"))
    with pytest.raises(ConfigError) as info:
        ensure_data_dir(config)
    assert str(info.value).startswith(f"gateway.data_dir: {blocker / 'data'} is not writable: ")


def test_ensure_data_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    blocker = write(tmp_path, "", "blocker")
    config = load(tmp_path, LORE_GATEWAY_GATEWAY_DATA_DIR=str(blocker))
    with pytest.raises(ConfigError, match="is not a directory"):
        ensure_data_dir(config)


def test_setting_a_secret_and_its_file_both_in_env_is_an_error(tmp_path: Path) -> None:
    message = error(tmp_path, LORE_GATEWAY_GITLAB_TOKEN="glpat-env", LORE_GATEWAY_GITLAB_TOKEN_FILE="/x")
    assert message.endswith("set gitlab.token or gitlab.token_file, not both")
    assert "glpat" not in message


def test_a_redis_url_with_a_bad_port_is_an_error_that_hides_the_password(tmp_path: Path) -> None:
    message = error(tmp_path, LORE_GATEWAY_REDIS_URL="redis://:pw-xyz@cache:99999/0")
    assert message == "redis.url (env LORE_GATEWAY_REDIS_URL): the URL has an invalid port"


def test_webhook_fsync_is_off_by_default_and_set_from_toml_or_env(tmp_path: Path) -> None:
    assert load(tmp_path).webhook.fsync is False
    assert load(tmp_path, "[webhook]\nfsync = true\n").webhook.fsync is True
    assert load(tmp_path, LORE_GATEWAY_WEBHOOK_FSYNC="yes").webhook.fsync is True


def test_requests_per_minute_is_a_budget_or_zero_for_none(tmp_path: Path) -> None:
    assert load_config(None, env={}).gitlab.requests_per_minute == 0
    assert load(tmp_path, LORE_GATEWAY_GITLAB_REQUESTS_PER_MINUTE="100").gitlab.requests_per_minute == 100
    assert "out of range" in error(tmp_path, LORE_GATEWAY_GITLAB_REQUESTS_PER_MINUTE="-1")


def test_changes_retention_defaults_to_30_days_and_takes_a_duration(tmp_path: Path) -> None:
    assert load_config(None, env={}).changes.retention == 30 * 86400.0
    assert load_config(None, env={"LORE_GATEWAY_CHANGES_RETENTION": "12h"}).changes.retention == 12 * 3600.0
    with pytest.raises(ConfigError, match=r"changes\.retention"):
        load_config(None, env={"LORE_GATEWAY_CHANGES_RETENTION": "soon"})
