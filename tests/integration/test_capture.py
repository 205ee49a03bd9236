"""cdc install / uninstall / export on real PostgreSQL: refusals, triggers, truncate, schema changes."""

import orjson
import psycopg
import pytest

from cdc.archive import folders as archive
from cdc.capture import install as capture
from cdc.capture import tables
from cdc.export import batch as drain
from cdc.infra import pg
from cdc.infra.errors import ArchiveError, ConfigError, RowSecurityError
from tests.archive_model import ModelStore
from tests.mongoimport_check import mongoimport_parse


def run_sql(dsn, *statements):
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def export_all(dsn, archive_dir, batch_size=10_000):
    exported = []
    with drain.drain_connection(dsn) as conn:
        while (batch := drain.export_batch(conn, archive_dir, batch_size=batch_size)) is not None:
            exported.append(batch)
    return exported


def lines(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def batch_files(batch_path, op):
    return archive.read_batch(batch_path).files(op)


def test_install_is_idempotent_and_triggers_are_enable_always(pg_dsn, cdc):
    env = {"CDC_PG_DSN": pg_dsn}
    for _ in range(2):
        result = cdc("install", env=env)
        assert result.returncode == 0, result.stderr
    with psycopg.connect(pg_dsn) as conn:
        triggers = conn.execute(
            "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger"
            " WHERE tgname LIKE 'cdc_capture_%' ORDER BY 1, 2"
        ).fetchall()
    assert len(triggers) == 7 * 4
    assert {row[2] for row in triggers} == {"A"}  # ENABLE ALWAYS


def test_refusals_leave_nothing_installed(pg_dsn, cdc):
    run_sql(
        pg_dsn,
        "CREATE TABLE nokey (x int)",
        "CREATE TABLE reserved (id int PRIMARY KEY, _cdc int)",
        'CREATE TABLE dollar (id int PRIMARY KEY, "$set" int)',
    )
    env = {"CDC_PG_DSN": pg_dsn}
    for table, message in (("nokey", "no primary key"), ("reserved", "'_cdc'"), ("dollar", "starting with '$'")):
        result = cdc("install", "--tables", f"users,{table}", env=env)
        assert result.returncode == 1
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    missing = cdc("install", "--tables", "no_such_table", env=env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regnamespace('cdc')").fetchone() == (None,)


def test_export_cli_writes_batches_mongoimport_accepts(pg_dsn, cdc, tmp_path):
    env = {"CDC_PG_DSN": pg_dsn, "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    assert cdc("generate", "--scale", "tiny", env=env).returncode == 0
    assert cdc("install", env=env).returncode == 0
    assert cdc("workload", "--rate", "200", "--duration", "3", "--no-long-transactions", env=env).returncode == 0
    result = cdc("export", "--once", "--batch-size", "100", env=env)
    assert result.returncode == 0, result.stderr
    paths = archive.batch_paths(tmp_path / "archive")
    assert len(paths) >= 2
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o700
        for child in path.iterdir():
            assert child.stat().st_mode & 0o777 == 0o600
    files = [file for path in paths for file in path.glob("*.jsonl") if file.name != "rejected.jsonl"]
    assert len(mongoimport_parse(*files)) > 100
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM cdc.outbox").fetchone() == (0,)
        states = conn.execute("SELECT DISTINCT state FROM cdc.batches").fetchall()
    assert states == [("exported",)]


def test_replica_role_does_not_bypass_capture_and_pk_change_deletes_old_key(pg_dsn, tmp_path):
    with pg.connect(pg_dsn) as conn:
        capture.install(conn, ["artists"])
    run_sql(pg_dsn, "INSERT INTO artists (artist_id, name) VALUES (1, 'A'), (2, 'B')")
    run_sql(pg_dsn, "SET session_replication_role = replica; UPDATE artists SET name = 'A2' WHERE artist_id = 1")
    run_sql(pg_dsn, "UPDATE artists SET artist_id = 3 WHERE artist_id = 2")
    [batch] = export_all(pg_dsn, tmp_path)
    [(_, upserts)] = batch_files(batch.path, "upsert")
    [(_, deletes)] = batch_files(batch.path, "delete")
    by_id = {int(doc["_id"]["$numberLong"]): doc for doc in lines(upserts)}
    assert by_id[1]["name"] == "A2"
    assert set(by_id) == {1, 3}
    assert [int(doc["_id"]["$numberLong"]) for doc in lines(deletes)] == [2]
    assert all("pos" in doc["_cdc"] for doc in lines(deletes))


def test_truncate_becomes_a_marker_with_its_position(pg_dsn, tmp_path):
    with pg.connect(pg_dsn) as conn:
        capture.install(conn, ["artists"])
    run_sql(pg_dsn, "INSERT INTO artists (artist_id, name) VALUES (1, 'A')")
    run_sql(pg_dsn, "TRUNCATE artists CASCADE")
    run_sql(pg_dsn, "INSERT INTO artists (artist_id, name) VALUES (2, 'B')")
    [batch] = export_all(pg_dsn, tmp_path)
    manifest = archive.read_batch(batch.path).manifest
    [marker] = manifest["truncates"]
    assert marker["collection"] == "artists"
    model = ModelStore()
    model.collection("artists")[b'{"$numberLong":"9"}'] = {
        "_id": {"$numberLong": "9"},
        "_cdc": {"pos": {"$numberLong": "0"}},
    }
    model.apply_archive(tmp_path)
    ids = sorted(doc["_id"]["$numberLong"] for doc in model.collection("artists").values())
    assert ids == ["2"]  # the older document and the truncated row are gone


def test_schema_changes_are_picked_up_at_the_next_batch(pg_dsn, tmp_path):
    with pg.connect(pg_dsn) as conn:
        capture.install(conn, ["artists"])
    run_sql(pg_dsn, "INSERT INTO artists (artist_id, name) VALUES (1, 'A')")
    export_all(pg_dsn, tmp_path / "a")
    run_sql(
        pg_dsn,
        "ALTER TABLE artists ADD COLUMN label text DEFAULT 'indie'",
        "ALTER TABLE artists RENAME COLUMN name TO stage_name",
        "ALTER TABLE artists DROP COLUMN verified",
        "UPDATE artists SET stage_name = 'A!' WHERE artist_id = 1",
    )
    [batch] = export_all(pg_dsn, tmp_path / "b")
    [(_, upserts)] = batch_files(batch.path, "upsert")
    [doc] = lines(upserts)
    assert doc["stage_name"] == "A!" and doc["label"] == "indie"
    assert "name" not in doc and "verified" not in doc


def test_dropped_and_recreated_table_is_reported(pg_dsn):
    run_sql(pg_dsn, "CREATE TABLE gone (id int PRIMARY KEY)")
    with pg.connect(pg_dsn) as conn:
        capture.install(conn, ["gone", "artists"])
    run_sql(pg_dsn, "DROP TABLE gone", "CREATE TABLE gone (id int PRIMARY KEY)")
    with pg.connect(pg_dsn) as conn:
        state = {table.name: table for table in capture.captured_tables(conn)}
    assert state["artists"].healthy
    assert not state["gone"].healthy
    assert state["gone"].recreated_as is not None


def test_row_level_security_is_refused(pg_dsn, tmp_path):
    with pg.connect(pg_dsn) as conn:
        capture.install(conn, ["artists"])
    role = f"cdc_rls_{tmp_path.name[-8:]}".lower().replace("-", "_")
    run_sql(
        pg_dsn,
        f"CREATE ROLE {role} LOGIN PASSWORD 'rls-pass-123'",
        f"GRANT USAGE ON SCHEMA cdc TO {role}",
        f"GRANT ALL ON ALL TABLES IN SCHEMA cdc TO {role}",
        f"GRANT ALL ON ALL SEQUENCES IN SCHEMA cdc TO {role}",
        f"GRANT SELECT ON artists TO {role}",
        "ALTER TABLE artists ENABLE ROW LEVEL SECURITY",
        "INSERT INTO artists (artist_id, name) VALUES (1, 'hidden')",
    )
    info = psycopg.conninfo.conninfo_to_dict(pg_dsn)
    info.update(user=role, password="rls-pass-123")
    try:
        with (
            drain.drain_connection(psycopg.conninfo.make_conninfo(**info)) as conn,
            pytest.raises(RowSecurityError, match="row-level security"),
        ):
            drain.export_batch(conn, tmp_path, batch_size=100)
    finally:
        run_sql(pg_dsn, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
    assert not list(tmp_path.glob(".partial-*"))


def test_partial_batch_is_never_read(tmp_path):
    writer = archive.BatchWriter(tmp_path, 7)
    writer.write("users", "upsert", b'{"_id": 1}\n')
    writer.finish(1, 1)
    assert archive.batch_paths(tmp_path) == []  # still partial: not a batch
    published = writer.publish()
    assert archive.read_batch(published).batch_id == 7
    (published / archive.MANIFEST).unlink()
    with pytest.raises(ArchiveError, match="incomplete"):
        archive.read_batch(published)


def test_tampered_file_fails_its_checksum(tmp_path):
    writer = archive.BatchWriter(tmp_path, 8)
    writer.write("users", "upsert", b'{"_id": 1}\n')
    writer.finish(1, 1)
    path = writer.publish()
    [(_, upserts)] = archive.read_batch(path).files("upsert")
    upserts.write_bytes(b'{"_id": 2}\n')
    with pytest.raises(ArchiveError, match="checksum"):
        archive.read_batch(path)


def test_install_refuses_unknown_table_without_side_effects(pg_dsn):
    with pg.connect(pg_dsn) as conn, pytest.raises(ConfigError):
        capture.install(conn, ["missing"])
    with pg.connect(pg_dsn) as conn:
        assert tables.resolve(conn, "public", "users") > 0
