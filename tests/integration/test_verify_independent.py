"""`cdc verify` does not share the exporter's encoding: it agrees with the codec on a catalogue of types
(domains of any depth included), and a codec broken on purpose is caught, naming the column."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import psycopg
import pymongo
import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64

from tests.fix_cli import clean_env

pytestmark = pytest.mark.integration

DDL = """
CREATE DOMAIN money2 AS numeric(8,2);
CREATE DOMAIN money3 AS money2;
CREATE DOMAIN price AS money3 CHECK (VALUE >= 0);
CREATE DOMAIN amount AS numeric;
CREATE DOMAIN amount2 AS amount;
CREATE DOMAIN ints AS integer[];
CREATE DOMAIN ints2 AS ints;
CREATE DOMAIN code AS text;
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE catalogue (
    id bigint PRIMARY KEY,
    p price, amounts amount2[], pair ints2, label code, small smallint, whole integer,
    ratio real, exact double precision, flag boolean, bytes bytea, ident uuid, day date,
    moment timestamptz, local timestamp, span interval, addr inet, net cidr, mac macaddr,
    doc jsonb, tags text[], grid int[], cash money, feeling mood, feelings mood[], padded char(4),
    at_time time, days date[], big numeric
);
INSERT INTO catalogue VALUES
 (1, 2.50, '{1.5,NULL,2.25}', '{3,4}', 'x', -3, 7, 1.1, -0.0, true, '\\x00ff',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29', '2024-01-02 03:04:05.123456+00', 'infinity', 'P1Y2M',
  '::1', '10.1.0.0/16', '08:00:2b:01:02:03', '{"a": [1, 2.50, {"b": null}], "big": 12345678901234567890}',
  '{a,NULL,"b c"}', '{{1,2},{3,NULL}}', '12.34', 'sad', '{happy,sad}', 'ab', '12:34:56.5',
  '{2024-01-01,infinity,NULL}', 1234567890123456789012345678901234567890),
 (2, 0, '{}', NULL, NULL, NULL, NULL, 'NaN', 'Infinity', NULL, '', NULL, '0044-03-15 BC', NULL,
  '10000-01-01', NULL, '10.0.0.1/8', NULL, NULL, '{"$set": 1}', '{}', '{}', '-0.01', NULL, '{}', NULL,
  NULL, '{}', 'NaN');
"""


@pytest.fixture
def env(dbs, tmp_path):
    with psycopg.connect(dbs.pg_dsn, autocommit=True) as conn:
        conn.execute(DDL)
    environment = {**dbs.env(), "CDC_ARCHIVE_DIR": str(tmp_path / "archive")}
    return environment


def test_domains_of_any_depth_map_as_their_base_type_and_verify_agrees(env, cdc):
    assert cdc("install", "--tables", "catalogue", env=env).returncode == 0
    snap = cdc("snapshot", env=env)
    assert snap.returncode == 0, snap.stderr
    verified = cdc("verify", env=env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(env["CDC_MONGO_URI"])
    try:
        doc = client[env["CDC_MONGO_DB"]]["catalogue"].find_one({"_id": Int64(1)})
    finally:
        client.close()
    assert doc is not None
    assert doc["p"] == Decimal128("2.50")
    assert doc["amounts"] == [Decimal128("1.5"), None, Decimal128("2.25")]
    assert doc["pair"] == [3, 4]
    assert doc["label"] == "x"
    assert doc["days"][1] == "infinity"


_CONVERT = """\
import dataclasses
import cdc.encode.types as types
def convert(name, function):
    types.TYPES[name] = dataclasses.replace(types.TYPES[name], convert=function)
"""


def _snapshot_with_codec(env: dict[str, str], patch: str) -> subprocess.CompletedProcess[str]:
    """`cdc snapshot` in a child process whose codec has been broken by ``patch`` (``convert(type, function)``
    replaces the converter of that type's rule)."""
    program = f"{_CONVERT}{patch}\nfrom cdc.cli import main\nmain(['snapshot'])\n"
    return subprocess.run(
        [sys.executable, "-c", program], env=clean_env(env), capture_output=True, text=True, check=False, timeout=300
    )


@pytest.mark.parametrize(
    ("patch", "column"),
    [
        # numeric (domains included) written as a string instead of Decimal128
        ("convert('numeric', lambda value: str(value))", "p"),
        # a real widened through its text (1.1) instead of its exact float4 value
        ("convert('real', lambda value: float(str(round(value, 6))))", "ratio"),
        # uuid as its text instead of binary subtype 04
        ("convert('uuid', lambda value: str(value))", "ident"),
    ],
)
def test_a_broken_codec_is_caught_naming_the_column(env, cdc, patch, column):
    assert cdc("install", "--tables", "catalogue", env=env).returncode == 0
    snap = _snapshot_with_codec(env, patch)
    assert snap.returncode == 0, snap.stderr
    verified = cdc("verify", env=env)
    assert verified.returncode == 1
    assert f"fields that differ: {column} (" in verified.stdout, verified.stdout
    assert f" {column}: postgres " in verified.stdout


def test_dql_average_rounds_half_away_from_zero_like_postgresql():
    from cdc.demo.dql_mongo import _mongo_rows

    [(users, average, most)] = _mongo_rows("plays_per_user", [{"users": 200, "plays": 4201, "max": 40}])
    assert (users, average, most) == (200, Decimal("21.01"), 40)  # 21.005 rounds up, as round(21.005, 2) does
