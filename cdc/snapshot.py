"""The initial migration (or a re-sync) of whole tables, through the outbox, archive and applier.

Every key of a table is enqueued into the outbox in keyset-paginated chunks, each chunk one
outbox row with a fresh position: "the position read at snapshot time". The normal drain then
reads the rows and the applier writes them, so a snapshot taken while the workload runs loses
nothing and brings back nothing stale: a change made after a chunk was enqueued has a higher
position, and every image is read at drain time. Collections that are empty when the snapshot
starts take the insert path (an insert that meets a document falls back to the guarded upsert).

A snapshot resumes. Each page records, in the transaction that enqueues it, how far its table got
(``cdc.snapshot_progress``: the last key enqueued and the page's position), and the table's row
says when every key is enqueued. A re-run of an interrupted snapshot continues after the last key
of each table that was not finished, and enqueues nothing for the finished ones; what was already
enqueued (the outbox and the batches not yet applied) is drained by the normal cycle. A record
whose keys are all enqueued and drained belongs to a snapshot that finished: it is started over.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql
from pymongo.database import Database

from cdc import capture, export, faults, ledger, mapping, pg, shutdown, tables
from cdc.errors import (
    ConfigError,
    Interrupted,
    PostgresUnavailable,
)
from cdc.tables import TableInfo

log = logging.getLogger(__name__)
CHUNK = 5_000
# keys per batch of a snapshot: one outbox page, so the next page is exported while this one is applied
BATCH_SIZE = CHUNK
PAGE_ATTEMPTS = 10


class Progress(Protocol):
    """What enqueueing reports to: a tqdm bar, or anything with ``update``."""

    def update(self, n: float | None = 1) -> bool | None: ...


def captured(conn: psycopg.Connection[Any], names: Sequence[str] | None) -> list[TableInfo]:
    """The captured tables (all, or those named as `table` or `schema.table`)."""
    found = []
    for entry in capture.captured_tables(conn):
        if names and entry.name not in names and f"{entry.schema}.{entry.name}" not in names:
            continue
        if not entry.healthy:
            raise ConfigError(f"table {entry.schema}.{entry.name} lost its capture triggers: run `cdc install`")
        info = tables.describe(conn, entry.relid)
        assert info is not None
        found.append(info)
    missing = set(names or ()) - {t.name for t in found} - {f"{t.schema}.{t.name}" for t in found}
    if missing:
        raise ConfigError(f"not captured: {', '.join(sorted(missing))} (run `cdc install --tables …` first)")
    return found


def _parsed_key(table: TableInfo) -> sql.Composable:
    """The key text in ``%(after)s`` (as the outbox holds it) back as the key's typed columns."""
    if len(table.key_columns) == 1:
        return sql.SQL("%(after)s::{}").format(sql.SQL(table.key_type(table.key_columns[0])))
    return sql.SQL(", ").join(
        sql.SQL("(%(after)s::{}).{}").format(capture.key_type_name(table.relid), sql.Identifier(column))
        for column in table.key_columns
    )


def enqueue_table(
    conn: psycopg.Connection[Any],
    table: TableInfo,
    progress: Progress,
    op: str = "k",
    *,
    record: Recorder | None = None,
    after: str | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Put every key of ``table`` into the outbox, ``CHUNK`` keys per outbox row; returns keys.

    Each page is read ``FOR SHARE``: a writer still holding one of its rows (its change already
    has a position) is waited for, so the page's position comes after every change it could
    have missed. The next page starts after the last key of this one, read in the same statement.

    ``after`` (a key's text, as the outbox holds it) starts after that key: a resumed snapshot.
    ``record`` writes each page's progress in the page's transaction. ``stop`` ends the loop
    between pages (``Interrupted``); the pages committed so far stay enqueued and recorded.
    """
    key = sql.SQL(", ").join(sql.Identifier("t", column) for column in table.key_columns)
    key_text = capture.key_text(table, "t")
    last_values = sql.SQL(", ").join(sql.Placeholder(f"k{i}") for i in range(len(table.key_columns)))
    page_after = sql.SQL("WHERE ({key}) > ({last})").format(key=key, last=last_values)
    resume_after = sql.SQL("WHERE ({key}) > ({last})").format(key=key, last=_parsed_key(table))
    total = 0
    last: tuple[Any, ...] | None = None
    while True:
        if stop is not None and stop.is_set():
            raise Interrupted()
        params: dict[str, Any] = {"n": CHUNK}
        where: sql.Composable = sql.SQL("")
        if last is not None:
            params.update({f"k{i}": value for i, value in enumerate(last)})
            where = page_after
        elif after is not None:
            params["after"] = after
            where = resume_after
        page = sql.SQL(
            "SELECT {key_text}, {key} FROM {table} AS t {after} ORDER BY {key} LIMIT %(n)s FOR SHARE"
        ).format(key_text=key_text, key=key, table=table.qualified, after=where)
        rows = _enqueue_page(conn, table, page, params, op, record=record)
        if not rows:
            return total
        faults.point("snapshot_chunk")
        last = tuple(rows[-1][1:])
        total += len(rows)
        progress.update(len(rows))


def _enqueue_page(
    conn: psycopg.Connection[Any],
    table: TableInfo,
    page: sql.Composed,
    params: dict[str, Any],
    op: str = "k",
    *,
    record: Recorder | None = None,
) -> list[tuple[Any, ...]]:
    """One page in one transaction; a deadlock with a writer (we hold share locks) is tried again.

    An empty page means the table is done: ``record`` says so in the same way."""
    for attempt in range(1, PAGE_ATTEMPTS + 1):
        try:
            with pg.translated(f"enqueueing keys of {table.display}"):
                rows: list[tuple[Any, ...]] = conn.execute(page, params).fetchall()
                if rows:
                    pos = ledger.enqueue_keys_at(conn, table.relid, [row[0] for row in rows], op)
                    if record is not None:
                        record.page(conn, table.relid, op, rows[-1][0], pos, len(rows))
                elif record is not None:
                    record.finished(conn, table.relid, op)
                conn.commit()
                return rows
        except PostgresUnavailable as exc:
            conn.rollback()
            if attempt == PAGE_ATTEMPTS:
                raise
            log.warning("snapshot page of %s: %s; again", table.display, exc, extra={"action": "snapshot_retry"})
            time.sleep(0.1 * attempt)
    return []


def create_indexes(conn: psycopg.Connection[Any], database: Database[Any], table: TableInfo) -> list[str]:
    """Non-unique indexes for the table's foreign-key columns (PostgreSQL already enforces uniqueness)."""
    rows = conn.execute(
        """SELECT array_agg(a.attname::text ORDER BY k.n)
           FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
           WHERE c.conrelid = %s AND c.contype = 'f' GROUP BY c.oid ORDER BY c.oid""",
        [table.relid],
    ).fetchall()
    conn.commit()
    created = []
    for (columns,) in rows:
        if list(columns) == list(table.key_columns)[: len(columns)]:
            continue  # a prefix of _id's fields is served by the _id index only when _id is a document
        created.append(database[table.collection].create_index([(column, 1) for column in columns]))
    return created


def empty_collections(database: Database[Any], tables_: Sequence[TableInfo]) -> set[str]:
    existing = set(database.list_collection_names())
    return {
        table.collection
        for table in tables_
        if table.collection not in existing or database[table.collection].estimated_document_count() == 0
    }


@dataclass(frozen=True)
class Target:
    """One collection a snapshot rebuilds: a captured table's own collection (op ``k``), or a mapped
    collection, rebuilt by refreshing every root of its root table (op ``r``: a root refresh that
    does not walk up into the documents embedding the table)."""

    collection: str
    table: TableInfo
    op: str
    mapped: mapping.Collection | None = None  # the model's collection (op ``r``)


def targets(conn: psycopg.Connection[Any], names: Sequence[str] | None) -> list[Target]:
    """The collections to rebuild: all, or those named (a collection, or a captured table's name)."""
    model = mapping.load(conn)
    in_model = {table.relid for table in model.tables()} if model is not None else set()
    found = [Target(t.collection, t, "k") for t in captured(conn, None) if t.relid not in in_model]
    if model is not None:
        found += [Target(c.name, c.root.table, "r", c) for c in model.collections]
    if not names:
        return found
    chosen = [t for t in found if t.collection in names or f"{t.table.schema}.{t.table.name}" in names]
    missing = set(names) - {t.collection for t in chosen} - {f"{t.table.schema}.{t.table.name}" for t in chosen}
    if missing:
        known = ", ".join(sorted(t.collection for t in found))
        raise ConfigError(f"no such collection: {', '.join(sorted(missing))} (collections: {known})")
    return chosen


def prepare_targets(
    conn: psycopg.Connection[Any],
    database: Database[Any] | None,
    chosen: Sequence[Target],
    progress: Progress,
    *,
    plan: ResumePlan | None = None,
    stop: threading.Event | None = None,
) -> tuple[int, set[str]]:
    """Enqueue what rebuilds ``chosen`` (each root table once) and create the mirrors' indexes.

    Returns the keys enqueued and the table collections that were empty before (the insert path;
    never a mapped collection, whose roots may be refreshed by several batches of one snapshot).
    With ``plan`` (``plan_resume``), each page is recorded and what an interrupted snapshot already
    enqueued is skipped. Without ``database`` (``--export-only``) no MongoDB is touched."""
    mirrors = [t.table for t in chosen if t.op == "k"]
    fast = empty_collections(database, mirrors) if database is not None else set()
    total = 0
    done: set[tuple[int, str]] = set()
    for target in chosen:
        step = (target.table.relid, target.op)
        if step in done:
            continue
        done.add(step)
        if plan is None:
            total += enqueue_table(conn, target.table, progress, target.op, stop=stop)
            continue
        earlier = plan.resumed.get(step)
        if earlier is not None and earlier.done:
            continue
        total += enqueue_table(
            conn,
            target.table,
            progress,
            target.op,
            record=plan.recorder,
            after=earlier.last_key if earlier is not None else None,
            stop=stop,
        )
    if database is not None:
        for table in mirrors:
            create_indexes(conn, database, table)
    return total, fast


# ---- resuming an interrupted snapshot ------------------------------------------------------------


PROGRESS_TABLE = "cdc.snapshot_progress"
MODES = ("apply", "export")


@dataclass(frozen=True)
class Step:
    """What the ledger records for one table (and op) of a snapshot."""

    relid: int
    op: str
    mode: str  # "apply" (to MongoDB) or "export" (--export-only, into the archive)
    last_key: str | None  # the last key enqueued, as the outbox holds it
    last_pos: int | None  # the position of the last page enqueued
    keys: int
    done: bool  # every key enqueued
    started_at: dt.datetime


class Recorder:
    """Writes a snapshot's progress, in the transaction of each page."""

    def __init__(self, mode: str) -> None:
        assert mode in MODES
        self.mode = mode

    def page(  # noqa: PLR0917 (one page's facts)
        self, conn: psycopg.Connection[Any], relid: int, op: str, last_key: str, pos: int, keys: int
    ) -> None:
        conn.execute(
            """INSERT INTO cdc.snapshot_progress (relid, op, mode, last_key, last_pos, keys)
               VALUES (%s, %s, %s, %s, %s, %s)
               ON CONFLICT (relid, op) DO UPDATE SET last_key = excluded.last_key, last_pos = excluded.last_pos,
                   keys = cdc.snapshot_progress.keys + excluded.keys, mode = excluded.mode, updated_at = now()""",
            [relid, op, self.mode, last_key, pos, keys],
        )

    def finished(self, conn: psycopg.Connection[Any], relid: int, op: str) -> None:
        conn.execute(
            """INSERT INTO cdc.snapshot_progress (relid, op, mode, done) VALUES (%s, %s, %s, true)
               ON CONFLICT (relid, op) DO UPDATE SET done = true, mode = excluded.mode, updated_at = now()""",
            [relid, op, self.mode],
        )


@dataclass
class ResumePlan:
    """Which tables of this snapshot continue an interrupted one; ``recorder`` records the new pages."""

    recorder: Recorder
    resumed: dict[tuple[int, str], Step] = field(default_factory=dict)
    restarted: list[str] = field(default_factory=list)  # why a record was dropped, one line each

    @property
    def resuming(self) -> bool:
        return bool(self.resumed)


def can_record(conn: psycopg.Connection[Any]) -> str | None:
    """None when this role can record progress; else why not (the snapshot then cannot resume)."""
    with pg.translated("checking the snapshot progress table"):
        exists = conn.execute("SELECT to_regclass('cdc.snapshot_progress') IS NOT NULL").fetchone()
        allowed = exists is not None and bool(exists[0])
        if allowed:
            row = conn.execute(
                "SELECT has_table_privilege('cdc.snapshot_progress', 'SELECT, INSERT, UPDATE, DELETE')"
            ).fetchone()
            allowed = row is not None and bool(row[0])
    conn.commit()
    if allowed:
        return None
    if not (exists and exists[0]):
        return "cdc.snapshot_progress does not exist (run `cdc install` again to add it)"
    return f"role {conn.info.user!r} may not write cdc.snapshot_progress (grant it, as for cdc.outbox)"


def _steps(conn: psycopg.Connection[Any], keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], Step]:
    if not keys:
        return {}
    with pg.translated("reading the snapshot progress"):
        rows = conn.execute(
            """SELECT relid::int, op::text, mode, last_key, last_pos, keys, done, started_at
               FROM cdc.snapshot_progress
               WHERE (relid::int, op::text) IN (SELECT * FROM unnest(%s::int[], %s::text[]))""",
            [[relid for relid, _ in keys], [op for _, op in keys]],
        ).fetchall()
    conn.commit()
    return {(int(r[0]), str(r[1])): Step(int(r[0]), str(r[1]), r[2], r[3], r[4], int(r[5]), r[6], r[7]) for r in rows}


def in_flight(conn: psycopg.Connection[Any], step: Step) -> bool:
    """Whether what ``step`` enqueued is still on its way: in the outbox, or in a batch not yet
    applied (``apply``) or not yet archived (``export``)."""
    if step.last_pos is None:
        return False
    waiting = ledger.waiting_up_to(conn, step.last_pos, applying=step.mode == "apply")
    conn.commit()
    return waiting


def _steps_of(chosen: Sequence[Target]) -> list[tuple[int, str]]:
    return list(dict.fromkeys((t.table.relid, t.op) for t in chosen))


def plan_resume(conn: psycopg.Connection[Any], chosen: Sequence[Target], mode: str, *, restart: bool) -> ResumePlan:
    """Decide, per table of ``chosen``, whether this snapshot continues an interrupted one.

    Records exist only for a snapshot that did not finish (they go when it does). They are
    continued when written by a snapshot of the same ``mode``, unless every table's keys were
    enqueued and have all been drained since (``cdc run`` finished it): then it starts over, and
    so does every table with ``restart``."""
    plan = ResumePlan(Recorder(mode))
    by_step = {(t.table.relid, t.op): t for t in chosen}
    dropped: list[tuple[int, str]] = []
    found = _steps(conn, _steps_of(chosen))
    finished = bool(found) and all(step.done and not in_flight(conn, step) for step in found.values())
    for key, step in found.items():
        if restart or finished:
            dropped.append(key)
        elif step.mode != mode:
            dropped.append(key)
            plan.restarted.append(
                f"{by_step[key].table.display}: the interrupted snapshot was "
                f"{'--export-only' if step.mode == 'export' else 'applying'}; starting it over"
            )
        else:
            plan.resumed[key] = step
    if dropped:
        with pg.translated("resetting the snapshot progress"):
            conn.execute(
                "DELETE FROM cdc.snapshot_progress"
                " WHERE (relid::int, op::text) IN (SELECT * FROM unnest(%s::int[], %s::text[]))",
                [[relid for relid, _ in dropped], [op for _, op in dropped]],
            )
        conn.commit()
    return plan


def forget(conn: psycopg.Connection[Any], chosen: Sequence[Target]) -> None:
    """The snapshot of ``chosen`` finished: drop its records, so the next one starts over."""
    steps = _steps_of(chosen)
    with pg.translated("clearing the snapshot progress"):
        conn.execute(
            "DELETE FROM cdc.snapshot_progress"
            " WHERE (relid::int, op::text) IN (SELECT * FROM unnest(%s::int[], %s::text[]))",
            [[relid for relid, _ in steps], [op for _, op in steps]],
        )
    conn.commit()


def describe_left(conn: psycopg.Connection[Any], chosen: Sequence[Target], mode: str) -> str:
    """What an interrupted snapshot leaves: per collection how far its keys were enqueued, and what
    waits in the outbox and in batches (one line)."""
    steps = _steps(conn, _steps_of(chosen)) if can_record(conn) is None else {}
    finished, partial, untouched = [], [], []
    for target in chosen:
        step = steps.get((target.table.relid, target.op))
        if step is not None and step.mode != mode:
            step = None
        if step is None:
            untouched.append(target.collection)
        elif step.done:
            finished.append(target.collection)
        else:
            partial.append(f"{target.collection} up to key {step.last_key} ({step.keys:,} keys)")
    waiting = ledger.backlog(conn)
    conn.commit()
    parts = [f"keys of {len(finished)} of {len(chosen)} collections fully enqueued"]
    if partial:
        parts.append("partly: " + ", ".join(partial))
    if untouched and (finished or partial):
        parts.append("not started: " + ", ".join(untouched))
    parts.append(
        f"{waiting.outbox_changes:,} changes wait in the outbox and {waiting.batch_changes:,} in "
        f"{waiting.batches} batches not yet {'archived' if mode == 'export' else 'applied'}"
    )
    return "; ".join(parts)


class StopRequest:
    """SIGINT/SIGTERM during a snapshot: the first asks it to stop after the current page or batch,
    a second stops it at once (``KeyboardInterrupt``; nothing is lost either way)."""

    def __init__(self) -> None:
        self.event = shutdown.REQUESTED
        self.signum: int | None = None

    def install(self) -> StopRequest:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame: object) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()
        os.write(2, b"cdc: stopping the snapshot after the current page or batch (again to stop at once)\n")

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


def worker_running(conn: psycopg.Connection[Any]) -> bool:
    """Whether a `cdc run` worker (or an applying snapshot) holds the worker lock."""
    with pg.translated("looking for a running worker"):
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND objid = %s"
            " AND objsubid = 2 AND granted)",
            [0x0CDC, 3],
        ).fetchone()
    conn.commit()
    return bool(row and row[0])


@dataclass
class Exported:
    batches: list[int] = field(default_factory=list)
    changes: int = 0
    rejected: int = 0


def export_enqueued(
    dsn: str, archive_dir: Path, *, batch_size: int, stop: threading.Event, progress: Progress | None = None
) -> Exported:
    """Drain the outbox, up to its head now, into archive batches in ``export`` mode (``cdc export``'s
    way: no MongoDB). Stops between batches when ``stop`` is set."""
    result = Exported()
    conn = export.drain_connection(dsn)
    try:
        export.recover_partials(conn, archive_dir)
        head = ledger.outbox_head(conn)
        conn.commit()
        while not stop.is_set():
            batch = export.export_batch(conn, archive_dir, batch_size=batch_size, up_to=head)
            if batch is None:
                break
            result.batches.append(batch.batch_id)
            result.changes += batch.changes
            result.rejected += batch.rejected
            if progress is not None:
                progress.update(batch.changes)
    finally:
        conn.close()
    return result
