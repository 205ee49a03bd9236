"""The capture triggers and their functions: the DDL that ``capture`` and ``hierarchy`` install.

A captured table (the root) records its changes under its own oid. Its partitions and inheritance
children, at any depth, record under the root's oid too, with the same insert, update and delete
functions: a statement fires the statement triggers of the table it names only, so every member of
a hierarchy needs its own triggers.

TRUNCATE: a table with no partitions and no children records a truncate marker (op ``t``), which
empties the collection up to the marker's position. A member of a hierarchy instead records, in a
``BEFORE TRUNCATE`` trigger, the keys of its own rows (``FROM ONLY``) as changes: the drain reads
them back from the root, finds no row and deletes exactly those documents. TRUNCATE of a parent
fires the truncate triggers of every partition and child it empties, so nothing else is removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture.tables import TableInfo
from cdc.infra import sqlfiles
from cdc.ledger.queries import NOTIFY_CHANNEL

TRIGGERS = {
    # trigger name: (event, transition tables, trigger function prefix)
    "cdc_capture_insert": ("INSERT", "REFERENCING NEW TABLE AS cdc_new", "ins"),
    "cdc_capture_update": ("UPDATE", "REFERENCING OLD TABLE AS cdc_old NEW TABLE AS cdc_new", "upd"),
    "cdc_capture_delete": ("DELETE", "REFERENCING OLD TABLE AS cdc_old", "del"),
    "cdc_capture_truncate": ("TRUNCATE", "", "trunc"),
}
TRIGGER_NAME_PATTERN = "cdc\\_capture\\_%"  # for LIKE: every capture trigger
_SESSION_DEPENDENT_TEXT = ("date", "time", "interval", "money")


def key_text(table: TableInfo, alias: str) -> sql.Composable:
    """The text form of a row's key: ``k::text``, or ``ROW(k1, k2)::text`` for a composite key."""
    columns = [sql.Identifier(alias, column) for column in table.key_columns]
    if len(columns) == 1:
        return sql.SQL("{}::text").format(columns[0])
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(columns))


def key_type_name(relid: int) -> sql.Identifier:
    """The composite type that parses a composite key's text back into typed columns."""
    return sql.Identifier("cdc", f"key_{relid}")


def cast_key(table: TableInfo, text: sql.Composable) -> list[sql.Composable]:
    """The typed key columns of a key in its text form (``key_text``), as the outbox holds it."""
    if len(table.key_columns) == 1:
        return [sql.SQL("({}::{})").format(text, sql.SQL(table.key_type(table.key_columns[0])))]
    return [
        sql.SQL("(({}::{}).{})").format(text, key_type_name(table.relid), sql.Identifier(column))
        for column in table.key_columns
    ]


def function_name(prefix: str, relid: int) -> sql.Identifier:
    return sql.Identifier("cdc", f"capture_{prefix}_{relid}")


def _wake(notify: bool) -> sql.Composable:
    return sql.SQL("PERFORM pg_notify({}, 'wake');").format(sql.Literal(NOTIFY_CHANNEL)) if notify else sql.SQL("")


def join_values(joins: Sequence[str], rows: sql.Composable) -> sql.Composable:
    """The distinct join values of ``rows`` (alias ``r``) as jsonb texts ``{"column": value, …}``:
    read back by column name (``documents``), so a mapping changed while changes wait does not
    misread them, and in JSON's own formats (ISO dates), whatever the session's DateStyle."""
    pairs = sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(c), sql.Identifier("r", c)) for c in joins)
    return sql.SQL("(SELECT array_agg(DISTINCT jsonb_build_object({})::text) FROM {} AS r)").format(pairs, rows)


def named_columns(table: TableInfo, joins: Sequence[str], shown: Sequence[str] | None) -> list[str]:
    """Every column a root's static capture SQL names: the key, the join and the shown columns."""
    return list(dict.fromkeys([*table.key_columns, *joins, *(shown or ())]))


def _guarded(names: Sequence[str], static: sql.Composable, kind: str, root_relid: int) -> sql.Composable:
    """``static`` while every column it names still exists in the table the trigger fired on; else the
    statement ``cdc.capture_statement`` builds from the catalog as it is now (a renamed or dropped
    column), so that no migration makes an application's write fail. The worker writes the function
    again at its next cycle (``cdc.capture.reshape``), and the static path is back."""
    return sql.SQL(
        "IF (SELECT count(*) FROM pg_catalog.pg_attribute WHERE attrelid = TG_RELID"
        " AND attname = ANY({names}::name[]) AND NOT attisdropped) = {count} THEN {static};"
        " ELSE EXECUTE coalesce(cdc.capture_statement({root}, {kind}, TG_RELID), 'SELECT 1'); END IF;"
    ).format(
        names=sql.Literal(list(names)),
        count=sql.Literal(len(names)),
        static=static,
        root=sql.Literal(root_relid),
        kind=sql.Literal(kind),
    )


def guard_needed(conn: psycopg.Connection[Any]) -> bool:
    """Whether capture functions must guard themselves: unless the event trigger ``cdc_ddl_follow``
    (installed by a superuser) switches them to the catalog-built statement in the DDL's own transaction,
    a function naming a column would make the next write fail once that column is renamed or dropped."""
    row = sqlfiles.run(conn, "capture.sql", "ddl_follow_installed").fetchone()
    return not (row and row[0])


def _row_function_body(
    table: TableInfo,
    prefix: str,
    notify: bool,
    joins: Sequence[str],
    shown: Sequence[str] | None,
    *,
    guarded: bool = True,
) -> sql.Composable:
    key = key_text(table, "r")
    new_keys = sql.SQL("SELECT {} AS k FROM cdc_new AS r").format(key)
    old_keys = sql.SQL("SELECT {} AS k FROM cdc_old AS r").format(key)
    selects = {
        "ins": new_keys,
        "del": old_keys,
        # the new keys, plus the old keys that no longer exist: a changed primary key becomes a delete
        "upd": sql.SQL("{} UNION ALL ({} EXCEPT ALL {})").format(new_keys, old_keys, new_keys),
    }[prefix]
    # a mapped table's old join values: the documents that held its rows before (cdc/documents/build.py)
    old_joins = join_values(joins, sql.SQL("cdc_old")) if joins and prefix != "ins" else sql.SQL("NULL")
    # whether an UPDATE changed a column that embedding documents show (compared as text: every type
    # has an output function, not every type an equality operator); NULL means yes
    shown_changed: sql.Composable = sql.SQL("NULL")
    if prefix == "upd" and shown is not None:
        if shown:
            columns = sql.SQL(", ").join(sql.Identifier("r", column) for column in shown)
            shown_changed = sql.SQL(
                "EXISTS (SELECT ROW({c})::text FROM cdc_old AS r EXCEPT SELECT ROW({c})::text FROM cdc_new AS r)"
            ).format(c=columns)
        else:
            shown_changed = sql.SQL("false")
    # HAVING skips statements that touched no row
    static = sql.SQL(
        "INSERT INTO cdc.outbox (relid, op, keys, joins, shown) SELECT {}, 'k', array_agg(k), {}, {}"
        " FROM ({}) AS changed HAVING count(*) > 0"
    ).format(sql.Literal(table.relid), old_joins, shown_changed, selects)
    if not guarded:
        return sql.SQL("{}; {}").format(static, _wake(notify))
    body = _guarded(named_columns(table, joins, shown), static, prefix, table.relid)
    return sql.SQL("{} {}").format(body, _wake(notify))


def own_rows_as_changes(root: TableInfo, target: sql.Identifier, joins: Sequence[str]) -> sql.Composed:
    """Record the keys (and join values) of ``target``'s own rows as changes of ``root``."""
    only = sql.SQL("ONLY {}").format(target)
    return sql.SQL(
        "INSERT INTO cdc.outbox (relid, op, keys, joins) SELECT {}, 'k', array_agg(k), {}"
        " FROM (SELECT {} AS k FROM ONLY {} AS r) AS emptied HAVING count(*) > 0"
    ).format(
        sql.Literal(root.relid),
        join_values(joins, only) if joins else sql.SQL("NULL"),
        key_text(root, "r"),
        target,
    )


def _truncate_body(
    root: TableInfo, target: sql.Identifier | None, notify: bool, joins: Sequence[str], *, guarded: bool = True
) -> sql.Composable:
    """A marker for a lone table (``target`` None); the keys of the target's own rows in a hierarchy."""
    if target is None:
        return sql.SQL("INSERT INTO cdc.outbox (relid, op) VALUES ({}, 't'); {}").format(
            sql.Literal(root.relid), _wake(notify)
        )
    own_rows = own_rows_as_changes(root, target, joins)
    if not guarded:
        return sql.SQL("{}; {}").format(own_rows, _wake(notify))
    body = _guarded(named_columns(root, joins, None), own_rows, "trunc", root.relid)
    return sql.SQL("{} {}").format(body, _wake(notify))


def _key_text_settings(table: TableInfo) -> sql.Composable:
    """Pin the text form of date, time and interval keys to what the drain parses back.

    Only for such tables: a function with settings costs a little on every call.
    """
    types = [table.key_type(column) for column in table.key_columns]
    if not any(word in key_type for key_type in types for word in _SESSION_DEPENDENT_TEXT):
        return sql.SQL("")
    return sql.SQL("SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'iso_8601' SET TimeZone = 'UTC'")


def _create_function(
    conn: psycopg.Connection[Any], name: sql.Identifier, root: TableInfo, body: sql.Composable
) -> None:
    """Every capture function runs as the installer (``SECURITY DEFINER``), with a pinned search_path:
    an application role that may write a captured table needs no right on schema ``cdc`` (the outbox
    stays closed to it), and TRUNCATE of a parent, which does not check the caller's privileges on its
    partitions, can still read them in a member's truncate trigger."""
    security = sql.SQL(" SECURITY DEFINER SET search_path = pg_catalog, pg_temp")
    conn.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql {}{}"
            " AS $cdc$ BEGIN {} RETURN NULL; END $cdc$"
        ).format(name, _key_text_settings(root), security, body)
    )


def create_root_functions(
    conn: psycopg.Connection[Any],
    root: TableInfo,
    notify: bool,
    joins: Sequence[str] = (),
    shown: Sequence[str] | None = None,
) -> None:
    """The key type (composite keys), the join type (mapped tables) and the insert, update and delete
    functions of a captured table; ``joins`` are the columns whose old values are recorded."""
    if len(root.key_columns) > 1:
        fields = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(root.key_type(column)))
            for column in root.key_columns
        )
        conn.execute(sql.SQL("DROP TYPE IF EXISTS {}").format(key_type_name(root.relid)))
        conn.execute(sql.SQL("CREATE TYPE {} AS ({})").format(key_type_name(root.relid), fields))
    guarded = guard_needed(conn)
    for _event, _referencing, prefix in TRIGGERS.values():
        if prefix != "trunc":
            body = _row_function_body(root, prefix, notify, joins, shown, guarded=guarded)
            _create_function(conn, function_name(prefix, root.relid), root, body)


def attach(
    conn: psycopg.Connection[Any],
    root: TableInfo,
    target_relid: int,
    target: sql.Identifier,
    *,
    notify: bool,
    in_hierarchy: bool,
    joins: Sequence[str] = (),
) -> None:
    """Put the four capture triggers on ``target`` (the root itself, or one of its partitions or
    children), recording under the root, enabled ALWAYS; a member's TRUNCATE also records the join
    values (``joins``) of its rows."""
    truncate_function = function_name("trunc", target_relid)
    body = _truncate_body(root, target if in_hierarchy else None, notify, joins, guarded=guard_needed(conn))
    _create_function(conn, truncate_function, root, body)
    for trigger, (event, referencing, prefix) in TRIGGERS.items():
        function = truncate_function if prefix == "trunc" else function_name(prefix, root.relid)
        timing = "BEFORE" if prefix == "trunc" and in_hierarchy else "AFTER"
        conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), target))
        conn.execute(
            sql.SQL("CREATE TRIGGER {} {} {} ON {} {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
                sql.Identifier(trigger), sql.SQL(timing), sql.SQL(event), target, sql.SQL(referencing), function
            )
        )
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}").format(target, sql.Identifier(trigger)))


def detach(conn: psycopg.Connection[Any], target_relid: int, target: sql.Identifier | None) -> None:
    """Remove the capture triggers from ``target`` (when it still exists) and its truncate function."""
    if target is not None:
        for trigger in TRIGGERS:
            conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), target))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(function_name("trunc", target_relid)))


def drop_root_functions(conn: psycopg.Connection[Any], root_relid: int) -> None:
    for _event, _referencing, prefix in TRIGGERS.values():
        conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(function_name(prefix, root_relid)))
    # the key type stays while changes of the table may wait in the outbox or the ledger (the drain
    # parses their keys with it); `cdc uninstall` without --tables drops it with the schema
