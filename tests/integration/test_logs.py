"""`--log-format json` on real servers: every stderr line a JSON object; per-batch fields, progress, no secret."""

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict

BATCH_FIELDS = {"batch", "upserts", "deletes", "stale", "truncated", "seconds", "collections"}


def add_users(dsn, *numbers):
    with psycopg.connect(dsn, autocommit=True) as conn:
        for n in numbers:  # one statement each: one outbox row each
            conn.execute(
                "INSERT INTO users (username, email, full_name) VALUES (%s, %s, %s)",
                [f"user{n}", f"user{n}@example.org", f"U {n}"],
            )


def json_lines(result):
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert lines, "no log lines"
    entries = []
    for line in lines:
        entry = orjson.loads(line)  # every line, not only some: no bar, no stray text
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "message"} <= entry.keys(), line
        assert entry["logger"].startswith("cdc."), line  # the module's own logger
        entries.append(entry)
    return entries


def test_json_logs_carry_per_batch_fields_and_progress_and_no_secret(dbs, cdc, tmp_path):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    installed = cdc("install", "--tables", "users", env=env)
    assert installed.returncode == 0, installed.stderr
    add_users(dbs.pg_dsn, 1, 2)
    snapshot = json_lines(cdc("--log-format", "json", "snapshot", env=env))
    add_users(dbs.pg_dsn, 3, 4, 5)
    # `cdc run` logs each batch at debug level (-v); without it, a summary every 10 s
    run = json_lines(cdc("-v", "--log-format", "json", "run", "--once", "--batch-size", "2", env=env))
    verify = json_lines(cdc("--log-format", "json", "verify", env=env))

    applied = [entry for entry in run if entry.get("action") == "batch_applied"]
    assert [entry["batch"] for entry in applied] == [2, 3]  # two keys, then one
    for entry in applied:
        assert entry["logger"] == "cdc.worker" and entry["level"] == "debug"
        assert entry.keys() >= BATCH_FIELDS
        assert isinstance(entry["seconds"], float) and entry["seconds"] >= 0
        assert entry["message"].startswith(f"batch {entry['batch']} applied: ")
    assert [entry["upserts"] for entry in applied] == [2, 1]
    assert applied[0]["collections"] == {"users": {"upsert": 2}}
    exported = [entry for entry in run if entry.get("action") == "batch_exported"]
    assert [(entry["logger"], entry["batch"], entry["changes"]) for entry in exported] == [
        ("cdc.export", 2, 2),
        ("cdc.export", 3, 1),
    ]
    assert [(entry["upserts"], entry["deletes"], entry["rejected"]) for entry in exported] == [(2, 0, 0), (1, 0, 0)]
    assert exported[0]["collections"] == {"users": {"upsert": 2}} and exported[0]["seconds"] >= 0

    # progress: plain lines (stderr is a pipe here), with fields, one at the end of each step
    done = {entry["step"]: entry for entry in snapshot + verify if entry.get("action") == "progress_done"}
    assert done.keys() == {"enqueue", "apply", "verify"}
    assert (done["enqueue"]["done"], done["apply"]["done"]) == (2, 2)
    # the apply step's total is the backlog it found (the inserts' own changes and the snapshot's keys)
    assert done["apply"]["total"] == 4
    assert (done["verify"]["done"], done["verify"]["unit"]) == (5, "rows")
    assert {entry["logger"] for entry in done.values()} == {"cdc.commands.snapshot", "cdc.commands.verify"}
    assert any(entry.get("action") == "batch_applied" and entry["batch"] == 1 for entry in snapshot)

    password = conninfo_to_dict(dbs.pg_dsn).get("password")
    for entry in snapshot + run + verify:
        line = orjson.dumps(entry).decode()
        assert dbs.pg_dsn not in line
        assert not password or password not in line
