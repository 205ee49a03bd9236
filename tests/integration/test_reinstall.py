"""Versions never go backwards against the target: a re-install of capture on the same MongoDB
database moves positions and batch ids past what the target holds, so nothing is refused as stale;
and a snapshot whose writes are mostly refused as stale says so and exits 1."""

import re
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pymongo
import pytest
from bson.int64 import Int64
from psycopg import sql

from cdc.sinks.mongo.applier import APPLIED_COLLECTION, STATE_COLLECTION
from tests.fix_cli import start_cdc

ORININU_MAPPING = Path(__file__).parents[2] / "schema" / "orininu.mapping.toml"
MOVED = "positions moved past what the target holds"


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def stale_of(line_source: str) -> int:
    """The stale count of a `cdc run` or `cdc snapshot` summary line."""
    found = re.search(r"\((\d+) stale, \d+ rejected\)", line_source)
    assert found, line_source
    return int(found.group(1))


def change_rows(dsn, tag):
    """Updates of existing rows (every 3rd user and artist), an insert and a delete: one transaction each."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE users SET full_name = %s || user_id WHERE user_id %% 3 = 0", [tag])
        conn.execute("UPDATE artists SET monthly_listeners = monthly_listeners + 1 WHERE artist_id % 3 = 1")
        conn.execute("INSERT INTO users (username, email) VALUES (%s, %s)", [f"new-{tag}", f"new-{tag}@example.org"])
        conn.execute(
            "DELETE FROM user_interaction WHERE interaction_id = (SELECT min(interaction_id) FROM user_interaction)"
        )


def sequence_value(dsn, name):
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT last_value FROM cdc.{name}").fetchone()  # a fixed name, not input
    assert row is not None
    return int(row[0])


def target(env):
    client = pymongo.MongoClient(env["CDC_MONGO_URI"])
    return client, client[env["CDC_MONGO_DB"]]


def highest_pos(database):
    best = 0
    for name in database.list_collection_names():
        if not name.startswith("_cdc"):
            doc = database[name].find_one({}, {"_cdc.pos": 1}, sort=[("_cdc.pos", -1)])
            best = max(best, int(doc["_cdc"]["pos"]) if doc else 0)
    return best


@pytest.mark.parametrize("mapping", ["none", "orininu"])
def test_a_reinstall_moves_positions_past_the_target_and_nothing_is_stale(dbs, cdc, tmp_path, mapping):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    install = ("install",) if mapping == "none" else ("install", "--mapping", str(ORININU_MAPPING))
    ok(cdc("generate", "--scale", "tiny", env=env))
    ok(cdc(*install, env=env))
    ok(cdc("snapshot", env=env))
    change_rows(dsn := dbs.pg_dsn, "first")
    ok(cdc("run", "--once", env=env))
    ok(cdc("verify", env=env))
    client, database = target(env)
    held = highest_pos(database)
    last_batch = database[APPLIED_COLLECTION].find_one({}, sort=[("_id", -1)])["_id"]

    ok(cdc("uninstall", "--yes", env=env))
    ok(cdc(*install, env=env))
    assert sequence_value(dsn, "position_seq") < held  # the new install starts at 1 again
    change_rows(dsn, "between")  # captured before anything realigned: positions below the target's

    snap = ok(cdc("snapshot", env=env))
    assert MOVED in snap.stderr, snap.stderr
    assert stale_of(snap.stdout) == 0, snap.stdout
    assert sequence_value(dsn, "position_seq") > held
    assert sequence_value(dsn, "batch_seq") > last_batch
    ok(cdc("verify", env=env))

    change_rows(dsn, "after")
    run = ok(cdc("run", "--once", env=env))
    assert MOVED not in run.stderr  # aligned once; the worker found nothing to move
    assert stale_of(run.stdout) == 0, run.stdout
    assert not run.stdout.rstrip().endswith("applied 0 batches, 0 changes (0 stale, 0 rejected)"), run.stdout
    ok(cdc("verify", env=env))
    client.close()


def test_writes_captured_before_the_worker_starts_are_not_stale_after_a_reinstall(dbs, cdc, tmp_path):
    """No snapshot after the re-install: the outbox's positions, taken below the target's, are moved."""
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    for args in (("generate", "--scale", "tiny"), ("install",), ("snapshot",)):
        ok(cdc(*args, env=env))
    ok(cdc("uninstall", "--yes", env=env))
    ok(cdc("install", env=env))
    change_rows(dbs.pg_dsn, "between")
    run = ok(cdc("run", "--once", env=env))
    assert MOVED in run.stderr, run.stderr
    assert stale_of(run.stdout) == 0, run.stdout
    ok(cdc("verify", env=env))


def drained(cdc, env):
    """Wait until the running worker applied everything captured."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = cdc("status", "--json", "--max-backlog", "0", env=env)
        if status.returncode == 0 and '"unapplied_batches":0' in status.stdout:
            return
        time.sleep(0.5)
    pytest.fail("the worker did not drain the outbox: " + status.stdout + status.stderr)


def test_a_running_worker_follows_a_reinstall_under_it(dbs, cdc, tmp_path):
    """`cdc uninstall` and `cdc install` while `cdc run --listen` keeps its lock: it sees the new install."""
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    for args in (("generate", "--scale", "tiny"), ("install",), ("snapshot",)):
        ok(cdc(*args, env=env))
    worker = start_cdc("run", "--listen", "--interval", "1", env=env)
    try:
        change_rows(dbs.pg_dsn, "before")
        drained(cdc, env)  # (an uninstall drops the changes still waiting)
        ok(cdc("uninstall", "--yes", env=env))
        ok(cdc("install", env=env))
        change_rows(dbs.pg_dsn, "after")
        drained(cdc, env)
    finally:
        worker.terminate()
        try:
            stdout, stderr = worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            stdout, stderr = worker.communicate()
    assert worker.returncode == 0, stderr[-3000:]
    assert MOVED in stderr, stderr[-3000:]
    assert stale_of(stdout) == 0, stdout
    ok(cdc("verify", env=env))


def test_a_snapshot_mostly_refused_as_stale_exits_1_and_says_what_to_do(dbs, cdc, tmp_path):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    for args in (("generate", "--scale", "tiny"), ("install",), ("snapshot",)):
        ok(cdc(*args, env=env))
    client, database = target(env)
    assert database[STATE_COLLECTION].count_documents({}) == 1
    # documents of another install, with versions far above this one's (the target's record is lower)
    database.artists.update_many({}, {"$set": {"_cdc.pos": Int64(10**15)}})
    artists = database.artists.count_documents({})

    refused = cdc("snapshot", "--tables", "artists", env=env)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.startswith("cdc:")]
    assert len(lines) == 1, refused.stderr
    assert f"{artists} of {artists} writes were refused as stale" in lines[0], lines[0]
    assert f"drop the collection {STATE_COLLECTION}" in lines[0], lines[0]
    assert "Traceback" not in refused.stderr

    # what the line says to do: without its record, the target's documents are read for their versions
    database.drop_collection(STATE_COLLECTION)
    again = ok(cdc("snapshot", "--tables", "artists", env=env))
    assert MOVED in again.stderr, again.stderr
    assert stale_of(again.stdout) == 0, again.stdout
    assert sequence_value(dbs.pg_dsn, "position_seq") > 10**15
    assert database[STATE_COLLECTION].find_one()["version"] > 10**15
    ok(cdc("verify", env=env))
    client.close()


@pytest.fixture
def worker_dsn(dbs):
    """A login role of its own (granted by `cdc install --grant`), and its DSN."""
    role, password = f"cdc_worker_{uuid.uuid4().hex[:8]}", "worker-pw-reinstall"
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    info = psycopg.conninfo.conninfo_to_dict(dbs.pg_dsn)
    info.update(user=role, password=password)
    yield role, psycopg.conninfo.make_conninfo(**info)
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_that_may_not_move_the_sequences_is_told_the_grant(dbs, cdc, tmp_path, worker_dsn):
    role, dsn = worker_dsn
    owner = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    for args in (("generate", "--scale", "tiny"), ("install", "--grant", role), ("snapshot",)):
        ok(cdc(*args, env=owner))
    ok(cdc("uninstall", "--yes", env=owner))
    ok(cdc("install", "--grant", role, env=owner))
    revoke = sql.SQL("REVOKE UPDATE ON SEQUENCE cdc.position_seq, cdc.batch_seq FROM {}").format(sql.Identifier(role))
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(revoke)
    worker = {**owner, "CDC_PG_DSN": dsn}

    refused = cdc("run", "--once", env=worker)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert f"GRANT UPDATE ON SEQUENCE cdc.position_seq, cdc.batch_seq TO {role}" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT UPDATE ON SEQUENCE cdc.position_seq, cdc.batch_seq TO {}").format(sql.Identifier(role))
        )
    snap = ok(cdc("snapshot", env=worker))
    assert MOVED in snap.stderr, snap.stderr
    assert stale_of(snap.stdout) == 0, snap.stdout
    ok(cdc("verify", env=worker))


def test_rows_deleted_and_changed_while_capture_was_uninstalled_are_right_after_the_snapshot(dbs, cdc, tmp_path):
    """Between an uninstall and the next install nothing is captured: the snapshot after the install
    writes every row again and removes the documents of rows deleted meanwhile."""
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    ok(cdc("generate", "--scale", "tiny", env=env))
    ok(cdc("install", env=env))
    ok(cdc("snapshot", env=env))
    ok(cdc("uninstall", "--yes", env=env))
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM playlists WHERE playlist_id % 4 = 0")  # cascades to playlist_songs
        conn.execute("UPDATE songs SET title = 'while uninstalled' WHERE song_id % 5 = 0")
    ok(cdc("install", env=env))
    snapshot = ok(cdc("snapshot", env=env))
    assert stale_of(snapshot.stdout) == 0
    swept = re.search(r"(\d+) documents of rows gone removed", snapshot.stdout)
    assert swept and int(swept.group(1)) > 0, snapshot.stdout
    ok(cdc("verify", env=env))


def test_a_row_inserted_by_a_transaction_open_when_the_snapshot_starts_is_not_swept(dbs, cdc, tmp_path):
    """Its change has a position below the snapshot's start, and the page of its key may be read before
    it commits: the snapshot waits for it before its pages, so its document stays."""
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    ok(cdc("generate", "--scale", "tiny", env=env))
    ok(cdc("install", env=env))
    ok(cdc("snapshot", env=env))
    with psycopg.connect(dbs.pg_dsn) as open_writer:
        open_writer.execute("INSERT INTO artists (name) VALUES ('committed late')")  # its position is taken now
        snapshot = start_cdc("snapshot", env=env)
        time.sleep(2.0)
        assert snapshot.poll() is None  # waiting for the open transaction
        open_writer.commit()
    _out, err = snapshot.communicate(timeout=120)
    assert snapshot.returncode == 0, err
    ok(cdc("run", "--once", env=env))  # the late change itself
    ok(cdc("verify", env=env))
    client, database = target(env)
    try:
        assert database.artists.count_documents({"name": "committed late"}) == 1
    finally:
        client.close()


def test_an_uninstall_that_meets_a_deadlock_with_a_writer_is_tried_again(dbs, cdc, tmp_path):
    """`cdc uninstall` locks every captured table in turn; a writer that holds one of them and then asks
    for one the uninstall already holds makes a deadlock. PostgreSQL aborts the uninstall (the writer
    checks for deadlocks only after 30 s), and the uninstall runs again and succeeds: all or nothing,
    as install is."""
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_DATA_DIR": str(tmp_path / "data")}
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        for name in ("dl_first", "dl_second"):
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v int)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 0)").format(sql.Identifier(name)))
    ok(cdc("install", "--tables", "dl_first,dl_second", env=env))
    with psycopg.connect(dbs.pg_dsn) as conn:
        # the order uninstall releases them in (its own read of the catalog)
        order = [row[0] for row in conn.execute("SELECT relid::regclass::text FROM cdc.captured").fetchall()]
    first, last = sql.Identifier(order[0]), sql.Identifier(order[-1])
    with psycopg.connect(dbs.pg_dsn) as writer:
        # the uninstall, waiting first and checking after 1 s, is the one PostgreSQL aborts
        writer.execute("SET deadlock_timeout = '30s'")
        writer.execute("SET statement_timeout = '60s'")
        writer.execute(sql.SQL("UPDATE {} SET v = v + 1").format(last))  # holds the table uninstall takes last
        uninstall = start_cdc("uninstall", "--yes", env=env)
        try:
            deadline = time.monotonic() + 60
            with psycopg.connect(dbs.pg_dsn, autocommit=True) as probe:
                while not probe.execute(
                    "SELECT EXISTS (SELECT FROM pg_locks WHERE NOT granted AND relation = %s::regclass"
                    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
                    [order[-1]],
                ).fetchone()[0]:
                    assert time.monotonic() < deadline and uninstall.poll() is None, "uninstall never waited"
                    time.sleep(0.05)
            writer.execute(sql.SQL("UPDATE {} SET v = v + 1").format(first))  # held by the uninstall: a cycle
            writer.commit()
            _out, err = uninstall.communicate(timeout=120)
        finally:
            if uninstall.poll() is None:
                uninstall.kill()
                uninstall.communicate()
    assert uninstall.returncode == 0, err
    assert "removing capture: deadlock detected" in err and "trying again" in err, err
    with psycopg.connect(dbs.pg_dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('cdc') IS NULL").fetchone()[0]
        triggers = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid IN ('dl_first'::regclass, 'dl_second'::regclass)"
        ).fetchone()[0]
        assert triggers == 0
