"""`cdc replay` and a lost batch folder, on real servers: a batch the ledger committed and the target
does not hold stops the replay before anything is applied; an id burned by an interrupted export
does not; without PostgreSQL the gaps the ledger would settle are warnings that say so."""

import shutil

import psycopg
import pymongo
import pytest

from cdc.archive import folders as archive


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def add_user(dsn, n):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (username, email, full_name) VALUES (%s, %s, %s)",
            [f"lost{n}", f"lost{n}@example.org", f"L {n}"],
        )


def folder(archive_dir, batch_id):
    return archive_dir / archive.batch_folder_name(batch_id)


def batch_ids(archive_dir):
    return [int(path.name) for path in archive.batch_paths(archive_dir)]


def users_in(env):
    client = pymongo.MongoClient(env["CDC_MONGO_URI"])
    try:
        return client[env["CDC_MONGO_DB"]]["users"].count_documents({})
    finally:
        client.close()


@pytest.fixture
def env(dbs, tmp_path):
    return {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_DATA_DIR": str(tmp_path / "data")}


@pytest.fixture
def three_batches(env, cdc, tmp_path):
    """Users captured; three one-key batches exported and applied by `cdc run`."""
    ok(cdc("install", "--tables", "users", env=env))
    for n in range(3):  # one statement each: three batches of one key
        add_user(env["CDC_PG_DSN"], n)
    ok(cdc("run", "--once", "--batch-size", "1", env=env))
    archive_dir = tmp_path / "archive"
    assert batch_ids(archive_dir) == [1, 2, 3]
    return archive_dir


@pytest.fixture
def rebuilt(env, mongo_uri):
    """The env of an empty MongoDB database to rebuild into; dropped afterwards."""
    target = {**env, "CDC_MONGO_DB": env["CDC_MONGO_DB"] + "_rebuilt"}
    yield target
    client = pymongo.MongoClient(mongo_uri)
    client.drop_database(target["CDC_MONGO_DB"])
    client.close()


def without_postgres(env, **extra):
    """The env with no PostgreSQL at all (CDC_DATA_DIR names a folder without a stack)."""
    return {key: value for key, value in env.items() if key != "CDC_PG_DSN"} | extra


@pytest.mark.parametrize("lost", [2, 3, 1], ids=["middle", "last", "first"])
def test_a_lost_folder_the_ledger_committed_stops_the_replay_before_anything_is_applied(
    three_batches, rebuilt, cdc, lost
):
    shutil.rmtree(folder(three_batches, lost))
    refused = cdc("replay", str(three_batches), env=rebuilt)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert f"batches {lost} are missing from" in lines[0]
    assert "the ledger records them as exported" in lines[0]
    assert "Traceback" not in refused.stderr
    assert users_in(rebuilt) == 0  # refused before applying anything
    assert "replayed" not in refused.stdout


def test_a_lost_folder_the_target_already_holds_is_a_warning(three_batches, env, cdc):
    shutil.rmtree(folder(three_batches, 2))
    live = ok(cdc("replay", str(three_batches), env=env))  # the live target applied 1-3 itself
    assert "batches 2 are missing" in live.stderr and "already records them as applied" in live.stderr
    assert "replayed 0 batches, skipped 2 already applied" in live.stdout
    forced = ok(cdc("replay", str(three_batches), "--force", env=env))
    assert "replayed 2 batches" in forced.stdout
    assert users_in(env) == 3


def test_replay_after_the_lost_folder_with_from_is_allowed(three_batches, env, rebuilt, cdc):
    shutil.rmtree(folder(three_batches, 2))
    refused = cdc("replay", str(three_batches), env=rebuilt)
    assert refused.returncode == 1
    assert "--from 3" in refused.stderr
    later = ok(cdc("replay", str(three_batches), "--from", "3", env=rebuilt))
    assert "replayed 1 batches" in later.stdout
    assert users_in(rebuilt) == 1


def test_an_id_burned_by_an_interrupted_export_is_a_warning_and_the_replay_is_complete(env, rebuilt, cdc, tmp_path):
    dsn, archive_dir = env["CDC_PG_DSN"], tmp_path / "archive"
    ok(cdc("install", "--tables", "users", env=env))
    add_user(dsn, 0)
    ok(cdc("run", "--once", env=env))  # batch 1
    add_user(dsn, 1)
    crashed = cdc("run", "--once", env={**env, "CDC_FAULT_POINT": "before_commit"})
    assert crashed.returncode == -9, crashed.stderr  # killed with batch 2 claimed, never committed
    ok(cdc("run", "--once", env=env))  # the changes go out again as batch 3
    assert batch_ids(archive_dir) == [1, 3]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT batch_id FROM cdc.batches ORDER BY 1").fetchall() == [(1,), (3,)]

    result = ok(cdc("replay", str(archive_dir), env=rebuilt))
    assert "batch ids 2 are missing" in result.stderr and "the ledger never committed them" in result.stderr
    assert "replayed 2 batches" in result.stdout
    assert users_in(rebuilt) == 2


def test_without_postgres_a_gap_the_target_never_recorded_is_a_warning_naming_the_ledger(
    three_batches, env, rebuilt, cdc
):
    shutil.rmtree(folder(three_batches, 2))
    alone = without_postgres(rebuilt)
    result = ok(cdc("replay", str(three_batches), env=alone))
    assert "batch ids 2 are missing" in result.stderr
    assert "the ledger could not be consulted (no PostgreSQL configured)" in result.stderr
    assert "replayed 2 batches" in result.stdout
    # a configured PostgreSQL that does not answer says why
    down = without_postgres(rebuilt, CDC_PG_DSN="postgresql://cdc@127.0.0.1:1/none?connect_timeout=2")
    again = ok(cdc("replay", str(three_batches), env=down))
    assert "the ledger could not be consulted (cannot connect to PostgreSQL" in again.stderr
    assert "replayed 0 batches, skipped 2 already applied" in again.stdout


def test_without_postgres_a_gap_the_target_recorded_is_a_warning(three_batches, env, cdc):
    shutil.rmtree(folder(three_batches, 2))
    result = ok(cdc("replay", str(three_batches), env=without_postgres(env)))
    assert "batches 2 are missing" in result.stderr and "already records them as applied" in result.stderr
    assert "could not be consulted" not in result.stderr  # the target's record settles it


def test_a_committed_batch_still_being_published_is_left_for_the_next_replay(three_batches, rebuilt, cdc):
    last = folder(three_batches, 3)
    partial = three_batches / f"{archive.PARTIAL_PREFIX}{last.name}"
    last.rename(partial)  # committed in the ledger, not yet renamed into place
    result = ok(cdc("replay", str(three_batches), env=rebuilt))
    assert "batches 3 are still being published" in result.stderr
    assert "replayed 2 batches" in result.stdout
    partial.rename(last)
    again = ok(cdc("replay", str(three_batches), env=rebuilt))
    assert "replayed 1 batches, skipped 2 already applied" in again.stdout
    assert users_in(rebuilt) == 3
    # in the middle it is not left behind: replaying past it would leave its changes out
    middle = folder(three_batches, 2)
    middle.rename(three_batches / f"{archive.PARTIAL_PREFIX}{middle.name}")
    client = pymongo.MongoClient(rebuilt["CDC_MONGO_URI"])
    client.drop_database(rebuilt["CDC_MONGO_DB"])
    client.close()
    refused = cdc("replay", str(three_batches), env=rebuilt)
    assert refused.returncode == 1
    assert "batches 2 are missing" in refused.stderr
