"""The codec under the type mapping (product notes, "Type mapping"), without a database.

Every line is read back the way MongoDB tools read it: ``bson.json_util.loads`` here, and the Go
driver's parser (what ``mongoimport`` calls) through ``shared/tools/mongoimport-parse/check``. The
expected values are computed in this file, never by the codec.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import struct
import uuid
from decimal import Decimal
from typing import Any

import bson
import orjson
import pytest
from bson import json_util
from bson.binary import Binary, UuidRepresentation
from bson.codec_options import CodecOptions
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from cdc.capture.tables import Column
from cdc.encode import codec, extjson, values
from cdc.encode.codec import RowEncoder
from cdc.encode.types import converter, select_expression
from cdc.infra.errors import DocumentTooLarge
from tests.mongoimport_check import mongoimport_parse

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
JSON_OPTIONS = json_util.JSONOptions(tz_aware=True, tzinfo=UTC)
UUID_STANDARD = CodecOptions(uuid_representation=UuidRepresentation.STANDARD)
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
WRAPPERS = {"$numberLong", "$numberDecimal", "$numberDouble", "$date", "$binary"}

ID = Column("id", "integer")
SMALLINT = Column("v", "smallint")
INTEGER = Column("v", "integer")
BIGINT = Column("v", "bigint")
NUMERIC = Column("v", "numeric", type_category="N")
MONEY = Column("v", "money", type_category="N")
REAL = Column("v", "real", type_category="N")
DOUBLE = Column("v", "double precision", type_category="N")
BOOLEAN = Column("v", "boolean", type_category="B")
TEXT = Column("v", "text", type_category="S")
ENUM = Column("v", "mood", type_category="E")
BYTEA = Column("v", "bytea", type_category="U")
UUID = Column("v", "uuid", type_category="U")
DATE = Column("v", "date", type_category="D")
TIMESTAMP = Column("v", "timestamp without time zone", type_category="D")
TIMESTAMPTZ = Column("v", "timestamp with time zone", type_category="D")
INTERVAL = Column("v", "interval", type_category="T")
JSON = Column("v", "json", type_category="U")
JSONB = Column("v", "jsonb", type_category="U")


def array(column: Column) -> Column:
    return Column(column.name, column.base_type, True, column.type_category)


# ---- helpers shared with tests/integration/test_codec_roundtrip.py -------------------------------


def _no_constant(name: str) -> Any:
    raise AssertionError(f"a bare {name} literal in a line")


def _check_json(value: Any) -> None:
    """Plain JSON where JSON is exact (int32, finite doubles, strings, bools); wrappers hold strings."""
    if isinstance(value, dict):
        dollar = [key for key in value if key.startswith("$")]
        if not dollar:
            for item in value.values():
                _check_json(item)
            return
        assert len(value) == 1, value
        assert dollar[0] in WRAPPERS, value
        inner = value[dollar[0]]
        if dollar[0] == "$date":
            assert list(inner) == ["$numberLong"], value
            assert re.fullmatch(r"-?[0-9]+", inner["$numberLong"]), value
            assert I64_MIN <= int(inner["$numberLong"]) <= I64_MAX, value
        elif dollar[0] == "$binary":
            assert sorted(inner) == ["base64", "subType"], value
            assert isinstance(inner["base64"], str), value
            assert inner["subType"] in ("00", "04"), value
        else:
            assert isinstance(inner, str), value
            if dollar[0] == "$numberLong":
                assert I64_MIN <= int(inner) <= I64_MAX, value
    elif isinstance(value, list):
        for item in value:
            _check_json(item)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        return
    elif isinstance(value, int):
        assert I32_MIN <= value <= I32_MAX, f"bare integer {value} outside int32"
    else:
        assert isinstance(value, float), value
        assert math.isfinite(value), value


def check_line(line: bytes) -> dict[str, Any]:
    """One newline-terminated line of valid JSON without NaN/Infinity literals, parsed as MongoDB does."""
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    raw = json.loads(line, parse_constant=_no_constant)
    _check_json(raw)
    document: dict[str, Any] = json_util.loads(line, json_options=JSON_OPTIONS)
    bson.encode(document)  # a valid BSON document
    # the applier's fast reader gives what json_util gives, type for type
    slow = json_util.loads(line, json_options=extjson.JSON_OPTIONS)
    assert bson.encode(extjson.parse_line(line), codec_options=UUID_STANDARD) == bson.encode(
        slow, codec_options=UUID_STANDARD
    )
    return document


def same(actual: Any, expected: Any, *, ordered: bool = True) -> bool:
    """Equality that also compares BSON types: int vs Int64, Decimal128 digits and scale, a float's
    sign and NaN, Binary subtypes, key order (unless ``ordered`` is false)."""
    if isinstance(expected, ExactText):
        return type(actual) is str and Decimal(actual).as_tuple() == expected.value.as_tuple()
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, float):
        if math.isnan(expected):
            return math.isnan(actual)
        return actual == expected and math.copysign(1, actual) == math.copysign(1, expected)
    if isinstance(expected, Decimal128):
        return actual.bid == expected.bid
    if isinstance(expected, Binary):
        return actual.subtype == expected.subtype and bytes(actual) == bytes(expected)
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(
            same(a, e, ordered=ordered) for a, e in zip(actual, expected, strict=True)
        )
    if isinstance(expected, dict):
        if ordered and list(actual) != list(expected):
            return False
        return actual.keys() == expected.keys() and all(
            same(actual[key], expected[key], ordered=ordered) for key in expected
        )
    return bool(actual == expected)


class ExactText:
    """Expected: a string holding exactly this decimal (same digits and exponent, nothing rounded)."""

    def __init__(self, value: Decimal) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"ExactText({self.value!r})"


def expected_decimal(value: Decimal) -> Any:
    """numeric → Decimal128 when ≤ 34 significant digits and the exponent fits, else the exact text."""
    if value.is_nan():
        return Decimal128("NaN")
    if value.is_infinite():
        return Decimal128("-Infinity" if value < 0 else "Infinity")
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if len(digits) <= 34 and -6176 <= exponent <= 6111:
        return Decimal128(value)
    return ExactText(value)


class NotCarried(Exception):
    pass


def expected_number(token: str) -> Any:
    """What a JSON number token becomes: int32 plain, int64, Decimal128, or NotCarried."""
    if re.fullmatch(r"-?[0-9]+", token):
        number = int(token)
        if I32_MIN <= number <= I32_MAX:
            return number
        if I64_MIN <= number <= I64_MAX:
            return Int64(number)
        if len(str(abs(number))) <= 34:
            return Decimal128(str(number))
        raise NotCarried
    value = Decimal(token)
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if len(digits) <= 34 and -6176 <= exponent <= 6111:
        return Decimal128(value)
    raise NotCarried


class Num(str):
    """A JSON number token, kept as written."""


def expected_json(value: Any, depth: int = 0) -> Any:
    """The parsed JSON value as BSON, or NotCarried (the codec then writes the whole text)."""
    if isinstance(value, Num):
        return expected_number(str(value))
    if isinstance(value, dict):
        if depth >= 90:
            raise NotCarried
        for key in value:
            if key.startswith("$") or "." in key or "\x00" in key:
                raise NotCarried
        return {key: expected_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        if depth >= 90:
            raise NotCarried
        return [expected_json(item, depth + 1) for item in value]
    return value


def json_text(value: Any, *, ascii_only: bool = False) -> str:
    if isinstance(value, Num):
        return str(value)
    if isinstance(value, dict):
        members = (
            f"{json.dumps(key, ensure_ascii=ascii_only)}: {json_text(item, ascii_only=ascii_only)}"
            for key, item in value.items()
        )
        return "{" + ", ".join(members) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(json_text(item, ascii_only=ascii_only) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def floor_ms(moment: dt.datetime) -> dt.datetime:
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# ---- one value in one line ----------------------------------------------------------------------


def encode(column: Column, value: Any) -> bytes:
    return RowEncoder([ID, column], ["id"]).upsert_line([1], [1, value], 7)


def roundtrip(column: Column, value: Any) -> Any:
    """``value`` as fetched → line → what MongoDB reads for the column."""
    document = check_line(encode(column, value))
    assert list(document) == ["_id", "id", "v", "_cdc"]
    assert document["_cdc"] == {"pos": Int64(7)} and type(document["_cdc"]["pos"]) is Int64
    return document["v"]


def raw(column: Column, value: Any) -> Any:
    """The JSON as written, before any Extended JSON interpretation."""
    return orjson.loads(encode(column, value))["v"]


def assert_same(actual: Any, expected: Any, *, ordered: bool = True) -> None:
    assert same(actual, expected, ordered=ordered), f"{actual!r} != {expected!r}"


# ---- integers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [(SMALLINT, value) for value in (0, 1, -1, -32768, 32767)]
    + [(INTEGER, value) for value in (0, 1, -1, I32_MIN, I32_MAX)],
)
def test_int32_stays_a_plain_number(column, value):
    assert raw(column, value) == value
    assert_same(roundtrip(column, value), value)
    assert f'"v":{value},'.encode() in encode(column, value)


@pytest.mark.parametrize("value", [0, 1, -1, 5, I32_MAX, I32_MAX + 1, I64_MIN, I64_MAX])
def test_bigint_is_always_number_long(value):
    assert raw(BIGINT, value) == {"$numberLong": str(value)}
    assert_same(roundtrip(BIGINT, value), Int64(value))


# ---- numeric ------------------------------------------------------------------------------------


def test_numeric_keeps_its_scale():
    assert raw(NUMERIC, Decimal("1.50")) == {"$numberDecimal": "1.50"}
    parsed = roundtrip(NUMERIC, Decimal("1.50"))
    assert_same(parsed, Decimal128("1.50"))
    assert parsed.to_decimal().as_tuple() == Decimal("1.50").as_tuple()
    assert_same(roundtrip(NUMERIC, Decimal("100.000")), Decimal128("100.000"))
    assert_same(roundtrip(NUMERIC, Decimal("0.0000001")), Decimal128("1E-7"))
    assert_same(roundtrip(NUMERIC, Decimal("-0.00")), Decimal128("-0.00"))


@pytest.mark.parametrize(
    ("value", "text"), [(Decimal("NaN"), "NaN"), (Decimal("Infinity"), "Infinity"), (Decimal("-Infinity"), "-Infinity")]
)
def test_numeric_special_values_are_decimal128(value, text):
    assert raw(NUMERIC, value) == {"$numberDecimal": text}
    assert_same(roundtrip(NUMERIC, value), Decimal128(text))
    assert_same(roundtrip(MONEY, value), Decimal128(text))


def test_numeric_with_34_digits_is_decimal128():
    value = Decimal("1234567890123456789012345678901234")
    assert_same(roundtrip(NUMERIC, value), Decimal128(value))
    value = Decimal("9.999999999999999999999999999999999E-6143")  # 34 digits, smallest exponent -6176
    assert_same(roundtrip(NUMERIC, value), Decimal128(value))
    assert_same(roundtrip(NUMERIC, Decimal("1E+6111")), Decimal128("1E+6111"))


@pytest.mark.parametrize(
    "text",
    [
        "12345678901234567890123456789012345",  # 35 digits
        "1234567890123456789012345678901234567890",  # 40 digits
        "12345678901234567890.12345678901234567890",
        "1.0000000000000000000000000000000000",  # 35 digits: trailing zeros count
        "-99999999999999999999999999999999999999999",
    ],
)
def test_wide_numeric_falls_back_to_its_exact_text(text):
    value = Decimal(text)
    assert raw(NUMERIC, value) == text
    assert roundtrip(NUMERIC, value) == text


@pytest.mark.parametrize("text", ["1E-6177", "1E+6112", "1.5E-7000", "4E+7000"])
def test_numeric_exponent_out_of_decimal128_range_falls_back_to_exact_text(text):
    value = Decimal(text)
    parsed = roundtrip(NUMERIC, value)
    assert type(parsed) is str
    assert Decimal(parsed).as_tuple() == value.as_tuple()


# ---- doubles ------------------------------------------------------------------------------------


@pytest.mark.parametrize("column", [REAL, DOUBLE])
def test_non_finite_doubles_are_number_double_strings(column):
    assert raw(column, math.nan) == {"$numberDouble": "NaN"}
    assert raw(column, math.inf) == {"$numberDouble": "Infinity"}
    assert raw(column, -math.inf) == {"$numberDouble": "-Infinity"}
    assert_same(roundtrip(column, math.nan), math.nan)
    assert_same(roundtrip(column, math.inf), math.inf)
    assert_same(roundtrip(column, -math.inf), -math.inf)


def test_negative_zero_keeps_its_sign_and_one_stays_a_double():
    assert b'"v":-0.0,' in encode(DOUBLE, -0.0)
    assert_same(roundtrip(DOUBLE, -0.0), -0.0)
    assert b'"v":1.0,' in encode(DOUBLE, 1.0)
    assert_same(roundtrip(DOUBLE, 1.0), 1.0)
    for value in (1e16, 1e22, 5e-324, 1.7976931348623157e308, 0.1, -123456789.0):
        line = encode(DOUBLE, value)
        token = line.split(b'"v":', 1)[1].split(b",", 1)[0]
        assert re.search(rb"[.eE]", token), token  # never an integer token: Go would read int64
        assert_same(roundtrip(DOUBLE, value), value)


# ---- bool, text, binary -------------------------------------------------------------------------


def test_bool_text_and_enum_pass_through():
    assert_same(roundtrip(BOOLEAN, True), True)
    assert_same(roundtrip(BOOLEAN, False), False)
    hostile = 'é 😀 "q" \\ \t\n\u202e $x a.b {"$numberLong": "1"}'
    assert_same(roundtrip(TEXT, hostile), hostile)
    assert_same(roundtrip(TEXT, ""), "")
    assert_same(roundtrip(ENUM, "happy"), "happy")


def test_bytea_is_binary_subtype_00():
    assert raw(BYTEA, b"\x00\xff") == {"$binary": {"base64": "AP8=", "subType": "00"}}
    assert raw(BYTEA, memoryview(b"\x00\xff")) == {"$binary": {"base64": "AP8=", "subType": "00"}}
    assert_same(roundtrip(BYTEA, b"\x00\xff"), b"\x00\xff")  # pymongo reads subtype 0 as bytes
    assert_same(roundtrip(BYTEA, b""), b"")


def test_uuid_is_binary_subtype_04():
    value = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert raw(UUID, value) == {"$binary": {"base64": "oO68mZwLTvi7bWu5vTgKEQ==", "subType": "04"}}
    parsed = roundtrip(UUID, value)
    assert_same(parsed, Binary(value.bytes, 4))
    assert parsed.as_uuid() == value


# ---- dates and timestamps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-62135596800000", dt.datetime(1, 1, 1, tzinfo=UTC)),
        ("0", EPOCH),
        ("-1", dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        ("253402300799999", dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        ("1582977296789", dt.datetime(2020, 2, 29, 11, 54, 56, 789000, tzinfo=UTC)),
    ],
)
@pytest.mark.parametrize("column", [DATE, TIMESTAMP, TIMESTAMPTZ])
def test_epoch_milliseconds_become_dates(column, text, expected):
    assert raw(column, text) == {"$date": {"$numberLong": text}}
    assert_same(roundtrip(column, text), expected)


@pytest.mark.parametrize(
    "text",
    ["infinity", "-infinity", "10000-01-01", "0044-03-15 BC", "0044-03-15 12:00:00+00 BC", "10000-01-01 00:00:00"],
)
@pytest.mark.parametrize("column", [DATE, TIMESTAMP, TIMESTAMPTZ])
def test_dates_bson_cannot_hold_stay_text(column, text):
    assert_same(roundtrip(column, text), text)


def test_temporal_array_elements_are_read_from_postgres_text():
    values = [
        "2020-01-01 00:00:00.123456+00",
        None,
        "infinity",
        "0044-03-15 00:00:00+00 BC",
        "10000-01-01 00:00:00+00",
        "0001-01-01 00:00:00+00",
        "1969-12-31 23:59:59.9995+00",
        "2020-06-01 12:00:00+05:30",
    ]
    expected = [
        dt.datetime(2020, 1, 1, 0, 0, 0, 123000, tzinfo=UTC),
        None,
        "infinity",
        "0044-03-15 00:00:00+00 BC",
        "10000-01-01 00:00:00+00",
        dt.datetime(1, 1, 1, tzinfo=UTC),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
        dt.datetime(2020, 6, 1, 6, 30, tzinfo=UTC),
    ]
    assert_same(roundtrip(array(TIMESTAMPTZ), values), expected)
    assert_same(
        roundtrip(array(TIMESTAMP), ["2020-02-29 23:59:59.999999", "-infinity"]),
        [dt.datetime(2020, 2, 29, 23, 59, 59, 999000, tzinfo=UTC), "-infinity"],
    )
    assert_same(
        roundtrip(array(DATE), [["0001-01-01", "9999-12-31"], ["infinity", "0044-03-15 BC"]]),
        [[dt.datetime(1, 1, 1, tzinfo=UTC), dt.datetime(9999, 12, 31, tzinfo=UTC)], ["infinity", "0044-03-15 BC"]],
    )


# ---- json ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"$set": {"a": 1}}',
        '{"a": [1, {"$gt": 2}]}',
        '{"a.b": 1}',
        '{"x": {"y": [{"deep.er": true}]}}',
        '[{"ok": 1}, {"$oid": "5"}]',
        '{"nul\\u0000": 1}',
        '{"a": "\\ud800"}',  # json (not jsonb) keeps a lone surrogate escape: no UTF-8 form
        '{"\\udfff": 1}',
        '{"n": 1e-6177}',
        '{"n": 12345678901234567890123456789012345}',  # 35 digits
        '{"n": 0.12345678901234567890123456789012345}',
        '{"n": NaN}',  # not JSON: carried as the text it is
    ],
)
@pytest.mark.parametrize("column", [JSON, JSONB])
def test_json_that_bson_cannot_hold_falls_back_to_its_whole_text(column, text):
    assert_same(roundtrip(column, text), text)


def nested(depth: int, *, leaf: str = "1") -> str:
    return '{"a": ' * depth + leaf + "}" * depth


def test_json_nesting_up_to_90_levels_is_carried_deeper_falls_back():
    parsed = roundtrip(JSONB, nested(90))
    for _ in range(89):
        parsed = parsed["a"]
    assert parsed == {"a": 1}
    assert_same(roundtrip(JSONB, nested(91)), nested(91))
    expected: list[Any] = []
    for _ in range(89):
        expected = [expected]
    assert_same(roundtrip(JSONB, "[" * 90 + "]" * 90), expected)
    assert_same(roundtrip(JSONB, "[" * 91 + "]" * 91), "[" * 91 + "]" * 91)
    assert_same(roundtrip(JSONB, "[" * 100 + "]" * 100), "[" * 100 + "]" * 100)
    assert_same(roundtrip(JSONB, "[" * 5000 + "]" * 5000), "[" * 5000 + "]" * 5000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 0.1}', {"a": Decimal128("0.1")}),
        ('{"a": 1.0}', {"a": Decimal128("1.0")}),
        ('{"a": 1e400}', {"a": Decimal128("1E+400")}),
        ('{"a": -0}', {"a": 0}),
        ('{"a": 5, "b": -2147483648}', {"a": 5, "b": I32_MIN}),
        ('{"a": 2147483648}', {"a": Int64(2**31)}),
        ('{"a": -9223372036854775808}', {"a": Int64(I64_MIN)}),
        ('{"a": 9223372036854775808}', {"a": Decimal128("9223372036854775808")}),
        ('{"a": 1234567890123456789012345678901234}', {"a": Decimal128("1234567890123456789012345678901234")}),
        ('[1, null, "x", true, false, [null]]', [1, None, "x", True, False, [None]]),
        ('{"a$": 1, "": 2, "é": "\\ud83d\\ude00"}', {"a$": 1, "": 2, "é": "😀"}),
        ('"just text"', "just text"),
        ("12.50", Decimal128("12.50")),
        ("true", True),
    ],
)
def test_json_numbers_are_exact(text, expected):
    assert_same(roundtrip(JSON, text), expected)


def test_json_null_document_is_null():
    assert roundtrip(JSONB, "null") is None


def test_json_arrays_with_nulls_and_fallback_elements():
    values = ['{"a": 1}', None, '{"$x": 1}', "[0.5]"]
    assert_same(roundtrip(array(JSONB), values), [{"a": 1}, None, '{"$x": 1}', [Decimal128("0.5")]])


# ---- arrays -------------------------------------------------------------------------------------


def test_multidimensional_arrays_keep_their_nesting_and_nulls():
    assert_same(roundtrip(array(INTEGER), [[1, None], [3, 4]]), [[1, None], [3, 4]])
    assert_same(roundtrip(array(INTEGER), [None, None]), [None, None])
    assert_same(roundtrip(array(INTEGER), []), [])
    assert_same(
        roundtrip(array(BIGINT), [[1, None], [2**40, I64_MIN]]),
        [[Int64(1), None], [Int64(2**40), Int64(I64_MIN)]],
    )
    assert_same(
        roundtrip(array(NUMERIC), [[Decimal("1.50"), Decimal("NaN")], [None, Decimal("1" * 40)]]),
        [[Decimal128("1.50"), Decimal128("NaN")], [None, "1" * 40]],
    )
    assert_same(roundtrip(array(DOUBLE), [math.nan, -0.0, 1.0, -math.inf]), [math.nan, -0.0, 1.0, -math.inf])
    assert_same(roundtrip(array(TEXT), [["a", None], ["", "b"]]), [["a", None], ["", "b"]])
    assert_same(roundtrip(array(BYTEA), [b"\x01", None]), [b"\x01", None])
    value = uuid.UUID(int=1)
    assert_same(roundtrip(array(UUID), [value, None]), [Binary(value.bytes, 4), None])
    assert_same(roundtrip(array(INTERVAL), ["P1M2D", None]), ["P1M2D", None])


# ---- rows, keys, deletes, sizes -----------------------------------------------------------------


def test_composite_key_is_a_subdocument_in_key_order_and_keys_stay_fields():
    columns = [Column("a", "text"), Column("b", "bigint"), Column("c", "numeric")]
    encoder = RowEncoder(columns, ["b", "a"])
    document = check_line(encoder.upsert_line([5, "x"], ["x", 5, None], 2**40))
    assert_same(
        document,
        {"_id": {"b": Int64(5), "a": "x"}, "a": "x", "b": Int64(5), "c": None, "_cdc": {"pos": Int64(2**40)}},
    )
    deleted = check_line(encoder.delete_line([5, "x"], 9))
    assert_same(deleted, {"_id": {"b": Int64(5), "a": "x"}, "_cdc": {"pos": Int64(9)}})


def test_single_key_is_the_converted_value():
    value = uuid.UUID(int=7)
    encoder = RowEncoder([Column("k", "uuid"), Column("t", "timestamp with time zone")], ["k"])
    line = encoder.upsert_line([value], [value, "0"], 1)
    assert_same(check_line(line)["_id"], Binary(value.bytes, 4))
    assert_same(check_line(encoder.delete_line([value], 1))["_id"], Binary(value.bytes, 4))
    encoder = RowEncoder([Column("d", "date")], ["d"])
    assert_same(check_line(encoder.delete_line(["0"], 1))["_id"], EPOCH)


def test_a_document_over_16_mib_is_refused():
    with pytest.raises(DocumentTooLarge):
        encode(TEXT, "x" * (16 * 1024 * 1024))
    encode(TEXT, "x" * (15 * 1024 * 1024))


def test_a_small_json_line_that_is_a_large_bson_document_is_refused():
    # 2,000,000 zeros: 4 MB of JSON, 25 MB of BSON (each element carries its index as a key)
    value = [0] * 2_000_000
    assert len(orjson.dumps(value)) < 4 * 1024 * 1024
    with pytest.raises(DocumentTooLarge):
        encode(array(INTEGER), value)
    value = [0] * 600_000  # 1.2 MB of JSON, 7.4 MB of BSON: fine
    assert_same(roundtrip(array(INTEGER), value), value)


# ---- what the SQL reads -------------------------------------------------------------------------


def sql_text(column: Column) -> str:
    return select_expression(column, sql.Identifier("c")).as_string(None)


def test_select_expression_casts_what_psycopg_cannot_load_exactly():
    assert sql_text(INTEGER) == '"c"'
    assert sql_text(BYTEA) == '"c"'
    assert sql_text(MONEY) == '"c"::numeric::text'
    assert sql_text(NUMERIC) == '"c"::text'  # the text is the Decimal's str, cheaper to carry
    assert sql_text(array(MONEY)) == '"c"::numeric[]'
    assert sql_text(INTERVAL) == '"c"::text'
    # inet's cast to text always adds the netmask ('::1/128'); its output text does not
    assert sql_text(Column("c", "inet", type_category="I")) == 'abbrev("c")'
    assert sql_text(array(Column("c", "inet", type_category="I"))) == '"c"::text::text[]'
    assert sql_text(JSONB) == '"c"::text'
    assert sql_text(array(JSONB)) == '"c"::text[]'
    assert sql_text(array(TIMESTAMPTZ)) == '"c"::text[]'
    assert "extract(epoch" in sql_text(DATE)
    # no loader for these in psycopg (a binary cursor would return raw bytes)
    assert sql_text(ENUM) == '"c"::text'
    assert sql_text(array(ENUM)) == '"c"::text[]'
    assert sql_text(Column("c", "citext", type_category="S")) == '"c"::text'
    assert sql_text(Column("c", "hstore", type_category="U")) == '"c"::text'
    # an array of a domain arrives with an oid psycopg does not know: read as the base type's array
    assert sql_text(array(INTEGER)) == '"c"::integer[]'
    assert sql_text(array(Column("c", "character", type_category="S"))) == '"c"::bpchar[]'


# ---- properties ---------------------------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))


@given(st.integers(I64_MIN, I64_MAX))
def test_any_bigint_roundtrips(value):
    assert_same(roundtrip(BIGINT, value), Int64(value))


@given(st.integers(I32_MIN, I32_MAX))
def test_any_integer_roundtrips(value):
    assert_same(roundtrip(INTEGER, value), value)


@st.composite
def decimals(draw: st.DrawFn) -> Decimal:
    kind = draw(st.sampled_from(["tuple", "tuple", "hypothesis", "special"]))
    if kind == "special":
        return Decimal(draw(st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity"])))
    if kind == "hypothesis":
        return draw(st.decimals(allow_nan=False, allow_infinity=False))
    sign = draw(st.integers(0, 1))
    coefficient = draw(st.integers(0, 10**40) | st.integers(0, 10**34 - 1))
    exponent = draw(st.integers(-7000, 7000) | st.integers(-40, 5) | st.sampled_from([-6176, -6177, 6111, 6112]))
    return Decimal((sign, tuple(int(digit) for digit in str(coefficient)), exponent))


@given(decimals())
def test_numeric_read_as_postgres_text_is_what_the_decimal_gives(value):
    if value.is_finite() and value.as_tuple().exponent > 0:
        value = Decimal(format(value, "f"))  # PostgreSQL's numeric never has a positive exponent
    text = "NaN" if value.is_nan() else format(value, "f")  # numeric_out: fixed notation, scale kept
    assert values.numeric(text) == values.numeric(value)


@given(decimals())
def test_any_decimal_roundtrips_exactly_or_as_exact_text(value):
    assert_same(roundtrip(NUMERIC, value), expected_decimal(value))


@given(st.floats() | st.floats(width=32) | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 1.0]))
def test_any_double_roundtrips_bit_for_bit(value):
    parsed = roundtrip(DOUBLE, value)
    assert type(parsed) is float
    if math.isnan(value):
        assert math.isnan(parsed)
    else:
        assert struct.pack(">d", parsed) == struct.pack(">d", value)


@given(texts)
def test_any_text_roundtrips(value):
    assert_same(roundtrip(TEXT, value), value)


@given(st.binary())
def test_any_bytes_roundtrip(value):
    assert_same(roundtrip(BYTEA, value), value)


@given(st.uuids())
def test_any_uuid_roundtrips(value):
    assert_same(roundtrip(UUID, value), Binary(value.bytes, 4))


datetimes = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59, 999999))


@given(datetimes)
def test_any_epoch_ms_roundtrips(value):
    moment = value.replace(tzinfo=UTC)
    milliseconds = (moment - EPOCH) // dt.timedelta(milliseconds=1)
    assert_same(roundtrip(TIMESTAMPTZ, str(milliseconds)), floor_ms(moment))


def postgres_timestamp_text(moment: dt.datetime, offset: str) -> str:
    text = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} {moment:%H:%M:%S}"
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + offset


@given(st.lists(st.none() | datetimes, max_size=5))
def test_any_timestamp_array_roundtrips(values):
    moments = [None if value is None else value.replace(tzinfo=UTC) for value in values]
    texts_tz = [None if moment is None else postgres_timestamp_text(moment, "+00") for moment in moments]
    texts_plain = [None if moment is None else postgres_timestamp_text(moment, "") for moment in moments]
    expected = [None if moment is None else floor_ms(moment) for moment in moments]
    assert_same(roundtrip(array(TIMESTAMPTZ), texts_tz), expected)
    assert_same(roundtrip(array(TIMESTAMP), texts_plain), expected)
    dates = [None if moment is None else moment.strftime("%m-%d") for moment in moments]
    date_texts = [None if m is None else f"{m.year:04d}-{d}" for m, d in zip(moments, dates, strict=True)]
    expected_dates = [None if m is None else dt.datetime(m.year, m.month, m.day, tzinfo=UTC) for m in moments]
    assert_same(roundtrip(array(DATE), date_texts), expected_dates)


json_numbers = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    st.integers(I64_MIN - 2, I64_MAX + 2).map(str),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    decimals().filter(lambda value: value.is_finite()).map(str),
    st.sampled_from(["0.1", "1e400", "1E-6177", "-0", "-0.0", "1.50", "2147483648", "9223372036854775808"]),
).map(Num)
json_keys = texts | st.sampled_from(["$set", "a.b", "", "x\x00", "ok", "é", "a$", "_id"])
json_values = st.recursive(
    st.none() | st.booleans() | st.text(st.characters(exclude_categories=("Cs",))) | json_numbers,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=4),
    max_leaves=12,
)


@given(json_values, st.booleans())
def test_any_json_roundtrips_exactly_or_as_its_text(value, ascii_only):
    text = json_text(value, ascii_only=ascii_only)
    try:
        expected = expected_json(value)
    except NotCarried:
        expected = text
    assert_same(roundtrip(JSON, text), expected)


row_values = st.fixed_dictionaries(
    {
        "bigint": st.integers(I64_MIN, I64_MAX),
        "numeric": decimals(),
        "double": st.floats(),
        "text": texts,
        "bytea": st.binary(max_size=20),
        "uuid": st.uuids(),
        "json": json_values.map(json_text),
        "ints": st.lists(st.none() | st.integers(I32_MIN, I32_MAX), max_size=4),
    }
)
ROW_COLUMNS = [
    Column("bigint", "bigint"),
    Column("numeric", "numeric"),
    Column("double", "double precision"),
    Column("text", "text"),
    Column("bytea", "bytea"),
    Column("uuid", "uuid"),
    Column("json", "jsonb"),
    Column("ints", "integer", True),
]


@given(row_values, st.integers(0, I64_MAX))
def test_no_line_writes_nan_infinity_or_null_for_a_value(values, pos):
    encoder = RowEncoder(ROW_COLUMNS, ["bigint"])
    row = [values[column.name] for column in ROW_COLUMNS]
    document = check_line(encoder.upsert_line([values["bigint"]], row, pos))
    for column in ROW_COLUMNS:
        if column.name != "json" or values["json"] != "null":
            assert document[column.name] is not None, column.name
    assert_same(document["_cdc"], {"pos": Int64(pos)})
    assert_same(document["_id"], Int64(values["bigint"]))


# ---- the real parser ----------------------------------------------------------------------------


def representative_lines() -> list[tuple[bytes, Any]]:
    """Lines with one value each, and what the Go driver should make of the value (canonical form)."""
    cases: list[tuple[Column, Any, Any]] = [
        (INTEGER, 5, {"$numberInt": "5"}),
        (INTEGER, I32_MIN, {"$numberInt": str(I32_MIN)}),
        (BIGINT, 5, {"$numberLong": "5"}),
        (BIGINT, I64_MAX, {"$numberLong": str(I64_MAX)}),
        (BIGINT, I64_MIN, {"$numberLong": str(I64_MIN)}),
        (NUMERIC, Decimal("1.50"), {"$numberDecimal": "1.50"}),
        (NUMERIC, Decimal("NaN"), {"$numberDecimal": "NaN"}),
        (NUMERIC, Decimal("-Infinity"), {"$numberDecimal": "-Infinity"}),
        (
            NUMERIC,
            Decimal("1234567890123456789012345678901234"),
            {"$numberDecimal": "1234567890123456789012345678901234"},
        ),
        (NUMERIC, Decimal("1" * 40), "1" * 40),
        (NUMERIC, Decimal("0.0000001"), None),
        (NUMERIC, Decimal("1E+6111"), None),
        (NUMERIC, Decimal("9.999999999999999999999999999999999E-6143"), None),
        (NUMERIC, Decimal("1E-6177"), "1E-6177"),
        (DOUBLE, 1.0, {"$numberDouble": "1.0"}),
        (DOUBLE, -0.0, {"$numberDouble": "-0.0"}),
        (DOUBLE, 1e16, {"$numberDouble": "1E+16"}),
        (DOUBLE, math.nan, {"$numberDouble": "NaN"}),
        (DOUBLE, math.inf, {"$numberDouble": "Infinity"}),
        (DOUBLE, -math.inf, {"$numberDouble": "-Infinity"}),
        (DOUBLE, 5e-324, None),
        (BOOLEAN, True, True),
        (TEXT, 'é 😀 "q" \\ \t\n $x', 'é 😀 "q" \\ \t\n $x'),
        (BYTEA, b"\x00\xff", {"$binary": {"base64": "AP8=", "subType": "00"}}),
        (UUID, uuid.UUID(int=1), {"$binary": {"base64": "AAAAAAAAAAAAAAAAAAAAAQ==", "subType": "04"}}),
        (DATE, "-62135596800000", {"$date": {"$numberLong": "-62135596800000"}}),
        (TIMESTAMPTZ, "253402300799999", {"$date": {"$numberLong": "253402300799999"}}),
        (TIMESTAMPTZ, "infinity", "infinity"),
        (DATE, "0044-03-15 BC", "0044-03-15 BC"),
        (
            array(TIMESTAMPTZ),
            ["2020-01-01 00:00:00.123456+00", None],
            [{"$date": {"$numberLong": "1577836800123"}}, None],
        ),
        (JSONB, '{"a": 0.1, "b": [1, null, 2147483648]}', None),
        (JSONB, '{"$set": 1}', '{"$set": 1}'),
        (JSONB, '{"a": 9223372036854775808}', {"a": {"$numberDecimal": "9223372036854775808"}}),
        (JSON, '{"a": 1e400}', None),
        (JSONB, nested(90), None),
        (array(JSONB), ["[" * 90 + "]" * 90, "[" * 90 + "]" * 90], None),
        (
            array(INTEGER),
            [[1, None], [3, 4]],
            [[{"$numberInt": "1"}, None], [{"$numberInt": "3"}, {"$numberInt": "4"}]],
        ),
        (array(NUMERIC), [Decimal("1.50"), None], [{"$numberDecimal": "1.50"}, None]),
    ]
    return [(encode(column, value), expected) for column, value, expected in cases]


def test_real_mongoimport_parser_accepts_every_line(tmp_path):
    lines = representative_lines()
    composite = RowEncoder([Column("a", "text"), Column("b", "bigint")], ["b", "a"])
    extra = [composite.upsert_line([5, "x"], ["x", 5], 3), composite.delete_line([5, "x"], 4)]
    path = tmp_path / "lines.upsert.jsonl"
    path.write_bytes(b"".join(line for line, _ in lines) + b"".join(extra))
    parsed = mongoimport_parse(path)
    assert len(parsed) == len(lines) + len(extra)
    for (line, expected), document in zip(lines, parsed, strict=False):
        assert document["_id"] == {"$numberInt": "1"}
        assert document["_cdc"] == {"pos": {"$numberLong": "7"}}
        if expected is not None:
            assert document["v"] == expected, line
    assert parsed[-1] == {"_id": {"b": {"$numberLong": "5"}, "a": "x"}, "_cdc": {"pos": {"$numberLong": "4"}}}


def test_module_constants_match_the_mapping():
    assert values.DECIMAL128_DIGITS == 34
    assert (values.DECIMAL128_MIN_EXPONENT, values.DECIMAL128_MAX_EXPONENT) == (-6176, 6111)
    assert values.JSON_MAX_DEPTH == 90
    assert codec.BSON_MAX_SIZE == 16 * 1024 * 1024
    assert converter(INTEGER)(5) == 5


@pytest.mark.parametrize(
    "line",
    [
        b'{"_id":{"$oid":"5f0c8e1e2b3c4d5e6f708192"},"a":1}\n',
        b'{"_id":1,"d":{"$date":"2025-01-02T03:04:05Z"}}\n',
        b'{"_id":1,"r":{"$regularExpression":{"pattern":"a","options":"i"}}}\n',
        b'{"_id":1,"b":{"$binary":{"base64":"AAE=","subType":"05"}}}\n',
        b'{"_id":1,"n":{"$numberDouble":"1.5"}}\n',
        b'{"_id":1,"big":1e300,"small":-1.5e19,"list":[1e19,2.5]}\n',
        b'{"_id":{"a":{"$numberLong":"5"},"b":[{"$numberDecimal":"1.50"},null]}}\n',
    ],
)
def test_fast_reader_gives_what_json_util_gives_for_wrappers_the_codec_never_writes(line):
    expected = json_util.loads(line, json_options=extjson.JSON_OPTIONS)
    assert bson.encode(extjson.parse_line(line), codec_options=UUID_STANDARD) == bson.encode(
        expected, codec_options=UUID_STANDARD
    )


def test_fast_reader_refuses_what_json_util_refuses():
    with pytest.raises(ValueError):
        extjson.parse_line(b'{"_id":1,"a":\n')
    with pytest.raises(OverflowError):  # an integer beyond int64 (orjson alone would read a float)
        bson.encode(extjson.parse_line(b'{"_id":1,"n":[123456789012345678901234567890]}\n'))
    with pytest.raises(bson.errors.InvalidBSON):  # a date beyond datetime's years
        extjson.parse_line(b'{"_id":1,"d":{"$date":{"$numberLong":"99999999999999999"}}}\n')
