"""The type mapping (docs, "Type mapping") as one rule table: PostgreSQL type -> how it is read and written.

A column is read either as psycopg's typed value, where its loader is exact, or cast in SQL where it is
lossy or raises (temporal types become epoch milliseconds or their text, interval/time/inet become text,
money becomes numeric, json becomes text parsed with exact numbers); then its rule's converter
(``cdc.encode.values``) turns the fetched value into what orjson writes. ``select_expression``,
``converter`` and the row encoder's fast path (``cdc.encode.codec``) all derive from ``TYPES``: adding a
type is one row there (and one in ``cdc.verify.rules``, which checks the mapping independently).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import sql

from cdc.capture.tables import Column
from cdc.encode.values import (
    Converter,
    as_fetched,
    binary,
    double,
    doubles,
    epoch_ms_or_text,
    int64,
    json_document,
    numeric,
    temporal_text,
    uuid_binary,
)

# Epoch milliseconds (floored, so µs are truncated) as text, or PostgreSQL's text when the value is
# ±infinity or its year lies outside 1–9999 (BC years extract as negative): ``epoch_ms_or_text`` reads it.
EPOCH_MS_OR_TEXT = (
    "CASE WHEN isfinite({v}) AND extract(year FROM {v}) BETWEEN 1 AND 9999"
    " THEN floor(extract(epoch FROM {v}) * 1000)::bigint::text ELSE {v}::text END"
)


@dataclass(frozen=True)
class TypeRule:
    """How the values of one PostgreSQL type are read and written.

    ``select`` and ``select_array`` are the SQL reading a column of the type, or an array of it, where
    ``{v}`` stands for the column ("{v}": as it is). ``convert`` maps a fetched value (never None) to
    what orjson writes; ``convert_element`` maps each element of an array, when that differs from
    ``convert``. ``extension`` is set for an extension's type: its ``typcategory``, which a column must
    have for the rule to apply; such a type is matched in whichever schema it was created in
    (``format_type`` qualifies it when that schema is not on the search path).
    """

    select: str = "{v}::text"
    select_array: str = "{v}::text[]"
    convert: Converter = as_fetched
    convert_element: Converter | None = None
    extension: str | None = None

    @property
    def element(self) -> Converter:
        return self.convert if self.convert_element is None else self.convert_element


def _loaded(name: str, convert: Converter = as_fetched) -> TypeRule:
    """A type psycopg loads exactly. An array of a domain arrives with the domain array's oid, which psycopg
    cannot load (binary: raw bytes, text: the literal '{…}'): arrays are read as the base type's array."""
    return TypeRule("{v}", f"{{v}}::{name}[]", convert)


# PostgreSQL's canonical text, as a string: the types of the table so ruled, enums (in binary results psycopg
# knows no loader for them and would return bytes), and every type outside the table
AS_TEXT = TypeRule()
_TEMPORAL = TypeRule(EPOCH_MS_OR_TEXT, "{v}::text[]", epoch_ms_or_text, temporal_text)
_JSON = TypeRule("{v}::text", "{v}::text[]", json_document)

TYPES: dict[str, TypeRule] = {
    # format_type of the base type: TypeRule(select, select_array, convert, convert_element, extension)
    "smallint": _loaded("smallint"),
    "integer": _loaded("integer"),
    "bigint": _loaded("bigint", int64),
    "numeric": TypeRule("{v}::text", "{v}::numeric[]", numeric),  # its text is cheaper to carry than a Decimal
    "money": TypeRule("{v}::numeric::text", "{v}::numeric[]", numeric),
    "real": _loaded("real", double),
    "double precision": _loaded("double precision", double),
    "boolean": _loaded("boolean"),
    "bytea": _loaded("bytea", binary),
    "uuid": _loaded("uuid", uuid_binary),
    "text": _loaded("text"),
    "character varying": _loaded("character varying"),
    "character": _loaded("bpchar"),  # "character" alone is char(1)
    "name": _loaded("name"),
    '"char"': _loaded('"char"'),
    "citext": AS_TEXT,  # psycopg has no loader for it: a binary cursor would hand over raw bytes
    "date": _TEMPORAL,
    "timestamp without time zone": _TEMPORAL,
    "timestamp with time zone": _TEMPORAL,
    "json": _JSON,
    "jsonb": _JSON,
    # inet::text always adds the netmask ('::1/128'); abbrev() is inet's output text ('::1'), and so are
    # the elements of the array's own text
    "inet": TypeRule("abbrev({v})", "{v}::text::text[]"),
    "time without time zone": AS_TEXT,
    "time with time zone": AS_TEXT,
    "interval": AS_TEXT,
    "cidr": AS_TEXT,
    "macaddr": AS_TEXT,
    "macaddr8": AS_TEXT,
    "bit": AS_TEXT,
    "bit varying": AS_TEXT,
    "xml": AS_TEXT,
    "tsvector": AS_TEXT,
    "tsquery": AS_TEXT,
    "point": AS_TEXT,
    "line": AS_TEXT,
    "lseg": AS_TEXT,
    "box": AS_TEXT,
    "path": AS_TEXT,
    "polygon": AS_TEXT,
    "circle": AS_TEXT,
    "pg_lsn": AS_TEXT,
    "oid": AS_TEXT,
    "regclass": AS_TEXT,
    "regtype": AS_TEXT,
    "xid": AS_TEXT,
    "xid8": AS_TEXT,
    # pgvector: an array of doubles, each float4 element exactly (through its cast to real[]); an array of
    # vectors is an array of their text ('[1,2,3]')
    "vector": TypeRule("{v}::real[]", "{v}::text[]", doubles, as_fetched, extension="U"),
}


def _unqualified(name: str) -> str:
    """The type's own name in ``format_type``'s output (``"my.schema".vector`` -> ``vector``); a quoted
    name keeps its closing quote, so it never equals a plain one."""
    return name.rsplit(".", 1)[-1]


def rule_for(column: Column) -> TypeRule:
    """The rule of ``column``'s base type (domains followed): enums and types outside the table travel as
    their PostgreSQL text."""
    if column.type_category == "E":
        return AS_TEXT
    rule = TYPES.get(column.base_type)
    if rule is None:
        rule = TYPES.get(_unqualified(column.base_type))
        if rule is None or rule.extension is None:
            return AS_TEXT
    if rule.extension is not None and rule.extension != column.type_category:
        return AS_TEXT  # another type of the same name (a composite called vector, say)
    return rule


def select_expression(column: Column, source: sql.Composable) -> sql.Composable:
    """The SQL that reads ``source`` (a column reference) for ``converter(column)``."""
    rule = rule_for(column)
    template = rule.select_array if column.is_array else rule.select
    return source if template == "{v}" else sql.SQL(template).format(v=source)


def scalar_converter(column: Column) -> Converter:
    """The converter of one value of the column's base type (of each element, for an array)."""
    rule = rule_for(column)
    return rule.element if column.is_array else rule.convert


def converter(column: Column) -> Converter:
    """The function from the fetched value (never None) to what orjson writes."""
    element = scalar_converter(column)
    if not column.is_array:
        return element
    if element is as_fetched:
        return as_fetched

    def convert_array(value: list[Any]) -> list[Any]:
        return [
            None if item is None else convert_array(item) if isinstance(item, list) else element(item) for item in value
        ]

    return convert_array
