"""Migrations: the worker follows a captured table's new shape, and MongoDB converges by itself.

A migration never makes an application's write fail: every capture function checks, with one index
lookup, that the columns it names still exist, and otherwise records the keys through a statement built
from the catalog as it is now (``triggers._guarded``). What is left is to bring MongoDB to the new
shape. Before every cycle the worker compares each captured table's shape (``cdc.table_shape``: the
primary key's columns and types, then every column's number, name and type) with the one recorded
when its capture functions were written (``cdc.captured.shape``). For each table that moved:

- its capture functions and triggers are written again for the new shape (the static path is back),
  and its excluded columns follow their renames (by column number);
- **a replaced primary key** (other columns, or other types) re-keys its collection: with writers of
  the table held off for a moment (``LOCK … IN SHARE MODE``, under a short ``lock_timeout``), the
  changes still waiting under the old key are dropped, and a truncate marker removes every document
  older than it, so the documents under the old ``_id`` go;
- **any change** (a column added, dropped, renamed or retyped; ``ADD COLUMN … DEFAULT`` and
  ``ALTER COLUMN … TYPE`` rewrite every row without firing a DML trigger) starts a *rebuild*: every
  key of the table (its own collection, op ``k``), or of the root table of every mapped collection
  that shows it (op ``r``), is enqueued, a page at a time (``snapshot.enqueue_table``), through the
  outbox, so the rebuild is ordered with live writes and survives a restart (``cdc.rebuilds``).
  ``cdc status`` prints ``rebuilding songs: 12,000/40,000`` until every enqueued key is applied.

A renamed table keeps its oid, so capture and its collection follow it. The worker needs to own the
tables (it writes their triggers); a role that may not logs what to run, once per state, and capture
goes on through the fallback path meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc import capture, catalog, ledger, mapping, pg, snapshot, tables
from cdc.errors import CdcError, PostgresError, PostgresUnavailable
from cdc.snapshot_resume import Recorder
from cdc.tables import TableInfo

log = logging.getLogger(__name__)

PAGES_PER_CYCLE = 20  # a rebuild enqueues at most this many pages (snapshot.CHUNK keys each) per cycle
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


class _RebuildRecorder(Recorder):
    """Writes a rebuild's pages into ``cdc.rebuilds`` (a snapshot's go to ``cdc.snapshot_progress``)."""

    def __init__(self) -> None:
        super().__init__("apply")

    def page(  # noqa: PLR0917 (one page's facts)
        self, conn: psycopg.Connection[Any], relid: int, op: str, last_key: str, pos: int, keys: int
    ) -> None:
        catalog.rebuild_page(conn, relid, op, last_key, pos, keys)

    def finished(self, conn: psycopg.Connection[Any], relid: int, op: str) -> None:
        catalog.rebuild_enqueued(conn, relid, op)


class _Quiet:
    def update(self, n: float | None = 1) -> None:
        return None


def _count(conn: psycopg.Connection[Any], table: TableInfo) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table.qualified)).fetchone()
    return int(row[0]) if row else 0


def _load_model(conn: psycopg.Connection[Any]) -> mapping.DocumentModel | None:
    return mapping.load(conn)


def _follow_exclusions(conn: psycopg.Connection[Any], relid: int, before: Shape, now: Shape) -> None:
    """Excluded columns keep being excluded under a new name (matched by column number)."""
    excluded = catalog.excluded_columns(conn, relid)
    if not excluded:
        return
    followed = []
    for name in excluded:
        number = before.number_of(name)
        renamed = now.name_of(number) if number is not None else None
        followed.append(renamed or name)
    if list(followed) != list(excluded):
        catalog.set_exclusions(conn, relid, followed)


def reshape(conn: psycopg.Connection[Any], relid: int) -> list[str]:
    """Bring one table's capture and collections to its new shape, in one transaction; returns what was
    done, a line each (empty when another process did it first)."""
    with pg.translated("following a migration"), conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [ledger.INSTALL_LOCK_KEY])
        moved = {found: (before, now) for found, before, now in catalog.shape_drift(conn)}
        if relid not in moved:
            return []
        before_text, now_text = moved[relid]
        if before_text is None:  # captured before shapes were kept: this is the shape it has
            catalog.set_shape(conn, relid)
            return []
        before, now = Shape.parse(before_text), Shape.parse(now_text)
        whole = tables.describe(conn, relid, excluded=())
        if whole is None:
            return []
        if not whole.key_columns:
            raise CdcError(
                f"table {whole.display} has no primary key any more: its changes cannot be captured;"
                " add one (its collection is then rebuilt by itself)"
            )
        rekey = before.key != now.key
        if rekey:
            # writers of the table wait (briefly) so that every change recorded under the old key is
            # committed, and every later one is recorded by the functions written here
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(LOCK_TIMEOUT)))
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(whole.qualified))
        _follow_exclusions(conn, relid, before, now)
        info = tables.describe(conn, relid)
        assert info is not None
        reason = tables.refusal(info)
        if reason:
            raise CdcError(f"cannot capture the new shape: {reason}")
        model = _load_model(conn)
        in_model = model is not None and relid in model.relids()
        joins = model.join_columns(relid) if model is not None else ()
        shown = model.shown_columns(relid) if model is not None else None
        notify = catalog.notify(conn, relid)
        capture.rewrite_table(conn, info, notify=bool(notify), joins=joins, shown=shown)
        catalog.set_shape(conn, relid)
        done = []
        what = _describe_change(before, now)
        if rekey:
            dropped = ledger.drop_waiting_changes(conn, relid)
            ledger.enqueue_truncate(conn, relid)
            done.append(
                f"{info.display}: primary key is now ({', '.join(info.key_columns)}): documents under the old _id"
                f" are removed ({dropped} waiting statements under the old key dropped)"
            )
        if in_model and model is not None:
            for collection in model.collections:
                if any(node.table.relid == relid for node in collection.nodes()):
                    root = collection.root.table
                    catalog.start_rebuild(conn, root.relid, "r", collection.name, what, _count(conn, root))
                    done.append(f"rebuilding collection {collection.name}: {info.display} {what}")
        elif not in_model:
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


def advance_rebuilds(conn: psycopg.Connection[Any], *, pages: int | None = PAGES_PER_CYCLE) -> bool:
    """Enqueue the next pages of every unfinished rebuild (all of them with ``pages`` None), and forget
    the rebuilds whose keys are all applied. Returns whether pages are left to enqueue."""
    for rebuild in catalog.rebuilds(conn):
        conn.commit()
        if rebuild.done:
            if rebuild.last_pos is None or not ledger.waiting_up_to(conn, rebuild.last_pos, applying=True):
                catalog.forget_rebuild(conn, rebuild)
                log.info("rebuilt collection %s", rebuild.collection, extra={"action": "rebuilt"})
            conn.commit()
            continue
        table = tables.describe(conn, rebuild.relid)
        if table is None:
            catalog.forget_rebuild(conn, rebuild)
            conn.commit()
            continue
        snapshot.enqueue_table(
            conn, table, _Quiet(), rebuild.op, record=_RebuildRecorder(), after=rebuild.last_key, max_pages=pages
        )
    left = any(not rebuild.done for rebuild in catalog.rebuilds(conn))
    conn.commit()
    return left


@dataclass(frozen=True)
class Progress:
    """One rebuild, for ``cdc status``."""

    collection: str
    keys: int
    total: int
    done: bool
    reason: str

    def line(self) -> str:
        state = f"{self.keys:,}/{self.total:,}" if not self.done else f"all {self.keys:,} keys enqueued, applying"
        return f"rebuilding {self.collection}: {state} ({self.reason})"


def progress(conn: psycopg.Connection[Any]) -> list[Progress]:
    """The rebuilds under way."""
    return [Progress(r.collection, r.keys, r.total, r.done, r.reason) for r in catalog.rebuilds(conn)]


def problems(conn: psycopg.Connection[Any]) -> list[str]:
    """What the worker cannot follow by itself: a table with no primary key any more, and collections of
    the installed mapping a migration broke (naming the key path and what is missing)."""
    lines = []
    if catalog.shapes_supported(conn):
        for relid, _before, now in catalog.shape_drift(conn):
            if not Shape.parse(now).key:
                info = tables.describe(conn, relid, excluded=())
                name = info.display if info is not None else f"oid {relid}"
                lines.append(f"captured table {name} has no primary key any more: add one (its changes wait)")
    try:
        model = mapping.load(conn)
    except CdcError as exc:
        lines.append(f"the installed mapping cannot be read: {exc}")
        model = None
    if model is not None:
        for name, why in model.broken:
            lines.append(
                f"collection {name} is no longer kept (a migration broke its mapping): {why};"
                " install a fixed mapping: `cdc install --mapping FILE` (or `--mapping none`)"
            )
    return lines


class Watch:
    """The worker's check, before each cycle, that captured tables kept their shape; it follows any
    migration (``reshape``) and advances rebuilds, logging each state once."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None
        self._reported: set[str] = set()
        self.pending = False  # rebuild pages are left: the next cycle should not wait

    def check(self, *, pages: int | None = PAGES_PER_CYCLE) -> list[str]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = pg.connect(self.dsn)
        conn = self._conn
        done: list[str] = []
        try:
            with pg.translated("checking the shape of captured tables"):
                supported = catalog.shapes_supported(conn)
                moved = [relid for relid, _b, _n in catalog.shape_drift(conn)] if supported else []
                conn.commit()
            for relid in moved:
                done += self._reshape(conn, relid)
            if supported:
                with pg.translated("rebuilding collections"):
                    self.pending = advance_rebuilds(conn, pages=pages)
        except PostgresUnavailable:
            self.close()
            raise
        except PostgresError as exc:
            self._once(f"cannot follow the migrations of captured tables: {exc}")
            if not conn.closed:
                conn.rollback()
        for line in done:
            log.warning("%s", line, extra={"action": "reshape"})
        return done

    def _reshape(self, conn: psycopg.Connection[Any], relid: int) -> list[str]:
        try:
            lines = reshape(conn, relid)
        except PostgresUnavailable:
            raise
        except CdcError as exc:
            conn.rollback()
            self._once(f"{exc} (capture goes on; the worker tries again next cycle)")
            return []
        self._reported = {line for line in self._reported if not line.startswith("table oid")}
        return lines

    def _once(self, line: str) -> None:
        if line not in self._reported:
            self._reported.add(line)
            log.warning("%s", line, extra={"action": "reshape"})

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None
