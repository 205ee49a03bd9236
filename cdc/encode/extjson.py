"""Archive lines (Extended JSON v2) → documents for pymongo, as ``bson.json_util.loads`` reads them.

``json_util.loads`` walks every object through a Python hook and costs about 65 µs for a songs row,
more than the write it feeds. The codec writes only a handful of wrappers (``$numberLong``,
``$numberDecimal``, ``$numberDouble``, ``$date`` with ``$numberLong``, ``$binary`` subtypes 00 and
04), so ``parse_line`` reads the line with orjson and converts those wrappers itself. Any other key
starting with ``$`` (or a wrapper in a form the codec never writes) hands the whole line to
``json_util``, so the result is always what ``json_util`` would return (a unit test compares the
BSON bytes of both).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import uuid
from typing import Any

import orjson
from bson import json_util
from bson.decimal128 import Decimal128
from bson.int64 import Int64

JSON_OPTIONS = json_util.JSONOptions(
    json_mode=json_util.JSONMode.CANONICAL, tz_aware=True, tzinfo=dt.UTC, uuid_representation=4
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DOUBLES = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}

# orjson reads an integer literal beyond 64 bits as a float, where json_util keeps the int (which BSON
# then refuses): any number that large takes json_util's path.
_WIDE = float(2**63)
_DECIMAL_CACHE_SIZE = 4096
_DECIMALS: dict[Any, Decimal128] = {}

Document = dict[str, Any]


class _Unusual(Exception):
    """A wrapper this module does not convert: ``json_util`` reads the line instead."""


def _number_long(inner: Any) -> Int64:
    if type(inner) is not str:
        raise _Unusual
    return Int64(int(inner))


def _number_decimal(inner: Any) -> Decimal128:
    """Decimal128 parses its string in Python (about 7 µs); prices and ratings repeat, so the
    (immutable) values are kept in a bounded cache."""
    cached = _DECIMALS.get(inner)
    if cached is None:
        if type(inner) is not str:
            raise _Unusual
        if len(_DECIMALS) >= _DECIMAL_CACHE_SIZE:
            _DECIMALS.clear()
        cached = _DECIMALS[inner] = Decimal128(inner)
    return cached


def _number_double(inner: Any) -> float:
    try:
        return _DOUBLES[inner]
    except (KeyError, TypeError):
        raise _Unusual from None


def _date(inner: Any) -> dt.datetime:
    if type(inner) is not dict or len(inner) != 1 or type(inner.get("$numberLong")) is not str:
        raise _Unusual
    try:
        return _EPOCH + dt.timedelta(milliseconds=int(inner["$numberLong"]))
    except OverflowError:  # outside datetime's years: json_util decides
        raise _Unusual from None


def _binary(inner: Any) -> bytes | uuid.UUID:
    if type(inner) is not dict or inner.keys() != {"base64", "subType"} or type(inner["base64"]) is not str:
        raise _Unusual
    try:
        data = base64.b64decode(inner["base64"], validate=True)
    except binascii.Error:
        raise _Unusual from None
    if inner["subType"] == "00":
        return data
    if inner["subType"] == "04" and len(data) == 16:
        return uuid.UUID(bytes=data)
    raise _Unusual


_WRAPPERS = {
    "$numberLong": _number_long,
    "$numberDecimal": _number_decimal,
    "$numberDouble": _number_double,
    "$date": _date,
    "$binary": _binary,
}


def _list(value: list[Any]) -> list[Any]:
    return [
        _object(item) if type(item) is dict else _list(item) if type(item) is list else _scalar(item) for item in value
    ]


def _scalar(value: Any) -> Any:
    if type(value) is float and not -_WIDE < value < _WIDE:
        raise _Unusual
    return value


def _object(value: dict[str, Any]) -> Any:
    if len(value) == 1:
        (key,) = value
        if key.startswith("$"):
            convert = _WRAPPERS.get(key)
            if convert is None:
                raise _Unusual
            return convert(value[key])
    converted = {}
    for key, item in value.items():
        kind = type(item)
        if kind is dict:
            if len(item) == 1:  # most often a wrapper: skip a call
                (inner,) = item
                convert = _WRAPPERS.get(inner)
                converted[key] = convert(item[inner]) if convert is not None else _object(item)
            else:
                converted[key] = _object(item)
        elif kind is list:
            converted[key] = _list(item)
        elif kind is float and not -_WIDE < item < _WIDE:  # maybe an integer orjson widened: json_util decides
            raise _Unusual
        else:
            converted[key] = item
    if any(key.startswith("$") for key in converted):
        raise _Unusual
    return converted


def parse_line(line: bytes) -> Document:
    """One archive line as the document pymongo writes."""
    try:
        parsed = orjson.loads(line)
        if type(parsed) is dict:
            document: Document = _object(parsed)
            return document
    except (_Unusual, orjson.JSONDecodeError, ValueError):
        pass
    slow: Document = json_util.loads(line, json_options=JSON_OPTIONS)
    return slow
