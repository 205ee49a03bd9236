"""The capture catalog: the one owner of the SQL on ``cdc.captured`` (what is captured),
``cdc.captured_parts`` (the partitions and children recorded under each captured root) and
``cdc.mapping`` (the installed document model), as named blocks in ``schema/catalog.sql``.

Readers never commit; writers run in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from cdc.infra import sqlfiles


def _run(conn: psycopg.Connection[Any], name: str, params: dict[str, Any] | None = None) -> psycopg.Cursor[Any]:
    return sqlfiles.run(conn, "catalog.sql", name, params)


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = _run(conn, "table_exists", {"name": table}).fetchone()
    return bool(row and row[0])


def _readable(conn: psycopg.Connection[Any], table: str) -> bool:
    row = _run(conn, "table_readable", {"name": table}).fetchone()
    return bool(row and row[0])


def _text_list(value: object) -> tuple[str, ...]:
    return tuple(str(item) for item in value) if isinstance(value, list) else ()


# ---- cdc.captured -------------------------------------------------------------------------------


def register_table(
    conn: psycopg.Connection[Any],
    relid: int,
    schema: str,
    name: str,
    key_columns: Sequence[str],
    *,
    notify: bool,
    excluded: Sequence[str],
    set_excluded: bool,
) -> None:
    """Record a captured table; its stored exclusions are replaced only with ``set_excluded``."""
    _run(
        conn,
        "register_table",
        {
            "relid": relid,
            "schema": schema,
            "name": name,
            "keys": list(key_columns),
            "notify": notify,
            "excluded": list(excluded),
            "set_excluded": set_excluded,
        },
    )


def is_captured(conn: psycopg.Connection[Any], relid: int) -> bool:
    return _run(conn, "is_captured", {"relid": relid}).fetchone() is not None


def captured_relids(conn: psycopg.Connection[Any]) -> list[int]:
    return [int(row[0]) for row in _run(conn, "captured_relids").fetchall()]


def set_join_columns(conn: psycopg.Connection[Any], relid: int, joins: Sequence[str]) -> None:
    _run(conn, "set_join_columns", {"relid": relid, "joins": list(joins)})


def join_columns(conn: psycopg.Connection[Any], relid: int) -> tuple[str, ...]:
    """The columns the installed mapping joins on, recorded for the table's triggers."""
    row = _run(conn, "join_columns", {"relid": relid}).fetchone()
    return _text_list(row[0]) if row else ()


def excluded_columns(conn: psycopg.Connection[Any], relid: int) -> tuple[str, ...]:
    """The columns excluded from capture, as ``cdc install --exclude`` stored them."""
    row = _run(conn, "excluded_columns", {"relid": relid}).fetchone()
    return _text_list(row[0]) if row else ()


def forget_table(conn: psycopg.Connection[Any], relid: int) -> None:
    _run(conn, "forget_table", {"relid": relid})


def forget_tables_named(conn: psycopg.Connection[Any], names: Sequence[str], schema: str | None) -> None:
    _run(conn, "forget_tables_named", {"names": list(names), "schema": schema})


def captured_tables(conn: psycopg.Connection[Any], trigger_pattern: str) -> list[tuple[Any, ...]]:
    """(relid, schema, name, exists, enabled triggers matching ``trigger_pattern``, oid of another
    table now holding its name) of every registered table."""
    return list(_run(conn, "captured_tables", {"pattern": trigger_pattern}).fetchall())


def in_hierarchy(conn: psycopg.Connection[Any], relid: int) -> bool | None:
    """Whether the table was recorded as a hierarchy's root (its TRUNCATE records keys); None when not captured."""
    row = _run(conn, "in_hierarchy", {"relid": relid}).fetchone()
    return None if row is None else bool(row[0])


def set_in_hierarchy(conn: psycopg.Connection[Any], relid: int, value: bool) -> None:
    _run(conn, "set_in_hierarchy", {"relid": relid, "value": value})


def notify(conn: psycopg.Connection[Any], relid: int) -> bool | None:
    """Whether the table's triggers send a NOTIFY; None when it is not captured."""
    row = _run(conn, "notify", {"relid": relid}).fetchone()
    return None if row is None else bool(row[0])


def captured_children(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
    """(relid, schema.name) of the captured tables that are now a partition or child of another."""
    return [(int(relid), str(name)) for relid, name in _run(conn, "captured_children").fetchall()]


# ---- cdc.captured_parts -------------------------------------------------------------------------


def parts_exists(conn: psycopg.Connection[Any]) -> bool:
    return _exists(conn, "cdc.captured_parts")


def drift(conn: psycopg.Connection[Any], trigger_pattern: str, triggers_expected: int) -> list[tuple[int, int, str]]:
    """(root, member, what) of every member out of step: 'uncaptured', 'left', 'dropped', 'truncate mode'."""
    rows = _run(conn, "drift", {"pattern": trigger_pattern, "expected": triggers_expected}).fetchall()
    return [(int(root), int(member), str(what)) for root, member, what in rows]


def parts_of(conn: psycopg.Connection[Any], root_relid: int, *, with_dropped: bool = False) -> list[int]:
    """The members recorded under a root (without those marked dropped, unless ``with_dropped``)."""
    return [int(row[0]) for row in _run(conn, "all_parts" if with_dropped else "live_parts", {"root": root_relid})]


def record_part(conn: psycopg.Connection[Any], relid: int, root_relid: int, schema: str, name: str) -> None:
    _run(conn, "record_part", {"relid": relid, "root": root_relid, "schema": schema, "name": name})


def other_root(conn: psycopg.Connection[Any], relid: int, root_relid: int) -> int | None:
    """The other root a member is recorded under, if any."""
    row = _run(conn, "other_root", {"relid": relid, "root": root_relid}).fetchone()
    return None if row is None else int(row[0])


def mark_part_dropped(conn: psycopg.Connection[Any], relid: int) -> None:
    _run(conn, "mark_part_dropped", {"relid": relid})


def forget_part(conn: psycopg.Connection[Any], relid: int) -> None:
    _run(conn, "forget_part", {"relid": relid})


def forget_parts_of(conn: psycopg.Connection[Any], root_relid: int) -> None:
    _run(conn, "forget_parts_of", {"root": root_relid})


def has_gone_parts(conn: psycopg.Connection[Any], root_relid: int) -> bool:
    row = _run(conn, "has_gone_parts", {"root": root_relid}).fetchone()
    return bool(row and row[0])


def forget_gone_parts(conn: psycopg.Connection[Any], root_relid: int) -> None:
    _run(conn, "forget_gone_parts", {"root": root_relid})


def gone_parts(conn: psycopg.Connection[Any]) -> list[tuple[int, int, str, str]]:
    """(root, member, schema, name) of every member marked dropped or gone from the catalog."""
    return [(int(r[0]), int(r[1]), str(r[2]), str(r[3])) for r in _run(conn, "gone_parts").fetchall()]


# ---- cdc.mapping --------------------------------------------------------------------------------


def stored_mapping(conn: psycopg.Connection[Any]) -> tuple[str, str] | None:
    """(filename, TOML text) of the installed document model; None when none is installed."""
    if not _exists(conn, "cdc.mapping"):
        return None
    row = _run(conn, "stored_mapping").fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def store_mapping(conn: psycopg.Connection[Any], stored: tuple[str, str] | None) -> None:
    """Replace the installed document model with (filename, TOML text), or remove it (None)."""
    _run(conn, "clear_mapping")
    if stored is not None:
        _run(conn, "store_mapping", {"filename": stored[0], "source": stored[1]})


def relation_name(conn: psycopg.Connection[Any], relid: int) -> tuple[str, str, bool] | None:
    """(schema, name, capture's catalog exists) of a relation; None when the oid is gone."""
    row = _run(conn, "relation_name", {"relid": relid}).fetchone()
    return None if row is None else (str(row[0]), str(row[1]), bool(row[2]))


# ---- shapes and rebuilds (cdc/capture/reshape.py) ---------------------------------------------------------


@dataclass(frozen=True)
class Rebuild:
    """A collection being rebuilt after a migration: every key of ``relid`` enqueued, page by page."""

    relid: int
    op: str
    collection: str
    reason: str
    last_key: str | None
    last_pos: int | None
    keys: int
    total: int
    done: bool
    started_at: Any


def shapes_supported(conn: psycopg.Connection[Any]) -> bool:
    row = _run(conn, "shapes_supported").fetchone()
    return bool(row and row[0])


def set_shape(conn: psycopg.Connection[Any], relid: int) -> None:
    """Record ``relid``'s shape now (its capture functions were just written for it)."""
    if shapes_supported(conn):
        _run(conn, "set_shape", {"relid": relid})


def shape_drift(conn: psycopg.Connection[Any]) -> list[tuple[int, str | None, str]]:
    """(relid, recorded shape or None, shape now) of every captured table whose shape moved."""
    return [(int(r[0]), r[1], str(r[2])) for r in _run(conn, "shape_drift").fetchall()]


def set_exclusions(conn: psycopg.Connection[Any], relid: int, excluded: Sequence[str]) -> None:
    _run(conn, "set_exclusions", {"relid": relid, "excluded": list(excluded)})


def start_rebuild(  # noqa: PLR0917 (one rebuild's facts)
    conn: psycopg.Connection[Any], relid: int, op: str, collection: str, reason: str, total: int
) -> None:
    _run(conn, "start_rebuild", {"relid": relid, "op": op, "collection": collection, "reason": reason, "total": total})


def rebuild_page(conn: psycopg.Connection[Any], rebuild: Rebuild, last_key: str, pos: int, keys: int) -> None:
    _run(
        conn,
        "rebuild_page",
        {
            "relid": rebuild.relid,
            "op": rebuild.op,
            "collection": rebuild.collection,
            "last_key": last_key,
            "pos": pos,
            "keys": keys,
        },
    )


def rebuild_enqueued(conn: psycopg.Connection[Any], rebuild: Rebuild) -> None:
    _run(conn, "rebuild_enqueued", {"relid": rebuild.relid, "op": rebuild.op, "collection": rebuild.collection})


def rebuilds(conn: psycopg.Connection[Any]) -> list[Rebuild]:
    """The rebuilds not finished (empty on a ledger installed before they existed)."""
    if not _readable(conn, "cdc.rebuilds"):
        return []
    return [
        Rebuild(int(r[0]), str(r[1]), r[2], r[3], r[4], r[5], int(r[6]), int(r[7]), bool(r[8]), r[9])
        for r in _run(conn, "rebuilds").fetchall()
    ]


def forget_rebuild(conn: psycopg.Connection[Any], rebuild: Rebuild) -> None:
    _run(conn, "forget_rebuild", {"relid": rebuild.relid, "op": rebuild.op, "collection": rebuild.collection})


def mapping_relids(conn: psycopg.Connection[Any]) -> list[int]:
    """The tables the installed mapping read when it was installed (none on an older ledger)."""
    if not _exists(conn, "cdc.mapping"):
        return []
    row = _run(conn, "mapping_relids").fetchone()
    return [int(relid) for relid in row[0]] if row and isinstance(row[0], list) else []


def set_mapping_relids(conn: psycopg.Connection[Any], relids: Sequence[int]) -> None:
    _run(conn, "set_mapping_relids", {"relids": list(relids)})


def registered_name(conn: psycopg.Connection[Any], relid: int) -> tuple[str, str] | None:
    """The (schema, name) ``relid`` was captured under (None when it is not captured)."""
    row = _run(conn, "registered_name", {"relid": relid}).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


# ---- captured schemas (`--tables 'schema.*'`) -----------------------------------------------------


def add_captured_schema(conn: psycopg.Connection[Any], schema: str, *, notify: bool) -> None:
    _run(conn, "add_captured_schema", {"schema": schema, "notify": notify})


def forget_captured_schema(conn: psycopg.Connection[Any], schema: str) -> None:
    if _exists(conn, "cdc.captured_schemas"):
        _run(conn, "forget_captured_schema", {"schema": schema})


def captured_schemas(conn: psycopg.Connection[Any]) -> list[str]:
    if not _readable(conn, "cdc.captured_schemas"):
        return []
    return [str(row[0]) for row in _run(conn, "captured_schemas").fetchall()]


@dataclass(frozen=True)
class Uncaptured:
    """A table of a captured schema that is not captured yet."""

    relid: int
    schema: str
    name: str
    notify: bool
    keyed: bool


def uncaptured_in_schemas(conn: psycopg.Connection[Any]) -> list[Uncaptured]:
    if not _readable(conn, "cdc.captured_schemas"):
        return []
    return [
        Uncaptured(int(r[0]), str(r[1]), str(r[2]), bool(r[3]), bool(r[4]))
        for r in _run(conn, "uncaptured_in_schemas").fetchall()
    ]


def dropped_tables(conn: psycopg.Connection[Any]) -> list[tuple[int, str, str]]:
    """(relid, schema, name) of captured tables that were dropped."""
    if not _exists(conn, "cdc.captured"):
        return []
    return [(int(r[0]), str(r[1]), str(r[2])) for r in _run(conn, "dropped_tables").fetchall()]
