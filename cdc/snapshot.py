"""The initial migration (or a re-sync) of whole tables, through the outbox, archive and applier.

Every key of a table is enqueued into the outbox in keyset-paginated chunks, each chunk one
outbox row with a fresh position: "the position read at snapshot time". The normal drain then
reads the rows and the applier writes them, so a snapshot taken while the workload runs loses
nothing and brings back nothing stale: a change made after a chunk was enqueued has a higher
position, and every image is read at drain time. Collections that are empty when the snapshot
starts take the insert path (an insert that meets a document falls back to the guarded upsert).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg
from psycopg import sql
from pymongo.database import Database

from cdc import capture, faults, pg, tables
from cdc.errors import ConfigError
from cdc.tables import TableInfo

log = logging.getLogger(__name__)
CHUNK = 5_000


class Progress(Protocol):
    """What enqueueing reports to: a tqdm bar, or anything with ``update``."""

    def update(self, n: float | None = 1) -> bool | None: ...


def captured(conn: psycopg.Connection[Any], names: Sequence[str] | None) -> list[TableInfo]:
    """The captured tables (all, or those named as `table` or `schema.table`)."""
    found = []
    for entry in capture.captured_tables(conn):
        if names and entry.name not in names and f"{entry.schema}.{entry.name}" not in names:
            continue
        if not entry.healthy:
            raise ConfigError(f"table {entry.schema}.{entry.name} lost its capture triggers: run `cdc install`")
        info = tables.describe(conn, entry.relid)
        assert info is not None
        found.append(info)
    missing = set(names or ()) - {t.name for t in found} - {f"{t.schema}.{t.name}" for t in found}
    if missing:
        raise ConfigError(f"not captured: {', '.join(sorted(missing))} (run `cdc install --tables …` first)")
    return found


def enqueue_table(conn: psycopg.Connection[Any], table: TableInfo, progress: Progress) -> int:
    """Put every key of ``table`` into the outbox, ``CHUNK`` keys per outbox row; returns keys."""
    key = sql.SQL(", ").join(sql.Identifier("t", column) for column in table.key_columns)
    key_text = capture.key_text(table, "t")
    first = sql.SQL("SELECT {key} FROM {table} AS t ORDER BY {key} LIMIT %(n)s").format(key=key, table=table.qualified)
    after = sql.SQL("SELECT {key} FROM {table} AS t WHERE ({key}) > ({last}) ORDER BY {key} LIMIT %(n)s").format(
        key=key,
        table=table.qualified,
        last=sql.SQL(", ").join(sql.Placeholder(f"k{i}") for i in range(len(table.key_columns))),
    )
    total = 0
    last: tuple[Any, ...] | None = None
    while True:
        params: dict[str, Any] = {"n": CHUNK}
        if last is not None:
            params.update({f"k{i}": value for i, value in enumerate(last)})
        page = sql.SQL(
            "WITH page AS ({page}) INSERT INTO cdc.outbox (relid, op, keys)"
            " SELECT %(relid)s, 'k', array_agg({key_text}) FROM page AS t HAVING count(*) > 0"
            " RETURNING cardinality(keys)"
        ).format(page=first if last is None else after, key_text=key_text)
        with pg.translated(f"enqueueing keys of {table.display}"):
            inserted = conn.execute(page, {**params, "relid": table.relid}).fetchone()
            if inserted is None:
                conn.commit()
                return total
            boundary = conn.execute(
                sql.SQL("SELECT {key} FROM ({page}) AS t ORDER BY {descending} LIMIT 1").format(
                    key=key,
                    descending=sql.SQL(", ").join(
                        sql.SQL("{} DESC").format(sql.Identifier("t", c)) for c in table.key_columns
                    ),
                    page=first if last is None else after,
                ),
                params,
            ).fetchone()
            conn.commit()
        assert boundary is not None
        faults.point("snapshot_chunk")
        last = tuple(boundary)
        total += int(inserted[0])
        progress.update(int(inserted[0]))


def create_indexes(conn: psycopg.Connection[Any], database: Database[Any], table: TableInfo) -> list[str]:
    """Non-unique indexes for the table's foreign-key columns (PostgreSQL already enforces uniqueness)."""
    rows = conn.execute(
        """SELECT array_agg(a.attname::text ORDER BY k.n)
           FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
           WHERE c.conrelid = %s AND c.contype = 'f' GROUP BY c.oid ORDER BY c.oid""",
        [table.relid],
    ).fetchall()
    conn.commit()
    created = []
    for (columns,) in rows:
        if list(columns) == list(table.key_columns)[: len(columns)]:
            continue  # a prefix of _id's fields is served by the _id index only when _id is a document
        created.append(database[table.collection].create_index([(column, 1) for column in columns]))
    return created


def empty_collections(database: Database[Any], tables_: Sequence[TableInfo]) -> set[str]:
    existing = set(database.list_collection_names())
    return {
        table.collection
        for table in tables_
        if table.collection not in existing or database[table.collection].estimated_document_count() == 0
    }
