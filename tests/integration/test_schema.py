import psycopg

from cdc.demo import orininu


def catalog(dsn: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            """SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
               WHERE n.nspname = 'public' ORDER BY 1, 2, 3"""
        ).fetchall()


def test_schema_apply_twice_is_idempotent(dbs, cdc):
    before = catalog(dbs.pg_dsn)
    for _ in range(2):
        result = cdc("schema", "apply", env=dbs.env())
        assert result.returncode == 0, result.stderr
    assert catalog(dbs.pg_dsn) == before
    tables = {row[0] for row in before if row[1] == "r"}
    assert tables == set(orininu.TABLES)


def test_schema_check_passes_on_consistent_data(dbs, cdc):
    with psycopg.connect(dbs.pg_dsn) as conn:
        conn.execute("INSERT INTO artists (artist_id, name) VALUES (1, 'A')")
        conn.execute("INSERT INTO albums (artist_id, title, release_date) VALUES (1, 'B', '2020-01-01')")
    result = cdc("schema", "check", env=dbs.env())
    assert result.returncode == 0, result.stderr
    assert "FAILED" not in result.stdout
    assert "albums | 1" in result.stdout


def test_schema_check_fails_on_orphan_inserted_with_fk_triggers_bypassed(dbs, cdc):
    with psycopg.connect(dbs.pg_dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("INSERT INTO albums (artist_id, title, release_date) VALUES (4242, 'orphan', '2020-01-01')")
    result = cdc("schema", "check", env=dbs.env())
    assert result.returncode == 1
    assert "orphan_albums_artist             FAILED (1 rows)" in result.stdout
    assert result.stderr.strip().splitlines() == ["cdc: error: schema check failed: orphan_albums_artist (1)"]


def test_wrong_password_gives_one_redacted_line(dbs, cdc):
    conninfo = psycopg.conninfo.conninfo_to_dict(dbs.pg_dsn)
    conninfo["password"] = "WrongHorse99"
    bad_dsn = psycopg.conninfo.make_conninfo(**conninfo)
    result = cdc("schema", "check", env={"CDC_PG_DSN": bad_dsn})
    assert result.returncode == 1
    assert "WrongHorse99" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cdc: error: cannot connect to PostgreSQL")
