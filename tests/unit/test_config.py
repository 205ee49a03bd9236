from pathlib import Path

import pytest

from cdc.infra.config import Settings, refuse_password_in_argument
from cdc.infra.errors import ConfigError, UsageError
from cdc.infra.stack_files import StackFiles


def test_given_dsn_wins(monkeypatch):
    monkeypatch.setenv("PGHOST", "elsewhere")
    assert Settings(pg_dsn_given="host=a dbname=b").pg_dsn() == "host=a dbname=b"


def test_libpq_variables_come_before_the_stack(monkeypatch, tmp_path):
    monkeypatch.setenv("PGHOST", "db.internal")
    assert Settings(data_dir=tmp_path).pg_dsn() == ""


def test_running_stack_is_the_last_resort(monkeypatch, tmp_path):
    for name in ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    env = {"CDC_PG_DSN": "postgresql://postgres:x@127.0.0.1:1/orininu", "CDC_MONGO_URI": "mongodb://m"}
    monkeypatch.setattr(StackFiles, "running_env", lambda self: env)
    settings = Settings(data_dir=tmp_path)
    assert settings.pg_dsn() == env["CDC_PG_DSN"]
    assert settings.mongo_uri() == "mongodb://m"


def test_nothing_configured_is_a_config_error(monkeypatch, tmp_path):
    for name in ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="cdc stack up"):
        Settings(data_dir=tmp_path / "none").mongo_uri()


def test_archive_defaults_under_data_dir():
    assert Settings(data_dir=Path("d")).archive_dir == Path("d/archive")
    assert Settings(archive_dir_given=Path("/a")).archive_dir == Path("/a")


def test_password_in_argument_is_refused():
    with pytest.raises(UsageError):
        refuse_password_in_argument("--mongo", "mongodb://u:p4ss@h/")
    refuse_password_in_argument("--mongo", "mongodb://h/")
