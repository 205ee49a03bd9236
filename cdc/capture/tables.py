"""What the pipeline knows about a captured table, read from the catalog (never cached across batches,
so added, dropped or renamed columns are picked up at the next batch)."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture import catalog
from cdc.infra import pg, sqlfiles
from cdc.infra.errors import ConfigError

DEFAULT_SCHEMA = "public"
RESERVED_COLUMN = "_cdc"


@dataclass(frozen=True)
class Column:
    """One column of a captured table: ``base_type`` is ``format_type`` of the (element's) base type."""

    name: str
    base_type: str
    is_array: bool = False
    type_category: str = ""  # pg_type.typcategory of the base type ('E' enum, 'N' numeric, ...)


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
    # the (schema, name) the table had when capture registered it: a renamed table keeps its collection
    registered: tuple[str, str] | None = None

    @property
    def qualified(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def display(self) -> str:
        return self.name if self.schema == DEFAULT_SCHEMA else f"{self.schema}.{self.name}"

    @property
    def collection(self) -> str:
        """The table name in the default schema, ``schema.table`` otherwise: the name capture registered,
        so that a table renamed after install keeps its collection."""
        schema, name = self.registered or (self.schema, self.name)
        return name if schema == DEFAULT_SCHEMA else f"{schema}.{name}"

    def key_type(self, column: str) -> str:
        return self.full_types[[c.name for c in self.columns].index(column)]


def resolve(conn: psycopg.Connection[Any], schema: str, name: str) -> int:
    """The oid of ``schema.name``, or ``ConfigError`` naming the closest existing table."""
    with pg.translated(f"looking up {schema}.{name}"):
        row = conn.execute(
            "SELECT c.oid::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            [schema, name],
        ).fetchone()
    if row is None:
        raise ConfigError(f"table {schema}.{name} does not exist" + _suggestion(conn, schema, name))
    return int(row[0])


def _all_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    return [
        (str(row[0]), str(row[1]))
        for row in conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cdc')"
            " AND n.nspname NOT LIKE 'pg\\_toast%%' ORDER BY 1, 2"
        ).fetchall()
    ]


def _suggestion(conn: psycopg.Connection[Any], schema: str, name: str) -> str:
    """``; did you mean …?`` for the closest existing table (case differences first), or ''."""
    existing = _all_tables(conn)
    wanted = f"{schema}.{name}"
    folded = [f"{s}.{n}" for s, n in existing if f"{s}.{n}".casefold() == wanted.casefold()]
    folded += [f"{s}.{n}" for s, n in existing if s == schema and n.casefold() == name.casefold()]
    close = folded or difflib.get_close_matches(wanted, [f"{s}.{n}" for s, n in existing], n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(name, [n for _s, n in existing], n=1, cutoff=0.6)
        close = [f"{s}.{n}" for s, n in existing if n in close][:1]
    return f"; did you mean {close[0]}?" if close else ""


def split_name(spec: str) -> tuple[str | None, str]:
    """``t``, ``s.t``, ``"s"."t.x"``, ``s.*``: (schema or None, table); quotes keep dots and case."""
    parts: list[str] = []
    current, quoted, index = "", False, 0
    while index < len(spec):
        char = spec[index]
        if char == '"':
            if quoted and spec[index + 1 : index + 2] == '"':
                current += '"'
                index += 1
            else:
                quoted = not quoted
        elif char == "." and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
        index += 1
    parts.append(current)
    if quoted or len(parts) > 2 or not all(parts):
        raise ConfigError(f"table name {spec!r}: expected TABLE, SCHEMA.TABLE or SCHEMA.* (quote names with dots)")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def keyed_tables(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Tables of ``schema`` with a primary key, leaving out partitions and inheritance children."""
    with pg.translated(f"listing the tables of schema {schema}"):
        rows = conn.execute(
            """SELECT c.oid::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relkind IN ('r', 'p')
                 AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
                 AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = c.oid)
               ORDER BY c.relname""",
            [schema],
        ).fetchall()
    return [int(row[0]) for row in rows]


def find_all(conn: psycopg.Connection[Any], specs: Sequence[str] | None, schema: str) -> list[int]:
    """The oids that ``specs`` name, in order, without repeats (see ``split_name``); None means every
    table of ``schema`` with a primary key (``keyed_tables``). A name that exists verbatim in
    ``schema`` wins over reading its dot as a separator."""
    if specs is None:
        found = keyed_tables(conn, schema)
        if not found:
            raise ConfigError(f"schema {schema} has no table with a primary key: name the tables with --tables")
        return found
    chosen: list[int] = []
    for spec in specs:
        exact = conn.execute(
            "SELECT c.oid::int FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
            [schema, spec],
        ).fetchone()
        if exact is not None:
            relids = [int(exact[0])]
        else:
            table_schema, name = split_name(spec)
            if name == "*" and table_schema is not None:
                relids = keyed_tables(conn, table_schema)
                if not relids:
                    raise ConfigError(f"{spec}: schema {table_schema} has no table with a primary key")
            else:
                relids = [resolve(conn, table_schema or schema, name)]
        chosen += [relid for relid in relids if relid not in chosen]
    return chosen


def describe(conn: psycopg.Connection[Any], relid: int, excluded: Sequence[str] | None = None) -> TableInfo | None:
    """The table with oid ``relid``, or None when it no longer exists.

    Its ``columns`` leave out the columns excluded from capture: ``excluded`` when given, else the
    list stored in ``cdc.captured`` (none before capture is installed).
    """
    with pg.translated(f"reading the catalog for table oid {relid}"):
        named = catalog.relation_name(conn, relid)
        if named is None:
            return None
        column_rows = sqlfiles.run(conn, "capture.sql", "table_columns", {"relid": relid}).fetchall()
        key_rows = sqlfiles.run(conn, "capture.sql", "table_key", {"relid": relid}).fetchall()
        if excluded is None:
            excluded = stored_exclusions(conn, relid) if named[2] else ()
        registered = catalog.registered_name(conn, relid) if named[2] else None
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
        registered=registered,
    )
    return without_columns(full, excluded)


def stored_exclusions(conn: psycopg.Connection[Any], relid: int) -> tuple[str, ...]:
    """The columns of ``relid`` excluded from capture, as ``cdc install --exclude`` stored them.

    Read through ``to_jsonb`` of the whole row, so a ledger installed before the column existed
    (not yet migrated by re-running ``cdc install``) reads as no exclusions instead of failing.
    """
    return catalog.excluded_columns(conn, relid)


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
