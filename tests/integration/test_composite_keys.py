"""Composite keys on real servers: the key's columns are repeated beside `_id` in every guarded write
and indexed once (`cdc_key_…`), so a server that scans for a document-valued `_id` does not scan; the
results are the same with the workaround off."""

from __future__ import annotations

import psycopg
import pymongo
import pytest

pytestmark = pytest.mark.integration

DDL = """
CREATE TABLE pairs (a int, b text, n int, PRIMARY KEY (a, b));
INSERT INTO pairs SELECT i % 50, 'k' || (i / 50), i FROM generate_series(0, 999) AS i;
"""
CHANGES = [
    "UPDATE pairs SET n = n + 1 WHERE a < 10",
    "DELETE FROM pairs WHERE a = 11",
    "UPDATE pairs SET b = b || '!' WHERE a = 12",  # a key change: the old key's document is deleted
    "INSERT INTO pairs VALUES (99, 'new', 1)",
]


@pytest.mark.parametrize("workaround", ["on", "off"])
def test_composite_key_writes_are_exact_with_and_without_the_key_index(dbs, cdc, tmp_path, workaround):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_COMPOSITE_KEY_INDEX": workaround}
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(DDL)
    assert cdc("install", "--tables", "pairs", env=env).returncode == 0
    assert cdc("snapshot", env=env).returncode == 0
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        for statement in CHANGES:
            conn.execute(statement)
    ran = cdc("run", "--once", env=env)
    assert ran.returncode == 0, ran.stderr
    verified = cdc("verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(env["CDC_MONGO_URI"])
    try:
        indexes = client[env["CDC_MONGO_DB"]]["pairs"].index_information()
    finally:
        client.close()
    key_indexes = [index for name, index in indexes.items() if name.startswith("cdc_key")]
    assert bool(key_indexes) == (workaround == "on")
    if workaround == "on":
        assert [index["key"] for index in key_indexes] == [[("a", 1), ("b", 1)]]
