"""The initial migration (or a re-sync) of whole tables, through the outbox, archive and applier.

Every key of a table is enqueued into the outbox in keyset-paginated chunks, each chunk one
outbox row with a fresh position: "the position read at snapshot time". The normal drain then
reads the rows and the applier writes them, so a snapshot taken while the workload runs loses
nothing and brings back nothing stale: a change made after a chunk was enqueued has a higher
position, and every image is read at drain time. Collections that are empty when the snapshot
starts take the insert path (an insert that meets a document falls back to the guarded upsert).

A snapshot resumes (``cdc.export.snapshot_resume``): each page records how far its table got, in the
transaction that enqueues it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.capture import install as capture
from cdc.capture import mapping, tables, triggers
from cdc.capture.tables import TableInfo
from cdc.capture.triggers import cast_key
from cdc.export.snapshot_resume import Recorder, ResumePlan
from cdc.infra import faults, pg
from cdc.infra.errors import (
    ConfigError,
    Interrupted,
    PostgresUnavailable,
)
from cdc.infra.progress import Progress
from cdc.ledger import queries as ledger
from cdc.sinks.base import Sink

log = logging.getLogger("cdc.snapshot")  # the name users filter on, kept across the move to packages
CHUNK = 5_000
# keys per batch of a snapshot: one outbox page, so the next page is exported while this one is applied
BATCH_SIZE = CHUNK
PAGE_ATTEMPTS = 10


def captured(conn: psycopg.Connection[Any], names: Sequence[str] | None) -> list[TableInfo]:
    """The captured tables (all, or those named as `table` or `schema.table`)."""
    found = []
    for entry in capture.captured_tables(conn):
        if names and entry.name not in names and f"{entry.schema}.{entry.name}" not in names:
            continue
        if not entry.exists and entry.recreated_as is None and not names:  # dropped (`cdc status` says so)
            log.warning(
                "captured table %s.%s was dropped: left out (`cdc uninstall --tables %s.%s` forgets it)",
                entry.schema,
                entry.name,
                entry.schema,
                entry.name,
            )
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


def enqueue_table(
    conn: psycopg.Connection[Any],
    table: TableInfo,
    progress: Progress,
    op: str = "k",
    *,
    record: Recorder | None = None,
    after: str | None = None,
    stop: threading.Event | None = None,
    max_pages: int | None = None,
) -> int:
    """Put every key of ``table`` into the outbox, ``CHUNK`` keys per outbox row; returns keys.

    Each page is read ``FOR SHARE``: a writer still holding one of its rows (its change already
    has a position) is waited for, so the page's position comes after every change it could
    have missed. The next page starts after the last key of this one, read in the same statement.

    ``after`` (a key's text, as the outbox holds it) starts after that key: a resumed snapshot.
    ``record`` writes each page's progress in the page's transaction. ``stop`` ends the loop
    between pages (``Interrupted``); the pages committed so far stay enqueued and recorded.
    ``max_pages``: return after that many pages (a rebuild that goes on at the next cycle).
    """
    key = sql.SQL(", ").join(sql.Identifier("t", column) for column in table.key_columns)
    key_text = triggers.key_text(table, "t")
    last_values = sql.SQL(", ").join(sql.Placeholder(f"k{i}") for i in range(len(table.key_columns)))
    page_after = sql.SQL("WHERE ({key}) > ({last})").format(key=key, last=last_values)
    resume_after = sql.SQL("WHERE ({key}) > ({last})").format(
        key=key, last=sql.SQL(", ").join(cast_key(table, sql.Placeholder("after")))
    )
    total = 0
    last: tuple[Any, ...] | None = None
    pages = 0
    while max_pages is None or pages < max_pages:
        pages += 1
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
    return total


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


def foreign_key_indexes(conn: psycopg.Connection[Any], table: TableInfo) -> list[tuple[str, ...]]:
    """The fields of a non-unique index for each of the table's foreign keys (PostgreSQL already
    enforces uniqueness), but for one whose columns lead the key (a prefix of ``_id``'s fields is
    served by the ``_id`` index only when ``_id`` is a document)."""
    rows = conn.execute(
        """SELECT array_agg(a.attname::text ORDER BY k.n)
           FROM pg_constraint c CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, n)
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
           WHERE c.conrelid = %s AND c.contype = 'f' GROUP BY c.oid ORDER BY c.oid""",
        [table.relid],
    ).fetchall()
    conn.commit()
    return [tuple(columns) for (columns,) in rows if list(columns) != list(table.key_columns)[: len(columns)]]


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
    in_model = model.relids() if model is not None else set()
    found = [Target(t.collection, t, "k") for t in captured(conn, None) if t.relid not in in_model]
    if model is not None:
        found += [Target(c.name, c.root.table, "r", c) for c in model.collections]
    if not names:
        return found
    broken = dict(model.broken) if model is not None else {}
    for name in names:
        if name in broken:
            raise ConfigError(f"collection {name} cannot be read: a migration broke its mapping: {broken[name]}")
    chosen = [t for t in found if t.collection in names or f"{t.table.schema}.{t.table.name}" in names]
    missing = set(names) - {t.collection for t in chosen} - {f"{t.table.schema}.{t.table.name}" for t in chosen}
    if missing:
        known = ", ".join(sorted(t.collection for t in found))
        raise ConfigError(f"no such collection: {', '.join(sorted(missing))} (collections: {known})")
    return chosen


def prepare_targets(
    conn: psycopg.Connection[Any],
    sink: Sink | None,
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
    enqueued is skipped. Without ``sink`` (``--export-only``) no target is touched."""
    mirrors = [t.table for t in chosen if t.op == "k"]
    fast = sink.empty_collections(t.collection for t in mirrors) if sink is not None else set()
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
    if sink is not None:
        for table in mirrors:
            sink.ensure_indexes(table.collection, foreign_key_indexes(conn, table))
    return total, fast
