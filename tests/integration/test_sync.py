"""The applying half on real servers: run, replay, stale batches, crashes, snapshot under load, verify."""

import os
import subprocess
import time
from pathlib import Path

import psycopg
import pymongo
import pytest

from cdc.archive import folders as archive
from tests.fix_cli import start_cdc

FAULT_POINTS = ["after_claim", "mid_archive", "before_commit", "after_commit", "mid_bulk_write", "before_mark_applied"]


@pytest.fixture
def loaded(dbs, cdc, tmp_path):
    """Orininu tiny data, capture installed, snapshot applied; returns the env for `cdc`."""
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_DATA_DIR": str(tmp_path / "data")}
    for args in (("generate", "--scale", "tiny"), ("install",), ("snapshot",)):
        result = cdc(*args, env=env)
        assert result.returncode == 0, result.stderr
    return env


def verify_clean(cdc, env):
    result = cdc("verify", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def workload(cdc, env, seconds="3", rate="150"):
    result = cdc("workload", "--rate", rate, "--duration", seconds, "--no-long-transactions", env=env, timeout=120)
    assert result.returncode == 0, result.stderr


def collection_state(env):
    client = pymongo.MongoClient(env["CDC_MONGO_URI"])
    database = client[env["CDC_MONGO_DB"]]
    state = {
        name: sorted(database[name].find({}), key=lambda doc: str(doc["_id"]))
        for name in database.list_collection_names()
        if not name.startswith("_cdc")
    }
    client.close()
    return state


def test_snapshot_then_run_once_then_verify_is_clean(loaded, cdc):
    first = verify_clean(cdc, loaded)
    assert "dql top_songs            same answer on both sides" in first.stdout
    assert "dql plays_per_user       same answer on both sides" in first.stdout
    workload(cdc, loaded)
    result = cdc("run", "--once", "--batch-size", "200", env=loaded)
    assert result.returncode == 0, result.stderr
    verify_clean(cdc, loaded)
    status = cdc("status", "--json", "--max-backlog", "0", env=loaded)
    assert status.returncode == 0, status.stdout + status.stderr
    assert '"backlog_changes":0' in status.stdout


def test_verify_finds_and_repairs_differences(loaded, cdc):
    client = pymongo.MongoClient(loaded["CDC_MONGO_URI"])
    database = client[loaded["CDC_MONGO_DB"]]
    database.users.update_one({}, {"$set": {"email": "tampered@example.com"}})
    database.artists.delete_one({})
    database.albums.insert_one({"_id": 10**12, "title": "ghost", "_cdc": {"pos": 1}})
    client.close()
    found = cdc("verify", env=loaded)
    assert found.returncode == 1
    assert "users" in found.stdout and "different=1" in found.stdout
    assert "missing=1" in found.stdout and "extra=1" in found.stdout
    repaired = cdc("verify", "--repair", env=loaded)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    verify_clean(cdc, loaded)


def test_replay_into_empty_database_rebuilds_and_twice_changes_nothing(loaded, cdc, tmp_path):
    workload(cdc, loaded)
    assert cdc("run", "--once", "--batch-size", "300", env=loaded).returncode == 0
    expected = collection_state(loaded)
    rebuilt = {**loaded, "CDC_MONGO_DB": loaded["CDC_MONGO_DB"] + "_replay"}
    try:
        first = cdc("replay", loaded["CDC_ARCHIVE_DIR"], env=rebuilt)
        assert first.returncode == 0, first.stderr
        assert collection_state(rebuilt) == expected
        again = cdc("replay", loaded["CDC_ARCHIVE_DIR"], env=rebuilt)
        assert "replayed 0 batches" in again.stdout
        forced = cdc("replay", loaded["CDC_ARCHIVE_DIR"], "--force", env=rebuilt)
        assert forced.returncode == 0, forced.stderr
        assert collection_state(rebuilt) == expected
    finally:
        client = pymongo.MongoClient(loaded["CDC_MONGO_URI"])
        client.drop_database(rebuilt["CDC_MONGO_DB"])
        client.close()


def test_an_older_batch_applied_after_a_newer_one_changes_nothing(loaded, cdc):
    workload(cdc, loaded)
    assert cdc("run", "--once", "--batch-size", "100", env=loaded).returncode == 0
    paths = archive.batch_paths(Path(loaded["CDC_ARCHIVE_DIR"]))
    assert len(paths) >= 3
    before = collection_state(loaded)
    scratch = Path(loaded["CDC_DATA_DIR"]) / "old"
    scratch.mkdir(parents=True)
    os.symlink(paths[1], scratch / paths[1].name)
    result = cdc("replay", str(scratch), "--force", env=loaded)
    assert result.returncode == 0, result.stderr
    assert collection_state(loaded) == before
    verify_clean(cdc, loaded)


@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_worker_killed_at_a_fault_point_loses_nothing(loaded, cdc, fault):
    workload(cdc, loaded, seconds="2")
    crashed = cdc("run", "--once", "--batch-size", "150", env={**loaded, "CDC_FAULT_POINT": fault})
    assert crashed.returncode == -9, (crashed.returncode, crashed.stderr)
    workload(cdc, loaded, seconds="1")
    recovered = cdc("run", "--once", env=loaded)
    assert recovered.returncode == 0, recovered.stderr
    verify_clean(cdc, loaded)


def test_snapshot_during_a_live_workload_is_consistent(dbs, cdc, tmp_path):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    assert cdc("generate", "--scale", "0.05", env=env).returncode == 0
    assert cdc("install", env=env).returncode == 0
    live = start_cdc("workload", "--rate", "150", "--duration", "8", env=env, stdout=subprocess.DEVNULL)
    time.sleep(1)
    snap = cdc("snapshot", "--batch-size", "500", env=env)
    assert snap.returncode == 0, snap.stderr
    _, live_errors = live.communicate(timeout=120)
    assert live.returncode == 0, live_errors
    assert cdc("run", "--once", env=env).returncode == 0
    verify_clean(cdc, env)


def test_listen_worker_applies_changes_without_waiting_for_the_poll(loaded, cdc):
    worker = start_cdc("run", "--listen", "--interval", "300", env=loaded)
    try:
        time.sleep(2)
        with psycopg.connect(loaded["CDC_PG_DSN"], autocommit=True) as conn:
            conn.execute("UPDATE artists SET name = 'Woken Up' WHERE artist_id = 1")
        client = pymongo.MongoClient(loaded["CDC_MONGO_URI"])
        deadline = time.monotonic() + 60
        document = None
        while time.monotonic() < deadline:
            document = client[loaded["CDC_MONGO_DB"]].artists.find_one({"name": "Woken Up"})
            if document:
                break
            time.sleep(0.1)
        client.close()
        assert document is not None
    finally:
        worker.terminate()
        stdout, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr
    assert "applied" in stdout


def test_snapshot_killed_mid_chunk_then_rerun_is_consistent(dbs, cdc, tmp_path):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    assert cdc("generate", "--scale", "tiny", env=env).returncode == 0
    assert cdc("install", env=env).returncode == 0
    crashed = cdc("snapshot", env={**env, "CDC_FAULT_POINT": "snapshot_chunk", "CDC_FAULT_AFTER": "3"})
    assert crashed.returncode == -9
    again = cdc("snapshot", env=env)
    assert again.returncode == 0, again.stderr
    verify_clean(cdc, env)
