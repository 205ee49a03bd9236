"""Long-run hygiene on real servers: `cdc archive prune`, replay across a pruned range, and columns
excluded from capture (`cdc install --exclude`)."""

import datetime as dt

import orjson
import psycopg
import pymongo
import pytest

from cdc.archive import folders as archive
from cdc.export import batch as drain

DAYS_AGO = "now() - interval '10 days'"


def run_sql(dsn, *statements):
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def add_user(dsn, n):
    run_sql(dsn, f"INSERT INTO users (username, email, full_name) VALUES ('user{n}', 'user{n}@example.org', 'U {n}')")


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def folder(batch_id):
    return archive.batch_folder_name(batch_id)


def batch_ids(archive_dir):
    return [int(path.name) for path in archive.batch_paths(archive_dir)]


@pytest.fixture
def env(dbs, tmp_path):
    return {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}


def mongo_database(env):
    client = pymongo.MongoClient(env["CDC_MONGO_URI"], tz_aware=True)
    return client, client[env["CDC_MONGO_DB"]]


def test_prune_keeps_unapplied_recent_and_partial_batches_and_replay_reports_the_hole(env, cdc, tmp_path):
    dsn, archive_dir = env["CDC_PG_DSN"], tmp_path / "archive"
    ok(cdc("install", "--tables", "users", env=env))
    for n in range(3):  # one statement each: three batches of one key
        add_user(dsn, n)
    ok(cdc("run", "--once", "--batch-size", "1", env=env))
    add_user(dsn, 3)
    with drain.drain_connection(dsn) as conn:  # claimed and archived for `cdc run`, never applied
        pending = drain.export_batch(conn, archive_dir, batch_size=10, mode="run")
    assert pending is not None
    assert batch_ids(archive_dir) == [1, 2, 3, 4]
    run_sql(
        dsn,
        f"UPDATE cdc.batches SET claimed_at = {DAYS_AGO}, exported_at = {DAYS_AGO}, applied_at = {DAYS_AGO}"
        " WHERE batch_id IN (1, 2)",
        f"UPDATE cdc.batches SET claimed_at = {DAYS_AGO}, exported_at = {DAYS_AGO} WHERE batch_id = 4",
    )
    in_flight = archive_dir / f"{archive.PARTIAL_PREFIX}{folder(5)}"
    in_flight.mkdir()
    (in_flight / "x.upsert.jsonl").write_text("{}\n")

    dry = ok(cdc("archive", "prune", "--keep-days", "7", "--dry-run", env=env))
    assert "would remove batch 1:" in dry.stdout and "would remove batch 2:" in dry.stdout
    assert "batch 3:" not in dry.stdout and "batch 4:" not in dry.stdout
    assert "dry run: would prune 2 batches" in dry.stdout
    assert batch_ids(archive_dir) == [1, 2, 3, 4]
    assert not (archive_dir / "pruned.json").exists()

    sizes = sum(f.stat().st_size for i in (1, 2) for f in (archive_dir / folder(i)).iterdir())
    pruned = ok(cdc("archive", "prune", "--keep-days", "7", env=env))
    assert f"pruned 2 batches (2 folders, {sizes:,} bytes)" in pruned.stdout
    assert "kept 1 not applied, 1 applied within 7 days" in pruned.stdout
    assert batch_ids(archive_dir) == [3, 4]  # recent (3) and unapplied (4) stay
    assert in_flight.is_dir()
    assert orjson.loads((archive_dir / "pruned.json").read_bytes())["batches"] == [[1, 2]]
    with psycopg.connect(dsn) as conn:  # the ledger keeps its rows
        assert conn.execute("SELECT count(*) FROM cdc.batches").fetchone() == (4,)
    again = ok(cdc("archive", "prune", "--keep-days", "7", env=env))
    assert "pruned 0 batches" in again.stdout

    rebuilt = {**env, "CDC_MONGO_DB": env["CDC_MONGO_DB"] + "_rebuilt"}
    try:
        refused = cdc("replay", str(archive_dir), env=rebuilt)
        assert refused.returncode == 1
        assert "batches 1–2 were pruned" in refused.stderr
        assert "cdc snapshot" in refused.stderr and "--from 3" in refused.stderr
        client, database = mongo_database(rebuilt)
        assert database["users"].count_documents({}) == 0  # refused before applying anything
        client.close()
        after_gap = ok(cdc("replay", str(archive_dir), "--from", "3", env=rebuilt))
        assert "replayed 2 batches" in after_gap.stdout
    finally:
        client = pymongo.MongoClient(env["CDC_MONGO_URI"])
        client.drop_database(rebuilt["CDC_MONGO_DB"])
        client.close()
    live = ok(cdc("replay", str(archive_dir), env=env))  # the live target applied 1 and 2: no hole
    assert "replayed 1 batches, skipped 1 already applied" in live.stdout


def test_prune_in_export_mode_needs_the_targets_record_and_drops_the_ledger_changes(env, cdc, tmp_path):
    dsn, archive_dir = env["CDC_PG_DSN"], tmp_path / "archive"
    ok(cdc("install", "--tables", "users", env=env))
    for n in range(2):
        add_user(dsn, n)
    ok(cdc("export", "--once", "--batch-size", "1", env=env))
    ok(cdc("replay", str(archive_dir), "--to", "1", env=env))  # only batch 1 reaches the target
    run_sql(
        dsn, "UPDATE cdc.batches SET claimed_at = now() - interval '11 days', exported_at = now() - interval '11 days'"
    )
    client, database = mongo_database(env)
    database["_cdc_batches"].update_one(
        {"_id": 1}, {"$set": {"applied_at": dt.datetime.now(dt.UTC) - dt.timedelta(days=10)}}
    )
    client.close()

    pruned = ok(cdc("archive", "prune", "--keep-days", "7", env=env))
    assert "removed batch 1:" in pruned.stdout
    assert "kept 1 not applied" in pruned.stdout
    assert batch_ids(archive_dir) == [2]
    with psycopg.connect(dsn) as conn:
        left = conn.execute("SELECT DISTINCT batch_id FROM cdc.batch_changes ORDER BY 1").fetchall()
        states = conn.execute("SELECT batch_id, state FROM cdc.batches ORDER BY 1").fetchall()
    assert left == [(2,)]  # the unapplied batch keeps its changes
    assert states == [(1, "exported"), (2, "exported")]


def test_excluded_column_is_never_exported_listed_in_manifests_and_verify_is_clean(env, cdc, tmp_path):
    dsn, archive_dir = env["CDC_PG_DSN"], tmp_path / "archive"
    for n in range(3):
        add_user(dsn, n)
    installed = ok(cdc("install", "--tables", "users", "--exclude", "users.email", env=env))
    assert "excluded from users: email" in installed.stdout
    ok(cdc("snapshot", env=env))
    run_sql(dsn, "UPDATE users SET email = 'changed@example.org', full_name = 'Changed' WHERE username = 'user1'")
    ok(cdc("install", "--tables", "users", env=env))  # without --exclude: the stored exclusion stays
    ok(cdc("run", "--once", env=env))

    paths = archive.batch_paths(archive_dir)
    assert len(paths) == 2
    for path in paths:
        batch = archive.read_batch(path)
        assert batch.manifest["excluded"] == {"public.users": ["email"]}
        for _, file in batch.files("upsert"):
            for line in file.read_bytes().splitlines():
                document = orjson.loads(line)
                assert "email" not in document and "username" in document
    [(_, update_file)] = archive.read_batch(paths[-1]).files("upsert")
    assert orjson.loads(update_file.read_bytes())["full_name"] == "Changed"

    client, database = mongo_database(env)
    documents = list(database["users"].find({}))
    client.close()
    assert len(documents) == 3
    assert all("email" not in document for document in documents)
    verified = ok(cdc("verify", env=env))
    assert "missing=0 extra=0 different=0 ok" in verified.stdout
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT excluded_columns FROM cdc.captured").fetchone() == (["email"],)


def test_exclusion_refusals_are_usage_errors_and_an_old_ledger_is_migrated(pg_dsn, cdc, tmp_path):
    env = {"CDC_PG_DSN": pg_dsn, "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    for exclude, words in (
        ("users.user_id", ("user_id", "public.users", "primary key")),
        ("users.no_such_column", ("public.users", "no_such_column")),
        ("songs.title", ("songs", "not among the tables")),
        ("email", ("TABLE.COLUMN",)),
    ):
        refused = cdc("install", "--tables", "users", "--exclude", exclude, env=env)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("cdc: usage error:")
        assert all(word in lines[0] for word in words), lines[0]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('cdc')").fetchone() == (None,)

    # a ledger installed before exclusions existed: export still works, `cdc install` adds the column
    ok(cdc("install", "--tables", "users", env=env))
    run_sql(pg_dsn, "ALTER TABLE cdc.captured DROP COLUMN excluded_columns")
    add_user(pg_dsn, 1)
    ok(cdc("export", "--once", env=env))
    ok(cdc("install", "--tables", "users", "--exclude", "public.users.email", env=env))
    add_user(pg_dsn, 2)
    ok(cdc("export", "--once", env=env))
    first, second = (archive.read_batch(path) for path in archive.batch_paths(tmp_path / "archive"))
    assert first.manifest["excluded"] == {}
    assert second.manifest["excluded"] == {"public.users": ["email"]}
    cleared = ok(cdc("install", "--tables", "users", "--exclude", "", env=env))
    assert "excluded" not in cleared.stdout
