"""`cdc demo` writes only where it is told to for the demo (issue 12, point 5).

The generic settings (CDC_PG_DSN, CDC_MONGO_URI, CDC_MONGO_DB, CDC_ARCHIVE_DIR, PG*) point at real
test databases here: the demo must not take them, must refuse one external server without the
other, and must print its targets, passwords masked. Cheap: the refusal and --dry-run paths
touch nothing, so the demo itself is not run (test_demo.py runs it next to decoys).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pymongo
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from cdc.cli import cli
from cdc.commands.demo import resolve_targets
from cdc.infra.errors import UsageError


@pytest.fixture
def users_env(dbs, tmp_path):
    """A shell set up for real work: every generic setting names the user's databases."""
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (id int PRIMARY KEY)")
        conn.execute("INSERT INTO mine VALUES (1)")
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(dbs.mongo_uri)
    client[dbs.mongo_db]["mine"].insert_one({"_id": 1})
    client.close()
    params = conninfo_to_dict(dbs.pg_dsn)
    env = {
        **dbs.env(),
        "CDC_ARCHIVE_DIR": str(tmp_path / "users-archive"),
        "CDC_DATA_DIR": str(tmp_path / "data"),
        "PGHOST": str(params.get("host") or "localhost"),
        "PGDATABASE": str(params.get("dbname") or ""),
    }
    return env


def _untouched(dbs, tmp_path: Path) -> None:
    with psycopg.connect(dbs.pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM mine").fetchone() == (1,)
        assert conn.execute("SELECT to_regnamespace('cdc')").fetchone() == (None,)
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(dbs.mongo_uri)
    try:
        assert client[dbs.mongo_db]["mine"].count_documents({}) == 1
    finally:
        client.close()
    assert not (tmp_path / "users-archive").exists()
    assert not (tmp_path / "data").exists()  # not even an embedded stack was started


def test_the_demo_ignores_the_generic_settings(cdc, dbs, users_env, tmp_path):
    result = cdc("demo", "--dry-run", env=users_env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "demo targets (embedded stack under" in out
    assert "the embedded stack's; the demo starts it" in out
    assert str(tmp_path / "data" / "archive") in out
    assert "users-archive" not in out
    assert str(conninfo_to_dict(dbs.pg_dsn).get("dbname")) not in out
    assert "note: the demo ignores CDC_PG_DSN, CDC_MONGO_URI, CDC_MONGO_DB, CDC_ARCHIVE_DIR, PGHOST" in out
    _untouched(dbs, tmp_path)


@pytest.mark.parametrize("named", ["CDC_DEMO_PG_DSN", "CDC_DEMO_MONGO_URI"])
def test_one_external_server_without_the_other_is_refused(cdc, dbs, users_env, tmp_path, named):
    value = dbs.pg_dsn if named == "CDC_DEMO_PG_DSN" else dbs.mongo_uri
    result = cdc("demo", env={**users_env, named: value})
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cdc: usage error: demo: an external ")
    assert "name both for the demo, or neither to use the embedded stack" in lines[0]
    assert "[1/7]" not in result.stdout
    _untouched(dbs, tmp_path)


def test_the_flags_count_as_naming_one_server_too(cdc, dbs, users_env, tmp_path):
    result = cdc("demo", "--mongo", dbs.mongo_uri, env=users_env)
    assert result.returncode == 2
    assert "an external MongoDB (--mongo / CDC_DEMO_MONGO_URI) was given without an external PostgreSQL" in (
        result.stderr
    )
    _untouched(dbs, tmp_path)


def test_external_targets_are_printed_with_passwords_masked(cdc, dbs, users_env, tmp_path):
    pg_dsn = make_conninfo(dbs.pg_dsn, password="s3cret-demo-pw")
    mongo_uri = "mongodb://demo:m0ngo-demo-pw@127.0.0.1:1/?directConnection=true"
    env = {**users_env, "CDC_DEMO_PG_DSN": pg_dsn, "CDC_DEMO_MONGO_URI": mongo_uri, "CDC_DEMO_MONGO_DB": "demo_db"}
    result = cdc("demo", "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    assert "demo targets (named for the demo)" in result.stdout
    assert "mongodb://demo:***@127.0.0.1:1/" in result.stdout
    assert "database 'demo_db' is dropped" in result.stdout
    assert str(tmp_path / "data" / "demo-archive") in result.stdout
    assert "s3cret-demo-pw" not in result.stdout + result.stderr
    assert "m0ngo-demo-pw" not in result.stdout + result.stderr
    _untouched(dbs, tmp_path)


def test_a_password_on_the_demo_command_line_is_refused(cdc, dbs, users_env):
    result = cdc("demo", "--pg", "postgresql://u:visible@127.0.0.1/x", "--mongo", dbs.mongo_uri, env=users_env)
    assert result.returncode == 2
    assert "--pg must not contain a password" in result.stderr
    assert "visible" not in result.stderr


def test_resolution_in_process(tmp_path, monkeypatch):
    """The resolution itself reads no environment: only what the demo's options carry."""
    monkeypatch.setenv("CDC_PG_DSN", "host=somewhere-real dbname=prod")
    monkeypatch.setenv("CDC_MONGO_URI", "mongodb://somewhere-real/")
    monkeypatch.setenv("PGHOST", "somewhere-real")
    embedded = resolve_targets(tmp_path, None, None, "orininu", None)
    assert embedded.embedded
    assert embedded.pg_dsn is None and embedded.mongo_uri is None  # no stack runs under tmp_path
    assert embedded.archive_dir == tmp_path / "archive"
    external = resolve_targets(tmp_path, "host=demo dbname=demo", "mongodb://demo/", "d", tmp_path / "a")
    assert not external.embedded
    assert (external.pg_dsn, external.mongo_uri, external.archive_dir) == (
        "host=demo dbname=demo",
        "mongodb://demo/",
        tmp_path / "a",
    )
    with pytest.raises(UsageError, match="without an external MongoDB"):
        resolve_targets(tmp_path, "host=demo", None, "d", None)
    with pytest.raises(UsageError, match="without an external PostgreSQL"):
        resolve_targets(tmp_path, None, "mongodb://demo/", "d", None)


def test_the_help_says_which_settings_the_demo_ignores():
    demo = cli.commands["demo"]
    text = " ".join((demo.help or "").split())
    assert "It ignores the settings of the other commands: CDC_PG_DSN, CDC_MONGO_URI" in text
    assert "CDC_DEMO_PG_DSN" in text and "CDC_DEMO_MONGO_URI" in text
