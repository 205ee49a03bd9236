"""CSV interchange (the seed's format): one file per table, header row, RFC 4180 quoting.

PostgreSQL's CSV writer quotes a field when it holds the delimiter, a quote, CR or LF, doubles
embedded quotes, and tells NULL (an unquoted empty field) from the empty string (``""``), so a
file loads back with ``COPY … FROM … (FORMAT csv, HEADER)`` to identical rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cdc.infra import pg
from generator.load import LOAD_ORDER, PRIMARY_KEYS
from generator.rows import COLUMNS


def _column_list(table: str) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(column) for column in COLUMNS[table])


def export_csv(conn: psycopg.Connection[Any], folder: Path) -> dict[str, Path]:
    """Write ``<folder>/<table>.csv`` for every Orininu table, rows in primary-key order."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for table in LOAD_ORDER:
        path = folder / f"{table}.csv"
        order = sql.SQL(", ").join(sql.Identifier(column) for column in PRIMARY_KEYS[table])
        statement = sql.SQL("COPY (SELECT {} FROM {} ORDER BY {}) TO STDOUT (FORMAT csv, HEADER)").format(
            _column_list(table), sql.Identifier(table), order
        )
        with (
            pg.translated(f"exporting {table} to CSV"),
            conn.cursor() as cur,
            path.open("wb") as out,
            cur.copy(statement) as copy,
        ):
            for chunk in copy:
                out.write(chunk)
        written[table] = path
    conn.commit()
    return written


def import_csv(conn: psycopg.Connection[Any], folder: Path) -> None:
    """Load ``<folder>/<table>.csv`` files written by ``export_csv`` into empty tables, parents first."""
    with pg.translated("importing CSV"), conn.transaction(), conn.cursor() as cur:
        for table in LOAD_ORDER:
            statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER)").format(
                sql.Identifier(table), _column_list(table)
            )
            with (folder / f"{table}.csv").open("rb") as source, cur.copy(statement) as copy:
                while chunk := source.read(1 << 20):
                    copy.write(chunk)
