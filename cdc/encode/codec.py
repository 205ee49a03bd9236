"""Rows -> MongoDB Extended JSON v2 lines that real ``mongoimport`` accepts; the encoder's public names.

``RowEncoder`` puts a table's converters, chosen by the rule table (``cdc.encode.types``), together once
and encodes rows to bytes. ``document_id``, ``delete_line`` and ``document_line`` are the pieces of a line
the document builder (``cdc.documents``) shares with it: ``_id`` from key values, a delete line, and a
document's line refused (``DocumentTooLarge``) when its BSON is over 16 MiB.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from cdc.capture.tables import Column
from cdc.encode.types import converter
from cdc.encode.values import (
    DECIMAL128_DIGITS,
    Converter,
    Json,
    as_fetched,
    double,
    epoch_ms_or_text,
    int64,
    numeric,
)
from cdc.infra.errors import DocumentTooLarge

BSON_MAX_SIZE = 16 * 1024 * 1024
# Above this many bytes of JSON a line is measured as BSON before it is written. BSON can be 6.5 times
# the JSON ("0," in a long array is 13 bytes: type, a 7-digit index key and its NUL, int32), so only
# lines under 16 MiB / 8 are surely small enough.
_MEASURE_ABOVE = BSON_MAX_SIZE // 8

# The converters ``RowEncoder`` writes inline in its compiled row function, for the common case: a Python
# expression of ``v`` (the fetched value, never None) that calls ``{convert}`` (the converter itself) for
# the others. ``as_fetched`` needs no code at all; any other converter is called.
INLINE: dict[Converter, str] = {
    int64: '{{"$numberLong": str(v)}}',
    double: "v if isfinite(v) else {convert}(v)",
    # ``numeric`` on PostgreSQL's text
    numeric: (
        '{{"$numberDecimal": v}} if type(v) is str and len(v) <= {digits} and "0.000000" not in v else {convert}(v)'
    ),
    # non-negative epoch milliseconds
    epoch_ms_or_text: '{{"$date": {{"$numberLong": v}}}} if v.isdigit() else {convert}(v)',
}


# ---- the pieces of a line -----------------------------------------------------------------------


def position(pos: int) -> Json:
    return {"pos": {"$numberLong": str(pos)}}


def document_id(key_names: Sequence[str], key_converters: Sequence[Converter], key: Sequence[Any]) -> Json:
    """``_id``: the key value, or a subdocument in primary-key column order for a composite key (a NULL
    value stays null, as in an upsert line)."""
    if len(key) == 1:
        return None if key[0] is None else key_converters[0](key[0])
    return {
        name: None if value is None else convert(value)
        for name, convert, value in zip(key_names, key_converters, key, strict=True)
    }


def delete_line(id_value: Json, pos: int) -> bytes:
    """The line deleting the document whose ``_id`` is ``id_value`` (as ``document_id`` gives it) at version
    ``pos``."""
    return orjson.dumps({"_id": id_value, "_cdc": position(pos)}, option=orjson.OPT_APPEND_NEWLINE)


def document_line(document: dict[str, Any]) -> bytes:
    """A document (its values converted) as one line; ``DocumentTooLarge`` when its BSON is over 16 MiB."""
    return checked_line(orjson.dumps(document, option=orjson.OPT_APPEND_NEWLINE))


def checked_line(line: bytes) -> bytes:
    """``line``, or ``DocumentTooLarge`` when the BSON form of its document would exceed 16 MiB."""
    if len(line) > _MEASURE_ABOVE:
        import bson  # noqa: PLC0415  (only for the rare large row)
        from bson import json_util  # noqa: PLC0415

        size = len(bson.encode(json_util.loads(line)))
        if size > BSON_MAX_SIZE:
            raise DocumentTooLarge(f"document is {size:,} bytes as BSON, over the 16 MiB limit")
    return line


# ---- rows → lines -------------------------------------------------------------------------------


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
        return document_id(self.key_names, self.key_converters, key)

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
        value where the converter is ``as_fetched``, nor a call in the common case of those in ``INLINE``.
        The generated code refers to names and converters only through its namespace, never by their text."""
        namespace: dict[str, Any] = {
            "dumps": orjson.dumps, "OPTION": orjson.OPT_APPEND_NEWLINE, "checked": checked_line,
            "isfinite": math.isfinite,
        }  # fmt: skip

        def value(index: int, convert: Converter, label: str) -> str:
            namespace[label] = convert
            source = f"row[{index}]"
            if convert is as_fetched:
                return source  # None stays None
            inline = INLINE.get(convert)
            written = f"{label}(v)" if inline is None else inline.format(convert=label, digits=DECIMAL128_DIGITS)
            return f"(None if (v := {source}) is None else {written})"

        if len(self.key_names) == 1:
            id_source = value(key_at, self.key_converters[0], "k0")
        else:
            fields = []
            for index, (name, convert) in enumerate(zip(self.key_names, self.key_converters, strict=True)):
                namespace[f"kn{index}"] = name
                fields.append(f"kn{index}: {value(key_at + index, convert, f'k{index}')}")
            id_source = "{" + ", ".join(fields) + "}"
        items = [f'"_id": {id_source}']
        for index, (name, convert) in enumerate(zip(self.names, self.converters, strict=True)):
            namespace[f"n{index}"] = name
            items.append(f"n{index}: {value(columns_at + index, convert, f'c{index}')}")
        items.append(f'"_cdc": {{"pos": {{"$numberLong": str(row[{pos_at}])}}}}')
        source = (
            "def encode(row):\n"
            f"    line = dumps({{{', '.join(items)}}}, option=OPTION)\n"
            f"    return line if len(line) <= {_MEASURE_ABOVE} else checked(line)\n"
        )
        exec(compile(source, "<cdc.encode.codec.row_upsert>", "exec"), namespace)  # noqa: S102
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
        return delete_line(self.document_id(key), pos)
