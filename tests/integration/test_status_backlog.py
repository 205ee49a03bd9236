"""`cdc status` on real servers: the backlog counts every change not yet in MongoDB (claimed,
exported and unapplied batches included), the metrics read the same backlog, and status reports
what it can, naming the server that is down."""

import datetime as dt

import orjson
import psycopg
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cdc.export import batch as drain
from cdc.runtime.metrics import Metrics

CLOSED_PG = "postgresql://cdc@127.0.0.1:1/none"
CLOSED_MONGO = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500"


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def run_sql(dsn, *statements, params=None):
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement, params)


def add_users(dsn, first, count):
    """One statement: one outbox row holding ``count`` keys."""
    run_sql(
        dsn,
        "INSERT INTO users (username, email, full_name)"
        " SELECT 'b' || n, 'b' || n || '@example.org', 'B ' || n FROM generate_series(%s::int, %s::int) AS n",
        params=[first, first + count - 1],
    )


def status(cdc, env, *args):
    result = cdc("status", "--json", *args, env=env)
    assert result.stdout, result.stderr
    return result, orjson.loads(result.stdout)


def gauges(dsn):
    metrics = Metrics(dsn)
    try:
        text = generate_latest(metrics.registry).decode()
    finally:
        metrics.close()
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture
def env(dbs, cdc, tmp_path):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_DATA_DIR": str(tmp_path / "data")}
    ok(cdc("install", "--tables", "users", env=env))
    return env


def test_a_claimed_unapplied_batch_is_backlog_and_its_age_counts_from_the_claim(env, cdc, tmp_path):
    dsn = env["CDC_PG_DSN"]
    add_users(dsn, 1, 5)
    with drain.drain_connection(dsn) as conn:  # claimed and archived for `cdc run`, not applied
        claimed = drain.export_batch(conn, tmp_path / "archive", batch_size=100, mode="run")
    assert claimed is not None and claimed.batch_id == 1
    run_sql(dsn, "UPDATE cdc.batches SET claimed_at = now() - interval '100 seconds'")

    result, report = status(cdc, env)
    assert result.returncode == 0, result.stderr
    assert report["backlog_changes"] == 5
    assert report["outbox_changes"] == 0
    assert report["unapplied_batches"] == 1 and report["unapplied_batch_changes"] == 5
    assert report["oldest_change_age_s"] >= 100
    assert report["oldest_change_age_is_lower_bound"] is True
    assert report["last_exported_batch"] == 1 and report["last_exported_mode"] == "run"
    assert dt.datetime.fromisoformat(report["last_exported_at"]).tzinfo is not None
    assert report["last_applied_batch"] is None
    assert dt.datetime.fromisoformat(report["checked_at"]).tzinfo is not None
    assert report["postgresql"] == "up" and report["mongodb"] == "up"

    over = cdc("status", "--max-backlog", "4", env=env)
    assert over.returncode == 1
    assert len(over.stderr.strip().splitlines()) == 1 and "backlog 5 > 4" in over.stderr
    late = cdc("status", "--max-lag", "50", env=env)
    assert late.returncode == 1 and "lag at least 1" in late.stderr and "> 50.0s" in late.stderr
    ok(cdc("status", "--max-backlog", "5", "--max-lag", "100000", env=env))

    found = gauges(dsn)  # the metrics read the same backlog
    assert found["cdc_outbox_backlog_changes"] == 5
    assert found["cdc_outbox_oldest_change_age_seconds"] >= 100

    # a change still in the outbox, older than the claim: it sets the age, which is then exact
    add_users(dsn, 6, 1)
    run_sql(dsn, "UPDATE cdc.outbox SET created_at = now() - interval '500 seconds'")
    _, report = status(cdc, env)
    assert report["backlog_changes"] == 6 and report["outbox_changes"] == 1 and report["outbox_statements"] == 1
    assert report["oldest_change_age_s"] >= 500
    assert report["oldest_change_age_is_lower_bound"] is False

    ok(cdc("run", "--once", env=env))  # the pending batch first, then the outbox
    result, report = status(cdc, env, "--max-backlog", "0", "--max-lag", "0")
    assert result.returncode == 0, result.stderr
    assert report["backlog_changes"] == 0 and report["oldest_change_age_s"] == 0
    assert report["unapplied_batches"] == 0
    assert report["last_applied_batch"] == 2 and report["target_last_applied_batch"] == 2
    assert report["last_applied_age_s"] >= 0
    assert gauges(dsn)["cdc_outbox_backlog_changes"] == 0


def test_an_archived_export_batch_is_done_and_an_unarchived_one_is_backlog(env, cdc, tmp_path):
    dsn = env["CDC_PG_DSN"]
    add_users(dsn, 1, 3)
    ok(cdc("export", "--once", env=env))
    _, report = status(cdc, env, "--max-backlog", "0")
    assert report["backlog_changes"] == 0 and report["unapplied_batches"] == 0
    assert report["last_exported_batch"] == 1 and report["last_exported_mode"] == "export"
    assert report["last_applied_batch"] is None  # `cdc export` applies nothing
    # a claim not yet archived holds its changes: a committed 'claimed' row stands for it here
    add_users(dsn, 4, 2)
    run_sql(
        dsn,
        "INSERT INTO cdc.batches (batch_id, mode, state) VALUES (nextval('cdc.batch_seq'), 'export', 'claimed')",
        """WITH moved AS (DELETE FROM cdc.outbox RETURNING pos, relid, op, keys)
           INSERT INTO cdc.batch_changes SELECT currval('cdc.batch_seq'), pos, relid, op, keys FROM moved""",
    )
    result, report = status(cdc, env, "--max-backlog", "1")
    assert result.returncode == 1 and "backlog 2 > 1" in result.stderr
    assert report["backlog_changes"] == 2 and report["outbox_changes"] == 0
    assert report["last_exported_batch"] == 1  # a claim is not an export


def test_status_reports_what_it_can_when_mongodb_is_down(env, cdc):
    add_users(env["CDC_PG_DSN"], 1, 2)
    result, report = status(cdc, {**env, "CDC_MONGO_URI": CLOSED_MONGO})
    assert result.returncode == 1
    assert report["postgresql"] == "up" and report["mongodb"] == "down"
    assert report["backlog_changes"] == 2  # PostgreSQL's part is all there
    assert report["tables"] == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to MongoDB" in lines[0]


def test_status_reports_what_it_can_when_postgresql_is_down(env, cdc):
    add_users(env["CDC_PG_DSN"], 1, 2)
    ok(cdc("run", "--once", env=env))
    result, report = status(cdc, {**env, "CDC_PG_DSN": CLOSED_PG})
    assert result.returncode == 1
    assert report["postgresql"] == "down" and report["mongodb"] == "up"
    assert report["target_last_applied_batch"] == 1  # MongoDB's own record
    assert "backlog_changes" not in report  # unknown, not zero
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to PostgreSQL" in lines[0]


def test_status_on_the_embedded_stack_with_its_mongodb_down_uses_its_postgresql(own_stack, cdc):
    stack, _env, folder = own_stack
    env = {"CDC_DATA_DIR": str(folder)}  # nothing else: the stack's stack.env is the only setting
    for args in (("schema", "apply"), ("install", "--tables", "users")):
        ok(cdc(*args, env=env))
    stack.stop_mongo()
    result, report = status(cdc, env)
    assert result.returncode == 1
    assert report["postgresql"] == "up" and report["mongodb"] == "down"
    assert report["backlog_changes"] == 0 and report["tables"] == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "MongoDB server" in lines[0] and "is down" in lines[0]
    assert "no PostgreSQL configured" not in result.stderr
    stack.start_mongo()
    stack.stop_postgres()
    result, report = status(cdc, env)
    assert result.returncode == 1
    assert report["postgresql"] == "down" and report["mongodb"] == "up"
    assert "PostgreSQL server" in result.stderr and "is down" in result.stderr
