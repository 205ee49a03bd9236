"""What the pipeline knows about a captured table, read from the catalog (never cached across batches,
so added, dropped or renamed columns are picked up at the next batch)."""

from __future__ import annotations

from dataclasses import dataclass
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


def describe(conn: psycopg.Connection[Any], relid: int) -> TableInfo | None:
    """The table with oid ``relid``, or None when it no longer exists."""
    queries = sqlfiles.queries("capture.sql")
    with pg.translated(f"reading the catalog for table oid {relid}"):
        named = conn.execute(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.oid = %s",
            [relid],
        ).fetchone()
        if named is None:
            return None
        column_rows = conn.execute(queries["table_columns"].text.encode(), {"relid": relid}).fetchall()
        key_rows = conn.execute(queries["table_key"].text.encode(), {"relid": relid}).fetchall()
    columns = tuple(
        Column(name=row[0], base_type=row[1], is_array=bool(row[2]), type_category=row[3]) for row in column_rows
    )
    return TableInfo(
        relid=relid,
        schema=named[0],
        name=named[1],
        columns=columns,
        full_types=tuple(row[4] for row in column_rows),
        key_columns=tuple(row[0] for row in key_rows),
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
