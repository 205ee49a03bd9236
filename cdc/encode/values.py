"""The value converters of the type mapping: a fetched PostgreSQL value (never None) -> what orjson writes.

Plain JSON for int32, bool, string and finite doubles; Extended JSON v2 wrappers (always with string values)
for int64, Decimal128, dates, binaries and non-finite doubles. orjson never sees a NaN, an Infinity or an
integer outside int32, so it can neither write ``null`` for them nor widen them. Which type gets which
converter is the rule table's (``cdc.encode.types``).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Callable
from typing import Any

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DECIMAL128_DIGITS = 34
DECIMAL128_MIN_EXPONENT, DECIMAL128_MAX_EXPONENT = -6176, 6111
JSON_MAX_DEPTH = 90

Converter = Callable[[Any], Any]
Json = Any


def as_fetched(value: Any) -> Any:
    """The value as psycopg loaded it (int32, bool, text, and whatever is read as its text)."""
    return value


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

    A scalar numeric is read as PostgreSQL's text (its rule in ``types``), which is ``str`` of the
    Decimal psycopg would load, except below 1e-6 where ``str`` switches to an exponent (any text
    holding "0.000000" goes through the Decimal, exactly): up to 34 characters there are at most 34
    digits, so other text is used as is.
    """
    if type(value) is str:
        if len(value) <= DECIMAL128_DIGITS and "0.000000" not in value:  # as inlined by ``codec.INLINE``
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
    """What ``types.EPOCH_MS_OR_TEXT`` selects: epoch milliseconds, or a value BSON dates cannot hold."""
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


def doubles(values: list[float]) -> Json:
    """A pgvector ``vector`` read as ``real[]`` (each float4 widened exactly) as an array of doubles. pgvector
    refuses NaN and ±Infinity in a vector; should one come anyway, it is written as ``$numberDouble``."""
    return values if all(map(math.isfinite, values)) else [double(value) for value in values]
