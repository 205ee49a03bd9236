"""Partitions and inheritance children of captured tables: captured with their root, kept in step.

PostgreSQL fires a statement trigger only on the table a statement names, so the capture triggers of
a captured partitioned table or inheritance parent (the root) also sit on every partition and child,
at any depth, recording under the root (``triggers.attach``). ``cdc.captured_parts`` lists them.

The partition set can change after install with no DML trigger firing: ``CREATE TABLE … PARTITION
OF``, ``ATTACH PARTITION`` (rows arrive without an INSERT), ``DETACH PARTITION`` (rows leave without
a DELETE), ``NO INHERIT``, ``DROP TABLE``. ``drift`` finds the difference between the catalog and
``cdc.captured_parts`` with one catalog query; ``reconcile`` closes it:

- a new member gets its triggers, and the keys of its own rows are recorded as changes (so attached
  rows reach MongoDB, and rows changed through it before its triggers existed are read again);
- a member that left records the keys of its own rows as changes (the drain finds them gone from
  the root and deletes their documents), then loses its triggers;
- a member dropped outright cannot be read any more: it is marked, and ``problems`` reports it with
  the command that removes what is left of it in MongoDB (``cdc verify --repair --tables ROOT``)
  until that verify comes back clean.

``cdc install`` reconciles; so does the worker before each cycle, when its role may create triggers
(otherwise it logs, and ``cdc status`` reports, what to run). Partitions are not followed by an event
trigger (they need a superuser). One window stays open: a row changed *through a newly attached
partition by name* and then deleted the same way, before the next reconcile, is not seen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture import catalog, tables, triggers
from cdc.capture.tables import TableInfo
from cdc.infra import pg
from cdc.infra.errors import PostgresError, PostgresUnavailable
from cdc.ledger import queries as ledger

log = logging.getLogger("cdc.hierarchy")  # the name users filter on, kept across the move to packages

# Every partition and inheritance child of a relation, at any depth.
_DESCENDANTS = """
WITH RECURSIVE tree (relid) AS (
    SELECT inhrelid FROM pg_inherits WHERE inhparent = %(root)s
  UNION
    SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
)
SELECT t.relid::int, n.nspname::text, c.relname::text
FROM tree t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY t.relid
"""


@dataclass(frozen=True)
class Drift:
    root: int
    member: int
    what: str  # 'uncaptured', 'left', 'dropped', 'truncate mode'


@dataclass(frozen=True)
class Member:
    relid: int
    schema: str
    name: str

    @property
    def qualified(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}"


def descendants(conn: psycopg.Connection[Any], relid: int) -> list[Member]:
    """Every partition and inheritance child of ``relid``, at any depth."""
    with pg.translated("reading partitions and inheritance children"):
        rows = conn.execute(_DESCENDANTS, {"root": relid}).fetchall()
    return [Member(int(row[0]), row[1], row[2]) for row in rows]


def ancestors(conn: psycopg.Connection[Any], relid: int) -> list[str]:
    """The parents of ``relid`` up to the topmost, nearest first, as ``schema.table``."""
    with pg.translated("reading inheritance parents"):
        rows = conn.execute(
            """WITH RECURSIVE up (relid, depth) AS (
                   SELECT inhparent, 1 FROM pg_inherits WHERE inhrelid = %(relid)s
                 UNION
                   SELECT i.inhparent, u.depth + 1 FROM pg_inherits i JOIN up u ON i.inhrelid = u.relid
               )
               SELECT format('%%s.%%s', n.nspname, c.relname) FROM up u
               JOIN pg_class c ON c.oid = u.relid JOIN pg_namespace n ON n.oid = c.relnamespace
               ORDER BY u.depth, u.relid""",
            {"relid": relid},
        ).fetchall()
    return [str(row[0]) for row in rows]


def in_hierarchy(conn: psycopg.Connection[Any], relid: int) -> bool:
    """Whether ``relid`` is partitioned or has inheritance children (its TRUNCATE records keys)."""
    row = conn.execute(
        "SELECT c.relkind = 'p' OR EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = c.oid)"
        " FROM pg_class c WHERE c.oid = %s",
        [relid],
    ).fetchone()
    return bool(row and row[0])


def has_parts_table(conn: psycopg.Connection[Any]) -> bool:
    with pg.translated("checking the partitions of captured tables"):
        return catalog.parts_exists(conn)


def drift(conn: psycopg.Connection[Any]) -> list[Drift]:
    """What differs between the catalog and the recorded hierarchies (empty when in step). A reader:
    it never commits."""
    if not has_parts_table(conn):
        return []
    with pg.translated("checking the partitions of captured tables"):
        rows = catalog.drift(conn, triggers.TRIGGER_NAME_PATTERN, len(triggers.TRIGGERS))
    return [Drift(root, member, what) for root, member, what in rows]


def _record_own_keys(conn: psycopg.Connection[Any], root: TableInfo, member: sql.Identifier) -> None:
    """Record the keys (and join values) of the member's own rows as changes of the root (read again at
    drain time)."""
    conn.execute(triggers.own_rows_as_changes(root, member, catalog.join_columns(conn, root.relid)))


def _healthy(conn: psycopg.Connection[Any], relid: int) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s AND tgenabled = 'A' AND tgname LIKE %s",
        [relid, triggers.TRIGGER_NAME_PATTERN],
    ).fetchone()
    return bool(row and row[0] == len(triggers.TRIGGERS))


def sync(
    conn: psycopg.Connection[Any], root: TableInfo, *, notify: bool, record_new: bool, refresh: bool = True
) -> list[str]:
    """Bring one root's hierarchy in step, in the caller's transaction; returns what was done, a line each.

    ``record_new``: record the rows of members that were not captured before as changes (not on a
    first install, whose snapshot reads them anyway). ``refresh``: put the triggers on every member
    again (an install); otherwise only on those that miss them (the worker's reconcile, which so
    locks no partition that is in step).
    """
    done: list[str] = []
    hierarchy = in_hierarchy(conn, root.relid)
    joins = catalog.join_columns(conn, root.relid)
    was = catalog.in_hierarchy(conn, root.relid)
    if refresh or not _healthy(conn, root.relid) or (was is not None and was != hierarchy):
        triggers.attach(conn, root, root.relid, root.qualified, notify=notify, in_hierarchy=hierarchy, joins=joins)
    catalog.set_in_hierarchy(conn, root.relid, hierarchy)
    members = descendants(conn, root.relid)
    recorded = set(catalog.parts_of(conn, root.relid))
    for member in members:
        _forget_own_capture(conn, member, root)
        _leave_other_root(conn, member, root)
        if refresh or member.relid not in recorded or not _healthy(conn, member.relid):
            triggers.attach(conn, root, member.relid, member.qualified, notify=notify, in_hierarchy=True, joins=joins)
        catalog.record_part(conn, member.relid, root.relid, member.schema, member.name)
        if member.relid not in recorded:
            if record_new:
                _record_own_keys(conn, root, member.qualified)
            done.append(f"capturing {member.display} as part of {root.display}")
    current = {member.relid for member in members}
    for relid in sorted(recorded - current):
        done.append(_release(conn, root, relid))
    return done


def _forget_own_capture(conn: psycopg.Connection[Any], member: Member, root: TableInfo) -> None:
    """A table captured on its own and later attached to a captured root: its own capture ends."""
    if not catalog.is_captured(conn, member.relid):
        return
    catalog.forget_table(conn, member.relid)
    triggers.detach(conn, member.relid, member.qualified)  # its triggers use the functions dropped next
    triggers.drop_root_functions(conn, member.relid)
    log.warning(
        "%s is now part of captured table %s: its changes go to %s's collection, and its own collection is no"
        " longer kept",
        member.display,
        root.display,
        root.collection,
        extra={"action": "hierarchy", "table": member.display},
    )


def _leave_other_root(conn: psycopg.Connection[Any], member: Member, root: TableInfo) -> None:
    """A member recorded under another captured root (moved between hierarchies): that root's
    documents of its rows are deleted by recording them as changes of the old root."""
    other = catalog.other_root(conn, member.relid, root.relid)
    if other is None:
        return
    old_root = tables.describe(conn, other)
    if old_root is not None:
        _record_own_keys(conn, old_root, member.qualified)
        log.warning(
            "%s moved from captured table %s to %s",
            member.display,
            old_root.display,
            root.display,
            extra={"action": "hierarchy", "table": member.display},
        )


def _release(conn: psycopg.Connection[Any], root: TableInfo, relid: int) -> str:
    """A recorded member that left the hierarchy (detached, no longer inheriting) or was dropped."""
    row = conn.execute(
        "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.oid = %s",
        [relid],
    ).fetchone()
    if row is None:
        catalog.mark_part_dropped(conn, relid)
        triggers.detach(conn, relid, None)
        return (
            f"a partition or child of {root.display} (oid {relid}) was dropped: documents of its rows may remain;"
            f" run `cdc verify --repair --tables {root.schema}.{root.name}`"
        )
    member = Member(relid, row[0], row[1])
    _record_own_keys(conn, root, member.qualified)
    triggers.detach(conn, relid, member.qualified)
    catalog.forget_part(conn, relid)
    return f"{member.display} left {root.display}: its rows' documents are deleted by the next batch"


def reconcile(conn: psycopg.Connection[Any], found: Sequence[Drift]) -> list[str]:
    """Bring every root named in ``found`` in step, in one transaction; returns what was done."""
    done: list[str] = []
    with pg.translated("capturing changed partitions"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [ledger.INSTALL_LOCK_KEY])
        for root_relid in sorted({item.root for item in found}):
            root = tables.describe(conn, root_relid)
            notify = catalog.notify(conn, root_relid)
            if root is None or notify is None:
                continue
            done += sync(conn, root, notify=notify, record_new=True, refresh=False)
    return done


def clear_dropped(conn: psycopg.Connection[Any], root_relid: int) -> None:
    """After a clean verify of the root: what was left of its dropped members is gone. Writes only
    when there is something to clear (the worker role may read the list, not change it)."""
    if not has_parts_table(conn):
        return
    if catalog.has_gone_parts(conn, root_relid):
        catalog.forget_gone_parts(conn, root_relid)


def problems(conn: psycopg.Connection[Any]) -> list[str]:
    """One line per hierarchy problem, with what to run: members without capture (or that left, or
    whose root's truncate mode is out of date) and dropped members whose documents may remain."""
    lines = []
    for item in drift(conn):
        root = _name(conn, item.root)
        if item.what == "dropped":
            continue  # reported below once reconciled
        member = _name(conn, item.member)
        what = {
            "uncaptured": f"{member} is a partition or child of captured table {root} without capture",
            "left": f"{member} left captured table {root} (detached or no longer inheriting)",
            "truncate mode": f"captured table {root} gained or lost partitions or children",
        }.get(item.what, f"{member}: {item.what}")
        lines.append(f"{what}: run `cdc install --tables {root}`")
    for child_relid, child in catalog.captured_children(conn):
        parents = ancestors(conn, child_relid)
        if parents:
            lines.append(
                f"captured table {child} is now a partition or child of {parents[-1]}, which is not captured:"
                f" statements naming {parents[-1]} miss its rows: run `cdc install --tables {parents[-1]}`"
            )
    if has_parts_table(conn):
        for root_relid, relid, schema, name in catalog.gone_parts(conn):
            root = _name(conn, root_relid)
            lines.append(
                f"{schema}.{name} (oid {relid}), a partition or child of {root}, was dropped: documents of its rows"
                f" may remain in MongoDB: run `cdc verify --repair --tables {root}`"
            )
    return lines


def _name(conn: psycopg.Connection[Any], relid: int) -> str:
    row = conn.execute(
        "SELECT format('%%s.%%s', n.nspname, c.relname) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s",
        [relid],
    ).fetchone()
    return str(row[0]) if row else f"<dropped table oid {relid}>"


def _register(conn: psycopg.Connection[Any], table: TableInfo, notify: bool, set_exclusions: bool) -> None:
    catalog.register_table(
        conn,
        table.relid,
        table.schema,
        table.name,
        table.key_columns,
        notify=notify,
        excluded=table.excluded,
        set_excluded=set_exclusions,
    )


def capture_table(
    conn: psycopg.Connection[Any],
    table: TableInfo,
    *,
    notify: bool,
    set_exclusions: bool = False,
    joins: Sequence[str] = (),
    shown: Sequence[str] | None = None,
) -> None:
    """Capture one table and every partition and child it has, recording under it."""
    known = catalog.is_captured(conn, table.relid)
    triggers.create_root_functions(conn, table, notify, joins, shown)
    _register(conn, table, notify, set_exclusions)
    catalog.set_join_columns(conn, table.relid, joins)
    catalog.set_shape(conn, table.relid)
    for line in sync(conn, table, notify=notify, record_new=known):
        log.info("%s", line, extra={"action": "install_part", "table": table.display})


class Watch:
    """The worker's check, before each cycle, that captured hierarchies are in step; it reconciles
    them when its role may, and otherwise logs what to run (once per distinct state)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._session = pg.Reconnecting(dsn, autocommit=True)
        self._reported: tuple[Drift, ...] = ()

    def check(self) -> list[str]:
        """Reconcile any drift; returns what was done (empty when in step or not allowed)."""
        conn = self._session.get()
        try:
            found = drift(conn)
        except PostgresUnavailable:
            self.close()  # reconnect next time
            raise
        except PostgresError as exc:  # say it once; capture itself goes on
            if self._reported != (Drift(0, 0, str(exc)),):
                self._reported = (Drift(0, 0, str(exc)),)
                log.warning("cannot check the partitions of captured tables: %s", exc, extra={"action": "hierarchy"})
            return []
        if not found:
            self._reported = ()
            return []
        try:
            done = reconcile(conn, found)
        except PostgresUnavailable:
            self.close()
            raise
        except PostgresError as exc:
            if tuple(found) != self._reported:
                self._reported = tuple(found)
                for line in problems(conn):
                    log.warning("%s (the worker cannot do it itself: %s)", line, exc, extra={"action": "hierarchy"})
            return []
        self._reported = ()
        for line in done:
            log.warning("%s", line, extra={"action": "hierarchy"})
        return done

    def close(self) -> None:
        self._session.close()
