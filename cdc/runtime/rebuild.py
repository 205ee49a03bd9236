"""Rebuilds after a migration, and the worker's watch over the shapes of captured tables.

``cdc.capture.reshape`` follows a migration in one transaction and records a rebuild for every collection
that shows the table (``cdc.rebuilds``). Here the worker advances them, before each cycle, a few
pages at a time (``PAGES_PER_CYCLE``: the keys go through the outbox, ordered with live writes), and
forgets each once every key it enqueued is applied; ``cdc status`` reads ``progress`` and
``problems``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from cdc.capture import catalog, mapping, reshape, tables
from cdc.capture import install as capture
from cdc.capture.reshape import Shape
from cdc.export import snapshot
from cdc.export.snapshot_resume import Recorder
from cdc.infra import pg
from cdc.infra.errors import CdcError, PostgresError, PostgresUnavailable
from cdc.ledger import queries as ledger

log = logging.getLogger("cdc.rebuild")  # the name users filter on, kept across the move to packages

PAGES_PER_CYCLE = 20  # a rebuild enqueues at most this many pages (snapshot.CHUNK keys each) per cycle


class _RebuildRecorder(Recorder):
    """Writes a rebuild's pages into its row of ``cdc.rebuilds`` (a snapshot's go to
    ``cdc.snapshot_progress``)."""

    def __init__(self, rebuild: catalog.Rebuild) -> None:
        super().__init__("apply")
        self.rebuild = rebuild

    def page(  # noqa: PLR0917 (one page's facts)
        self, conn: psycopg.Connection[Any], relid: int, op: str, last_key: str, pos: int, keys: int
    ) -> None:
        catalog.rebuild_page(conn, self.rebuild, last_key, pos, keys)

    def finished(self, conn: psycopg.Connection[Any], relid: int, op: str) -> None:
        catalog.rebuild_enqueued(conn, self.rebuild)


class _Quiet:
    def update(self, n: float | None = 1) -> None:
        return None


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
            conn, table, _Quiet(), rebuild.op, record=_RebuildRecorder(rebuild), after=rebuild.last_key, max_pages=pages
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
    for table in catalog.uncaptured_in_schemas(conn):
        if not table.keyed:
            lines.append(
                f"table {table.schema}.{table.name} of captured schema {table.schema} has no primary key:"
                " it is not captured (add a primary key; the worker then captures it)"
            )
            continue
        info = tables.describe(conn, table.relid, excluded=())
        reason = tables.refusal(info) if info is not None else None
        if reason:
            lines.append(
                f"table {table.schema}.{table.name} of captured schema {table.schema} is not captured: {reason}"
            )
    for _relid, schema, name in catalog.dropped_tables(conn):
        lines.append(
            f"captured table {schema}.{name} was dropped: its collection stays in MongoDB as it last was;"
            f" `cdc uninstall --tables {schema}.{name}` forgets it"
        )
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
        self._session = pg.Reconnecting(dsn)
        self._reported: set[str] = set()
        self.pending = False  # rebuild pages are left: the next cycle should not wait
        # relid → why the worker cannot follow it (recorded in cdc.worker_state for `cdc status`)
        self._problems: dict[int, str] = {}
        self._recorded: list[str] | None = None

    def check(self, *, pages: int | None = PAGES_PER_CYCLE) -> list[str]:
        """Capture new tables of captured schemas, follow migrations, advance rebuilds; returns what was
        done. A connection that broke since the last cycle is made again once (so a server that went
        away reads as "cannot connect", the same line as elsewhere)."""
        fresh = not self._session.live
        try:
            return self._check(pages)
        except PostgresUnavailable:
            self.close()
            if fresh:
                raise
            return self._check(pages)

    def _check(self, pages: int | None) -> list[str]:
        conn = self._session.get()
        done: list[str] = []
        try:
            done += self._capture_new(conn)
            with pg.translated("checking the shape of captured tables"):
                supported = catalog.shapes_supported(conn)
                moved = [relid for relid, _b, _n in catalog.shape_drift(conn)] if supported else []
                conn.commit()
            for relid in [relid for relid in self._problems if relid not in moved and not self._is_new(conn, relid)]:
                self._problems.pop(relid, None)  # followed since, by `cdc install` or the event trigger
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
        self._record_problems(conn)
        return done

    def _record_problems(self, conn: psycopg.Connection[Any]) -> None:
        """Write what the worker cannot follow, when it changed; a role that may not write it logs once."""
        lines = sorted(self._problems.values())
        if lines == self._recorded or conn.closed:
            return
        try:
            with pg.translated("recording what the worker cannot follow"), conn.transaction():
                ledger.record_follow_problems(conn, lines)
        except PostgresUnavailable:
            raise
        except PostgresError as exc:
            self._once(f"cannot record the migrations not followed for `cdc status`: {exc}")
            return
        self._recorded = lines

    def _capture_new(self, conn: psycopg.Connection[Any]) -> list[str]:
        """Tables created in a captured schema (``--tables 'schema.*'``) since the last cycle."""
        with pg.translated("looking for new tables in captured schemas"):
            found = [table for table in catalog.uncaptured_in_schemas(conn) if table.keyed]
            conn.commit()
        done = []
        for table in found:
            try:
                with pg.translated(f"capturing new table {table.schema}.{table.name}"), conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", [ledger.INSTALL_LOCK_KEY])
                    info = capture.capture_new_table(conn, table.relid, notify=table.notify)
            except PostgresUnavailable:
                raise
            except CdcError as exc:
                conn.rollback()
                line = f"cannot capture new table {table.schema}.{table.name}: {exc}"
                self._problems[table.relid] = line
                self._once(line)
                continue
            self._problems.pop(table.relid, None)
            if info is not None:
                done.append(f"capturing new table {info.display} (schema {info.schema} is captured)")
        return done

    def _reshape(self, conn: psycopg.Connection[Any], relid: int) -> list[str]:
        try:
            lines = reshape.reshape(conn, relid)
        except PostgresUnavailable:
            raise
        except CdcError as exc:
            conn.rollback()
            named = catalog.relation_name(conn, relid)
            conn.rollback()
            name = f"{named[0]}.{named[1]}" if named is not None else f"oid {relid}"
            line = (
                f"a migration of table {name} is not followed: {exc} (capture goes on, and the worker tries"
                f" again each cycle; `cdc install --tables {name}` as the table's owner follows it)"
            )
            self._problems[relid] = line
            self._once(line)
            return []
        self._problems.pop(relid, None)
        return lines

    @staticmethod
    def _is_new(conn: psycopg.Connection[Any], relid: int) -> bool:
        return any(table.relid == relid for table in catalog.uncaptured_in_schemas(conn))

    def _once(self, line: str) -> None:
        if line not in self._reported:
            self._reported.add(line)
            log.warning("%s", line, extra={"action": "reshape"})

    def close(self) -> None:
        self._session.close()
