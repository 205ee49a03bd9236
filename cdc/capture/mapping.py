"""The document model: a mapping file (TOML) that declares collections rooted at tables, with rows of
other tables embedded as subdocuments (``many = false``) or arrays (``many = true``), to any depth.

```toml
[collections.playlists]                 # one document per row of the root table; _id = its primary key
table = "playlists"
fields = ["playlist_id", "name"]        # optional, default every column
rename = { name = "title" }             # optional, column -> field name

[collections.playlists.embed.songs]     # field "songs": an array of rows
table = "playlist_songs"
on = { playlist_id = "playlist_id" }    # { column of this table = column of the enclosing table }
many = true
order_by = ["position"]                 # optional, default primary-key order; "col DESC" allowed
where = "position <= 500"               # optional SQL predicate on this table's columns
```

``parse`` reads the text (``tomllib``); ``resolve`` checks it against the catalog and returns the
model, or raises ``MappingError`` naming the file, the key path and the problem, before anything is
installed. The model is stored in PostgreSQL (``cdc.mapping``) by ``cdc install --mapping``, so the
worker never reads a file that changed under it.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture import catalog, tables
from cdc.capture.tables import TableInfo
from cdc.infra import pg
from cdc.infra.errors import (
    MappingError,
    UsageError,
)

RESERVED_FIELDS = frozenset({"_id", "_cdc"})
_NODE_KEYS = frozenset({"table", "fields", "rename", "embed", "on", "many", "order_by", "where"})
_ORDER = re.compile(r"^\s*(?P<column>.+?)(?:\s+(?P<direction>ASC|DESC))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Node:
    """One table's rows in a document: the root (``field`` None) or an embedded field."""

    path: str  # the key path in the file: collections.playlists.embed.songs
    table: TableInfo
    field: str | None = None
    on: tuple[tuple[str, str], ...] = ()  # (column of this table, column of the enclosing table)
    many: bool = False
    columns: tuple[str, ...] = ()  # the columns shown, in order
    names: tuple[str, ...] = ()  # their field names (after rename)
    order_by: tuple[tuple[str, bool], ...] = ()  # (column, descending)
    where: str | None = None
    children: tuple[Node, ...] = ()

    def walk(self) -> list[Node]:
        """This node and every node below it, depth first."""
        found = [self]
        for child in self.children:
            found += child.walk()
        return found

    @property
    def join_columns(self) -> tuple[str, ...]:
        return tuple(mine for mine, _theirs in self.on)

    @property
    def parent_columns(self) -> tuple[str, ...]:
        return tuple(theirs for _mine, theirs in self.on)


@dataclass(frozen=True)
class Collection:
    name: str
    root: Node

    def nodes(self) -> list[Node]:
        return self.root.walk()

    def parent_of(self, node: Node) -> Node | None:
        for candidate in self.nodes():
            if node in candidate.children:
                return candidate
        return None

    def shape(self) -> str:
        """A text that changes whenever the documents' shape changes (what a rebuild depends on)."""
        return repr(_shape(self.root))


def _shape(node: Node) -> tuple[Any, ...]:
    return (
        node.table.schema, node.table.name, node.field, node.on, node.many, node.columns, node.names,
        node.order_by, node.where, tuple(_shape(child) for child in node.children),
    )  # fmt: skip


@dataclass(frozen=True)
class DocumentModel:
    collections: tuple[Collection, ...] = field(default_factory=tuple)
    source: str = ""  # the TOML text, stored as installed
    # collections of the installed model that a migration broke: (name, why, naming the key path)
    broken: tuple[tuple[str, str], ...] = ()
    # every table the installed model read when it was installed (also those of broken collections)
    installed_relids: tuple[int, ...] = ()

    def relids(self) -> set[int]:
        """The tables whose changes belong to the model, never to a collection of their own."""
        return {table.relid for table in self.tables()} | set(self.installed_relids)

    def tables(self) -> list[TableInfo]:
        """Every table the model reads, once each, in first-seen order."""
        found: dict[int, TableInfo] = {}
        for collection in self.collections:
            for node in collection.nodes():
                found.setdefault(node.table.relid, node.table)
        return list(found.values())

    def occurrences(self, relid: int) -> list[tuple[Collection, Node]]:
        """Every place a table appears: as a root or embedded."""
        return [(c, n) for c in self.collections for n in c.nodes() if n.table.relid == relid]

    def shown_columns(self, relid: int) -> tuple[str, ...] | None:
        """The columns of a table that embedding documents show or join on (key included): an UPDATE
        that changes none of them refreshes no embedding document. None: every column counts (a
        ``where`` may read any); () when the table is embedded nowhere."""
        found: list[str] = []
        for _collection, node in self.occurrences(relid):
            if node.field is None:
                continue
            if node.where is not None:
                return None
            wanted = [*node.table.key_columns, *node.columns, *node.join_columns]
            wanted += [column for column, _descending in node.order_by]
            wanted += [column for child in node.children for column in child.parent_columns]
            found += [column for column in wanted if column not in found]
        return tuple(found)

    def join_columns(self, relid: int) -> tuple[str, ...]:
        """The columns of a table that tie its rows to an enclosing row, anywhere in the model: their
        old values are recorded at capture time (they are gone by drain time)."""
        found: list[str] = []
        for _collection, node in self.occurrences(relid):
            found += [column for column in node.join_columns if column not in found]
        return tuple(found)


def parse(text: str, filename: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{filename}: not valid TOML: {exc}") from None


def resolve(
    conn: psycopg.Connection[Any],
    document: dict[str, Any],
    filename: str,
    source: str,
    *,
    strict: bool = True,
    partial: bool = False,
) -> DocumentModel:
    """Check the parsed file against the catalog; every refusal names the file and key path.

    ``partial``: a collection that no longer resolves (a migration renamed or dropped what it reads)
    is left out and listed in ``broken`` instead of failing the whole model (the installed model)."""
    unknown = set(document) - {"collections"}
    if unknown:
        raise MappingError(f"{filename}: {sorted(unknown)[0]}: unknown key (expected [collections.NAME])")
    collections = document.get("collections")
    if not isinstance(collections, dict) or not collections:
        raise MappingError(f"{filename}: collections: no collection declared")
    resolved = []
    broken = []
    tables_read: dict[str, TableInfo] = {}  # each table named in the file described once
    for name, body in collections.items():
        path = f"collections.{name}"
        if not isinstance(body, dict):
            raise MappingError(f"{filename}: {path}: expected a table of settings")
        if not name or name.startswith("$") or "\x00" in name or name.startswith("system."):
            raise MappingError(f"{filename}: {path}: {name!r} is not a valid collection name")
        try:
            root = _node(conn, body, _Place(filename, path, strict=strict, tables_read=tables_read), None)
        except MappingError as exc:
            if not partial:
                raise
            broken.append((name, str(exc)))
            continue
        resolved.append(Collection(name, root))
    return DocumentModel(tuple(resolved), source, tuple(broken))


def _fail(filename: str, path: str, problem: str) -> MappingError:
    return MappingError(f"{filename}: {path}: {problem}")


@dataclass(frozen=True)
class _Place:
    """Where in the file a node is read: for messages, and the tables that enclose it (cycles)."""

    filename: str
    path: str
    parent: TableInfo | None = None
    seen: tuple[int, ...] = ()
    strict: bool = True  # also compile each `where` (install only: a bad predicate fails the export anyway)
    tables_read: dict[str, TableInfo] = field(default_factory=dict, compare=False)  # by name, in this resolve


def _node(conn: psycopg.Connection[Any], body: dict[str, Any], place: _Place, field_name: str | None) -> Node:
    filename, path, parent = place.filename, place.path, place.parent
    unknown = set(body) - _NODE_KEYS
    if unknown:
        raise _fail(filename, f"{path}.{sorted(unknown)[0]}", "unknown key")
    table = _table(conn, body.get("table"), filename, path, place.tables_read)
    if table.relid in place.seen:
        raise _fail(filename, path, f"a cycle: table {table.display} already encloses this one")
    reason = tables.refusal(table)
    if reason:
        raise _fail(filename, f"{path}.table", reason)
    columns, names = _fields(body, table, place)
    on: tuple[tuple[str, str], ...] = ()
    many = False
    if parent is not None:
        on, many = _join(conn, body, place, table)
    elif "on" in body or "many" in body:
        raise _fail(filename, f"{path}.on", "a collection's root table has no enclosing table to join")
    order_by = _order(body.get("order_by"), filename, f"{path}.order_by", table, many)
    where = body.get("where")
    if where is not None:
        if parent is None or not isinstance(where, str) or not where.strip():
            raise _fail(filename, f"{path}.where", "expected an SQL predicate on an embedded table's columns")
        if place.strict:
            _check_where(conn, table, where, filename, f"{path}.where")
    children = _children(conn, body, place, table)
    _check_names([*names, *(child.field or "" for child in children)], place)
    return Node(
        path, table, field_name, on, many, tuple(columns), names, order_by, where.strip() if where else None,
        tuple(children),
    )  # fmt: skip


def _fields(body: dict[str, Any], table: TableInfo, place: _Place) -> tuple[list[str], tuple[str, ...]]:
    known = [column.name for column in table.columns]
    columns = _strings(body.get("fields", known), place.filename, f"{place.path}.fields")
    for column in columns:
        if column not in known:
            raise _fail(place.filename, f"{place.path}.fields", f"table {table.display} has no column {column!r}")
    rename = body.get("rename", {})
    if not isinstance(rename, dict) or not all(isinstance(v, str) for v in rename.values()):
        raise _fail(place.filename, f"{place.path}.rename", 'expected { column = "field" }')
    for column in rename:
        if column not in columns:
            raise _fail(place.filename, f"{place.path}.rename", f"{column!r} is not among the fields shown")
    return columns, tuple(rename.get(column, column) for column in columns)


def _children(conn: psycopg.Connection[Any], body: dict[str, Any], place: _Place, table: TableInfo) -> list[Node]:
    embeds = body.get("embed", {})
    if not isinstance(embeds, dict):
        raise _fail(place.filename, f"{place.path}.embed", "expected [..embed.FIELD] tables")
    children = []
    for child_field, child_body in embeds.items():
        child_place = _Place(
            place.filename,
            f"{place.path}.embed.{child_field}",
            table,
            (*place.seen, table.relid),
            place.strict,
            place.tables_read,
        )
        if not isinstance(child_body, dict):
            raise _fail(place.filename, child_place.path, "expected a table of settings")
        children.append(_node(conn, child_body, child_place, child_field))
    return children


def _check_names(names: list[str], place: _Place) -> None:
    for name in names:
        _check_field_name(name, place.filename, place.path, place.parent is None)
    every = [*names, "_id"] if place.parent is None else names
    duplicates = sorted({name for name in every if every.count(name) > 1})
    if duplicates:
        raise _fail(place.filename, place.path, f"two fields named {duplicates[0]!r}")


def _check_field_name(name: str, filename: str, path: str, root: bool) -> None:
    if root and name == "_id":
        return
    if not name or name.startswith("$") or "." in name or "\x00" in name or name in RESERVED_FIELDS:
        raise _fail(filename, path, f"field name {name!r}: it may not start with '$', hold '.', or be _id/_cdc")


def _table(
    conn: psycopg.Connection[Any], value: Any, filename: str, path: str, read: dict[str, TableInfo]
) -> TableInfo:
    """The table ``value`` names (described once per resolve: ``read`` holds those described)."""
    if not isinstance(value, str) or not value:
        raise _fail(filename, f"{path}.table", "expected a table name")
    if value in read:
        return read[value]
    try:
        [relid] = tables.find_all(conn, [value], tables.DEFAULT_SCHEMA)
    except UsageError:
        raise
    except Exception as exc:
        raise _fail(filename, f"{path}.table", str(exc)) from None
    info = tables.describe(conn, relid)
    assert info is not None
    read[value] = info
    return info


def _strings(value: Any, filename: str, path: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(filename, path, "expected a list of column names")
    return list(value)


def _join(
    conn: psycopg.Connection[Any], body: dict[str, Any], place: _Place, table: TableInfo
) -> tuple[tuple[tuple[str, str], ...], bool]:
    filename, path, parent = place.filename, place.path, place.parent
    assert parent is not None
    on = body.get("on")
    if not isinstance(on, dict) or not on or not all(isinstance(v, str) for v in on.values()):
        raise _fail(filename, f"{path}.on", 'expected { column of this table = "column of the enclosing table" }')
    mine_types = dict(zip([c.name for c in table.columns], table.full_types, strict=True))
    theirs_types = dict(zip([c.name for c in parent.columns], parent.full_types, strict=True))
    for mine, theirs in on.items():
        if mine not in mine_types:
            raise _fail(filename, f"{path}.on", f"table {table.display} has no column {mine!r}")
        if theirs not in theirs_types:
            raise _fail(filename, f"{path}.on", f"the enclosing table {parent.display} has no column {theirs!r}")
        if _base(conn, table, mine) != _base(conn, parent, theirs):
            raise _fail(
                filename,
                f"{path}.on",
                f"{table.display}.{mine} ({mine_types[mine]}) and {parent.display}.{theirs} ({theirs_types[theirs]})"
                " have different types",
            )
    many = body.get("many", False)
    if not isinstance(many, bool):
        raise _fail(filename, f"{path}.many", "expected true or false")
    if not many and not _covers_unique_key(conn, table, list(on)):
        raise _fail(
            filename,
            f"{path}.on",
            f"many = false needs `on` to cover a primary or unique key of {table.display} (one row per document)",
        )
    return tuple(on.items()), many


def _base(conn: psycopg.Connection[Any], table: TableInfo, column: str) -> str:
    for info in table.columns:
        if info.name == column:
            return info.base_type + ("[]" if info.is_array else "")
    return ""


def _covers_unique_key(conn: psycopg.Connection[Any], table: TableInfo, columns: list[str]) -> bool:
    """Whether ``columns`` include every column of some primary key or unique constraint/index."""
    with pg.translated(f"reading the unique keys of {table.display}"):
        rows = conn.execute(
            """SELECT array_agg(a.attname::text) FROM pg_index i
               CROSS JOIN LATERAL unnest(i.indkey) AS k(attnum)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
               WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
               GROUP BY i.indexrelid""",
            [table.relid],
        ).fetchall()
    return any(set(row[0]) <= set(columns) for row in rows)


def _order(value: Any, filename: str, path: str, table: TableInfo, many: bool) -> tuple[tuple[str, bool], ...]:
    if value is None:
        return tuple((column, False) for column in table.key_columns)
    if not many:
        raise _fail(filename, path, "order_by applies to arrays (many = true)")
    found = []
    for item in _strings(value, filename, path):
        match = _ORDER.match(item)
        column = match.group("column") if match else ""
        if column not in [c.name for c in table.columns]:
            raise _fail(
                filename, path, f'table {table.display} has no column {column!r} (expected "col" or "col DESC")'
            )
        found.append((column, bool(match and (match.group("direction") or "").upper() == "DESC")))
    # the key last, so equal sort values come in one stable order
    found += [(column, False) for column in table.key_columns if column not in [c for c, _ in found]]
    return tuple(found)


def _check_where(conn: psycopg.Connection[Any], table: TableInfo, where: str, filename: str, path: str) -> None:
    """The predicate must compile against the table alone (a savepoint keeps the caller's transaction)."""
    try:
        with conn.transaction():
            conn.execute(sql.SQL("EXPLAIN SELECT 1 FROM {} WHERE ({})").format(table.qualified, sql.SQL(where)))
    except psycopg.Error as exc:
        raise _fail(filename, path, f"not a valid predicate on {table.display}: {pg.describe(exc)}") from None


def collections_changed(old: DocumentModel | None, new: DocumentModel) -> list[str]:
    """Collections whose documents' shape differs between two models (new ones included)."""
    before = {c.name: c.shape() for c in old.collections} if old is not None else {}
    return [c.name for c in new.collections if before.get(c.name) != c.shape()]


NO_MAPPING = "none"  # `--mapping none`: remove the installed mapping (each table its own collection)


def load(conn: psycopg.Connection[Any]) -> DocumentModel | None:
    """The installed model, resolved against the catalog as it is now; None when none is installed."""
    with pg.translated("reading the installed mapping"):
        stored = catalog.stored_mapping(conn)
    if stored is None:
        return None
    filename, source = stored
    # every batch loads it: the `where` predicates were compiled at install. A collection a migration
    # broke is listed in ``broken`` (cdc status reports it); the others keep syncing.
    model = resolve(conn, parse(source, filename), f"{filename} (as installed)", source, strict=False, partial=True)
    with pg.translated("reading the installed mapping"):
        installed = catalog.mapping_relids(conn)
    return replace(model, installed_relids=tuple(installed))


def installed_filename(conn: psycopg.Connection[Any]) -> str | None:
    """The name the installed mapping file had, or None when none is installed."""
    with pg.translated("reading the installed mapping"):
        stored = catalog.stored_mapping(conn)
    return stored[0] if stored is not None else None


def read_file(path: str) -> tuple[str, str]:
    """(filename, text) of a mapping file, or ``MappingError``."""
    try:
        with open(path, encoding="utf-8") as file:
            return path, file.read()
    except OSError as exc:
        raise MappingError(f"{path}: cannot read the mapping file: {exc.strerror}") from None


def store(conn: psycopg.Connection[Any], model: DocumentModel | None, filename: str) -> None:
    """Replace the installed mapping (in the caller's transaction)."""
    catalog.store_mapping(conn, (filename, model.source) if model is not None else None)
    if model is not None:
        catalog.set_mapping_relids(conn, sorted(model.relids()))
