import os
import signal
import time

import psycopg

from generator.hashes import table_hashes
from tests.fix_cli import start_cdc

WORKLOAD_SECONDS = os.environ.get("CDC_TEST_WORKLOAD_SECONDS", "6")


def hashes(dsn):
    with psycopg.connect(dsn) as conn:
        return table_hashes(conn)


def test_same_seed_gives_identical_tables_and_other_seed_differs(new_pg_database, cdc):
    first, second, third = new_pg_database(), new_pg_database(), new_pg_database()
    for dsn, seed in ((first, "5"), (second, "5"), (third, "6")):
        result = cdc("generate", "--scale", "tiny", "--seed", seed, env={"CDC_PG_DSN": dsn})
        assert result.returncode == 0, result.stderr
    assert hashes(first) == hashes(second)
    assert hashes(first)["users"][0] > 0
    assert hashes(first)["users"] != hashes(third)["users"]


def test_summary_reports_rows_per_table(pg_dsn, cdc):
    result = cdc("generate", "--scale", "tiny", env={"CDC_PG_DSN": pg_dsn})
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.strip()}
    assert lines["user_interaction"][1] == "1200"
    assert lines["total"][1] == "2094"


def test_generate_refuses_a_loaded_database_without_replace(pg_dsn, cdc):
    env = {"CDC_PG_DSN": pg_dsn}
    assert cdc("generate", "--scale", "tiny", env=env).returncode == 0
    again = cdc("generate", "--scale", "tiny", env=env)
    assert again.returncode == 2
    assert "--replace" in again.stderr
    before = hashes(pg_dsn)
    replaced = cdc("generate", "--scale", "tiny", "--replace", env=env)
    assert replaced.returncode == 0, replaced.stderr
    assert hashes(pg_dsn) == before


def test_csv_round_trip(new_pg_database, cdc, tmp_path):
    source, target = new_pg_database(), new_pg_database()
    result = cdc("generate", "--scale", "tiny", "--csv", str(tmp_path / "csv"), env={"CDC_PG_DSN": source})
    assert result.returncode == 0, result.stderr
    header = (tmp_path / "csv" / "users.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith("user_id,public_id,username")
    from generator.csv_io import import_csv

    with psycopg.connect(target) as conn:
        import_csv(conn, tmp_path / "csv")
    assert hashes(target) == hashes(source)


def test_schema_check_is_clean_after_generate_and_workload(pg_dsn, cdc):
    env = {"CDC_PG_DSN": pg_dsn}
    assert cdc("generate", "--scale", "tiny", env=env).returncode == 0
    assert cdc("schema", "check", env=env).returncode == 0
    before = hashes(pg_dsn)
    result = cdc("workload", "--rate", "100", "--duration", WORKLOAD_SECONDS, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "changes/s" in result.stdout
    assert "0 failed transactions" in result.stdout
    after = hashes(pg_dsn)
    assert after["user_interaction"] != before["user_interaction"]
    assert after["playlist_songs"] != before["playlist_songs"]
    check = cdc("schema", "check", env=env)
    assert check.returncode == 0, check.stdout + check.stderr


def test_workload_stops_cleanly_on_sigterm(pg_dsn, cdc):
    env = {"CDC_PG_DSN": pg_dsn}
    assert cdc("generate", "--scale", "tiny", env=env).returncode == 0
    process = start_cdc("workload", "--rate", "50", "--duration", "0", env=env)
    time.sleep(4)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "changes in" in stdout
    with psycopg.connect(pg_dsn) as conn:
        idle = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert idle == (0,)
