"""Read whole tables as archive lines (snapshot, verify and tests), streamed in primary-key order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture.tables import TableInfo
from cdc.encode.codec import RowEncoder
from cdc.encode.types import select_expression

_FETCH = 5_000


def table_lines(conn: psycopg.Connection[Any], table: TableInfo, pos: int) -> Iterator[bytes]:
    """Every row of ``table`` as an upsert line carrying ``pos``, in primary-key order.

    Runs in the caller's transaction (use REPEATABLE READ for a consistent read).
    """
    for _, line in keyed_table_lines(conn, table, pos):
        if line is not None:
            yield line


def keyed_table_lines(conn: psycopg.Connection[Any], table: TableInfo, pos: int) -> Iterator[tuple[str, bytes | None]]:
    """Like ``table_lines``, with each row's key in the outbox's text form; the line is None for a row
    the mapping cannot carry (over 16 MiB, say), which the archive would have quarantined."""
    from cdc.capture.triggers import key_text  # noqa: PLC0415

    encoder = RowEncoder(table.columns, table.key_columns)
    by_name = {column.name: column for column in table.columns}
    key_selects = [select_expression(by_name[name], sql.Identifier("t", name)) for name in table.key_columns]
    column_selects = [select_expression(column, sql.Identifier("t", column.name)) for column in table.columns]
    query = sql.SQL("SELECT {}, {}, {}, {}::bigint FROM {} AS t ORDER BY {}").format(
        key_text(table, "t"),
        sql.SQL(", ").join(key_selects),
        sql.SQL(", ").join(column_selects),
        sql.Literal(pos),
        table.qualified,
        sql.SQL(", ").join(sql.Identifier("t", name) for name in table.key_columns),
    )
    encode = encoder.row_upsert(len(table.key_columns) + 1 + len(table.columns), 1, 1 + len(table.key_columns))
    with conn.cursor(name=f"read_{table.relid}", binary=True) as cur:
        cur.execute(query)
        while rows := cur.fetchmany(_FETCH):
            for row in rows:
                try:
                    line: bytes | None = encode(row)
                except Exception:  # quarantined on export; the caller decides what it means
                    line = None
                yield row[0], line
