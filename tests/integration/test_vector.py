"""pgvector's ``vector`` on real servers: captured, snapshotted and drained, each element arrives as the
exact double of its float4 (an array of vectors as their text), and `cdc verify` agrees, for a table of
its own and inside a mapped document, with the extension in ``public`` or in a schema off the search
path; an encoder that writes the elements through their text is caught."""

from __future__ import annotations

import json
import struct
from typing import Any

import psycopg
import pymongo
import pytest
from psycopg import sql

from tests.integration.test_verify_independent import _snapshot_with_codec

pytestmark = pytest.mark.integration


def float4(literal: str) -> float:
    """The float4 PostgreSQL holds for ``literal``, widened exactly (as a double)."""
    return float(struct.unpack(">f", struct.pack(">f", float(literal)))[0])


def floats(*literals: str) -> list[float]:
    return [float4(literal) for literal in literals]


def bits(value: Any) -> Any:
    """Doubles as their bytes (so -0.0 is not 0.0), recursively; anything else as it is."""
    if isinstance(value, list):
        return [bits(item) for item in value]
    return struct.pack(">d", value) if isinstance(value, float) else value


def run_sql(dsn: str, *statements: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def with_vector(dsn: str, schema: str) -> str:
    """Create the extension in ``schema``; the type's name as DDL spells it there."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone() is None:
            pytest.skip("this PostgreSQL has no pgvector (the embedded one ships it)")
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("CREATE EXTENSION vector SCHEMA {}").format(sql.Identifier(schema)))
    return "vector" if schema == "public" else f"{schema}.vector"


def documents(env: dict[str, str], collection: str) -> dict[Any, dict[str, Any]]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(env["CDC_MONGO_URI"])
    try:
        return {doc["_id"]: doc for doc in client[env["CDC_MONGO_DB"]][collection].find()}
    finally:
        client.close()


def verified(cdc: Any, env: dict[str, str]) -> dict[str, Any]:
    """`cdc verify --json`, which must come back clean: each table's summary by name."""
    result = cdc("verify", "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["clean"] is True, report
    return {table["table"]: table for table in report["tables"]}


# ---- a table of its own ------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", ["public", "embeddings"])
def test_vector_columns_arrive_as_exact_doubles_and_verify_agrees(dbs, cdc, tmp_path, schema):
    vector = with_vector(dbs.pg_dsn, schema)
    run_sql(
        dbs.pg_dsn,
        f"CREATE TABLE items (id int PRIMARY KEY, embedding {vector}(3), history {vector}[], label text)",
        "INSERT INTO items VALUES"
        " (1, '[0.1,-0,3.4028235e38]', '{\"[1,2,3]\",NULL,\"[0.5,-1.5,2]\"}', 'one'),"
        " (2, NULL, NULL, 'two'),"
        " (3, '[1e-45,-1.1754944e-38,0.33333334]', '{}', 'three')",
    )
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    installed = cdc("install", "--tables", "items", env=env)
    assert installed.returncode == 0, installed.stderr
    snapshot = cdc("snapshot", env=env)
    assert snapshot.returncode == 0, snapshot.stderr
    assert verified(cdc, env)["items"]["rows"] == 3

    stored = documents(env, "items")
    assert bits(stored[1]["embedding"]) == bits(floats("0.1", "-0", "3.4028235e38"))
    assert stored[1]["history"] == ["[1,2,3]", None, "[0.5,-1.5,2]"]
    assert stored[2]["embedding"] is None and stored[2]["history"] is None
    assert bits(stored[3]["embedding"]) == bits(floats("1e-45", "-1.1754944e-38", "0.33333334"))

    # inserted, updated (to and from NULL), deleted; then drained by the worker
    run_sql(
        dbs.pg_dsn,
        "INSERT INTO items VALUES (4, '[2.5,-0.1,7]', ARRAY[NULL]::" + vector + "[], 'four')",
        "UPDATE items SET embedding = '[9,8,7.25]' WHERE id = 2",
        "UPDATE items SET embedding = NULL, history = '{\"[4,5,6]\"}' WHERE id = 1",
        "DELETE FROM items WHERE id = 3",
    )
    ran = cdc("run", "--once", env=env)
    assert ran.returncode == 0, ran.stderr
    assert verified(cdc, env)["items"]["rows"] == 3

    stored = documents(env, "items")
    assert sorted(stored) == [1, 2, 4]
    assert stored[1]["embedding"] is None and stored[1]["history"] == ["[4,5,6]"]
    assert bits(stored[2]["embedding"]) == bits([9.0, 8.0, 7.25])
    assert bits(stored[4]["embedding"]) == bits(floats("2.5", "-0.1", "7"))
    assert stored[4]["history"] == [None]


# ---- inside a mapped document ------------------------------------------------------------------------

MAPPING = """
[collections.docs]
table = "docs"

[collections.docs.embed.chunks]
table = "chunks"
on = { doc_id = "id" }
many = true
order_by = ["pos"]
fields = ["pos", "embedding"]
"""


def test_vectors_in_a_mapped_document_and_verify_agrees(dbs, cdc, tmp_path):
    vector = with_vector(dbs.pg_dsn, "embeddings")
    run_sql(
        dbs.pg_dsn,
        f"CREATE TABLE docs (id int PRIMARY KEY, title text, centroid {vector}(2))",
        f"CREATE TABLE chunks (id int PRIMARY KEY, doc_id int REFERENCES docs, pos int, embedding {vector}(2))",
        "INSERT INTO docs VALUES (1, 'a', '[0.1,-0]'), (2, 'b', NULL)",
        "INSERT INTO chunks VALUES (10, 1, 2, '[1.5,0.2]'), (11, 1, 1, NULL), (12, 2, 1, '[-3,1e-45]')",
    )
    mapping = tmp_path / "model.toml"
    mapping.write_text(MAPPING)
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive"), "CDC_MAPPING": str(mapping)}
    installed = cdc("install", env=env)
    assert installed.returncode == 0, installed.stderr
    assert cdc("snapshot", env=env).returncode == 0
    verified(cdc, env)

    run_sql(
        dbs.pg_dsn,
        "UPDATE chunks SET embedding = '[0.7,-0.25]' WHERE id = 11",
        "UPDATE docs SET centroid = '[5,6]' WHERE id = 2",
        "DELETE FROM chunks WHERE id = 10",
    )
    ran = cdc("run", "--once", env=env)
    assert ran.returncode == 0, ran.stderr
    verified(cdc, env)

    stored = documents(env, "docs")
    assert bits(stored[1]["centroid"]) == bits(floats("0.1", "-0"))
    assert [chunk["pos"] for chunk in stored[1]["chunks"]] == [1]
    assert bits(stored[1]["chunks"][0]["embedding"]) == bits(floats("0.7", "-0.25"))
    assert bits(stored[2]["centroid"]) == bits([5.0, 6.0])
    assert bits(stored[2]["chunks"][0]["embedding"]) == bits(floats("-3", "1e-45"))


# ---- verify is independent of the encoder ----------------------------------------------------------


def test_vector_elements_written_through_their_text_are_caught(dbs, cdc, tmp_path):
    vector = with_vector(dbs.pg_dsn, "public")
    run_sql(
        dbs.pg_dsn,
        f"CREATE TABLE items (id int PRIMARY KEY, embedding {vector}(2))",
        "INSERT INTO items VALUES (1, '[0.1,2]')",
    )
    env = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    assert cdc("install", "--tables", "items", env=env).returncode == 0
    # the shortest text of each float4, read back as a double: 0.1, not the float4's 0.10000000149011612
    snapshot = _snapshot_with_codec(env, "convert('vector', lambda values: [float(f'{v:.8g}') for v in values])")
    assert snapshot.returncode == 0, snapshot.stderr
    result = cdc("verify", env=env)
    assert result.returncode == 1, result.stdout
    assert "fields that differ: embedding (" in result.stdout, result.stdout
