"""Mapped documents at drain time: which roots a batch touches, and each of them read whole.

Read whole, never patched: a mapped document is rebuilt from PostgreSQL, in the batch's snapshot,
whenever any row it shows may have changed. Which roots a batch touches (``collect_roots``):

- a change of the root table: that root (a root whose row is gone becomes a delete);
- a change of an embedded table, at any depth: every root that holds the row now (its current join
  values, read in the snapshot, walked up to the root) and every root that held it before (the old
  join values, recorded at capture time from the statement's OLD transition table, walked up the
  same way). A row that moved to another parent, was deleted by a cascade, or had its join column
  set to or from NULL refreshes both sides; an enclosing row that changed was captured itself.
- a TRUNCATE of a table the collection reads: every root of the collection.

The roots go into a temporary table (deduplicated, bounded memory), then stream out in chunks of
``CHUNK`` keys; each chunk is read with one query per node of the mapping (``_NodeQuery``: the
path from the root to the node joined in SQL, each table filtered by its ``where``), assembled in
Python and encoded with the codec's converters, so embedded values follow the same type mapping
as top-level columns. Every document of a batch carries the batch's version (``_cdc.pos``): a
value of ``cdc.position_seq`` taken when the batch was claimed, inside the exporters' turn, so
versions follow the order of the snapshots documents are read in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture.mapping import Collection, DocumentModel, Node
from cdc.capture.tables import Column, TableInfo
from cdc.capture.triggers import cast_key, key_text
from cdc.encode.codec import delete_line, document_id, document_line, position
from cdc.encode.types import converter, select_expression
from cdc.encode.values import Converter
from cdc.infra.errors import DocumentTooLarge
from cdc.ledger import queries as ledger

log = logging.getLogger("cdc.documents")  # the name users filter on, kept across the move to packages

CHUNK = 500
_ROOTS_TABLE = sql.Identifier("cdc_roots")


def _row_key(table: TableInfo, alias: str) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(alias, c) for c in table.key_columns))


def _tuple(alias: str, columns: Sequence[str]) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(alias, c) for c in columns))


def _source(node: Node) -> sql.Composable:
    """The node's table, filtered by its ``where`` inside a subquery (so its column names resolve there)."""
    if node.where is None:
        return node.table.qualified
    predicate = sql.SQL(node.where.replace("%", "%%"))  # a literal % in the predicate is not a placeholder
    return sql.SQL("(SELECT * FROM {} WHERE ({}))").format(node.table.qualified, predicate)


def _path(collection: Collection, node: Node) -> list[Node]:
    path = [node]
    while (parent := collection.parent_of(path[0])) is not None:
        path.insert(0, parent)
    return path


# ---- which roots a batch touches -----------------------------------------------------------------


def _walk_up(collection: Collection, node: Node, values: sql.Composable) -> sql.Composable:
    """Root keys (text) of the documents holding rows of ``node`` whose join columns are in ``values``
    (a query yielding ``node.join_columns`` tuples)."""
    path = _path(collection, node)
    query = values
    for index in range(len(path) - 1, 0, -1):
        child, parent = path[index], path[index - 1]
        alias = f"p{index}"
        selected = (
            key_text(parent.table, alias)
            if index == 1
            else sql.SQL(", ").join(sql.Identifier(alias, c) for c in parent.join_columns)
        )
        query = sql.SQL("SELECT {} FROM {} AS {} WHERE {} IN ({})").format(
            selected, _source(parent), sql.Identifier(alias), _tuple(alias, child.parent_columns), query
        )
    return query


def _changed_keys(table: TableInfo, ops: str = "k", *, shown_only: bool = False) -> sql.Composable:
    """The batch's keys of ``table`` (``ledger.changed_keys``)."""
    return ledger.changed_keys(table.relid, ops, shown_only=shown_only)


def _touched_rows(model: DocumentModel, node: Node) -> sql.Composable:
    """The join values of ``node``'s changed rows: now (in the snapshot) and before (recorded); an
    UPDATE that changed nothing an embedding document shows is left out (``shown`` false)."""
    table = node.table
    now = sql.SQL("SELECT {} FROM {} AS t WHERE {} IN (SELECT {} FROM ({}) AS changed)").format(
        sql.SQL(", ").join(sql.Identifier("t", c) for c in node.join_columns),
        _source(node),
        _row_key(table, "t"),
        sql.SQL(", ").join(cast_key(table, sql.SQL("changed.key"))),
        _changed_keys(table, shown_only=True),
    )
    recorded = model.join_columns(table.relid)
    before = ledger.old_join_values(
        table.relid,
        sql.SQL(", ").join(
            sql.SQL("(j.old::jsonb ->> {})::{}").format(sql.Literal(c), sql.SQL(table.key_type(c)))
            for c in node.join_columns
            if c in recorded
        ),
    )
    return sql.SQL("{} UNION {}").format(now, before)


def collect_roots(
    conn: psycopg.Connection[Any], model: DocumentModel, batch_id: int, rows: list[tuple[int, str]]
) -> dict[str, int]:
    """Fill the temporary table of touched roots for ``batch_id``, whose (relid, op) pairs are ``rows``
    (``ledger.batch_ops``); returns their count per collection."""
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} (collection text, key text) ON COMMIT DELETE ROWS").format(
            _ROOTS_TABLE
        )
    )
    conn.execute(sql.SQL("TRUNCATE {}").format(_ROOTS_TABLE))
    truncated = {relid for relid, op in rows if op == "t"}
    changed = {relid for relid, op in rows if op == "k"}
    refreshed = {relid for relid, op in rows if op == "r"}
    counts: dict[str, int] = {}
    for collection in model.collections:
        root = collection.root.table
        if truncated & {node.table.relid for node in collection.nodes()}:
            every = sql.SQL("SELECT {} FROM {} AS t").format(key_text(root, "t"), root.qualified)
            _insert_roots(conn, collection, every, batch_id)
            # and the roots changed in the batch, whose rows may be gone (their documents are deleted)
            _insert_roots(conn, collection, _changed_keys(root, "kr"), batch_id)
        else:
            for node in collection.nodes():
                if node is collection.root and node.table.relid in changed | refreshed:
                    _insert_roots(conn, collection, _changed_keys(root, "kr"), batch_id)
                elif node.table.relid not in changed or node is collection.root:
                    continue
                else:
                    _insert_roots(conn, collection, _walk_up(collection, node, _touched_rows(model, node)), batch_id)
        found = conn.execute(
            sql.SQL("SELECT count(DISTINCT key) FROM {} WHERE collection = %s").format(_ROOTS_TABLE), [collection.name]
        ).fetchone()
        counts[collection.name] = int(found[0]) if found else 0
    return counts


def _insert_roots(conn: psycopg.Connection[Any], collection: Collection, keys: sql.Composable, batch_id: int) -> None:
    conn.execute(
        sql.SQL("INSERT INTO {} (collection, key) SELECT DISTINCT %(collection)s, k FROM ({}) AS r(k)").format(
            _ROOTS_TABLE, keys
        ),
        {"collection": collection.name, "batch": batch_id},
    )


def touched_keys(conn: psycopg.Connection[Any], collection: Collection) -> Iterator[list[str]]:
    """The touched root keys of ``collection``, ``CHUNK`` at a time, in key-text order."""
    with conn.cursor(name="cdc_roots") as cur:
        cur.itersize = CHUNK
        cur.execute(
            sql.SQL("SELECT DISTINCT key FROM {} WHERE collection = %s ORDER BY key").format(_ROOTS_TABLE),
            [collection.name],
        )
        chunk: list[str] = []
        for (key,) in cur:
            chunk.append(key)
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


# ---- reading documents -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """How one node's rows become subdocuments: its columns' converters and field names."""

    node: Node
    columns: tuple[Column, ...]
    converters: tuple[Converter, ...]


def _shape(node: Node) -> _Shape:
    by_name = {column.name: column for column in node.table.columns}
    columns = tuple(by_name[name] for name in node.columns)
    return _Shape(node, columns, tuple(converter(column) for column in columns))


def _node_query(collection: Collection, node: Node) -> sql.Composed:
    """The rows of ``node`` under the chunk's roots: (parent key text, own key text, columns…), in the
    node's order within each parent."""
    path = _path(collection, node)
    root = path[0].table
    joins = [sql.SQL("{} AS a0").format(root.qualified)]
    for index in range(1, len(path)):
        child = path[index]
        joins.append(
            sql.SQL("JOIN {} AS {} ON {} = {}").format(
                _source(child),
                sql.Identifier(f"a{index}"),
                _tuple(f"a{index}", child.join_columns),
                _tuple(f"a{index - 1}", child.parent_columns),
            )
        )
    last = f"a{len(path) - 1}"
    parent = f"a{len(path) - 2}" if len(path) > 1 else last
    shape = _shape(node)
    selects = [
        key_text(path[-2].table if len(path) > 1 else root, parent),
        key_text(node.table, last),
        *[select_expression(column, sql.Identifier(last, column.name)) for column in shape.columns],
    ]
    order = [sql.SQL("1")] + [
        sql.SQL("{} {}").format(sql.Identifier(last, column), sql.SQL("DESC" if descending else "ASC"))
        for column, descending in node.order_by
    ]
    return sql.SQL(
        "SELECT {} FROM {} WHERE {} IN (SELECT {} FROM unnest(%(keys)s::text[]) AS r(k)) ORDER BY {}"
    ).format(
        sql.SQL(", ").join(selects),
        sql.SQL(" ").join(joins),
        _row_key(root, "a0"),
        sql.SQL(", ").join(cast_key(root, sql.SQL("r.k"))),
        sql.SQL(", ").join(order),
    )


def _root_query(collection: Collection) -> sql.Composed:
    """Each chunk key: its key values (for ``_id``), whether the root row exists, and its columns."""
    root = collection.root.table
    by_name = {column.name: column for column in root.columns}
    keys = cast_key(root, sql.SQL("r.k"))
    shape = _shape(collection.root)
    return sql.SQL(
        "SELECT r.k, {}, t.ctid IS NOT NULL, {} FROM unnest(%(keys)s::text[]) AS r(k) LEFT JOIN {} AS t ON {} = ({})"
    ).format(
        sql.SQL(", ").join(
            select_expression(by_name[name], value) for name, value in zip(root.key_columns, keys, strict=True)
        ),
        sql.SQL(", ").join(select_expression(column, sql.Identifier("t", column.name)) for column in shape.columns)
        if shape.columns
        else sql.SQL("NULL"),
        root.qualified,
        _row_key(root, "t"),
        sql.SQL(", ").join(keys),
    )


@dataclass(frozen=True)
class Built:
    """One root of a chunk: its ``_id`` (as written), and its line (None: the root row is gone)."""

    key: str
    document_id: Any
    line: bytes | None
    size_error: str | None = None


class DocumentReader:
    """Reads mapped documents of one collection, a chunk of roots at a time, in the caller's snapshot."""

    def __init__(self, collection: Collection) -> None:
        self.collection = collection
        root = collection.root.table
        by_name = {column.name: column for column in root.columns}
        self.key_converters = tuple(converter(by_name[name]) for name in root.key_columns)
        self.shapes = {id(node): _shape(node) for node in collection.nodes()}
        self.root_query = _root_query(collection)
        self.node_queries = {id(node): _node_query(collection, node) for node in collection.nodes()[1:]}

    def document_id(self, key: Sequence[Any]) -> Any:
        return document_id(self.collection.root.table.key_columns, self.key_converters, key)

    def read(self, conn: psycopg.Connection[Any], keys: list[str], version: int) -> list[Built]:
        width = len(self.collection.root.table.key_columns)
        with conn.cursor(binary=True) as cur:
            roots = cur.execute(self.root_query, {"keys": keys}).fetchall()
            children: dict[int, dict[str, list[tuple[str, dict[str, Any]]]]] = {}
            for node in self.collection.nodes()[1:]:
                children[id(node)] = self._grouped(cur.execute(self.node_queries[id(node)], {"keys": keys}), node)
        built = []
        shape = self.shapes[id(self.collection.root)]
        for row in roots:
            key, key_values, present = row[0], row[1 : 1 + width], row[1 + width]
            document_id = self.document_id(key_values)
            if not present:
                built.append(Built(key, document_id, None))
                continue
            document: dict[str, Any] = {"_id": document_id}
            document.update(self._fields(shape, row[2 + width :]))
            self._embed(document, self.collection.root, key, children)
            document["_cdc"] = position(version)
            built.append(_encoded(key, document_id, document))
        return built

    def _fields(self, shape: _Shape, values: Sequence[Any]) -> dict[str, Any]:
        return {
            name: None if value is None else convert(value)
            for name, convert, value in zip(shape.node.names, shape.converters, values, strict=False)
        }

    def _grouped(self, cur: psycopg.Cursor[Any], node: Node) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """Rows by parent key; a row reached through several paths (a song in two playlist entries) is
        kept once per parent."""
        shape = self.shapes[id(node)]
        grouped: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        seen: set[tuple[str, str]] = set()
        for row in cur:
            parent, own = row[0], row[1]
            if (parent, own) in seen:
                continue
            seen.add((parent, own))
            grouped.setdefault(parent, []).append((own, self._fields(shape, row[2:])))
        return grouped

    def _embed(
        self,
        document: dict[str, Any],
        node: Node,
        own_key: str,
        children: dict[int, dict[str, list[tuple[str, dict[str, Any]]]]],
    ) -> None:
        for child in node.children:
            rows = children[id(child)].get(own_key, [])
            items = []
            for child_key, fields in rows if child.many else rows[:1]:
                subdocument = dict(fields)
                self._embed(subdocument, child, child_key, children)
                items.append(subdocument)
            assert child.field is not None
            document[child.field] = items if child.many else (items[0] if items else None)


def _encoded(key: str, document_id: Any, document: dict[str, Any]) -> Built:
    try:
        return Built(key, document_id, document_line(document))
    except DocumentTooLarge as error:
        field_name, length = _largest_array(document)
        return Built(key, document_id, None, f"{error}; largest array: {field_name} ({length} elements)")


def _largest_array(value: Any, path: str = "") -> tuple[str, int]:
    best = ("(none)", 0)
    if isinstance(value, dict):
        for name, item in value.items():
            found = _largest_array(item, f"{path}.{name}" if path else name)
            best = found if found[1] > best[1] else best
    elif isinstance(value, list):
        best = (path, len(value))
        for index, item in enumerate(value):
            found = _largest_array(item, f"{path}[{index}]")
            best = found if found[1] > best[1] else best
    return best


def export_documents(
    conn: psycopg.Connection[Any], writer: Any, model: DocumentModel, batch_id: int, version: int
) -> None:
    """Write the batch's mapped documents: every touched root read whole at ``version`` (an upsert, or a
    delete when its root row is gone), a root-table TRUNCATE as a marker at ``version`` before them,
    and a document over 16 MiB to ``rejected.jsonl`` with its collection, root key, size and largest
    array. ``writer`` is the batch's ``archive.BatchWriter``."""
    ops = ledger.batch_ops(conn, batch_id)
    counts = collect_roots(conn, model, batch_id, ops)
    for collection in model.collections:
        root = collection.root.table
        writer.documents[collection.name] = {"root": f"{root.schema}.{root.name}", "version": str(version)}
        # a truncated root table: every document is rewritten, the older ones removed by this marker
        if (root.relid, "t") in ops:
            writer.truncate(collection.name, version)
        if not counts.get(collection.name):
            continue
        reader = DocumentReader(collection)
        for keys in touched_keys(conn, collection):
            upserts: list[bytes] = []
            deletes: list[bytes] = []
            for built in reader.read(conn, keys, version):
                if built.line is not None:
                    upserts.append(built.line)
                elif built.size_error is not None:
                    writer.reject(collection.name, [built.key], built.size_error, version)
                    log.warning(
                        "rejected %s root %s: %s",
                        collection.name,
                        built.key,
                        built.size_error,
                        extra={"action": "reject", "collection": collection.name},
                    )
                else:
                    deletes.append(delete_line(built.document_id, version))
            writer.write_many(collection.name, "upsert", upserts)
            writer.write_many(collection.name, "delete", deletes)
