"""`cdc install` on a database nobody here wrote: default table list, schema-qualified names and
`schema.*`, name suggestions, all-or-nothing with --grant, and `cdc uninstall --tables`."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = pytest.mark.integration

DDL = """
CREATE SCHEMA "Sales";
CREATE TABLE "Sales"."Orders" (id int PRIMARY KEY, total numeric);
CREATE TABLE "Sales".lines (order_id int, n int, PRIMARY KEY (order_id, n));
CREATE TABLE "Sales".no_key (x int);
CREATE TABLE "Sales"."odd.name" (id int PRIMARY KEY);
"""


def captured(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('cdc.captured')").fetchone() == (None,):
            return set()
        return {f"{s}.{t}" for s, t in conn.execute("SELECT schema_name, table_name FROM cdc.captured").fetchall()}


def capture_triggers(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT DISTINCT tgrelid::regclass::text FROM pg_trigger WHERE tgname LIKE 'cdc\\_capture\\_%'"
        ).fetchall()
    return {row[0] for row in rows}


@pytest.fixture
def env(dbs):
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(DDL)
    return dbs.env()


def test_without_tables_every_keyed_table_of_the_schema_is_captured_and_said_first(env, dbs, cdc):
    done = cdc("install", "--schema", "Sales", env=env)
    assert done.returncode == 0, done.stderr
    assert "no --tables given" in done.stdout and "Sales.Orders" in done.stdout
    assert done.stdout.index("no --tables given") < done.stdout.index("capturing:")
    assert captured(dbs.pg_dsn) == {"Sales.Orders", "Sales.lines", "Sales.odd.name"}  # not no_key


def test_schema_star_and_quoted_names(env, dbs, cdc):
    assert cdc("install", "--tables", 'Sales.*,"Sales"."odd.name",public.users', env=env).returncode == 0
    assert captured(dbs.pg_dsn) == {"Sales.Orders", "Sales.lines", "Sales.odd.name", "public.users"}


def test_an_unknown_name_suggests_the_closest_one(env, cdc):
    wrong_case = cdc("install", "--tables", "Sales.orders", env=env)
    assert wrong_case.returncode == 1
    assert "Sales.orders does not exist" in wrong_case.stderr and "did you mean Sales.Orders?" in wrong_case.stderr
    typo = cdc("install", "--tables", "usres", env=env)
    assert typo.returncode == 1 and "did you mean public.users?" in typo.stderr


def test_install_is_all_or_nothing_with_a_bad_grant(env, dbs, cdc):
    refused = cdc("install", "--tables", "public.artists", "--grant", "nosuchrole", env=env)
    assert refused.returncode == 1
    assert "nosuchrole" in refused.stderr
    assert capture_triggers(dbs.pg_dsn) == set()
    with psycopg.connect(dbs.pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('cdc.outbox')").fetchone() == (None,)


def test_uninstall_one_table_leaves_the_others(env, dbs, cdc):
    assert cdc("install", "--tables", "artists,albums", env=env).returncode == 0
    done = cdc("uninstall", "--tables", "artists", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    assert captured(dbs.pg_dsn) == {"public.albums"}
    assert capture_triggers(dbs.pg_dsn) == {"albums"}
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO artists (artist_id, name) VALUES (1, 'not captured')")
        conn.execute(
            "INSERT INTO albums (album_id, artist_id, title, release_date) VALUES (1, 1, 'captured', '2024-01-01')"
        )
        counts = conn.execute("SELECT count(*) FROM cdc.outbox").fetchone()
    assert counts == (1,)
    no = cdc("uninstall", "--tables", "albums", env=env)  # no answer on stdin: not confirmed
    assert no.returncode == 1
    assert captured(dbs.pg_dsn) == {"public.albums"}
