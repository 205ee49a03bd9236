"""Compare PostgreSQL and MongoDB row by row under the type mapping, in bounded memory.

Each table is read in primary-key order in chunks; each chunk's documents are fetched from
MongoDB by ``_id`` and compared as BSON (so NaN equals NaN and field order counts), without
``_cdc``. Extra documents are found by scanning MongoDB's ``_id`` values against a set of
16-byte digests of the keys PostgreSQL has (about 60 bytes per row).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

import bson
import psycopg
from bson.codec_options import CodecOptions
from pymongo.database import Database

from cdc import pg
from cdc.extjson import parse_line
from cdc.reader import keyed_table_lines
from cdc.tables import TableInfo

CHUNK = 2_000
EXAMPLES = 3


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
            "examples": {
                "missing": [_show(k) for k in self.missing[:EXAMPLES]],
                "extra": [_show(k) for k in self.extra[:EXAMPLES]],
                "different": [_show(k) for k in self.different[:EXAMPLES]],
            },
        }


def _show(key: Any) -> str:
    text = str(key)
    return text if len(text) <= 120 else text[:120] + "…"


def _comparable(document: dict[str, Any]) -> bytes:
    return bson.encode({k: v for k, v in document.items() if k != "_cdc"}, codec_options=_codec_options())


def _id_bytes(value: Any) -> bytes:
    return bson.encode({"_id": value}, codec_options=_codec_options())


def compare_table(conn: psycopg.Connection[Any], database: Database[Any], table: TableInfo) -> TableDiff:
    """Run inside a REPEATABLE READ transaction for a consistent PostgreSQL side."""
    diff = TableDiff(table.display)
    collection = database.get_collection(table.collection, codec_options=_codec_options())
    lines = keyed_table_lines(conn, table, 0)
    seen = 0
    keys: set[bytes] = set()
    while chunk := list(itertools.islice(lines, CHUNK)):
        uncarried = [key for key, line in chunk if line is None]
        diff.missing.extend(f"key {key} (cannot be carried: see rejected.jsonl)" for key in uncarried)
        diff.rows += len(uncarried)
        carried = [(key, line) for key, line in chunk if line is not None]
        expected = [parse_line(line) for _, line in carried]
        seen += len(expected)
        stored = {_id_bytes(doc["_id"]): doc for doc in collection.find({"_id": {"$in": [d["_id"] for d in expected]}})}
        for (key_text, _), document in zip(carried, expected, strict=True):
            keys.add(_digest(_id_bytes(document["_id"])))
            found = stored.get(_id_bytes(document["_id"]))
            if found is None:
                diff.missing.append(document["_id"])
                diff.repair_keys.append(key_text)
            elif _comparable(found) != _comparable(document):
                diff.different.append(document["_id"])
                diff.repair_keys.append(key_text)
    diff.rows += seen
    diff.documents = collection.count_documents({})
    if diff.documents != diff.rows - len(diff.missing):
        for document in collection.find({}, {"_id": 1, "_cdc": 1}).batch_size(CHUNK):
            if _digest(_id_bytes(document["_id"])) not in keys:
                diff.extra.append(document["_id"])
                diff.extra_positions.append(document.get("_cdc"))
    return diff


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


@functools.cache
def _codec_options() -> Any:
    return CodecOptions(tz_aware=True, tzinfo=dt.UTC, uuid_representation=4)


def verify(conn: psycopg.Connection[Any], database: Database[Any], tables_: list[TableInfo]) -> list[TableDiff]:
    diffs = []
    for table in tables_:
        with pg.translated(f"verifying {table.display}"):
            diffs.append(compare_table(conn, database, table))
            conn.commit()
    return diffs
