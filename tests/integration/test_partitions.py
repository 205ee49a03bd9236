"""Partitioned tables and inheritance on real servers: every change made through a partition or a child,
at any depth, reaches the parent's collection, and changes of the partition set are caught up."""

from __future__ import annotations

import json

import psycopg
import pymongo
import pytest

pytestmark = pytest.mark.integration

DDL = """
CREATE TABLE measurements (city int, day date, reading numeric(8,2), note text, PRIMARY KEY (city, day))
    PARTITION BY RANGE (day);
CREATE TABLE m2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY LIST (city);
CREATE TABLE m2024_low PARTITION OF m2024 FOR VALUES IN (1, 2, 3);
CREATE TABLE m2024_rest PARTITION OF m2024 DEFAULT;
CREATE TABLE m2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE m_default PARTITION OF measurements DEFAULT;

CREATE TABLE animals (id int PRIMARY KEY, name text);
CREATE TABLE dogs (breed text) INHERITS (animals);
CREATE TABLE puppies (age int) INHERITS (dogs);

INSERT INTO measurements
    SELECT c, d::date, c + extract(doy FROM d)::int / 100.0, 'seed'
    FROM generate_series(1, 6) AS c, generate_series('2024-12-25'::date, '2025-01-05', '1 day') AS d;
INSERT INTO measurements VALUES (1, '2030-01-01', 1.5, 'far'), (2, '2030-01-02', 2.5, 'far');
INSERT INTO animals VALUES (1, 'cat'), (2, 'cow');
INSERT INTO dogs VALUES (10, 'rex', 'collie'), (11, 'fido', 'pug');
INSERT INTO puppies VALUES (20, 'bit', 'pug', 1);
"""

# Every statement form that names a partition or a child rather than the captured parent.
THROUGH_MEMBERS = [
    "UPDATE m2024_low SET note = 'updated via leaf' WHERE city = 1",
    "INSERT INTO m2024_low VALUES (2, '2024-06-01', 9.99, 'inserted via leaf')",
    "DELETE FROM m2024_low WHERE city = 3",
    "UPDATE m2024 SET reading = reading + 1 WHERE city = 5",  # a mid-level partition
    "INSERT INTO m2025 VALUES (7, '2025-03-03', 3.33, 'via m2025')",
    "UPDATE m_default SET note = 'default partition' WHERE city = 1",
    "TRUNCATE m2024_rest",  # one partition's rows, not the whole collection
    "UPDATE measurements SET day = '2025-02-01' WHERE city = 2 AND day = '2024-12-31'",  # moves partitions
    "INSERT INTO dogs VALUES (12, 'spot', 'beagle')",
    "UPDATE dogs SET name = 'rex II' WHERE id = 10",
    "UPDATE puppies SET age = 2, name = 'bit older' WHERE id = 20",
    "INSERT INTO puppies VALUES (21, 'tiny', 'pug', 0)",
    "DELETE FROM dogs WHERE id = 11",
    "UPDATE animals SET name = name || '!' WHERE id IN (1, 12)",  # the parent, reaching a child's row
    "TRUNCATE ONLY animals",  # the parent's own rows only
]

# Changes of the partition set after install: no DML trigger fires for any of them.
SET_CHANGES = [
    "ALTER TABLE measurements DETACH PARTITION m2025",
    "CREATE TABLE m2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    "INSERT INTO m2026 VALUES (1, '2026-05-05', 6.5, 'new partition, named directly')",
    "CREATE TABLE m2027 (LIKE measurements)",
    "INSERT INTO m2027 VALUES (1, '2027-01-01', 7.5, 'attached with rows'), (2, '2027-02-02', 7.25, 'attached')",
    "ALTER TABLE measurements ATTACH PARTITION m2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
    "CREATE TABLE kittens () INHERITS (animals)",
    "INSERT INTO kittens VALUES (30, 'new child')",
]


def run_sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def documents(env: dict[str, str], collection: str) -> dict[object, dict[str, object]]:
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(env["CDC_MONGO_URI"])
    try:
        found = client[env["CDC_MONGO_DB"]][collection].find({}, {"_cdc": 0})
        return {json.dumps(doc["_id"], sort_keys=True, default=str): doc for doc in found}
    finally:
        client.close()


def rows(dsn: str, query: str) -> set[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return set(conn.execute(query).fetchall())


@pytest.fixture
def env(dbs, tmp_path):
    run_sql(dbs.pg_dsn, DDL)
    return {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}


def test_changes_through_partitions_and_children_reach_the_parent_collection(env, dbs, cdc):
    installed = cdc("install", "--tables", "measurements,public.animals", env=env)
    assert installed.returncode == 0, installed.stderr
    assert cdc("snapshot", env=env).returncode == 0
    run_sql(dbs.pg_dsn, *THROUGH_MEMBERS)
    ran = cdc("run", "--once", env=env)
    assert ran.returncode == 0, ran.stderr
    verified = cdc("verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    animals = {doc["_id"]: doc["name"] for doc in documents(env, "animals").values()}
    assert animals == {10: "rex II", 12: "spot!", 20: "bit older", 21: "tiny"}
    notes = {(doc["city"], doc["note"]) for doc in documents(env, "measurements").values()}
    assert (2, "inserted via leaf") in notes and (1, "updated via leaf") in notes
    in_mongo = {(doc["city"], doc["day"].date().isoformat()) for doc in documents(env, "measurements").values()}
    in_pg = {(city, day.isoformat()) for city, day in rows(dbs.pg_dsn, "SELECT city, day FROM measurements")}
    assert in_mongo == in_pg
    assert not any(city in (3, 4, 5, 6) and day < "2025" for city, day in in_mongo)  # truncated or deleted
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(env["CDC_MONGO_URI"])
    names = client[env["CDC_MONGO_DB"]].list_collection_names()
    client.close()
    assert not {"m2024_low", "m2025", "dogs", "puppies"} & set(names)  # no second collection


def test_partition_set_changes_are_caught_up_and_a_dropped_partition_is_reported(env, dbs, cdc):
    assert cdc("install", "--tables", "measurements,animals", env=env).returncode == 0
    assert cdc("snapshot", env=env).returncode == 0
    run_sql(dbs.pg_dsn, *SET_CHANGES)

    status = cdc("status", env=env)
    assert status.returncode == 1
    assert "m2026" in status.stdout + status.stderr and "cdc install --tables public.measurements" in (
        status.stdout + status.stderr
    )

    ran = cdc("run", "--once", env=env)  # the worker reconciles, then drains what it recorded
    assert ran.returncode == 0, ran.stderr
    assert "m2027" in ran.stderr  # it says what it did
    verified = cdc("verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert cdc("status", env=env).returncode == 0
    notes = {doc["note"] for doc in documents(env, "measurements").values()}
    assert {"new partition, named directly", "attached with rows"} <= notes
    assert "via m2025" not in notes and not any("2025" in key for key in documents(env, "measurements"))
    assert 30 in {doc["_id"] for doc in documents(env, "animals").values()}

    # after the reconcile, rows changed through the new members are captured by their triggers
    run_sql(dbs.pg_dsn, "UPDATE m2027 SET note = 'later' WHERE city = 1", "DELETE FROM kittens")
    # a dropped partition fires nothing and cannot be read back: reported with what to run
    run_sql(dbs.pg_dsn, "DROP TABLE m_default")
    assert cdc("run", "--once", env=env).returncode == 0
    status = cdc("status", env=env)
    assert status.returncode == 1
    assert "was dropped" in status.stdout + status.stderr
    assert "cdc verify --repair --tables public.measurements" in status.stdout + status.stderr
    assert cdc("verify", env=env).returncode == 1  # the dropped partition's documents remain
    repaired = cdc("verify", "--repair", "--tables", "public.measurements", env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert cdc("status", env=env).returncode == 0
    assert cdc("verify", env=env).returncode == 0
    assert 30 not in {doc["_id"] for doc in documents(env, "animals").values()}


def test_a_partition_or_child_alone_is_refused_naming_its_parent(env, cdc):
    refused = cdc("install", "--tables", "m2024_low", env=env)
    assert refused.returncode == 1
    assert "m2024" in refused.stderr and "measurements" in refused.stderr
    child = cdc("install", "--tables", "puppies", env=env)
    assert child.returncode == 1 and "public.dogs" in child.stderr and "public.animals" in child.stderr


def test_a_table_captured_on_its_own_then_attached_joins_the_parent_collection(env, dbs, cdc):
    run_sql(
        dbs.pg_dsn,
        "CREATE TABLE m2028 (LIKE measurements)",
        "ALTER TABLE m2028 ADD PRIMARY KEY (city, day)",
        "INSERT INTO m2028 VALUES (1, '2028-01-01', 8.5, 'own table first')",
    )
    assert cdc("install", "--tables", "measurements,m2028", env=env).returncode == 0
    assert cdc("snapshot", env=env).returncode == 0
    run_sql(
        dbs.pg_dsn,
        "ALTER TABLE measurements ATTACH PARTITION m2028 FOR VALUES FROM ('2028-01-01') TO ('2029-01-01')",
        "UPDATE m2028 SET note = 'changed by name after the attach' WHERE city = 1",
    )
    ran = cdc("run", "--once", env=env)
    assert ran.returncode == 0, ran.stderr
    verified = cdc("verify", "--tables", "measurements", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    notes = {doc["note"] for doc in documents(env, "measurements").values()}
    assert "changed by name after the attach" in notes
    with psycopg.connect(dbs.pg_dsn) as conn:
        own = conn.execute("SELECT count(*) FROM cdc.captured WHERE table_name = 'm2028'").fetchone()
    assert own == (0,)  # no longer a collection of its own


def test_a_captured_table_attached_under_an_uncaptured_parent_is_reported_by_name(env, dbs, cdc):
    run_sql(
        dbs.pg_dsn,
        "CREATE TABLE sightings (id int PRIMARY KEY, place text)",
        "CREATE TABLE birds (id int PRIMARY KEY, place text, name text)",
    )
    assert cdc("install", "--tables", "birds", env=env).returncode == 0
    assert cdc("status", env=env).returncode == 0
    run_sql(dbs.pg_dsn, "ALTER TABLE birds INHERIT sightings")
    status = cdc("status", env=env)
    assert status.returncode == 1
    assert (
        "captured table public.birds is now a partition or child of public.sightings, which is not captured"
        in status.stdout + status.stderr
    ), status.stdout + status.stderr
