"""The hostile input catalogue, end to end: install → snapshot → changes → run → verify, and archive damage."""

import json
from pathlib import Path

import psycopg
import pymongo

from cdc.archive import folders as archive

TABLE = '"Order; DROP TABLE users"'
DDL = f"""
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE {TABLE} (
    "id" bigint PRIMARY KEY,
    "big numeric" numeric, "float" double precision, "real" real, "day" date, "moment" timestamptz,
    "local" timestamp, "doc" jsonb, "text" text, "tags" text[], "grid" int[], "mood" mood,
    "span" interval, "cash" money, "bytes" bytea, "addr" inet, "Weird.Name $x" text
);
"""
ROWS = [
    "(1, 1234567890123456789012345678901234567890, 'NaN', '-0', 'infinity', '-infinity', '0001-01-01 00:00:00',"
    " '{\"$set\": 1, \"a.b\": 2}', 'RTL \u05e9\u05dc\u05d5\u05dd e\u0301 \U0001f3b6', '{NULL,\"x\"}',"
    " '{{1,2},{3,NULL}}', 'sad', '1 mon 2 days', '12.34', '\\x00ff', '::1', 'odd')",
    "(2, 'NaN', 'Infinity', '1.5', '9999-12-31', '2020-02-29 12:34:56.789123+00', '9999-12-31 23:59:59.999999',"
    " '{\"nested\": {\"deep\": [1, 2.50, {\"x\": null}]}, \"big\": 123456789012345678901234567890}', '', '{}', '{}',"
    " 'happy', 'P1Y', '-0.01', '', '10.0.0.1/8', NULL)",
    "(3, '-Infinity', '-Infinity', NULL, '0044-03-15 BC', '10000-01-01 00:00:00+00', NULL,"
    " 'null', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
]


def deep_json(levels):
    return "[" * levels + "]" * levels


def test_hostile_table_round_trips_and_the_oversized_row_is_quarantined(dbs, cdc, tmp_path):
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute(f"INSERT INTO {TABLE} VALUES " + ", ".join(ROWS))
        conn.execute(f"INSERT INTO {TABLE} (id, doc) VALUES (4, %s)", [deep_json(100)])
    assert cdc("install", "--tables", "Order; DROP TABLE users", env=env).returncode == 0
    snap = cdc("snapshot", env=env)
    assert snap.returncode == 0, snap.stderr
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {TABLE} (id, text) VALUES (5, repeat('x', 20 * 1024 * 1024))")  # a 20 MiB row
        conn.execute(f'ALTER TABLE {TABLE} RENAME COLUMN "text" TO "renamed text"')
        conn.execute(f"UPDATE {TABLE} SET \"renamed text\" = 'after rename' WHERE id = 1")
        conn.execute(f"DELETE FROM {TABLE} WHERE id = 3")
    run = cdc("run", "--once", env=env)
    assert run.returncode == 0, run.stderr
    assert "rejected" in run.stderr and "Order; DROP TABLE users" in run.stderr

    rejected = [
        json.loads(line)
        for path in Path(env["CDC_ARCHIVE_DIR"]).glob("*/rejected.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert [(r["table"], r["key"]) for r in rejected] == [("Order; DROP TABLE users", ["5"])]
    assert "16 MiB" in rejected[0]["reason"]

    verified = cdc("verify", env=env)
    assert verified.returncode == 1
    # the rename is followed (every row read again under the new field name): only the quarantined row differs
    assert "missing=1 extra=0 different=0" in verified.stdout
    assert "cannot be carried" in verified.stdout
    repaired = cdc("verify", "--repair", env=env)
    assert repaired.returncode == 1  # the quarantined row stays the one, reported, difference
    assert "missing=1 extra=0 different=0" in repaired.stdout

    client = pymongo.MongoClient(env["CDC_MONGO_URI"])
    docs = {d["_id"]: d for d in client[env["CDC_MONGO_DB"]]["Order; DROP TABLE users"].find()}
    client.close()
    assert sorted(docs) == [1, 2, 4]
    assert docs[1]["renamed text"] == "after rename" and "text" not in docs[1]
    assert docs[1]["doc"] == '{"a.b": 2, "$set": 1}'  # fallback to the JSON text
    assert docs[4]["doc"] == deep_json(100).replace("][", "], [")[: len(docs[4]["doc"])] or isinstance(
        docs[4]["doc"], str
    )
    assert str(docs[1]["big numeric"]) == "1234567890123456789012345678901234567890"


def test_damaged_archives_are_refused(tmp_path, cdc, dbs):
    writer = archive.BatchWriter(tmp_path, 1)
    writer.write("t", "upsert", b'{"_id": 1, "_cdc": {"pos": {"$numberLong": "1"}}}\n')
    writer.finish(1, 1)
    good = writer.publish()
    env = dbs.env()
    (good / next(name for name in archive.read_batch(good).manifest["files"])).write_bytes(
        b'{"_id": 1, "_cdc": {"pos"\n'
    )
    corrupt = cdc("replay", str(tmp_path), env=env)
    assert corrupt.returncode == 1 and "checksum" in corrupt.stderr

    truncated_dir = tmp_path / "second"
    writer = archive.BatchWriter(truncated_dir, 2)
    writer.write("t", "upsert", b'{"_id": 2, "_cdc": {"pos": {"$numberLong": "2"}}}\n')
    writer.finish(2, 2)
    last = writer.publish()
    (last / archive.MANIFEST).unlink()  # a batch cut short: no manifest
    truncated = cdc("replay", str(truncated_dir), env=env)
    assert truncated.returncode == 1 and "incomplete" in truncated.stderr
