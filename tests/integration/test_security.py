"""Least privilege and secrets: the worker runs as a role with only its grants; no password leaks."""

import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

PASSWORD = "Xq7-worker-S3cret-pw"


@pytest.fixture
def worker_role(dbs):
    role = f"cdc_worker_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD)))
    info = psycopg.conninfo.conninfo_to_dict(dbs.pg_dsn)
    info.update(user=role, password=PASSWORD)
    yield role, psycopg.conninfo.make_conninfo(**info)
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_worker_runs_with_least_privilege_and_never_shows_its_password(dbs, cdc, tmp_path, worker_role):
    role, worker_dsn = worker_role
    owner = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    assert cdc("generate", "--scale", "tiny", env=owner).returncode == 0
    installed = cdc("install", "--grant", role, env=owner)
    assert installed.returncode == 0, installed.stderr

    worker = {**owner, "CDC_PG_DSN": worker_dsn}
    outputs = []
    for args in (("snapshot",), ("workload", "--rate", "80", "--duration", "2", "--no-long-transactions")):
        env = worker if args[0] == "snapshot" else owner
        result = cdc("-v", *args, env=env)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout + result.stderr)
    for args in (("run", "--once"), ("verify",), ("status",)):
        result = cdc("-v", "--log-format", "json", *args, env=worker)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout + result.stderr)

    # the worker role cannot change the schema or the captured tables
    with psycopg.connect(worker_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("ALTER TABLE users ADD COLUMN sneaky int")
    with psycopg.connect(worker_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM users")

    # a wrong password fails with one line that does not repeat what was typed
    wrong = worker_dsn.replace(PASSWORD, PASSWORD + "-wrong")
    failed = cdc("-v", "status", env={**worker, "CDC_PG_DSN": wrong})
    assert failed.returncode == 1
    outputs.append(failed.stdout + failed.stderr)

    for text in outputs:
        assert PASSWORD not in text
    archived = [path for path in Path(owner["CDC_ARCHIVE_DIR"]).rglob("*") if path.is_file()]
    assert archived
    for path in archived:
        assert PASSWORD.encode() not in path.read_bytes()
