"""PostgreSQL values → MongoDB Extended JSON v2 lines that real ``mongoimport`` accepts.

The type mapping (README, "Type mapping") in one place:

- ``select_expression`` says how to read a column: as psycopg's typed value where its loader is
  exact, or cast in SQL where it is lossy or raises (temporal types become epoch milliseconds or
  their text, interval/time/inet become text, money becomes numeric, json becomes text parsed
  here with exact numbers);
- ``converter`` turns the fetched value into what orjson writes: plain JSON for int32, bool,
  string and finite doubles; Extended JSON wrappers (always with string values) for int64,
  Decimal128, dates, binaries and non-finite doubles. orjson never sees a NaN, an Infinity or an
  integer outside int32, so it can neither write ``null`` for them nor widen them.

``RowEncoder`` puts a table's converters together once and encodes rows to bytes.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from psycopg import sql

from cdc.capture.tables import Column
from cdc.infra.errors import DocumentTooLarge

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DECIMAL128_DIGITS = 34
DECIMAL128_MIN_EXPONENT, DECIMAL128_MAX_EXPONENT = -6176, 6111
JSON_MAX_DEPTH = 90
BSON_MAX_SIZE = 16 * 1024 * 1024
# Above this many bytes of JSON a line is measured as BSON before it is written. BSON can be 6.5 times
# the JSON ("0," in a long array is 13 bytes: type, a 7-digit index key and its NUL, int32), so only
# lines under 16 MiB / 8 are surely small enough.
_MEASURE_ABOVE = BSON_MAX_SIZE // 8

Converter = Callable[[Any], Any]
Json = Any

TEXT_TYPES = frozenset({"text", "character varying", "character", "name", "citext", '"char"'})
TEMPORAL_TYPES = frozenset({"date", "timestamp without time zone", "timestamp with time zone"})
STRING_TYPES = frozenset(
    {
        "time without time zone", "time with time zone", "interval", "inet", "cidr", "macaddr",
        "macaddr8", "bit", "bit varying", "xml", "tsvector", "tsquery", "point", "line", "lseg",
        "box", "path", "polygon", "circle", "pg_lsn", "oid", "regclass", "regtype", "xid", "xid8",
    }
)  # fmt: skip


# ---- how to read a column -----------------------------------------------------------------------


def _temporal_as_text(expression: sql.Composable) -> sql.Composable:
    """Epoch milliseconds (floored, so µs are truncated) as text, or PostgreSQL's text when the
    value is ±infinity or its year lies outside 1–9999 (BC years extract as negative)."""
    return sql.SQL(
        "CASE WHEN isfinite({v}) AND extract(year FROM {v}) BETWEEN 1 AND 9999"
        " THEN floor(extract(epoch FROM {v}) * 1000)::bigint::text ELSE {v}::text END"
    ).format(v=expression)


def select_expression(column: Column, source: sql.Composable) -> sql.Composable:
    """The SQL that reads ``source`` (a column reference) for ``converter(column)``."""
    base = column.base_type
    if column.is_array:
        if base == "money":
            return sql.SQL("{}::numeric[]").format(source)
        if base == "inet":  # through the array's own text: its elements are inet's output text (see below)
            return sql.SQL("{}::text::text[]").format(source)
        if (
            base in TEMPORAL_TYPES
            or base in STRING_TYPES
            or base in ("json", "jsonb")
            or _unknown(column)
            or column.type_category == "E"
        ):
            return sql.SQL("{}::text[]").format(source)
        # An array of a domain arrives with the domain array's oid, which psycopg cannot load (binary: raw
        # bytes, text: the literal '{…}'): read it as the base type's array ("character" alone is char(1)).
        return sql.SQL("{}::{}[]").format(source, sql.SQL("bpchar" if base == "character" else base))
    if base in TEMPORAL_TYPES:
        return _temporal_as_text(source)
    if base == "money":
        return sql.SQL("{}::numeric::text").format(source)
    if base == "numeric":  # its text is cheaper to carry than a Decimal (see ``numeric``)
        return sql.SQL("{}::text").format(source)
    if base == "inet":  # inet::text always adds the netmask ('::1/128'); abbrev() is inet's output text ('::1')
        return sql.SQL("abbrev({})").format(source)
    # enums too: in binary results psycopg knows no loader for them and would return bytes
    if base in STRING_TYPES or base in ("json", "jsonb") or _unknown(column) or column.type_category == "E":
        return sql.SQL("{}::text").format(source)
    return source


_KNOWN = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "numeric",
        "real",
        "double precision",
        "boolean",
        "bytea",
        "uuid",
        "money",
    }
)


def _unknown(column: Column) -> bool:
    """Types outside the mapping travel as their PostgreSQL text (enums are text already). So does citext:
    psycopg has no loader for it, and a binary cursor (the drain's) would hand over raw bytes."""
    base = column.base_type
    return base == "citext" or not (
        base in _KNOWN or base in TEXT_TYPES or base in TEMPORAL_TYPES or base in STRING_TYPES
        or base in ("json", "jsonb") or column.type_category == "E"
    )  # fmt: skip


# ---- value converters ---------------------------------------------------------------------------


def int64(value: int) -> Json:
    return {"$numberLong": str(value)}


def integer(value: int) -> Json:
    """An integer that fits int32 stays a plain JSON number; a wider one is always $numberLong."""
    return value if INT32_MIN <= value <= INT32_MAX else {"$numberLong": str(value)}


def double(value: float) -> Json:
    if math.isfinite(value):
        return value  # orjson writes the shortest exact repr, keeping -0.0 and a '.0'
    if math.isnan(value):
        return {"$numberDouble": "NaN"}
    return {"$numberDouble": "Infinity" if value > 0 else "-Infinity"}


def _decimal128_text(value: decimal.Decimal) -> str | None:
    """The $numberDecimal string for ``value``, or None when Decimal128 cannot hold it exactly."""
    if value.is_nan():
        return "NaN"
    if value.is_infinite():
        return "-Infinity" if value.is_signed() else "Infinity"
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if len(digits) > DECIMAL128_DIGITS:
        return None
    if not DECIMAL128_MIN_EXPONENT <= exponent <= DECIMAL128_MAX_EXPONENT:
        return None
    return str(value)


def numeric(value: decimal.Decimal | str) -> Json:
    """Decimal128 when exact (scale kept: 1.50 stays 1.50), else the decimal's text (documented).

    A scalar numeric is read as PostgreSQL's text (``select_expression``), which is ``str`` of the
    Decimal psycopg would load, except below 1e-6 where ``str`` switches to an exponent (any text
    holding "0.000000" goes through the Decimal, exactly): up to 34 characters there are at most 34
    digits, so other text is used as is.
    """
    if type(value) is str:
        if len(value) <= DECIMAL128_DIGITS and "0.000000" not in value:  # as inlined by ``row_upsert``
            return {"$numberDecimal": value}
        value = decimal.Decimal(value)
    assert isinstance(value, decimal.Decimal)
    text = _decimal128_text(value)
    return {"$numberDecimal": text} if text is not None else str(value)


def binary(value: bytes | memoryview) -> Json:
    return {"$binary": {"base64": base64.b64encode(bytes(value)).decode("ascii"), "subType": "00"}}


def uuid_binary(value: Any) -> Json:
    return {"$binary": {"base64": base64.b64encode(value.bytes).decode("ascii"), "subType": "04"}}


def epoch_ms_or_text(value: str) -> Json:
    """What ``_temporal_as_text`` produced: epoch milliseconds, or a value BSON dates cannot hold."""
    if (value[1:] if value[:1] == "-" else value).isdigit():  # PostgreSQL writes only ASCII digits
        return {"$date": {"$numberLong": value}}
    return value


_ISO_SPACE = re.compile(r"^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}(?:\.\d+)?)([+-]\d{2}(?::?\d{2})?)?$")


def temporal_text(value: str) -> Json:
    """A date or timestamp in PostgreSQL's ISO text (array elements): a BSON date when it can be one."""
    match = _ISO_SPACE.match(value)
    try:
        if match:
            offset = match.group(3) or "+00"
            if len(offset) == 3:
                offset += ":00"
            parsed = dt.datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}{offset}")
        elif re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            parsed = dt.datetime.fromisoformat(value + "T00:00:00+00:00")
        else:
            return value
    except ValueError:
        return value
    delta = parsed - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    milliseconds = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return {"$date": {"$numberLong": str(milliseconds)}}


class _NotCarried(Exception):
    """A JSON value that BSON cannot hold as a subdocument exactly."""


def _json_number(value: decimal.Decimal | int) -> Json:
    if isinstance(value, int):
        if INT64_MIN <= value <= INT64_MAX:
            return integer(value)
        value = decimal.Decimal(value)
    text = _decimal128_text(value)
    if text is None or value.is_nan() or value.is_infinite():
        raise _NotCarried
    return {"$numberDecimal": text}


def _json_value(value: Any, depth: int) -> Json:
    if isinstance(value, dict):
        if depth >= JSON_MAX_DEPTH:
            raise _NotCarried
        converted = {}
        for key, item in value.items():
            if key.startswith("$") or "." in key or "\x00" in key:
                raise _NotCarried
            key.encode()  # a lone surrogate ("\ud800" in json text) has no UTF-8: UnicodeEncodeError
            converted[key] = _json_value(item, depth + 1)
        return converted
    if isinstance(value, list):
        if depth >= JSON_MAX_DEPTH:
            raise _NotCarried
        return [_json_value(item, depth + 1) for item in value]
    if isinstance(value, str):
        value.encode()  # as for keys: orjson would refuse a lone surrogate when writing the line
        return value
    if isinstance(value, bool) or value is None:
        return value
    return _json_number(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def json_document(text: str) -> Json:
    """A json/jsonb value as a subdocument or array with exact numbers, or its text when BSON cannot
    hold it as is: a key starting with '$' or holding '.', nesting deeper than 90 levels, or a number
    without an exact BSON form."""
    try:
        parsed = json.loads(text, parse_float=decimal.Decimal, parse_int=int, parse_constant=_reject_constant)
        return _json_value(parsed, 0)
    except (_NotCarried, ValueError, RecursionError):
        return text


def _identity(value: Any) -> Any:
    return value


_CONVERTERS: dict[str, Converter] = {
    "smallint": _identity,
    "integer": _identity,
    "bigint": int64,
    "numeric": numeric,
    "money": numeric,
    "real": double,
    "double precision": double,
    "bytea": binary,
    "uuid": uuid_binary,
    "json": json_document,
    "jsonb": json_document,
}


def scalar_converter(column: Column) -> Converter:
    if column.base_type in TEMPORAL_TYPES:
        return temporal_text if column.is_array else epoch_ms_or_text
    # bool, text types, enums, and everything read as text pass through
    return _CONVERTERS.get(column.base_type, _identity)


def converter(column: Column) -> Converter:
    """The function from the fetched value (never None) to what orjson writes."""
    element = scalar_converter(column)
    if not column.is_array:
        return element
    if element is _identity:
        return _identity

    def convert_array(value: list[Any]) -> list[Any]:
        return [
            None if item is None else convert_array(item) if isinstance(item, list) else element(item) for item in value
        ]

    return convert_array


# ---- rows → lines -------------------------------------------------------------------------------


def position(pos: int) -> Json:
    return {"pos": {"$numberLong": str(pos)}}


_COMPILED: dict[tuple[Any, ...], Callable[[Sequence[Any]], bytes]] = {}
_COMPILED_MAX = 1024


class RowEncoder:
    """Encodes one table's rows; converters are chosen once per column, not per value."""

    def __init__(self, columns: Sequence[Column], key_columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        self.names = tuple(column.name for column in columns)
        self.converters = tuple(converter(column) for column in columns)
        by_name = {column.name: index for index, column in enumerate(columns)}
        self.key_converters = tuple(self.converters[by_name[name]] for name in key_columns)
        self.key_names = tuple(key_columns)
        self._upsert: Callable[[Sequence[Any]], bytes] | None = None

    def document_id(self, key: Sequence[Any]) -> Json:
        """``_id``: the key value, or a subdocument in primary-key column order for a composite key."""
        if len(key) == 1:
            return self.key_converters[0](key[0])
        return {
            name: convert(value) for name, convert, value in zip(self.key_names, self.key_converters, key, strict=True)
        }

    def row_upsert(self, pos_at: int, key_at: int, columns_at: int) -> Callable[[Sequence[Any]], bytes]:
        """``_compile_row_upsert``, compiled once per table shape and process."""
        shape = (self.columns, self.key_names, pos_at, key_at, columns_at)
        compiled = _COMPILED.get(shape)
        if compiled is None:
            if len(_COMPILED) >= _COMPILED_MAX:
                _COMPILED.clear()
            compiled = _COMPILED[shape] = self._compile_row_upsert(pos_at, key_at, columns_at)
        return compiled

    def _compile_row_upsert(self, pos_at: int, key_at: int, columns_at: int) -> Callable[[Sequence[Any]], bytes]:
        """A function from a fetched row to its upsert line, compiled for this table: the same bytes as
        ``upsert_line(row[key_at:…], row[columns_at:…], row[pos_at])`` without a call or a test per
        value where the converter is the identity or ``int64``. The generated code refers to names and
        converters only through its namespace, never by their text."""
        namespace: dict[str, Any] = {
            "dumps": orjson.dumps, "OPTION": orjson.OPT_APPEND_NEWLINE, "checked": _checked,
            "isfinite": math.isfinite, "double": double,
        }  # fmt: skip

        def value(index: int, convert: Converter, label: str) -> str:
            namespace[label] = convert
            source = f"row[{index}]"
            if convert is _identity:
                return source  # None stays None
            if convert is int64:
                return f'(None if (v := {source}) is None else {{"$numberLong": str(v)}})'
            if convert is double:
                return f"(v if (v := {source}) is None or isfinite(v) else double(v))"
            if convert is numeric:  # the common case of ``numeric`` on PostgreSQL's text, inline
                return (
                    f'(None if (v := {source}) is None else {{"$numberDecimal": v}} if type(v) is str'
                    f' and len(v) <= {DECIMAL128_DIGITS} and "0.000000" not in v else {label}(v))'
                )
            if convert is epoch_ms_or_text:  # the common case (non-negative epoch milliseconds), inline
                return (
                    f'(None if (v := {source}) is None else {{"$date": {{"$numberLong": v}}}}'
                    f" if v.isdigit() else {label}(v))"
                )
            return f"(None if (v := {source}) is None else {label}(v))"

        if len(self.key_names) == 1:
            document_id = value(key_at, self.key_converters[0], "k0")
        else:
            fields = []
            for index, (name, convert) in enumerate(zip(self.key_names, self.key_converters, strict=True)):
                namespace[f"kn{index}"] = name
                fields.append(f"kn{index}: {value(key_at + index, convert, f'k{index}')}")
            document_id = "{" + ", ".join(fields) + "}"
        items = [f'"_id": {document_id}']
        for index, (name, convert) in enumerate(zip(self.names, self.converters, strict=True)):
            namespace[f"n{index}"] = name
            items.append(f"n{index}: {value(columns_at + index, convert, f'c{index}')}")
        items.append(f'"_cdc": {{"pos": {{"$numberLong": str(row[{pos_at}])}}}}')
        source = (
            "def encode(row):\n"
            f"    line = dumps({{{', '.join(items)}}}, option=OPTION)\n"
            f"    return line if len(line) <= {_MEASURE_ABOVE} else checked(line)\n"
        )
        exec(compile(source, "<cdc.codec.row_upsert>", "exec"), namespace)  # noqa: S102
        encode: Callable[[Sequence[Any]], bytes] = namespace["encode"]
        return encode

    def upsert_line(self, key: Sequence[Any], row: Sequence[Any], pos: int) -> bytes:
        """The upsert line of one row (through the same compiled function as ``row_upsert``)."""
        if len(key) != len(self.key_names) or len(row) != len(self.names):
            raise ValueError(f"expected {len(self.key_names)} key values and {len(self.names)} columns")
        if self._upsert is None:
            self._upsert = self.row_upsert(0, 1, 1 + len(self.key_names))
        return self._upsert((pos, *key, *row))

    def delete_line(self, key: Sequence[Any], pos: int) -> bytes:
        return orjson.dumps({"_id": self.document_id(key), "_cdc": position(pos)}, option=orjson.OPT_APPEND_NEWLINE)


def _checked(line: bytes) -> bytes:
    """Raise ``DocumentTooLarge`` when the BSON form of a line would exceed 16 MiB."""
    if len(line) > _MEASURE_ABOVE:
        import bson  # noqa: PLC0415  (only for the rare large row)
        from bson import json_util  # noqa: PLC0415

        size = len(bson.encode(json_util.loads(line)))
        if size > BSON_MAX_SIZE:
            raise DocumentTooLarge(f"document is {size:,} bytes as BSON, over the 16 MiB limit")
    return line
