"""Read whole tables as archive lines (snapshot, verify and tests), streamed in primary-key order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql

from cdc.codec import RowEncoder, select_expression
from cdc.tables import TableInfo

_FETCH = 5_000


def table_lines(conn: psycopg.Connection[Any], table: TableInfo, pos: int) -> Iterator[bytes]:
    """Every row of ``table`` as an upsert line carrying ``pos``, in primary-key order.

    Runs in the caller's transaction (use REPEATABLE READ for a consistent read).
    """
    for _, line in keyed_table_lines(conn, table, pos):
        yield line


def keyed_table_lines(conn: psycopg.Connection[Any], table: TableInfo, pos: int) -> Iterator[tuple[str, bytes]]:
    """Like ``table_lines``, with each row's key in the outbox's text form."""
    from cdc.capture import key_text  # noqa: PLC0415

    encoder = RowEncoder(table.columns, table.key_columns)
    by_name = {column.name: column for column in table.columns}
    key_selects = [select_expression(by_name[name], sql.Identifier("t", name)) for name in table.key_columns]
    column_selects = [select_expression(column, sql.Identifier("t", column.name)) for column in table.columns]
    query = sql.SQL("SELECT {}, {}, {} FROM {} AS t ORDER BY {}").format(
        key_text(table, "t"),
        sql.SQL(", ").join(key_selects),
        sql.SQL(", ").join(column_selects),
        table.qualified,
        sql.SQL(", ").join(sql.Identifier("t", name) for name in table.key_columns),
    )
    width = len(table.key_columns)
    with conn.cursor(name=f"read_{table.relid}", binary=True) as cur:
        cur.itersize = _FETCH
        cur.execute(query)
        for row in cur:
            yield row[0], encoder.upsert_line(row[1 : 1 + width], row[1 + width :], pos)
