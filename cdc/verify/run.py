"""Compare PostgreSQL and MongoDB row by row under the type mapping, each side read once, in bounded memory.

Independent of the exporter: expected values come from ``cdc.verify.rules`` (PostgreSQL's own values
and output text, mapped by rules written apart from the codec), and are compared with the stored
BSON as pymongo decodes it, field by field and type by type.

A hash join of two sequential scans, never per-key lookups: the MongoDB side is read once into a
table of raw BSON documents keyed by the encoded ``_id``, then PostgreSQL's rows stream past it;
what is left in the table afterwards is extra. When a collection is larger than the memory budget,
the join runs in several passes, each keeping the documents whose ``_id`` hashes to that pass.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import bson
import psycopg
from bson.raw_bson import RawBSONDocument
from psycopg import sql
from pymongo.database import Database
from pymongo.errors import PyMongoError

from cdc.capture import row_security
from cdc.capture.mapping import Collection
from cdc.capture.tables import TableInfo
from cdc.capture.triggers import key_text
from cdc.infra import pg
from cdc.infra.errors import shorten
from cdc.sinks.mongo import client as mongo
from cdc.verify import documents as expected_documents
from cdc.verify import rules as expected
from cdc.verify.rules import ColumnRule

EXAMPLES = 3
MEMORY_BUDGET = 512 * 1024 * 1024  # bytes of raw documents held per pass
_FETCH = 5_000
_AHEAD = 20_000  # rows read and mapped ahead while the collection is read
_BSON_MAX_SIZE = 16 * 1024 * 1024
Progress = Callable[[int], None]


@dataclass
class TableDiff:
    table: str
    rows: int = 0
    documents: int = 0
    missing: list[Any] = field(default_factory=list)  # in PostgreSQL, not in MongoDB
    repair_keys: list[str] = field(default_factory=list)  # outbox key text of missing and different rows
    extra: list[Any] = field(default_factory=list)  # in MongoDB, not in PostgreSQL
    extra_positions: list[Any] = field(default_factory=list)  # their _cdc as read, the guard for a repair
    different: list[Any] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # the first differing fields of the first examples
    fields: dict[str, int] = field(default_factory=dict)  # field name -> documents where it differs
    passes: int = 1

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def summary(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "rows": self.rows,
            "documents": self.documents,
            "missing": len(self.missing),
            "extra": len(self.extra),
            "different": len(self.different),
            "fields": dict(self.fields),
            "examples": {
                "missing": [shorten(k) for k in self.missing[:EXAMPLES]],
                "extra": [shorten(k) for k in self.extra[:EXAMPLES]],
                "different": [shorten(k) for k in self.different[:EXAMPLES]],
            },
            "details": self.details[: EXAMPLES * 3],
        }


_CODEC_OPTIONS = mongo.codec_options()
_RAW_OPTIONS = mongo.codec_options(raw=True)


def _id_key(value: Any) -> bytes:
    return bson.encode({"_id": value}, codec_options=_CODEC_OPTIONS)


def _pass_of(key: bytes, passes: int) -> int:
    return 0 if passes == 1 else int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % passes


def rules(table: TableInfo) -> list[ColumnRule]:
    return expected.rules_for(table)


def _rows(conn: psycopg.Connection[Any], table: TableInfo, column_rules: list[ColumnRule]) -> Iterator[tuple[Any, ...]]:
    """Each row: its key in the outbox's text form, then every column as ``expected.read_expression``
    reads it; a sequential scan in no particular order, through a server-side cursor."""
    query = sql.SQL("SELECT {}, {} FROM {} AS t").format(
        key_text(table, "t"),
        sql.SQL(", ").join(expected.read_expression(rule, sql.Identifier("t", rule.name)) for rule in column_rules),
        table.qualified,
    )
    with conn.cursor(name=f"verify_{table.relid}") as cur:
        cur.itersize = _FETCH
        cur.execute(query)
        yield from cur


def _passes(database: Database[Any], name: str, budget: int) -> int:
    """How many passes keep each one's documents under ``budget`` bytes (the collection's data size)."""
    try:
        size = int(database.command("collStats", name).get("size", 0))
    except PyMongoError:
        size = 0
    return max(1, math.ceil(size / budget))


Wanted = tuple[str, Any, dict[str, Any]]  # (outbox key text, _id, the expected document)


def compare_table(
    conn: psycopg.Connection[Any],
    database: Database[Any],
    table: TableInfo,
    *,
    budget: int = MEMORY_BUDGET,
    progress: Progress | None = None,
) -> TableDiff:
    """Run inside a REPEATABLE READ transaction for a consistent PostgreSQL side."""
    column_rules = rules(table)
    by_name = {rule.name: rule for rule in column_rules}
    key_rules = [by_name[name] for name in table.key_columns]
    key_at = [[rule.name for rule in column_rules].index(name) for name in table.key_columns]

    def wanted() -> Iterator[Wanted]:
        for row in _rows(conn, table, column_rules):
            document_id = expected.expected_id(key_rules, [row[1 + index] for index in key_at])
            document = {"_id": document_id}
            for rule, value in zip(column_rules, row[1:], strict=True):
                document[rule.name] = expected.expected_value(rule, value)
            yield row[0], document_id, document

    return _join(
        TableDiff(table.display), database, table.collection, wanted, budget=budget, progress=progress, nested=False
    )


def compare_collection(
    conn: psycopg.Connection[Any],
    database: Database[Any],
    collection: Collection,
    *,
    budget: int = MEMORY_BUDGET,
    progress: Progress | None = None,
) -> TableDiff:
    """A mapped collection: every document against the one PostgreSQL builds (``expected_documents``),
    element by element; differences name the first differing path (``songs[3].song.title``)."""

    def wanted() -> Iterator[Wanted]:
        yield from expected_documents.rows(conn, collection)

    diff = TableDiff(collection.name)
    return _join(diff, database, collection.name, wanted, budget=budget, progress=progress, nested=True)


def _join(
    diff: TableDiff,
    database: Database[Any],
    name: str,
    wanted: Callable[[], Iterator[Wanted]],
    *,
    budget: int,
    progress: Progress | None,
    nested: bool,
) -> TableDiff:
    """The hash join: documents of the pass in memory (raw BSON, keyed by their raw ``_id`` element),
    PostgreSQL's rows streamed past them. The collection is read on a helper thread (pymongo waits
    on the server without the GIL) while the first rows are read and mapped here, up to ``_AHEAD``."""
    collection = database.get_collection(name, codec_options=_RAW_OPTIONS)
    diff.passes = _passes(database, name, budget)
    for this_pass in range(diff.passes):
        stored: dict[bytes, RawBSONDocument] = {}
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdc-verify-read") as reader:
            loading = reader.submit(_load, collection, stored, this_pass, diff.passes)
            rows = iter(wanted())
            ahead = list(itertools.islice(rows, _AHEAD)) if not loading.done() else []
            loading.result()
        diff.documents += len(stored)
        for repair_key, document_id, document in itertools.chain(ahead, rows):
            key = _id_element(_id_key(expected.bsonable(document_id)))
            if _pass_of(key, diff.passes) != this_pass:
                continue
            diff.rows += 1
            _compare(diff, (repair_key, document_id, document), stored.pop(key, None), nested=nested)
            if progress is not None and diff.rows % 1000 == 0:
                progress(1000)
        for leftover in stored.values():
            decoded = bson.decode(leftover.raw, codec_options=_CODEC_OPTIONS)
            diff.extra.append(decoded["_id"])
            diff.extra_positions.append(decoded.get("_cdc"))
    if progress is not None:
        progress(diff.rows % 1000)
    return diff


def _load(collection: Any, stored: dict[bytes, RawBSONDocument], this_pass: int, passes: int) -> None:
    for document in collection.find({}).batch_size(_FETCH):
        key = _raw_id(bytes(document.raw))
        if _pass_of(key, passes) == this_pass:
            stored[key] = document


# value lengths of the BSON types an _id takes, after the element's name (None: a length prefix)
_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}


def _raw_id(raw: bytes) -> bytes:
    """The ``_id`` element's bytes (type, name, value) of a stored document, read without decoding
    it (MongoDB stores ``_id`` first); decoded and encoded again in any other case."""
    if raw[5:9] == b"_id\x00":
        kind = raw[4]
        if kind in _FIXED:
            return raw[4 : 9 + _FIXED[kind]]
        if kind in (0x02, 0x03, 0x04, 0x05):
            length = int.from_bytes(raw[9:13], "little")
            extra = {0x02: 4, 0x03: 0, 0x04: 0, 0x05: 5}[kind]
            return raw[4 : 9 + length + extra]
    return _id_element(_id_key(bson.decode(raw, codec_options=_CODEC_OPTIONS)["_id"]))


def _id_element(encoded: bytes) -> bytes:
    """The ``_id`` element of ``{"_id": value}``'s BSON (without the document's length and end)."""
    return encoded[4:-1]


def _compare(diff: TableDiff, row: Wanted, found: RawBSONDocument | None, *, nested: bool) -> None:
    repair_key, document_id, wanted = row
    if found is None:
        if _too_large(wanted):
            diff.missing.append(f"key {repair_key} (cannot be carried: over 16 MiB, see rejected.jsonl)")
        else:
            diff.missing.append(document_id)
        diff.repair_keys.append(repair_key)
        return
    stored = _without_cdc(bytes(found.raw))
    if stored is not None and stored == _encoded(wanted):
        return  # the same bytes: the same values, types and field order (the common case, at C speed)
    decoded = bson.decode(found.raw, codec_options=_CODEC_OPTIONS)
    if nested:
        path = expected.where_differs(decoded, wanted)
        if path is None:
            return
        changed = [path]
    else:
        items = list(expected.differences(decoded, wanted))
        if not items:
            return
        changed = [item.field for item in items]
        if len(diff.details) < EXAMPLES * 3:
            diff.details += [f"{shorten(document_id)} {item.describe()}" for item in items[:3]]
    diff.different.append(document_id)
    diff.repair_keys.append(repair_key)
    for field_name in changed:
        diff.fields[field_name] = diff.fields.get(field_name, 0) + 1
    if nested and len(diff.details) < EXAMPLES * 3:
        diff.details.append(f"{shorten(document_id)} first difference at {changed[0]}")


_CDC_ELEMENT = b"\x03_cdc\x00"  # an embedded document named _cdc


def _without_cdc(raw: bytes) -> bytes | None:
    """The stored document's BSON without its ``_cdc`` element, when that is its last element (the
    pipeline writes it last); None otherwise (the field-by-field comparison decides)."""
    at = raw.rfind(_CDC_ELEMENT)
    if at < 4:
        return None
    start = at + len(_CDC_ELEMENT)
    length = int.from_bytes(raw[start : start + 4], "little")
    if start + length + 1 != len(raw):  # the element must run to the document's final NUL
        return None
    body = raw[4:at] + b"\x00"
    return (len(body) + 4).to_bytes(4, "little") + body


def _encoded(wanted: dict[str, Any]) -> bytes | None:
    try:
        return bson.encode(wanted, codec_options=_CODEC_OPTIONS)
    except Exception:
        return None


def _too_large(wanted: dict[str, Any]) -> bool:
    """Whether the expected document is over BSON's 16 MiB (rough: values as Python, strings measured)."""
    try:
        size = len(bson.encode({k: expected.bsonable(v) for k, v in wanted.items()}, codec_options=_CODEC_OPTIONS))
    except Exception:
        return False
    return size > _BSON_MAX_SIZE


def tables_read(item: TableInfo | Collection) -> list[TableInfo]:
    """The tables whose rows a table's own collection, or a mapped collection, is compared with."""
    return [node.table for node in item.nodes()] if isinstance(item, Collection) else [item]


def refuse_hidden(conn: psycopg.Connection[Any], items: Sequence[TableInfo | Collection]) -> None:
    """A verify that cannot see every row must never say ok: ``RowSecurityError`` naming the table and role."""
    row_security.refuse(
        conn,
        [table for item in items for table in tables_read(item)],
        "verify would compare only the rows it can see, and could call a collection that lacks the others ok",
    )


def verify(
    conn: psycopg.Connection[Any],
    database: Database[Any],
    tables_: Sequence[TableInfo | Collection],
    *,
    budget: int = MEMORY_BUDGET,
    progress: Progress | None = None,
) -> list[TableDiff]:
    """Each captured table's own collection, or mapped collection, in turn. Refuses (``RowSecurityError``)
    before comparing anything when row-level security may hide rows of a table read from this role."""
    refuse_hidden(conn, tables_)
    diffs = []
    for item in tables_:
        if isinstance(item, Collection):
            with pg.translated(f"verifying collection {item.name}"):
                diffs.append(compare_collection(conn, database, item, budget=budget, progress=progress))
        else:
            with pg.translated(f"verifying {item.display}"):
                diffs.append(compare_table(conn, database, item, budget=budget, progress=progress))
        conn.commit()
    return diffs
