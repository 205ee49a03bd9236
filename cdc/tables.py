"""What the pipeline knows about a captured table, read from the catalog (never cached across batches,
so added, dropped or renamed columns are picked up at the next batch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from cdc import pg, sqlfiles
from cdc.codec import Column
from cdc.errors import ConfigError

DEFAULT_SCHEMA = "public"
RESERVED_COLUMN = "_cdc"


@dataclass(frozen=True)
class TableInfo:
    relid: int
    schema: str
    name: str
    columns: tuple[Column, ...]
    full_types: tuple[str, ...]  # format_type with modifiers, per column
    key_columns: tuple[str, ...]
    # columns left out of capture by configuration (cdc.captured.excluded_columns): they are not in
    # ``columns``, so export, snapshot and verify never read them
    excluded: tuple[str, ...] = ()

    @property
    def qualified(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def display(self) -> str:
        return self.name if self.schema == DEFAULT_SCHEMA else f"{self.schema}.{self.name}"

    @property
    def collection(self) -> str:
        """The table name in the default schema, ``schema.table`` otherwise."""
        return self.display

    def key_type(self, column: str) -> str:
        return self.full_types[[c.name for c in self.columns].index(column)]


def resolve(conn: psycopg.Connection[Any], schema: str, name: str) -> int:
    """The oid of ``schema.name``, or ``ConfigError``."""
    with pg.translated(f"looking up {schema}.{name}"):
        row = conn.execute(
            "SELECT c.oid::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            [schema, name],
        ).fetchone()
    if row is None:
        raise ConfigError(f"table {schema}.{name} does not exist")
    return int(row[0])


def describe(conn: psycopg.Connection[Any], relid: int, excluded: Sequence[str] | None = None) -> TableInfo | None:
    """The table with oid ``relid``, or None when it no longer exists.

    Its ``columns`` leave out the columns excluded from capture: ``excluded`` when given, else the
    list stored in ``cdc.captured`` (none before capture is installed).
    """
    queries = sqlfiles.queries("capture.sql")
    with pg.translated(f"reading the catalog for table oid {relid}"):
        named = conn.execute(
            "SELECT n.nspname::text, c.relname::text, to_regclass('cdc.captured') IS NOT NULL"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
            [relid],
        ).fetchone()
        if named is None:
            return None
        column_rows = conn.execute(queries["table_columns"].text.encode(), {"relid": relid}).fetchall()
        key_rows = conn.execute(queries["table_key"].text.encode(), {"relid": relid}).fetchall()
        if excluded is None:
            excluded = stored_exclusions(conn, relid) if named[2] else ()
    columns = tuple(
        Column(name=row[0], base_type=row[1], is_array=bool(row[2]), type_category=row[3]) for row in column_rows
    )
    full = TableInfo(
        relid=relid,
        schema=named[0],
        name=named[1],
        columns=columns,
        full_types=tuple(row[4] for row in column_rows),
        key_columns=tuple(row[0] for row in key_rows),
    )
    return without_columns(full, excluded)


def stored_exclusions(conn: psycopg.Connection[Any], relid: int) -> tuple[str, ...]:
    """The columns of ``relid`` excluded from capture, as ``cdc install --exclude`` stored them.

    Read through ``to_jsonb`` of the whole row, so a ledger installed before the column existed
    (not yet migrated by re-running ``cdc install``) reads as no exclusions instead of failing.
    """
    row = conn.execute(
        "SELECT to_jsonb(cp) -> 'excluded_columns' FROM cdc.captured AS cp WHERE cp.relid = %s", [relid]
    ).fetchone()
    if row is None or not isinstance(row[0], list):
        return ()
    return tuple(str(name) for name in row[0])


def without_columns(table: TableInfo, excluded: Sequence[str]) -> TableInfo:
    """``table`` with the ``excluded`` columns left out; names it does not have, and key columns (the
    document's ``_id``, which ``cdc install`` refuses to exclude), are ignored."""
    excluded = [name for name in excluded if name not in table.key_columns]
    if not excluded:
        return table
    kept = [index for index, column in enumerate(table.columns) if column.name not in excluded]
    return replace(
        table,
        columns=tuple(table.columns[index] for index in kept),
        full_types=tuple(table.full_types[index] for index in kept),
        excluded=tuple(column.name for column in table.columns if column.name in excluded),
    )


def refusal(table: TableInfo) -> str | None:
    """Why this table cannot be captured, or None."""
    names = [column.name for column in table.columns]
    if not table.key_columns:
        return f"table {table.display} has no primary key: a key is what identifies a document"
    if RESERVED_COLUMN in names:
        return f"table {table.display} has a column named {RESERVED_COLUMN!r}, which the pipeline reserves"
    if "_id" in names and table.key_columns != ("_id",):
        return f"table {table.display} has a column named '_id' that is not its only primary-key column"
    dollar = [name for name in names if name.startswith("$")]
    if dollar:
        return (
            f"table {table.display} has a column starting with '$' ({dollar[0]!r}): mongoimport reads it as an operator"
        )
    return None
