"""Issue 15, point 4, on real servers through the real command: `cdc run`'s start line and quiet
batches, `--once` stopped by a signal, replay's checksums before any write, `cdc status` in text,
`cdc stack down` with nothing to stop, the `--mongo` refusal and the demo's output."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pymongo
import pytest
from psycopg.conninfo import conninfo_to_dict

from cdc.archive import folders as archive
from cdc.ledger.queries import EXPORT_LOCK_KEY, WORKER_LOCK
from cdc.runtime.worker import Worker
from cdc.sinks.mongo.applier import Applier
from tests.fix_cli import clean_env, start_cdc

MAPPING = Path(__file__).resolve().parents[2] / "schema" / "orininu.mapping.toml"


def add_users(dsn: str, *numbers: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in numbers:  # one statement each: one outbox row each
            conn.execute(
                "INSERT INTO users (username, email, full_name) VALUES (%s, %s, %s)",
                [f"user{n}", f"user{n}@example.org", f"U {n}"],
            )


@pytest.fixture
def env(dbs, tmp_path):
    return {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_DATA_DIR": str(tmp_path / "data")}


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def start_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("run: ")]


def test_run_prints_one_start_line_and_no_line_per_batch(dbs, env, cdc, tmp_path):
    ok(cdc("install", "--tables", "users", env=env))
    add_users(dbs.pg_dsn, 1, 2, 3)
    quiet = ok(cdc("run", "--once", "--batch-size", "1", env=env))
    (line,) = start_lines(quiet.stdout)
    password = conninfo_to_dict(dbs.pg_dsn).get("password")
    assert password and password not in quiet.stdout + quiet.stderr
    assert "password=***" in line
    assert f"MongoDB {dbs.mongo_uri} database {dbs.mongo_db};" in line
    assert "mode once, interval -s;" in line
    assert f"archive {tmp_path / 'archive'};" in line
    assert line.endswith("mapping none")
    # three batches applied: no line for each at INFO, the totals at the end
    assert " applied: " not in quiet.stderr and "cdc.export: batch " not in quiet.stderr
    assert "applied 3 batches, 3 changes (0 stale, 0 rejected)" in quiet.stdout

    add_users(dbs.pg_dsn, 4, 5)
    verbose = ok(cdc("-v", "run", "--once", "--batch-size", "1", env=env))  # -v: each batch's lines
    assert len(re.findall(r"DEBUG +cdc\.worker: batch \d+ applied: ", verbose.stderr)) == 2
    assert len(re.findall(r"DEBUG +cdc\.export: batch \d+: 1 changes", verbose.stderr)) == 2

    # cdc status in text: times ISO-8601, ages in seconds, the last exported batch
    status = ok(cdc("status", env=env))
    shown = dict(line.split(None, 1) for line in status.stdout.splitlines())
    assert shown["last_exported_batch"] == "5" and shown["last_applied_batch"] == "5"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00", shown["last_exported_at"])
    assert float(shown["last_exported_age_s"]) >= 0 and float(shown["last_applied_age_s"]) >= 0


def test_run_start_line_names_the_installed_mapping_and_the_mode(dbs, env, cdc):
    ok(cdc("install", "--mapping", str(MAPPING), env=env))
    listen = start_cdc("run", "--listen", "--interval", "7", env=env)
    try:
        assert listen.stdout is not None
        line = listen.stdout.readline()  # the first line it prints
    finally:
        listen.send_signal(signal.SIGTERM)
        out, errors = listen.communicate(timeout=60)
    assert listen.returncode == 0, line + errors  # a long-running worker stopped by SIGTERM did its job
    assert line.startswith("run: ") and "mode listen, interval 7s;" in line
    assert line.rstrip().endswith(f"mapping {MAPPING}")
    assert start_lines(out) == []  # one start line
    assert out.startswith("applied 0 batches")


def summarised(records: list[logging.LogRecord]) -> int:
    """The changes the summary lines counted."""
    return sum(r.args["changes"] for r in records if r.__dict__.get("action") == "summary")  # type: ignore[call-overload,index]


def test_worker_logs_a_summary_instead_of_lines_per_batch(dbs, env, cdc, caplog):
    ok(cdc("install", "--tables", "users", env=env))
    logger = logging.getLogger("cdc")
    propagate, level = logger.propagate, logger.level
    logger.propagate, logger.level = True, logging.NOTSET
    caplog.set_level(logging.DEBUG, logger="cdc")
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(dbs.mongo_uri)
    stop = threading.Event()
    worker = Worker(
        dbs.pg_dsn,
        Applier(client[dbs.mongo_db]),
        Path(env["CDC_ARCHIVE_DIR"]),
        stop=stop,
        batch_log_level=logging.DEBUG,
        summary_every=0.2,
    )
    thread = threading.Thread(target=worker.run, kwargs={"interval": 0.1, "listen": False, "once": False})
    thread.start()
    try:
        add_users(dbs.pg_dsn, 1, 2)
        wait_for(lambda: summarised(caplog.records) >= 2, "a summary of both changes")
    finally:
        stop.set()
        thread.join(timeout=60)
        client.close()
        logger.propagate, logger.level = propagate, level
    summaries = [r for r in caplog.records if r.__dict__.get("action") == "summary"]
    assert summaries and summaries[0].levelno == logging.INFO
    assert re.fullmatch(
        r"last \d+s: \d+ batches, \d+ changes \(0 stale, 0 rejected\); backlog \d+ changes, oldest [\d.]+s",
        summaries[0].getMessage(),
    )
    assert summarised(caplog.records) == 2
    per_batch = [r for r in caplog.records if r.__dict__.get("action") in ("batch_applied", "batch_exported")]
    assert per_batch and all(r.levelno == logging.DEBUG for r in per_batch)


def wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def waiting_on_advisory_lock(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchone()
    return bool(row and row[0])


def test_run_once_stopped_by_a_signal_exits_non_zero(dbs, env, cdc):
    ok(cdc("install", "--tables", "users", env=env))
    add_users(dbs.pg_dsn, 1)
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as holder:  # another worker holds the lock
        holder.execute("SELECT pg_advisory_lock(%s, %s)", WORKER_LOCK)
        child = start_cdc("run", "--once", env=env)
        assert child.stderr is not None
        seen = []
        for line in child.stderr:  # it waits for the lock: now a cron `timeout` sends SIGTERM
            seen.append(line)
            if "another worker holds the lock; waiting" in line:
                break
        child.send_signal(signal.SIGTERM)
        out, rest = child.communicate(timeout=60)
    assert child.returncode == 1, "".join(seen) + rest
    assert "cdc: error: stopped by a signal before the outbox was drained" in rest
    assert "Traceback" not in rest
    assert out.splitlines()[-1].startswith("applied 0 batches")  # after the start line


def test_export_once_stopped_by_a_signal_exits_non_zero(dbs, env, cdc):
    ok(cdc("install", "--tables", "users", env=env))
    add_users(dbs.pg_dsn, 1)
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as holder:  # another exporter's turn
        holder.execute("SELECT pg_advisory_lock(%s)", [EXPORT_LOCK_KEY])
        child = start_cdc("export", "--once", env=env)
        wait_for(lambda: waiting_on_advisory_lock(dbs.pg_dsn), "`cdc export --once` to wait for its turn")
        child.send_signal(signal.SIGTERM)
        holder.execute("SELECT pg_advisory_unlock(%s)", [EXPORT_LOCK_KEY])
        out, err = child.communicate(timeout=60)
    assert child.returncode == 1, out + err
    assert "cdc: error: stopped by a signal before the outbox was drained" in err
    assert "exported 0 changes in 0 batches" in out
    # not stopped: it drains and exits 0
    assert ok(cdc("export", "--once", env=env)).stdout.startswith("batch 1: 1 changes")


def test_replay_checks_every_checksum_before_applying_any(dbs, env, cdc, tmp_path):
    ok(cdc("install", "--tables", "users", env=env))
    add_users(dbs.pg_dsn, 1, 2, 3)
    ok(cdc("run", "--once", "--batch-size", "1", env=env))
    paths = archive.batch_paths(Path(env["CDC_ARCHIVE_DIR"]))
    assert len(paths) == 3
    damaged = next(paths[-1].glob("*.upsert.jsonl"))
    damaged.write_bytes(damaged.read_bytes().replace(b"user3", b"userX"))
    target = dbs.mongo_db + "_replay"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(dbs.mongo_uri)
    try:
        replay = cdc("replay", env["CDC_ARCHIVE_DIR"], env={**env, "CDC_MONGO_DB": target})
        assert replay.returncode == 1, replay.stdout + replay.stderr
        assert f"batch {paths[-1].name}: " in replay.stderr and "does not match its checksum" in replay.stderr
        assert client[target].list_collection_names() == []  # batches 1 and 2 were not applied either
    finally:
        client.drop_database(target)
        client.close()
    help_text = " ".join(ok(cdc("replay", "--help")).stdout.split())
    assert "Every batch of the range is checked before any is applied" in help_text


def test_stack_down_says_when_there_is_nothing_to_stop(cdc, tmp_path):
    nothing = ok(cdc("stack", "down", "--data-dir", str(tmp_path / "nowhere")))
    assert f"no embedded stack under {tmp_path / 'nowhere'}: nothing to stop" in nothing.stderr
    assert "stack stopped" not in nothing.stderr
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "stack.json").write_text("{}")  # a stack that was set up, its servers not running
    already = ok(cdc("stack", "down", "--data-dir", str(stopped)))
    assert "is not running: nothing to stop" in already.stderr


def test_mongo_password_refusal_names_mongodb_ways(cdc):
    refused = cdc("run", "--mongo", "mongodb://app:s3cretpw@db.example/")
    assert refused.returncode == 2
    assert "CDC_MONGO_URI" in refused.stderr and "0600 file" in refused.stderr
    assert "PGPASSFILE" not in refused.stderr and "s3cretpw" not in refused.stderr


def test_demo_output_is_quiet_and_ends_with_what_to_try(dbs, tmp_path):
    env = {
        "CDC_DEMO_PG_DSN": dbs.pg_dsn,
        "CDC_DEMO_MONGO_URI": dbs.mongo_uri,
        "CDC_DEMO_MONGO_DB": dbs.mongo_db,
        "CDC_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "cdc", "demo", "--scale", "tiny", "--duration", "3", "--rate", "40"],
        env=clean_env(env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    both = result.stdout + result.stderr
    assert len(re.findall(r"metrics on http://", both)) == 1  # the address, once
    assert " applied: " not in result.stderr and "cdc.export: batch " not in result.stderr  # no line per batch
    out = result.stdout
    assert re.search(r"\[6/7\] live sync: \d+ changes made at \d+/s; \d+ applied \(\d+ stale\) in \d+ batches", out)
    assert "applied: MongoDB documents written, stale ones included" in out
    tail = out[out.index("demo finished") :].splitlines()
    assert tail[1] == "what to try next:"
    assert "export CDC_PG_DSN and CDC_MONGO_URI" in tail[2]
    assert any(line.strip().startswith("cdc run --listen") for line in tail[3:])
