"""What a stored document must hold, worked out from PostgreSQL's own values without the encoder.

``cdc verify`` is the product's proof, so it must not share the exporter's encoding: a wrong
mapping would then appear on both sides and compare equal. This module reads each column the
plain way (psycopg's text-protocol loaders, or PostgreSQL's own output text) and states, under the
type mapping's rules (docs, "Type mapping"), the BSON value the document must hold, as pymongo
decodes it: one rule per PostgreSQL type in ``TYPES``, from which everything here derives.
``differences`` then compares a decoded document with it, value by value and type by type (an
int32 is not an int64, 1.50 is not 1.5, NaN equals NaN, -0.0 is not 0.0).

Nothing here imports ``cdc.encode`` or ``cdc.documents``; they are kept apart on purpose (an
import-linter contract forbids it, and a test breaks the encoder and expects verify to notice).
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import math
import struct
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bson.decimal128 import Decimal128
from bson.int64 import Int64
from psycopg import sql

_DECIMAL128_DIGITS = 34
_DECIMAL128_EXPONENTS = range(-6176, 6112)
_JSON_MAX_DEPTH = 90
_UTC = dt.UTC


# ---- what one value must become ------------------------------------------------------------------


class _Fallback(Exception):
    """A json value BSON cannot hold as is: the document holds its text."""


def _json_number(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return value
        if -(2**63) <= value < 2**63:
            return Int64(value)
        value = decimal.Decimal(value)
    exact = _decimal128(value)
    if exact is None or not value.is_finite():
        raise _Fallback
    return exact


def _json(value: Any, depth: int) -> Any:
    if isinstance(value, dict):
        if depth >= _JSON_MAX_DEPTH:
            raise _Fallback
        for key in value:
            if key.startswith("$") or "." in key or "\x00" in key:
                raise _Fallback
        return {key: _json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        if depth >= _JSON_MAX_DEPTH:
            raise _Fallback
        return [_json(item, depth + 1) for item in value]
    if isinstance(value, str):
        return value
    return _json_number(value)


def _json_expected(value: Any) -> Any:
    text = str(value)
    try:
        parsed = json.loads(text, parse_float=decimal.Decimal, parse_int=int)
        _utf8(parsed)
        return _json(parsed, 0)
    except (_Fallback, ValueError, RecursionError, UnicodeEncodeError):
        return text


def _utf8(value: Any) -> None:
    """Raise UnicodeEncodeError for a lone surrogate anywhere (it has no UTF-8 form)."""
    if isinstance(value, str):
        value.encode()
    elif isinstance(value, dict):
        for key, item in value.items():
            key.encode()
            _utf8(item)
    elif isinstance(value, list):
        for item in value:
            _utf8(item)


def _decimal128(value: decimal.Decimal) -> Decimal128 | None:
    """Decimal128 holding exactly ``value`` (digits and scale), or None when it cannot; by its text
    (1.50 and 1.5 are equal Decimals, not equal Decimal128s), from a small cache: values repeat."""
    return _decimal128_of(str(value))


@functools.lru_cache(maxsize=4096)
def _decimal128_of(text: str) -> Decimal128 | None:
    value = decimal.Decimal(text)
    if not value.is_finite():
        return Decimal128(value)
    _sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if len(digits) > _DECIMAL128_DIGITS or exponent not in _DECIMAL128_EXPONENTS:
        return None
    return Decimal128(value)


class NumericText(str):
    """A numeric Decimal128 cannot hold: the document holds it as a string of the same value and scale
    (a ``str``, so it encodes as one; ``value`` keeps the number for the comparison)."""

    value: decimal.Decimal

    def __new__(cls, value: decimal.Decimal) -> NumericText:
        text = super().__new__(cls, str(value))
        text.value = value
        return text


def _temporal(value: Any) -> Any:
    """A BSON date (UTC, milliseconds) from PostgreSQL's ISO text, or the text itself when the value is
    infinite or its year lies outside 1–9999 (BC years, five-digit years: ``fromisoformat`` refuses them)."""
    text = str(value)
    if not text[:1].isdigit() or text.endswith(" BC"):
        return text
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return text
    moment = moment.replace(tzinfo=_UTC) if moment.tzinfo is None else moment.astimezone(_UTC)
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def _float4(value: float) -> float:
    """The real that PostgreSQL holds, widened exactly (its text is only the shortest round-trip form)."""
    if not math.isfinite(value):
        return value
    widened: float = struct.unpack(">f", struct.pack(">f", value))[0]
    return widened


def _real(value: Any) -> float:
    return _float4(float(value))


def _numeric(value: decimal.Decimal) -> Any:
    """Decimal128 when it holds the value exactly (digits and scale), else the value as a string."""
    exact = _decimal128(value)
    return exact if exact is not None else NumericText(value)


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _doubles(value: list[Any]) -> list[float]:
    return [float(item) for item in value]


# ``to_json`` of a value as ``read_expression`` reads it (numbers parsed as Decimal) -> what psycopg's loader
# would have returned, for the ``expected`` functions


def _as_read(value: Any) -> Any:
    return value


def _decimal_of_json(value: Any) -> decimal.Decimal:
    return decimal.Decimal(str(value))


def _bytea_of_json(value: Any) -> bytes:
    return bytes.fromhex(str(value)[2:])  # '\\x00ff'


# ---- the rule table -------------------------------------------------------------------------------

# a type's output text (``format`` calls the output function; ``::text`` may not: inet's cast adds the
# netmask), NULL kept NULL (``format`` would give '')
_OUTPUT_TEXT = "CASE WHEN {v} IS NULL THEN NULL ELSE format('%s', {v}) END"


@dataclass(frozen=True)
class TypeRule:
    """How verify reads the values of one PostgreSQL type, and what a document must hold for them.

    ``read`` and ``read_array`` are the SQL reading a column of the type, or an array of it, where ``{v}``
    stands for the column ("{v}": as it is; for arrays, the array's output text read back as text[] keeps
    each element's output text). ``expected`` maps one value as read (never None; each element, for an
    array) to the BSON value pymongo decodes; ``from_json`` maps one value as ``to_json`` rendered it
    (numbers as Decimal) to what psycopg's loader would have returned. ``element`` is the rule of the
    elements of an array of the type, when it differs. ``extension`` is set for an extension's type: its
    ``typcategory``, which a column must have for the rule to apply; such a type is matched in whichever
    schema it was created in (``format_type`` qualifies it when that schema is not on the search path).
    """

    read: str = _OUTPUT_TEXT
    read_array: str = "{v}::text::text[]"
    expected: Callable[[Any], Any] = str
    from_json: Callable[[Any], Any] = _as_read
    element: TypeRule | None = None
    extension: str | None = None


def _loaded(name: str, expected: Callable[[Any], Any], from_json: Callable[[Any], Any] = _as_read) -> TypeRule:
    """A type whose psycopg loader is exact: the value itself (an array of a domain comes with the domain's
    array oid: read as the base type's)."""
    return TypeRule("{v}", f"{{v}}::{name}[]", expected, from_json)


# the output text, as a string: enums, and every type outside the table
OUTPUT_TEXT = TypeRule()
_PLAIN_TEXT = TypeRule("{v}", "{v}::text::text[]")
_TEMPORAL = TypeRule(expected=_temporal)
_JSON = TypeRule(expected=_json_expected)

TYPES: dict[str, TypeRule] = {
    # format_type of the base type: TypeRule(read, read_array, expected, from_json, element, extension)
    "smallint": _loaded("smallint", int, int),
    "integer": _loaded("integer", int, int),
    "bigint": _loaded("bigint", Int64, int),
    "numeric": _loaded("numeric", _numeric, _decimal_of_json),
    "money": TypeRule("{v}::numeric", "{v}::numeric[]", _numeric, _decimal_of_json),
    # the real that PostgreSQL holds, widened exactly (its text is only the shortest round-trip form)
    "real": _loaded("real", _real, float),
    "double precision": _loaded("double precision", float, float),
    "boolean": _loaded("boolean", bool),
    "bytea": _loaded("bytea", bytes, _bytea_of_json),
    "uuid": _loaded("uuid", _uuid),
    "text": _PLAIN_TEXT,
    "character varying": _PLAIN_TEXT,
    "character": _PLAIN_TEXT,
    "date": _TEMPORAL,
    "timestamp without time zone": _TEMPORAL,
    "timestamp with time zone": _TEMPORAL,
    "json": _JSON,
    "jsonb": _JSON,
    # pgvector: each float4 element widened exactly (as float8, whose text is exact), an array of doubles;
    # an array of vectors holds their output text
    "vector": TypeRule(
        "{v}::real[]::double precision[]", "{v}::text::text[]", _doubles, float, element=OUTPUT_TEXT, extension="U"
    ),
}


def type_rule(base: str, category: str) -> TypeRule:
    """The rule of a base type (``format_type``) of ``typcategory`` ``category``."""
    if category == "E":
        return OUTPUT_TEXT
    rule = TYPES.get(base)
    if rule is None:  # maybe an extension's type, qualified by its schema ("ext".vector)
        rule = TYPES.get(base.rsplit(".", 1)[-1])
        if rule is None or rule.extension is None:
            return OUTPUT_TEXT
    if rule.extension is not None and rule.extension != category:
        return OUTPUT_TEXT  # another type of that name
    return rule


# ---- columns ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnRule:
    """How one column is read for verify and what it must become: ``base`` is the final element type
    (domains followed), ``array`` whether it is an array of it, ``read`` the SQL reading it (``{v}``: the
    column), ``each`` the rule of each of its values (of each element, for an array)."""

    name: str
    base: str
    array: bool
    read: str
    each: TypeRule


def rules_for(table: Any, names: Sequence[str] | None = None) -> list[ColumnRule]:
    """The rules of ``table``'s columns named ``names`` (default: every column), in that order
    (``table`` is a ``cdc.capture.tables.TableInfo``: its catalog description, domains followed)."""
    by_name = {column.name: column for column in table.columns}
    chosen = [column.name for column in table.columns] if names is None else list(names)
    rules = []
    for name in chosen:
        column = by_name[name]
        rule = type_rule(column.base_type, column.type_category)
        if column.is_array:
            rules.append(ColumnRule(name, column.base_type, True, rule.read_array, rule.element or rule))
        else:
            rules.append(ColumnRule(name, column.base_type, False, rule.read, rule))
    return rules


def read_expression(rule: ColumnRule, ref: sql.Composable) -> sql.Composable:
    """The SQL that reads a column for verify."""
    return ref if rule.read == "{v}" else sql.SQL(rule.read).format(v=ref)


def expected_value(rule: ColumnRule, value: Any) -> Any:
    """What the document holds for one column value (``value`` as ``read_expression`` read it)."""
    if value is None:
        return None
    if rule.array:
        return _each(value, rule.each.expected)
    return rule.each.expected(value)


def _each(value: list[Any], expected: Callable[[Any], Any]) -> list[Any]:
    return [None if item is None else _each(item, expected) if isinstance(item, list) else expected(item)
            for item in value]  # fmt: skip


def from_json(rule: ColumnRule, value: Any) -> Any:
    """A column value as PostgreSQL's ``to_json`` of ``read_expression`` gave it (numbers parsed as
    Decimal), turned into what psycopg's loader would have returned, for ``expected_value``."""
    if value is None:
        return None
    if isinstance(value, list):
        return [from_json(rule, item) for item in value]
    return rule.each.from_json(value)


def expected_id(rules: Sequence[ColumnRule], key: Sequence[Any]) -> Any:
    """``_id``: the key's value, or a subdocument in primary-key column order for a composite key."""
    values = [expected_value(rule, value) for rule, value in zip(rules, key, strict=True)]
    if len(values) == 1:
        return bsonable(values[0])
    return {rule.name: bsonable(value) for rule, value in zip(rules, values, strict=True)}


def bsonable(value: Any) -> Any:
    return str(value) if isinstance(value, NumericText) else value


# ---- comparing ---------------------------------------------------------------------------------


def _same(stored: Any, expected: Any) -> bool:
    if isinstance(expected, NumericText):
        return isinstance(stored, str) and _same_decimal(stored, expected.value)
    if isinstance(expected, float):
        return type(stored) is float and (
            (math.isnan(expected) and math.isnan(stored)) or struct.pack(">d", stored) == struct.pack(">d", expected)
        )
    if isinstance(expected, Int64):
        return isinstance(stored, Int64) and int(stored) == int(expected)
    if isinstance(expected, bool):
        return type(stored) is bool and stored == expected
    if isinstance(expected, int):
        return type(stored) is int and stored == expected
    if isinstance(expected, Decimal128):
        return isinstance(stored, Decimal128) and stored.bid == expected.bid
    if isinstance(expected, dict):
        return (
            isinstance(stored, dict)
            and list(stored) == list(expected)
            and all(_same(stored[key], item) for key, item in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(stored, list)
            and len(stored) == len(expected)
            and all(_same(a, b) for a, b in zip(stored, expected, strict=True))
        )
    if expected is None:
        return stored is None
    return type(stored) is type(expected) and bool(stored == expected)


def _same_decimal(text: str, value: decimal.Decimal) -> bool:
    try:
        return decimal.Decimal(text).as_tuple() == value.as_tuple()
    except decimal.InvalidOperation:
        return False


def show(value: Any, limit: int = 80) -> str:
    """A short, type-revealing rendering of a value for a difference line."""
    if isinstance(value, NumericText):
        text = f"'{value.value}' (string)"
    elif isinstance(value, Int64):
        text = f"Int64({int(value)})"
    elif isinstance(value, Decimal128):
        text = f"Decimal128('{value}')"
    elif isinstance(value, dt.datetime):
        text = f"date {value.isoformat()}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class FieldDifference:
    field: str
    expected: Any  # what PostgreSQL's value maps to; ``ABSENT`` when the field should not be there
    stored: Any  # what the document holds; ``ABSENT`` when it is missing

    def describe(self) -> str:
        return f"{self.field}: postgres {show(self.expected)}, mongodb {show(self.stored)}"


ABSENT = type("Absent", (), {"__repr__": lambda self: "(absent)"})()


def differences(stored: dict[str, Any], expected: dict[str, Any]) -> Iterator[FieldDifference]:
    """Each field of the decoded document that differs from the expected one (``_cdc`` aside), in
    field order; a field order that differs is reported on the first field out of place."""
    names = [name for name in stored if name != "_cdc"]
    for name, value in expected.items():
        if name not in stored:
            yield FieldDifference(name, value, ABSENT)
        elif not _same(stored[name], value):
            yield FieldDifference(name, value, stored[name])
    for name in names:
        if name not in expected:
            yield FieldDifference(name, ABSENT, stored[name])
    present = [name for name in names if name in expected]
    wanted = [name for name in expected if name in stored]
    if present != wanted:
        first = next(index for index, (a, b) in enumerate(zip(present, wanted, strict=True)) if a != b)
        yield FieldDifference(f"(field order at {present[first]})", wanted[first], present[first])


def where_differs(stored: Any, wanted: Any, path: str = "") -> str | None:
    """The first path (``songs[3].song.title``) where ``stored`` differs from ``wanted``, or None."""
    if isinstance(wanted, dict) and isinstance(stored, dict):
        for name, item in wanted.items():
            if name not in stored:
                return f"{path}.{name}".lstrip(".") + " (missing)"
            found = where_differs(stored[name], item, f"{path}.{name}")
            if found is not None:
                return found.lstrip(".")
        extra = [name for name in stored if name not in wanted and not (path == "" and name == "_cdc")]
        if extra:
            return f"{path}.{extra[0]}".lstrip(".") + " (not expected)"
        if [n for n in stored if n in wanted] != list(wanted):
            return (path or "(document)") + " (field order)"
        return None
    if isinstance(wanted, list) and isinstance(stored, list):
        for index, (a, b) in enumerate(zip(stored, wanted, strict=False)):
            found = where_differs(a, b, f"{path}[{index}]")
            if found is not None:
                return found
        if len(stored) != len(wanted):
            return f"{path} (length {len(stored)}, expected {len(wanted)})"
        return None
    return None if _same(stored, wanted) else (path.lstrip(".") or "(value)")
