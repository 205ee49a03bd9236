"""Row-level security on a captured table, with the worker connecting as its own least-privileged role:
every command that reads captured rows refuses with one line naming the table and the role (a
snapshot that enqueues nothing, or a verify that says ok over rows it cannot see, would be silent
data loss), `cdc install --grant` warns, and a policy that shows the role every row lifts it all."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

pytestmark = pytest.mark.integration

PASSWORD = "Rls-worker-pw-7"

DDL = """
CREATE TABLE vault (id int PRIMARY KEY, secret text);
CREATE TABLE shelves (id int PRIMARY KEY, label text);
CREATE TABLE boxes (id int PRIMARY KEY, shelf_id int REFERENCES shelves, content text);
INSERT INTO vault SELECT i, 'secret ' || i FROM generate_series(1, 10) AS i;
INSERT INTO shelves SELECT i, 'shelf ' || i FROM generate_series(1, 3) AS i;
INSERT INTO boxes SELECT i, 1 + i % 3, 'box ' || i FROM generate_series(1, 9) AS i;
"""

# only the embedded table has row-level security
MAPPING = """
[collections.shelves]
table = "shelves"

[collections.shelves.embed.boxes]
table = "boxes"
on = { shelf_id = "id" }
many = true
"""


def run_sql(dsn: str, *statements: str | sql.Composed) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@pytest.fixture
def setup(dbs, tmp_path) -> Iterator[tuple[str, dict[str, str], dict[str, str]]]:
    """The tables, a worker role that may log in (nothing granted yet), and the environments of the
    tables' owner and of the worker."""
    role = f"cdc_rls_{uuid.uuid4().hex[:8]}"
    run_sql(
        dbs.pg_dsn,
        DDL,
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD)),
    )
    info = psycopg.conninfo.conninfo_to_dict(dbs.pg_dsn)
    info.update(user=role, password=PASSWORD)
    owner = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    worker = {**owner, "CDC_PG_DSN": psycopg.conninfo.make_conninfo(**info)}
    yield role, owner, worker
    run_sql(
        dbs.pg_dsn,
        sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)),
        sql.SQL("DROP ROLE {}").format(sql.Identifier(role)),
    )


def policy(name: str, kind: str, role: str, using: str) -> sql.Composed:
    """A SELECT policy on vault for ``role`` (``kind``: '' for permissive, or 'AS RESTRICTIVE')."""
    text = f"CREATE POLICY {{}} ON vault {kind} FOR SELECT TO {{}} USING ({using})"
    return sql.SQL(text).format(sql.Identifier(name), sql.Identifier(role))


def outbox_size(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM cdc.outbox").fetchone()
    assert row is not None
    return int(row[0])


def refused(result, table: str, role: str) -> str:
    """The one error line of a command refused for row-level security (exit 1)."""
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cdc: error:")]
    assert len(errors) == 1, result.stderr
    assert f"table {table} has row-level security" in errors[0] and repr(role) in errors[0], errors[0]
    assert "BYPASSRLS" in errors[0]
    return errors[0]


def test_row_security_is_checked_by_every_command_that_reads_rows(setup, dbs, cdc):
    role, owner, worker = setup
    run_sql(dbs.pg_dsn, "ALTER TABLE vault ENABLE ROW LEVEL SECURITY")

    installed = cdc("install", "--tables", "vault", "--grant", role, env=owner)
    assert installed.returncode == 0, installed.stderr
    [warning] = [line for line in installed.stderr.splitlines() if line.startswith("cdc: warning:")]
    assert f"table vault has row-level security that applies to role {role!r}" in warning
    assert "would refuse" in warning and "BYPASSRLS" in warning and "CREATE POLICY" in warning

    assert "silently leave out" in refused(cdc("snapshot", env=worker), "vault", role)
    assert outbox_size(dbs.pg_dsn) == 0  # refused before enqueueing anything

    for args in (("verify",), ("verify", "--repair"), ("verify", "--json")):
        result = cdc(*args, env=worker)
        refused(result, "vault", role)
        assert " ok" not in result.stdout and '"clean":true' not in result.stdout.replace(" ", "")

    # the table's owner reads every row: the same commands run (rows=10, none hidden)
    assert cdc("snapshot", env=owner).returncode == 0
    as_owner = cdc("verify", env=owner)
    assert as_owner.returncode == 0 and "rows=10" in as_owner.stdout, as_owner.stdout + as_owner.stderr

    # a policy that shows the role every row lifts the refusal and the warning
    run_sql(dbs.pg_dsn, policy("all_rows", "", role, "true"))
    again = cdc("install", "--tables", "vault", "--grant", role, env=owner)
    assert again.returncode == 0 and "warning" not in again.stderr, again.stderr
    verified = cdc("verify", env=worker)
    assert verified.returncode == 0 and "rows=10" in verified.stdout, verified.stdout + verified.stderr

    # ... but not a policy that may hide rows
    run_sql(dbs.pg_dsn, policy("some_rows", "AS RESTRICTIVE", role, "id < 5"))
    refused(cdc("verify", env=worker), "vault", role)


def test_every_table_a_mapping_reads_counts(setup, dbs, cdc, tmp_path):
    role, owner, worker = setup
    model = tmp_path / "model.toml"
    model.write_text(MAPPING)
    run_sql(dbs.pg_dsn, "ALTER TABLE boxes ENABLE ROW LEVEL SECURITY")

    installed = cdc("install", "--mapping", str(model), "--grant", role, env=owner)
    assert installed.returncode == 0, installed.stderr
    warnings = [line for line in installed.stderr.splitlines() if line.startswith("cdc: warning:")]
    assert len(warnings) == 1 and "table boxes has row-level security" in warnings[0], installed.stderr

    refused(cdc("snapshot", env=worker), "boxes", role)
    assert outbox_size(dbs.pg_dsn) == 0
    result = cdc("verify", env=worker)
    refused(result, "boxes", role)
    assert " ok" not in result.stdout
