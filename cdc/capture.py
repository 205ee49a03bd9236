"""Install and remove capture: the outbox, the ledger, and per-table statement-level triggers.

Capture is key-only: one outbox row per statement holds the array of changed keys (as text),
read from the statement's transition tables; the drain reads the committed rows later. A
statement touching a million rows writes one outbox row. An UPDATE records the old keys too, so
a changed primary key yields a delete of the old one. TRUNCATE gets its own statement trigger.
Triggers are ``ENABLE ALWAYS`` so ``session_replication_role = replica`` cannot bypass them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc import pg, sqlfiles, tables
from cdc.errors import ConfigError, UsageError
from cdc.tables import TableInfo

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "cdc_outbox"
TRIGGERS = {
    # trigger name: (event, transition tables, trigger function prefix)
    "cdc_capture_insert": ("INSERT", "REFERENCING NEW TABLE AS cdc_new", "ins"),
    "cdc_capture_update": ("UPDATE", "REFERENCING OLD TABLE AS cdc_old NEW TABLE AS cdc_new", "upd"),
    "cdc_capture_delete": ("DELETE", "REFERENCING OLD TABLE AS cdc_old", "del"),
    "cdc_capture_truncate": ("TRUNCATE", "", "trunc"),
}
_INSTALL_LOCK_KEY = 0x0CDC_0001


@dataclass(frozen=True)
class CapturedTable:
    relid: int
    schema: str
    name: str
    exists: bool  # the oid still names a table
    triggers: int  # capture triggers present and enabled ALWAYS
    recreated_as: int | None  # a table with the same name but another oid

    @property
    def healthy(self) -> bool:
        return self.exists and self.triggers == len(TRIGGERS)


def key_text(table: TableInfo, alias: str) -> sql.Composable:
    """The text form of a row's key: ``k::text``, or ``ROW(k1, k2)::text`` for a composite key."""
    columns = [sql.Identifier(alias, column) for column in table.key_columns]
    if len(columns) == 1:
        return sql.SQL("{}::text").format(columns[0])
    return sql.SQL("ROW({})::text").format(sql.SQL(", ").join(columns))


def key_type_name(relid: int) -> sql.Identifier:
    """The composite type that parses a composite key's text back into typed columns."""
    return sql.Identifier("cdc", f"key_{relid}")


def _function_name(prefix: str, relid: int) -> sql.Identifier:
    return sql.Identifier("cdc", f"capture_{prefix}_{relid}")


def _function_body(table: TableInfo, prefix: str, notify: bool) -> sql.Composable:
    wake = sql.SQL("PERFORM pg_notify({}, 'wake');").format(sql.Literal(NOTIFY_CHANNEL)) if notify else sql.SQL("")
    relid = sql.Literal(table.relid)
    if prefix == "trunc":
        return sql.SQL("INSERT INTO cdc.outbox (relid, op) VALUES ({}, 't'); {}").format(relid, wake)
    key = key_text(table, "r")
    new_keys = sql.SQL("SELECT {} AS k FROM cdc_new AS r").format(key)
    old_keys = sql.SQL("SELECT {} AS k FROM cdc_old AS r").format(key)
    selects = {
        "ins": new_keys,
        "del": old_keys,
        # the new keys, plus the old keys that no longer exist: a changed primary key becomes a delete
        "upd": sql.SQL("{} UNION ALL ({} EXCEPT ALL {})").format(new_keys, old_keys, new_keys),
    }[prefix]
    # HAVING skips statements that touched no row
    return sql.SQL(
        "INSERT INTO cdc.outbox (relid, op, keys) SELECT {}, 'k', array_agg(k) FROM ({}) AS changed"
        " HAVING count(*) > 0; {}"
    ).format(relid, selects, wake)


_SESSION_DEPENDENT_TEXT = ("date", "time", "interval", "money")


def _key_text_settings(table: TableInfo) -> sql.Composable:
    """Pin the text form of date, time and interval keys to what the drain parses back.

    Only for such tables: a function with settings costs a little on every call.
    """
    types = [table.key_type(column) for column in table.key_columns]
    if not any(word in key_type for key_type in types for word in _SESSION_DEPENDENT_TEXT):
        return sql.SQL("")
    return sql.SQL("SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'iso_8601' SET TimeZone = 'UTC'")


def _install_table(conn: psycopg.Connection[Any], table: TableInfo, notify: bool, set_exclusions: bool = False) -> None:
    if len(table.key_columns) > 1:
        fields = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(table.key_type(column)))
            for column in table.key_columns
        )
        conn.execute(sql.SQL("DROP TYPE IF EXISTS {}").format(key_type_name(table.relid)))
        conn.execute(sql.SQL("CREATE TYPE {} AS ({})").format(key_type_name(table.relid), fields))
    for trigger, (event, referencing, prefix) in TRIGGERS.items():
        function = _function_name(prefix, table.relid)
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql {} AS"
                " $cdc$ BEGIN {} RETURN NULL; END $cdc$"
            ).format(function, _key_text_settings(table), _function_body(table, prefix, notify))
        )
        conn.execute(
            sql.SQL("CREATE OR REPLACE TRIGGER {} AFTER {} ON {} {} FOR EACH STATEMENT EXECUTE FUNCTION {}()").format(
                sql.Identifier(trigger), sql.SQL(event), table.qualified, sql.SQL(referencing), function
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}").format(table.qualified, sql.Identifier(trigger))
        )
    conn.execute(
        """INSERT INTO cdc.captured (relid, schema_name, table_name, key_columns, notify, excluded_columns)
           VALUES (%(relid)s, %(schema)s, %(name)s, %(keys)s, %(notify)s, %(excluded)s)
           ON CONFLICT (relid) DO UPDATE SET schema_name = excluded.schema_name, table_name = excluded.table_name,
               key_columns = excluded.key_columns, notify = excluded.notify,
               excluded_columns = CASE WHEN %(set_excluded)s THEN excluded.excluded_columns
                                       ELSE cdc.captured.excluded_columns END""",
        {
            "relid": table.relid,
            "schema": table.schema,
            "name": table.name,
            "keys": list(table.key_columns),
            "notify": notify,
            "excluded": list(table.excluded),
            "set_excluded": set_exclusions,
        },
    )


def install(
    conn: psycopg.Connection[Any],
    table_names: Sequence[str],
    *,
    schema: str = "public",
    notify: bool = True,
    exclude: Sequence[str] | None = None,
) -> list[TableInfo]:
    """Create the outbox and ledger, and capture ``table_names`` (in ``schema``); idempotent.

    ``exclude`` names columns left out of capture (``table.column`` or ``schema.table.column``); when
    given, it replaces the stored exclusions of every table installed here (an empty list clears
    them); when None, the stored exclusions stay. Every table is checked before anything is
    created, so a refused table leaves nothing half done.
    """
    with pg.translated("installing capture"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_INSTALL_LOCK_KEY])
        complete = []
        for name in table_names:
            info = tables.describe(conn, tables.resolve(conn, schema, name), excluded=())
            assert info is not None
            complete.append(info)
        chosen = exclusions(complete, exclude, schema) if exclude is not None else None
        found = []
        for whole in complete:
            info = (
                tables.without_columns(whole, chosen.get(whole.relid, ()))
                if chosen is not None
                else tables.describe(conn, whole.relid) or whole  # the stored exclusions
            )
            reason = tables.refusal(info)
            if reason:
                raise ConfigError(f"cannot capture: {reason}")
            found.append(info)
        conn.execute(sqlfiles.queries("capture.sql")["install_base"].text.encode())
        for info in found:
            _install_table(conn, info, notify, set_exclusions=chosen is not None)
            log.info("capturing %s", info.display, extra={"action": "install_table", "table": info.display})
    return found


def exclusions(found: Sequence[TableInfo], exclude: Sequence[str], schema: str) -> dict[int, list[str]]:
    """Parse ``table.column`` / ``schema.table.column`` entries against the tables being installed.

    A usage error (exit 2) names the entry: an unknown table or column, or a primary-key column
    (the key is the document's ``_id``: a document cannot exist without it).
    """
    chosen: dict[int, list[str]] = {}
    for entry in exclude:
        table_ref, dot, column = entry.strip().rpartition(".")
        if not dot or not table_ref or not column:
            raise UsageError(f"--exclude {entry!r}: expected TABLE.COLUMN or SCHEMA.TABLE.COLUMN")
        matches = [
            info
            for info in found
            if table_ref in (f"{info.schema}.{info.name}", info.name if info.schema == schema else None)
        ]
        if not matches:
            raise UsageError(f"--exclude {entry!r}: table {table_ref} is not among the tables being installed")
        info = matches[0]
        if column not in [c.name for c in info.columns]:
            raise UsageError(f"--exclude {entry!r}: table {info.schema}.{info.name} has no column {column!r}")
        if column in info.key_columns:
            raise UsageError(
                f"--exclude {entry!r}: column {column!r} is part of the primary key of table "
                f"{info.schema}.{info.name}, which becomes the document's _id; it cannot be excluded"
            )
        names = chosen.setdefault(info.relid, [])
        if column not in names:
            names.append(column)
    return chosen


def grant_worker(conn: psycopg.Connection[Any], role: str, table_infos: Sequence[TableInfo]) -> None:
    """The least a worker role needs: the outbox and ledger, the sequences, SELECT on captured tables
    (and UPDATE on their first key column only, which row locks require).

    No DDL, no ownership: ``cdc install`` stays with the tables' owner.
    """
    who = sql.Identifier(role)
    with pg.translated(f"granting the worker role {role}"), conn.transaction():
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA cdc TO {}").format(who))
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON cdc.outbox, cdc.batches, cdc.batch_changes TO {}").format(
                who
            )
        )
        conn.execute(sql.SQL("GRANT SELECT ON cdc.captured TO {}").format(who))
        conn.execute(sql.SQL("GRANT USAGE, SELECT ON SEQUENCE cdc.position_seq, cdc.batch_seq TO {}").format(who))
        for info in table_infos:
            conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(info.qualified, who))
            # row locks (snapshot pages are read FOR SHARE) need UPDATE on one column; the key
            # column, which the worker never writes
            conn.execute(
                sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(
                    sql.Identifier(info.key_columns[0]), info.qualified, who
                )
            )
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(info.schema), who))


def uninstall(conn: psycopg.Connection[Any]) -> int:
    """Drop every capture trigger, function and key type, the outbox and the ledger; returns tables released."""
    with pg.translated("removing capture"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_INSTALL_LOCK_KEY])
        present = conn.execute("SELECT to_regclass('cdc.captured') IS NOT NULL").fetchone()
        released = 0
        if present and present[0]:
            for (relid,) in conn.execute("SELECT relid::int FROM cdc.captured").fetchall():
                info = tables.describe(conn, relid)
                if info is None:
                    continue
                for trigger in TRIGGERS:
                    conn.execute(
                        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), info.qualified)
                    )
                released += 1
        conn.execute("DROP SCHEMA IF EXISTS cdc CASCADE")
    return released


def captured_tables(conn: psycopg.Connection[Any]) -> list[CapturedTable]:
    """Every registered table, with whether it still exists and still has its triggers."""
    with pg.translated("reading captured tables"):
        rows = conn.execute(
            """SELECT cp.relid::int, cp.schema_name, cp.table_name, c.oid IS NOT NULL,
                      (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = cp.relid AND t.tgenabled = 'A'
                         AND t.tgname LIKE 'cdc\\_capture\\_%%')::int,
                      (SELECT c2.oid::int FROM pg_class c2 JOIN pg_namespace n2 ON n2.oid = c2.relnamespace
                        WHERE n2.nspname = cp.schema_name AND c2.relname = cp.table_name AND c2.oid <> cp.relid)
               FROM cdc.captured cp LEFT JOIN pg_class c ON c.oid = cp.relid
               ORDER BY cp.schema_name, cp.table_name"""
        ).fetchall()
    return [CapturedTable(*row) for row in rows]


def is_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('cdc.outbox') IS NOT NULL").fetchone()
    return bool(row and row[0])
