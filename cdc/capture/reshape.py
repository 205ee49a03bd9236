"""Migrations: the worker follows a captured table's new shape, and MongoDB converges by itself.

A migration never makes an application's write fail: the event trigger ``cdc_ddl_follow`` (where a
superuser installed) switches the capture functions of a table whose shape moved to a statement built
from the catalog, in the DDL's own transaction; elsewhere every capture function checks, with one index
lookup, that the columns it names still exist, and otherwise runs that statement (``triggers._guarded``).
What is left is to bring MongoDB to the new shape. Before every cycle the worker compares each captured
table's shape (``cdc.table_shape``: the primary key's columns and types, then every column's number,
name and type) with the one recorded when its capture functions were written (``cdc.captured.shape``).
For each table that moved:

- its capture functions and triggers are written again for the new shape (the static path is back),
  and its excluded columns follow their renames (by column number);
- **a replaced primary key** (other columns, or other types) re-keys its collection: with writers of
  the table held off for a moment (``LOCK … IN SHARE ROW EXCLUSIVE MODE``, under a short
  ``lock_timeout``), the changes still waiting under the old key are dropped, and a truncate marker
  removes every document older than it, so the documents under the old ``_id`` go;
- **any change** (a column added, dropped, renamed or retyped; ``ADD COLUMN … DEFAULT`` and
  ``ALTER COLUMN … TYPE`` rewrite every row without firing a DML trigger) starts a *rebuild*: every
  key of the table (its own collection, op ``k``), or of the root table of every mapped collection
  that shows it (op ``r``), is enqueued, a page at a time (``snapshot.enqueue_table``), through the
  outbox, so the rebuild is ordered with live writes and survives a restart (``cdc.rebuilds``).
  ``cdc status`` prints ``rebuilding songs: 12,000/40,000`` until every enqueued key is applied.

A renamed table keeps its oid, so capture and its collection follow it. The worker needs to own the
tables (it writes their triggers); a role that may not logs what to run, once per state, ``cdc status``
reports it, and capture goes on through the fallback path meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture import catalog, hierarchy, mapping, tables
from cdc.capture.tables import TableInfo
from cdc.infra import pg
from cdc.infra.errors import CdcError
from cdc.ledger import queries as ledger

log = logging.getLogger("cdc.reshape")  # the name users filter on, kept across the move to packages

LOCK_TIMEOUT = "3s"  # how long a re-key waits for the table's writers before trying again next cycle


@dataclass(frozen=True)
class Shape:
    """``cdc.table_shape``'s text, split: the key line, and column number → (name, type line)."""

    key: str
    columns: dict[int, str]

    @classmethod
    def parse(cls, text: str) -> Shape:
        key, _, rest = text.partition("\n")
        columns = {}
        for line in rest.splitlines():
            number, _, described = line.partition(" ")
            columns[int(number)] = described
        return cls(key, columns)

    def name_of(self, number: int) -> str | None:
        described = self.columns.get(number)
        return _first_identifier(described) if described is not None else None

    def number_of(self, name: str) -> int | None:
        for number in self.columns:
            if self.name_of(number) == name:
                return number
        return None


def _first_identifier(text: str) -> str:
    """The column name at the start of ``%I type`` (quoted as format's %I quotes it)."""
    if not text.startswith('"'):
        return text.split(" ", 1)[0]
    index, name = 1, ""
    while index < len(text):
        if text[index] == '"':
            if text[index + 1 : index + 2] == '"':
                name += '"'
                index += 2
                continue
            break
        name += text[index]
        index += 1
    return name


def _count(conn: psycopg.Connection[Any], table: TableInfo) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.qualified)).fetchone()
    return int(row[0]) if row else 0


Moved = dict[int, tuple[str | None, str]]


def moved(conn: psycopg.Connection[Any]) -> Moved:
    """relid → (recorded shape, shape now) of every captured table whose shape moved."""
    if not catalog.shapes_supported(conn):
        return {}
    return {relid: (before, now) for relid, before, now in catalog.shape_drift(conn)}


def reshape(conn: psycopg.Connection[Any], relid: int) -> list[str]:
    """Bring one table's capture and collections to its new shape, in one transaction; returns what was
    done, a line each (empty when another process did it first).

    The table (with its partitions and children) is locked first, ``SHARE ROW EXCLUSIVE`` under a
    short ``lock_timeout``: its writers finish, and no DDL can move its shape again before the commit,
    so the shape recorded is the one the functions are written for, and every change recorded under
    the old shape is committed before a re-key drops it. A table busy past the timeout is tried again
    next cycle. A table captured before shapes were kept gets its functions written again (guarded,
    running as their owner) and its shape recorded, with no rebuild."""
    with pg.translated("following a migration"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [ledger.INSTALL_LOCK_KEY])
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
        named = catalog.relation_name(conn, relid)
        if named is None:
            return []
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(named[0], named[1])))
        entry = moved(conn).get(relid)  # under the lock: the shape cannot move any more
        if entry is None:
            return []
        follow_exclusions(conn, relid, entry)
        info = tables.describe(conn, relid)
        if info is None:
            return []
        if not info.key_columns:
            raise CdcError(
                f"table {info.display} has no primary key any more: its changes cannot be captured;"
                " add one (its collection is then rebuilt by itself)"
            )
        reason = tables.refusal(info)
        if reason:
            raise CdcError(f"cannot capture the new shape: {reason}")
        model = mapping.load(conn)
        joins = model.join_columns(relid) if model is not None else ()
        shown = model.shown_columns(relid) if model is not None else None
        notify = bool(catalog.notify(conn, relid))
        hierarchy.capture_table(conn, info, notify=notify, joins=joins, shown=shown)
        return follow(conn, relid, entry, model)


def follow_exclusions(conn: psycopg.Connection[Any], relid: int, entry: tuple[str | None, str] | None) -> None:
    """Excluded columns keep being excluded under a new name (matched by column number); before the
    table is described for its new capture functions."""
    if entry is None or entry[0] is None:
        return
    before, now = Shape.parse(entry[0]), Shape.parse(entry[1])
    excluded = catalog.excluded_columns(conn, relid)
    followed = []
    for name in excluded:
        number = before.number_of(name)
        renamed = now.name_of(number) if number is not None else None
        followed.append(renamed or name)
    if list(followed) != list(excluded):
        catalog.set_exclusions(conn, relid, followed)


def follow(
    conn: psycopg.Connection[Any],
    relid: int,
    entry: tuple[str | None, str] | None,
    model: mapping.DocumentModel | None,
) -> list[str]:
    """After the table's capture functions were written for its shape now (in this transaction, which
    holds its triggers' lock): re-key its collection when the key changed, and start the rebuilds of
    every collection that shows it. ``entry`` is (recorded shape, shape now) read before the rewrite;
    None (or no recorded shape) means nothing moved."""
    if entry is None or entry[0] is None:
        return []
    before, now = Shape.parse(entry[0]), Shape.parse(entry[1])
    info = tables.describe(conn, relid)
    if info is None:
        return []
    done = []
    what = _describe_change(before, now)
    if before.key != now.key:
        dropped = ledger.drop_waiting_changes(conn, relid)
        ledger.enqueue_truncate(conn, relid)
        done.append(
            f"{info.display}: primary key is now ({', '.join(info.key_columns)}): documents under the old _id"
            f" are removed ({dropped} waiting statements under the old key dropped)"
        )
    if model is not None and relid in model.relids():
        for collection in model.collections:
            if any(node.table.relid == relid for node in collection.nodes()):
                root = collection.root.table
                catalog.start_rebuild(conn, root.relid, "r", collection.name, what, _count(conn, root))
                done.append(f"rebuilding collection {collection.name}: {info.display} {what}")
    else:
        catalog.start_rebuild(conn, relid, "k", info.collection, what, _count(conn, info))
        done.append(f"rebuilding collection {info.collection}: {info.display} {what}")
    return done


def _describe_change(before: Shape, now: Shape) -> str:
    """A few words on what moved: ``renamed a to b``, ``dropped c``, ``added d``, ``retyped e``."""
    words = []
    if before.key != now.key:
        words.append(f"key ({before.key}) became ({now.key})")
    for number, described in now.columns.items():
        old = before.columns.get(number)
        name = now.name_of(number)
        if old is None:
            words.append(f"added {name}")
        elif old != described:
            old_name = before.name_of(number)
            words.append(f"renamed {old_name} to {name}" if old_name != name else f"retyped {name}")
    words += [f"dropped {before.name_of(number)}" for number in before.columns if number not in now.columns]
    return ", ".join(words) or "changed shape"
