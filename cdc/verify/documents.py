"""What each mapped document must be, built by PostgreSQL itself, apart from the exporter.

The exporter reads a mapped document node by node and assembles it in Python with the codec
(``cdc/documents/build.py``). Verify instead asks PostgreSQL for the whole nested document in one
statement: correlated subqueries per embedded field (``json_agg`` in the node's order for arrays,
one row for a subdocument), each column read by ``expected.read_expression`` and rendered by
``to_json``; then ``expected`` maps each value by the type mapping's rules. A mistake in the
exporter's joins, order, filters or encoding shows up as a difference.

Values are positional (``json_build_array``), not ``json_build_object``: a function takes at most
100 arguments, so wide rows are split into nested arrays of at most 90 values.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture.mapping import Collection, Node
from cdc.capture.tables import TableInfo
from cdc.capture.triggers import key_text
from cdc.verify import rules as expected
from cdc.verify.rules import ColumnRule

_MAX_ARGS = 90
_FETCH = 2_000


def _rules(node: Node) -> list[ColumnRule]:
    return expected.rules_for(node.table, node.columns)


def _source(node: Node) -> sql.Composable:
    if node.where is None:
        return node.table.qualified
    # verify's statement runs without parameters: a % in the predicate is sent as it is
    return sql.SQL("(SELECT * FROM {} WHERE ({}))").format(node.table.qualified, sql.SQL(node.where))


def _array(values: list[sql.Composable]) -> sql.Composable:
    if len(values) <= _MAX_ARGS:
        return sql.SQL("json_build_array({})").format(sql.SQL(", ").join(values))
    parts = [_array(values[i : i + _MAX_ARGS]) for i in range(0, len(values), _MAX_ARGS)]
    return sql.SQL("json_build_array({})").format(sql.SQL(", ").join(parts))


def _node_value(node: Node, alias: str, depth: int) -> sql.Composable:
    """One row of ``node`` (alias ``alias``) as a JSON array: its columns, then each embedded field."""
    values: list[sql.Composable] = [
        expected.read_expression(rule, sql.Identifier(alias, rule.name)) for rule in _rules(node)
    ]
    for child in node.children:
        child_alias = f"e{depth + 1}_{len(values)}"
        match = sql.SQL("{} = {}").format(
            sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(child_alias, c) for c in child.join_columns)),
            sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(alias, c) for c in child.parent_columns)),
        )
        inner = _node_value(child, child_alias, depth + 1)
        if child.many:
            order = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(child_alias, column), sql.SQL("DESC" if desc else "ASC"))
                for column, desc in child.order_by
            )
            values.append(
                sql.SQL("(SELECT coalesce(json_agg({} ORDER BY {}), '[]'::json) FROM {} AS {} WHERE {})").format(
                    inner, order, _source(child), sql.Identifier(child_alias), match
                )
            )
        else:
            values.append(
                sql.SQL("(SELECT {} FROM {} AS {} WHERE {} LIMIT 1)").format(
                    inner, _source(child), sql.Identifier(child_alias), match
                )
            )
    return _array(values) if values else sql.SQL("json_build_array()")


def _flatten(value: list[Any], width: int) -> list[Any]:
    """Undo ``_array``'s nesting of wide rows."""
    if width <= _MAX_ARGS:
        return value
    flat: list[Any] = []
    for part in value:
        flat += part
    return flat


def _document(node: Node, rules_of: dict[int, list[ColumnRule]], values: list[Any]) -> dict[str, Any]:
    """``node``'s part of a document from its JSON values; ``rules_of`` maps each node (by id) to its rules,
    built once per collection."""
    rules = rules_of[id(node)]
    values = _flatten(values, len(rules) + len(node.children))
    document: dict[str, Any] = {}
    for name, rule, value in zip(node.names, rules, values, strict=False):
        document[name] = expected.expected_value(rule, expected.from_json(rule, value))
    for child, value in zip(node.children, values[len(rules) :], strict=True):
        assert child.field is not None
        if child.many:
            document[child.field] = [_document(child, rules_of, item) for item in value or []]
        else:
            document[child.field] = None if value is None else _document(child, rules_of, value)
    return document


def _integer(text: str) -> int | Decimal:
    """JSON integers as ints, but ``-0`` (a double's negative zero) keeps its sign."""
    return Decimal(text) if text == "-0" else int(text)


def root_rules(table: TableInfo) -> list[ColumnRule]:
    return expected.rules_for(table, table.key_columns)


def rows(conn: psycopg.Connection[Any], collection: Collection) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """Every root of ``collection``: (key text, ``_id``, the expected document without ``_id``)."""
    root = collection.root
    keys = root_rules(root.table)
    query = sql.SQL("SELECT {}, {}, {}::text FROM {} AS a0").format(
        key_text(root.table, "a0"),
        sql.SQL(", ").join(expected.read_expression(rule, sql.Identifier("a0", rule.name)) for rule in keys),
        _node_value(root, "a0", 0),
        root.table.qualified,
    )
    rules_of = {id(node): _rules(node) for node in collection.nodes()}
    with conn.cursor(name=f"verify_documents_{root.table.relid}") as cur:
        cur.itersize = _FETCH
        cur.execute(query)
        for row in cur:
            values = json.loads(row[-1], parse_float=Decimal, parse_int=_integer)
            document_id = expected.expected_id(keys, list(row[1:-1]))
            yield row[0], document_id, {"_id": document_id, **_document(root, rules_of, values)}
