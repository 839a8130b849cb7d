"""Every SANDBOXER_* setting is read through one typed reader that names it when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxer import envvars
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput


@pytest.mark.parametrize(("read", "name", "bad"), [
    (envvars.local_capacity, "SANDBOXER_LOCAL_CAPACITY", "abc"),
    (envvars.local_capacity, "SANDBOXER_LOCAL_CAPACITY", "0"),
    (envvars.local_capacity, "SANDBOXER_LOCAL_CAPACITY", "1e3"),
    (envvars.local_idle_exit, "SANDBOXER_LOCAL_IDLE_EXIT", "abc"),
    (envvars.local_idle_exit, "SANDBOXER_LOCAL_IDLE_EXIT", "nan"),
    (envvars.local_idle_exit, "SANDBOXER_LOCAL_IDLE_EXIT", "-1"),
    (envvars.local_uid_base, "SANDBOXER_LOCAL_UID_BASE", "99999999999999"),
    (envvars.compose_local_capacity, "SANDBOXER_COMPOSE_LOCAL_CAPACITY", "many"),
    (envvars.vm_capacity, "SANDBOXER_VM_CAPACITY", "-2"),
    (envvars.vm_keeper_interval, "SANDBOXER_VM_KEEPER_INTERVAL", "inf"),
    (envvars.reap_interval, "SANDBOXER_REAP_INTERVAL", "0"),
    (envvars.leader_interval, "SANDBOXER_LEADER_INTERVAL", "0"),
    (envvars.leader_interval, "SANDBOXER_LEADER_INTERVAL", "61"),
    (envvars.reconcile_interval, "SANDBOXER_RECONCILE_INTERVAL", "soon"),
    (envvars.api_max_body, "SANDBOXER_API_MAX_BODY", "1MB"),
    (envvars.bao_timeout, "SANDBOXER_BAO_TIMEOUT", "ten"),
    (envvars.warden_timeout, "SANDBOXER_WARDEN_TIMEOUT", "ten"),
    (envvars.events_retention, "SANDBOXER_EVENTS_RETENTION", "forever"),
    (envvars.events_retention, "SANDBOXER_EVENTS_RETENTION", "999999999d"),
    (envvars.state_hub_timeout, "SANDBOXER_STATE_HUB_TIMEOUT", "x"),
    (envvars.mcp_log_level, "SANDBOXER_MCP_LOG_LEVEL", "LOUD"),
    (envvars.db_pool_size, "SANDBOXER_DB_POOL_SIZE", "0"),
    (envvars.db_pool_size, "SANDBOXER_DB_POOL_SIZE", "ten"),
    (envvars.db_timeout, "SANDBOXER_DB_TIMEOUT", "0"),
])
def test_a_bad_value_is_invalid_input_naming_the_variable(read, name: str, bad: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=f"^{name}=") as caught:
        read({name: bad})
    assert caught.value.exit_code == 4
    assert name in (caught.value.hint or "")


def test_unset_and_empty_mean_the_default() -> None:
    assert envvars.local_capacity({}) == 64
    assert envvars.local_capacity({"SANDBOXER_LOCAL_CAPACITY": " "}) == 64
    assert envvars.local_capacity({"SANDBOXER_LOCAL_CAPACITY": " 12 "}) == 12
    assert envvars.local_idle_exit({"SANDBOXER_LOCAL_IDLE_EXIT": "0.5"}) == 0.5
    assert envvars.events_retention({}) == 7 * 86400
    assert envvars.mcp_log_level({"SANDBOXER_MCP_LOG_LEVEL": "debug"}) == "DEBUG"
    assert envvars.db_pool_size({}) == 10
    assert envvars.db_pool_size({"SANDBOXER_DB_POOL_SIZE": "1"}) == 1
    assert envvars.db_timeout({}) == 10.0


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://admin:hunter2@db.example:5432/sbx", "postgresql://admin:***@db.example:5432/sbx"),
    ("postgres://admin:p%40ss@db/sbx?sslmode=require",
     "postgres://admin:***@db/sbx?sslmode=require"),
    ("postgresql://db/sbx?user=admin&password=hunter2", "postgresql://db/sbx?user=admin&password=***"),
    ("postgresql://admin@db/sbx", "postgresql://admin@db/sbx"),
    ("postgresql:///sbx?host=/run/postgresql", "postgresql:///sbx?host=/run/postgresql"),
])
def test_a_database_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert envvars.masked_database_url(url) == shown
    env = {"SANDBOXER_DATABASE_URL": url}
    assert envvars.database_url(env) == ("postgresql", url)
    assert envvars.database_label(env, Path("/h/state.db")) == shown
    assert envvars.database_label({}, Path("/h/state.db")) == "/h/state.db"


@pytest.mark.parametrize("url", ["postgresql://admin:hunter2@db:port/x",
                                 "postgresql://admin:hunter2@db/x#frag",
                                 "postgresql://admin:hunter 2@db/x"])
def test_a_bad_postgres_url_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(InvalidInput, match="SANDBOXER_DATABASE_URL") as e:
        envvars.database_url({"SANDBOXER_DATABASE_URL": url})
    assert "hunter" not in e.value.render()
    assert e.value.exit_code == 4


def test_settings_refuse_bad_values_before_any_command_runs(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="SANDBOXER_LOCAL_IDLE_EXIT="):
        Settings.from_env({"SANDBOXER_HOME": str(tmp_path), "SANDBOXER_LOCAL_IDLE_EXIT": "x"})


def test_a_home_that_is_a_file_is_named(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(InvalidInput, match=r"SANDBOXER_HOME=.* is not a directory"):
        Settings.from_env({"SANDBOXER_HOME": str(f)})
    with pytest.raises(InvalidInput, match=r"SANDBOXER_LOCAL_ROOT=.* is not a directory"):
        _ = Settings.from_env({"SANDBOXER_HOME": str(tmp_path),
                               "SANDBOXER_LOCAL_ROOT": str(f)}).local_root


def test_a_home_with_spaces_or_percent_is_fine_but_not_dollar_brace(tmp_path: Path) -> None:
    for name in ("with space", "50%a", "it's \"quoted\""):
        assert Settings.from_env({"SANDBOXER_HOME": str(tmp_path / name)}).home.name == name
    with pytest.raises(InvalidInput, match=r"contains '\$\{'"):
        Settings.from_env({"SANDBOXER_HOME": str(tmp_path / "${HOME}")})


def test_urls_and_ca_certs(tmp_path: Path) -> None:
    assert envvars.server({}) == (None, True)
    assert envvars.server({"SANDBOXER_URL": "http://h:1/"}) == ("http://h:1", True)
    with pytest.raises(InvalidInput, match="SANDBOXER_URL="):
        envvars.server({"SANDBOXER_URL": "h:1"})
    with pytest.raises(InvalidInput, match="SANDBOXER_CA_CERT="):
        envvars.server({"SANDBOXER_URL": "https://h", "SANDBOXER_CA_CERT": str(tmp_path)})
