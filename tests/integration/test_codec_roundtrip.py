"""The codec against a real PostgreSQL: each mapped type is inserted, read through ``select_expression``
in our session settings, encoded, and parsed back as MongoDB does. Expected values are written by hand
from the inserted literals."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import struct
import uuid
from decimal import Decimal
from typing import Any

import pytest
from bson.binary import Binary
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from cdc.capture.tables import Column
from cdc.encode.codec import RowEncoder
from cdc.encode.types import select_expression
from cdc.infra import pg
from tests.unit.test_codec import (
    I64_MAX,
    I64_MIN,
    ExactText,
    NotCarried,
    Num,
    check_line,
    expected_decimal,
    expected_json,
    floor_ms,
    json_text,
    mongoimport_parse,
    nested,
    same,
)

UTC = dt.UTC
D = Decimal128


def when(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


def float4(value: float) -> float:
    """The float4 nearest to ``value``, widened exactly (what a binary cursor returns for a real)."""
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def pg_array(items: list[str | None]) -> str:
    """A one-dimensional PostgreSQL array literal of quoted elements."""
    quoted = ("NULL" if item is None else '"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)
    return "{" + ",".join(quoted) + "}"


HOSTILE = 'é 😀 "q" \\ \t\n\u202e $x a.b {"$numberLong": "1"}'
UUID_TEXT = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
UUID_BINARY = Binary(uuid.UUID(UUID_TEXT).bytes, 4)
TINY = "0." + "0" * 6200 + "1"  # 1E-6201: exponent below Decimal128's range
FORTY = "1234567890123456789012345678901234567890"
TEN_TO_400 = "1" + "0" * 400


# (column, SQL type, the codec's Column (as cdc.capture.tables describes it), [(literal, expected), ...]).
# Row n holds the n-th literal of every column (NULL where a column has fewer).
# ``expected`` may be a dict {"text": ..., "binary": ...} where the fetch format matters.
CASES: list[tuple[str, str, Column, list[tuple[str, Any]]]] = [
    ("c_smallint", "smallint", Column("c_smallint", "smallint", False, "N"),
     [("-32768", -32768), ("32767", 32767), ("0", 0)]),
    ("c_integer", "integer", Column("c_integer", "integer", False, "N"),
     [("-2147483648", -2147483648), ("2147483647", 2147483647), ("42", 42)]),
    ("c_bigint", "bigint", Column("c_bigint", "bigint", False, "N"),
     [("-9223372036854775808", Int64(I64_MIN)), ("9223372036854775807", Int64(I64_MAX)), ("1", Int64(1))]),
    ("c_numeric", "numeric", Column("c_numeric", "numeric", False, "N"), [
        ("NaN", D("NaN")),
        ("Infinity", D("Infinity")),
        ("-Infinity", D("-Infinity")),
        ("1.50", D("1.50")),
        (FORTY, FORTY),
        ("-12345678901234567890.12345678901234567890", "-12345678901234567890.12345678901234567890"),
        ("1234567890123456789012345678901234", D("1234567890123456789012345678901234")),
        ("0.0000001", D("1E-7")),
        ("-0.0", D("0.0")),  # PostgreSQL has no negative zero numeric
        (TINY, ExactText(Decimal(TINY))),
        ("1e5", D("100000")),
    ]),
    ("c_numeric_10_2", "numeric(10,2)", Column("c_numeric_10_2", "numeric", False, "N"),
     [("12345678.90", D("12345678.90")), ("1", D("1.00")), ("-0.005", D("-0.01"))]),
    ("c_real", "real", Column("c_real", "real", False, "N"), [
        ("NaN", math.nan),
        ("-Infinity", -math.inf),
        ("-0", -0.0),
        ("0.1", {"text": 0.1, "binary": float4(0.1)}),
        ("3.4028235e38", {"text": 3.4028235e38, "binary": float4(3.4028235e38)}),
        ("1", 1.0),
    ]),
    ("c_double", "double precision", Column("c_double", "double precision", False, "N"), [
        ("NaN", math.nan),
        ("Infinity", math.inf),
        ("-Infinity", -math.inf),
        ("-0", -0.0),
        ("0.1", 0.1),
        ("1.7976931348623157e308", 1.7976931348623157e308),
        ("5e-324", 5e-324),
        ("1", 1.0),
        ("123456789012345680000", 1.2345678901234568e20),
    ]),
    ("c_boolean", "boolean", Column("c_boolean", "boolean", False, "B"), [("true", True), ("false", False)]),
    ("c_text", "text", Column("c_text", "text", False, "S"), [(HOSTILE, HOSTILE), ("", "")]),
    ("c_varchar", "varchar(20)", Column("c_varchar", "character varying", False, "S"), [("abc", "abc")]),
    ("c_char", "char(3)", Column("c_char", "character", False, "S"), [("a", "a  "), ("abc", "abc")]),
    ("c_enum", "mood", Column("c_enum", "mood", False, "E"), [("happy", "happy"), ("sad", "sad")]),
    ("c_citext", "citext", Column("c_citext", "citext", False, "S"), [("MiXeD", "MiXeD")]),
    ("c_hstore", "hstore", Column("c_hstore", "hstore", False, "U"), [("a=>1", '"a"=>"1"')]),
    ("c_domain_text", "short_text", Column("c_domain_text", "text", False, "S"), [("x", "x")]),
    ("c_bytea", "bytea", Column("c_bytea", "bytea", False, "U"), [("\\x00ff", b"\x00\xff"), ("", b"")]),
    ("c_uuid", "uuid", Column("c_uuid", "uuid", False, "U"), [(UUID_TEXT, UUID_BINARY)]),
    ("c_date", "date", Column("c_date", "date", False, "D"), [
        ("0001-01-01", when(1, 1, 1)),
        ("9999-12-31", when(9999, 12, 31)),
        ("infinity", "infinity"),
        ("-infinity", "-infinity"),
        ("0044-03-15 BC", "0044-03-15 BC"),
        ("1970-01-01", when(1970, 1, 1)),
        ("2020-02-29", when(2020, 2, 29)),
        ("10000-01-01", "10000-01-01"),
    ]),
    ("c_timestamp", "timestamp", Column("c_timestamp", "timestamp without time zone", False, "D"), [
        ("2020-02-29 12:34:56.789999", when(2020, 2, 29, 12, 34, 56, 789000)),
        ("infinity", "infinity"),
        ("0001-01-01 00:00:00", when(1, 1, 1)),
        ("1969-12-31 23:59:59.9995", when(1969, 12, 31, 23, 59, 59, 999000)),  # floored, not rounded
        ("0044-03-15 12:00:00 BC", "0044-03-15 12:00:00 BC"),
        ("9999-12-31 23:59:59.999999", when(9999, 12, 31, 23, 59, 59, 999000)),
        ("10000-01-01 00:00:00", "10000-01-01 00:00:00"),
    ]),
    ("c_timestamptz", "timestamptz", Column("c_timestamptz", "timestamp with time zone", False, "D"), [
        ("2020-02-29 12:34:56.789999+02", when(2020, 2, 29, 10, 34, 56, 789000)),
        ("-infinity", "-infinity"),
        ("9999-12-31 23:59:59.999999+00", when(9999, 12, 31, 23, 59, 59, 999000)),
        ("10000-01-01 00:00:00+00", "10000-01-01 00:00:00+00"),
        ("0001-01-01 00:30:00+01", "0001-12-31 23:30:00+00 BC"),  # year 1 locally, 1 BC in UTC
        ("1970-01-01 00:00:00.000999+00", when(1970, 1, 1)),
    ]),
    ("c_time", "time", Column("c_time", "time without time zone", False, "D"),
     [("12:34:56.789", "12:34:56.789"), ("24:00:00", "24:00:00")]),
    ("c_timetz", "timetz", Column("c_timetz", "time with time zone", False, "D"),
     [("12:34:56+02", "12:34:56+02"), ("00:00:00.5-05:30", "00:00:00.5-05:30")]),
    ("c_interval", "interval", Column("c_interval", "interval", False, "T"), [
        ("1 mon 2 days", "P1M2D"),
        ("1 year 2 mons 3 days 04:05:06.5", "P1Y2M3DT4H5M6.5S"),
        ("-1 day", "P-1D"),
        ("0", "PT0S"),
    ]),
    ("c_inet", "inet", Column("c_inet", "inet", False, "I"),
     [("192.168.0.1/24", "192.168.0.1/24"), ("::1", "::1"), ("10.1.2.3", "10.1.2.3"),
      ("::ffff:1.2.3.4", "::ffff:1.2.3.4")]),
    ("c_cidr", "cidr", Column("c_cidr", "cidr", False, "I"),
     [("10.0.0.0/8", "10.0.0.0/8"), ("2001:db8::/32", "2001:db8::/32")]),
    ("c_macaddr", "macaddr", Column("c_macaddr", "macaddr", False, "U"), [("08:00:2B:01:02:03", "08:00:2b:01:02:03")]),
    ("c_money", "money", Column("c_money", "money", False, "N"),
     [("1234.56", D("1234.56")), ("-0.01", D("-0.01")), ("0", D("0.00"))]),
    ("c_json", "json", Column("c_json", "json", False, "U"), [
        ('{"$set": {"a": 1}}', '{"$set": {"a": 1}}'),
        ('{"a": 0.1, "b": 1e400, "c": [1, null]}', {"a": D("0.1"), "b": D("1E+400"), "c": [1, None]}),
        ('{"a": "\\ud800"}', '{"a": "\\ud800"}'),  # json keeps a lone surrogate escape: no UTF-8 form
        ('{"a":"\\u0000"}', {"a": "\x00"}),
    ]),
    ("c_jsonb", "jsonb", Column("c_jsonb", "jsonb", False, "U"), [
        ('{"$set": 1}', '{"$set": 1}'),
        ('{"a.b": 1}', '{"a.b": 1}'),
        ('{"x": {"y": [{"deep.er": true}]}}', '{"x": {"y": [{"deep.er": true}]}}'),
        ("[" * 100 + "]" * 100, "[" * 100 + "]" * 100),
        (nested(90), json.loads(nested(90))),
        (
            '{"a": 0.1, "b": 1.0, "c": 1e2, "d": -0, "e": 2147483648, "f": 9223372036854775808, "g": 0.00000001}',
            {"a": D("0.1"), "b": D("1.0"), "c": 100, "d": 0, "e": Int64(2**31),
             "f": D("9223372036854775808"), "g": D("1E-8")},
        ),
        ("1e400", TEN_TO_400),  # jsonb keeps 10^400 as a 401-digit numeric: more than 34 digits
        ('{"big": 1e400}', '{"big": ' + TEN_TO_400 + "}"),
        ('"x"', "x"),
        ('[1, null, "x", {"b": 1, "aa": 2, "a": 3}]', [1, None, "x", {"a": 3, "b": 1, "aa": 2}]),
    ]),
    ("c_int_array", "int[]", Column("c_int_array", "integer", True, "N"),
     [("{1,NULL,3}", [1, None, 3]), ("{}", []), ("{NULL}", [None])]),
    ("c_int_2d", "int[][]", Column("c_int_2d", "integer", True, "N"),
     [("{{1,2},{NULL,4}}", [[1, 2], [None, 4]]), ("{{{1}},{{2}}}", [[[1]], [[2]]])]),
    ("c_text_array", "text[]", Column("c_text_array", "text", True, "S"),
     [(pg_array(["a b", None, "", '"q"', HOSTILE]), ["a b", None, "", '"q"', HOSTILE])]),
    ("c_date_array", "date[]", Column("c_date_array", "date", True, "D"), [
        ('{0001-01-01,infinity,"0044-03-15 BC",NULL,9999-12-31}',
         [when(1, 1, 1), "infinity", "0044-03-15 BC", None, when(9999, 12, 31)]),
        ("{{2020-01-01,NULL},{10000-01-01,-infinity}}", [[when(2020, 1, 1), None], ["10000-01-01", "-infinity"]]),
    ]),
    ("c_jsonb_array", "jsonb[]", Column("c_jsonb_array", "jsonb", True, "U"), [
        (pg_array(['{"a": 1}', None, '{"$x": 1}', "[0.5]", "null"]), [{"a": 1}, None, '{"$x": 1}', [D("0.5")], None]),
    ]),
    ("c_tstz_array", "timestamptz[]", Column("c_tstz_array", "timestamp with time zone", True, "D"), [
        ('{"2020-01-01 00:00:00.123456+00",infinity,NULL,"0044-03-15 00:00:00+00 BC"}',
         [when(2020, 1, 1, 0, 0, 0, 123000), "infinity", None, "0044-03-15 00:00:00+00 BC"]),
    ]),
    ("c_numeric_array", "numeric[]", Column("c_numeric_array", "numeric", True, "N"),
     [("{1.50,NaN,NULL," + FORTY + "}", [D("1.50"), D("NaN"), None, FORTY])]),
    ("c_bigint_array", "bigint[]", Column("c_bigint_array", "bigint", True, "N"),
     [("{1,NULL,9223372036854775807}", [Int64(1), None, Int64(I64_MAX)])]),
    ("c_float_array", "float8[]", Column("c_float_array", "double precision", True, "N"),
     [("{NaN,-0,1,-Infinity}", [math.nan, -0.0, 1.0, -math.inf])]),
    ("c_enum_array", "mood[]", Column("c_enum_array", "mood", True, "E"),
     [("{happy,NULL,sad}", ["happy", None, "sad"])]),
    ("c_domain_array", "positive_int[]", Column("c_domain_array", "integer", True, "N"),
     [("{1,2,NULL}", [1, 2, None])]),
    ("c_char_array", "char(3)[]", Column("c_char_array", "character", True, "S"), [("{a,abc}", ["a  ", "abc"])]),
    ("c_uuid_array", "uuid[]", Column("c_uuid_array", "uuid", True, "U"), [("{" + UUID_TEXT + "}", [UUID_BINARY])]),
    ("c_interval_array", "interval[]", Column("c_interval_array", "interval", True, "T"),
     [('{"1 mon 2 days"}', ["P1M2D"])]),
    ("c_inet_array", "inet[]", Column("c_inet_array", "inet", True, "I"),
     [("{{::1,NULL},{10.1.2.3/24,10.0.0.1}}", [["::1", None], ["10.1.2.3/24", "10.0.0.1"]])]),
    ("c_money_array", "money[]", Column("c_money_array", "money", True, "N"), [("{1.50}", [D("1.50")])]),
]  # fmt: skip

ID = Column("id", "integer", False, "N")
SETUP = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
CREATE DOMAIN short_text AS text CHECK (length(VALUE) < 100);
"""


def create_and_fill(dsn: str) -> int:
    rows = max(len(values) for *_, values in CASES)
    with pg.connect(dsn, autocommit=True) as conn:
        conn.execute(SETUP)
        definitions = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type)) for name, pg_type, _, _ in CASES
        )
        conn.execute(sql.SQL("CREATE TABLE codec_all (id integer PRIMARY KEY, {})").format(definitions))
        for index in range(rows):
            literals = [
                sql.SQL("{}::{}").format(sql.Literal(values[index][0]), sql.SQL(pg_type))
                if index < len(values)
                else sql.NULL
                for _, pg_type, _, values in CASES
            ]
            conn.execute(
                sql.SQL("INSERT INTO codec_all VALUES ({}, {})").format(
                    sql.Literal(index + 1), sql.SQL(", ").join(literals)
                )
            )
    return rows


def fetch_lines(dsn: str, fetch: str) -> list[bytes]:
    """Every row of codec_all as upsert lines, read as ``fetch`` says: text, or binary through a
    server-side cursor (as the drain reads)."""
    columns = [ID] + [column for _, _, column, _ in CASES]
    query = sql.SQL("SELECT {} FROM codec_all ORDER BY id").format(
        sql.SQL(", ").join(select_expression(column, sql.Identifier(column.name)) for column in columns)
    )
    encoder = RowEncoder(columns, ["id"])
    with pg.connect(dsn) as conn:
        if fetch == "binary":
            with conn.cursor(name="codec_roundtrip", binary=True) as cursor:
                cursor.execute(query)
                rows = cursor.fetchall()
        else:
            rows = conn.execute(query).fetchall()
    return [encoder.upsert_line([row[0]], row, 100 + row[0]) for row in rows]


@pytest.mark.parametrize("fetch", ["binary", "text"])
def test_every_mapped_type_roundtrips_to_the_expected_bson(pg_dsn, fetch, tmp_path):
    rows = create_and_fill(pg_dsn)
    lines = fetch_lines(pg_dsn, fetch)
    assert len(lines) == rows
    mismatches = []
    for index, line in enumerate(lines):
        document = check_line(line)
        assert same(document["_id"], index + 1)
        assert same(document["_cdc"], {"pos": Int64(101 + index)})
        for name, _, _, values in CASES:
            expected = values[index][1] if index < len(values) else None
            if isinstance(expected, dict) and set(expected) == {"text", "binary"}:
                expected = expected[fetch]
            if not same(document[name], expected):
                mismatches.append(f"row {index + 1} {name}: got {document[name]!r}, expected {expected!r}")
    assert not mismatches, "\n".join(mismatches)
    path = tmp_path / "codec_all.upsert.jsonl"
    path.write_bytes(b"".join(lines))
    assert len(mongoimport_parse(path)) == rows


# ---- random values ------------------------------------------------------------------------------


def pg_numeric(value: Decimal) -> Decimal:
    """The decimal as PostgreSQL stores it: positive exponents expanded, no negative zero."""
    if not value.is_finite():
        return value
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if exponent > 0:
        digits, exponent = digits + (0,) * exponent, 0
    stripped = tuple(itertools.dropwhile(lambda digit: digit == 0, digits)) or (0,)
    return Decimal((0 if stripped == (0,) else sign, stripped, exponent))


@st.composite
def pg_decimals(draw: st.DrawFn) -> Decimal:
    if draw(st.integers(0, 9)) == 0:
        return Decimal(draw(st.sampled_from(["NaN", "Infinity", "-Infinity"])))
    sign = draw(st.integers(0, 1))
    coefficient = draw(st.integers(0, 10**40) | st.integers(0, 10**34 - 1) | st.integers(0, 10**6))
    exponent = draw(st.integers(-7000, 200) | st.integers(-40, 5))
    return Decimal((sign, tuple(int(digit) for digit in str(coefficient)), exponent))


jsonb_texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=8)
jsonb_numbers = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    pg_decimals().filter(lambda value: value.is_finite()).map(str),
    st.sampled_from(["0.1", "1e400", "1.50", "-0", "2147483648", "9223372036854775808", "1E-6177"]),
).map(Num)
jsonb_values = st.recursive(
    st.none() | st.booleans() | jsonb_texts | jsonb_numbers,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(jsonb_texts | st.sampled_from(["$set", "a.b", "_id"]), children, max_size=4)
    ),
    max_leaves=10,
)


def jsonb_normalized(value: Any) -> Any:
    """The value as jsonb gives it back: numbers become PostgreSQL numerics (printed plainly)."""
    if isinstance(value, Num):
        return Num(format(pg_numeric(Decimal(value)), "f"))
    if isinstance(value, dict):
        return {key: jsonb_normalized(item) for key, item in value.items()}
    if isinstance(value, list):
        return [jsonb_normalized(item) for item in value]
    return value


def json_matches(parsed: Any, value: Any) -> bool:
    """The parsed fallback text equals the (normalized) generated value, numbers digit for digit."""
    if isinstance(value, Num):
        return isinstance(parsed, Decimal) and parsed.as_tuple() == Decimal(value).as_tuple()
    if isinstance(value, dict):
        return (
            isinstance(parsed, dict)
            and parsed.keys() == value.keys()
            and all(json_matches(parsed[key], value[key]) for key in value)
        )
    if isinstance(value, list):
        return (
            isinstance(parsed, list)
            and len(parsed) == len(value)
            and all(json_matches(p, v) for p, v in zip(parsed, value, strict=True))
        )
    return type(parsed) is type(value) and parsed == value


RANDOM_COLUMNS = [
    Column("id", "integer", False, "N"),
    Column("b", "bigint", False, "N"),
    Column("n", "numeric", False, "N"),
    Column("f", "double precision", False, "N"),
    Column("t", "text", False, "S"),
    Column("ts", "timestamp with time zone", False, "D"),
    Column("j", "jsonb", False, "U"),
]
_ids = itertools.count(1)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    b=st.integers(I64_MIN, I64_MAX),
    n=pg_decimals(),
    f=st.floats(),
    t=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00")),
    ts=st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
    j=jsonb_values,
)
def test_random_values_roundtrip_under_the_mapping(pg_dsn, b, n, f, t, ts, j):
    row_id = next(_ids)
    moment = ts.replace(tzinfo=UTC)
    text = json_text(j)
    with pg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS codec_random"
            " (id integer PRIMARY KEY, b bigint, n numeric, f double precision, t text, ts timestamptz, j jsonb)"
        )
        conn.execute(
            "INSERT INTO codec_random VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)", [row_id, b, n, f, t, moment, text]
        )
        query = sql.SQL("SELECT {} FROM codec_random WHERE id = %s").format(
            sql.SQL(", ").join(select_expression(column, sql.Identifier(column.name)) for column in RANDOM_COLUMNS)
        )
        with conn.cursor(binary=True) as cursor:
            row = cursor.execute(query, [row_id]).fetchone()
    assert row is not None
    document = check_line(RowEncoder(RANDOM_COLUMNS, ["id"]).upsert_line([row_id], row, 1))

    assert same(document["b"], Int64(b))
    assert same(document["n"], expected_decimal(pg_numeric(n))), (document["n"], n)
    assert same(document["f"], f), (document["f"], f)
    assert same(document["t"], t)
    assert same(document["ts"], floor_ms(moment))
    normalized = jsonb_normalized(j)
    try:
        expected = expected_json(normalized)
    except NotCarried:
        assert isinstance(document["j"], str), document["j"]
        assert json_matches(json.loads(document["j"], parse_float=Decimal, parse_int=Decimal), normalized)
    else:
        assert same(document["j"], expected, ordered=False), (document["j"], expected)
