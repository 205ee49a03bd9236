"""Claim a batch of captured changes and write it to the archive, gap-free and in one snapshot.

One REPEATABLE READ transaction per batch:

1. lock the oldest outbox rows with ``FOR UPDATE SKIP LOCKED`` (never ``pos > last_seen``: a
   sequence value is taken at insert time, so a transaction that commits late would be skipped)
   until the batch holds ``batch_size`` keys, and move them to the ledger under a new batch id;
2. read every claimed key's row in the same snapshot (a key with no row is a delete; an
   UPDATE that changed a key claimed the old key too, which now has no row);
3. encode and write the batch folder, fsync it, and write its manifest;
4. commit; then move the folder into place.

A crash before 4 rolls the claim back (the rows return to the outbox); a crash between the commit
and the move leaves a ``.partial-`` folder that ``recover_partials`` moves into place next time.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from cdc.archive import folders as archive
from cdc.archive.batch_log import log_fields
from cdc.archive.folders import BatchWriter
from cdc.capture import mapping, row_security, tables
from cdc.capture.tables import TableInfo
from cdc.capture.triggers import cast_key
from cdc.documents import build as documents
from cdc.encode.codec import RowEncoder
from cdc.encode.types import select_expression
from cdc.infra import faults, pg
from cdc.infra.errors import (
    ArchiveWriteError,
    RowSecurityError,  # noqa: F401  (check_row_security raises it; callers catch it from here)
    shorten,
)
from cdc.ledger import queries as ledger

log = logging.getLogger("cdc.export")  # the name users filter on, kept across the move to packages

INT64_MAX = 2**63 - 1
Fence = Callable[[psycopg.Connection[Any]], None]
_FETCH = 5_000
LIBPQ_CHUNKED_ROWS = 170000  # libpq 17: PQsetChunkedRowsMode


@dataclass(frozen=True)
class ExportedBatch:
    batch_id: int
    path: Path
    changes: int  # lines written (upserts and deletes): each changed key once
    pos_min: int
    pos_max: int
    counts: dict[str, dict[str, int]]
    seconds: float

    @property
    def rejected(self) -> int:
        return sum(counter.get("rejected", 0) for counter in self.counts.values())


BATCH_SIZE = 50_000  # keys per batch unless told (`cdc run`, `cdc export`; a snapshot's are smaller)


def repeatable_read(conn: psycopg.Connection[Any]) -> None:
    """A drain connection's isolation level: a batch is read in one snapshot."""
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ


def drain_connection(dsn: str) -> psycopg.Connection[Any]:
    conn = pg.connect(dsn)
    repeatable_read(conn)
    return conn


class DrainSession(pg.Reconnecting):
    """A ``drain_connection`` made on first use, and made again once it was closed or broke."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn, configure=repeatable_read)


def _claim(
    conn: psycopg.Connection[Any], batch_size: int, up_to: int, mode: str, fence: Fence | None = None
) -> ledger.Claim | None:
    if fence is not None:
        fence(conn)
    return ledger.claim(conn, batch_size, up_to, mode)


def consistency(claimed: ledger.Claim) -> dict[str, Any]:
    """What a batch's manifest says of the PostgreSQL state it brings the target to: ``complete`` (its
    claim took every change visible in its snapshot), the snapshot's time (``snapshot_at``, ISO 8601,
    PostgreSQL's clock) and identity (``snapshot``, a ``pg_snapshot``)."""
    return {
        "complete": claimed.complete,
        "snapshot_at": claimed.snapshot_at.isoformat(),
        "snapshot": claimed.snapshot,
    }


def check_row_security(conn: psycopg.Connection[Any], table: TableInfo) -> None:
    """Refuse a table whose rows this role may not all see (``RowSecurityError``)."""
    row_security.refuse(conn, [table], "rows it cannot see would be exported as deletes")


def _rows_query(table: TableInfo) -> sql.Composed:
    """Each changed key of the batch with its last position, its row (if any), in one statement."""
    key_values = cast_key(table, sql.SQL("changed.key"))
    by_name = {column.name: column for column in table.columns}
    key_selects = [
        select_expression(by_name[column], value) for column, value in zip(table.key_columns, key_values, strict=True)
    ]
    column_selects = [select_expression(column, sql.Identifier("t", column.name)) for column in table.columns]
    return sql.SQL(
        """WITH changed AS ({changed})
           SELECT changed.pos, {key_selects}, t.ctid IS NOT NULL, {column_selects}
           FROM changed LEFT JOIN {table} AS t ON ({table_key}) = ({key_values})"""
    ).format(
        changed=ledger.changed_keys_with_positions(table.relid),
        key_selects=sql.SQL(", ").join(key_selects),
        column_selects=sql.SQL(", ").join(column_selects),
        table=table.qualified,
        table_key=sql.SQL(", ").join(sql.Identifier("t", column) for column in table.key_columns),
        key_values=sql.SQL(", ").join(key_values),
    )


def export_table(conn: psycopg.Connection[Any], writer: BatchWriter, table: TableInfo, batch_id: int) -> None:
    """Write one table's changed keys of ``batch_id``: upserts for present rows, deletes for gone ones.

    Rows stream from the server in chunks of ``_FETCH`` (``_streamed``): PostgreSQL keeps reading the
    next rows while this process encodes the last ones with the table's compiled ``row_upsert``.
    One file write per chunk.
    """
    encoder = RowEncoder(table.columns, table.key_columns)
    width = len(table.key_columns)
    present_at = 1 + width
    encode = encoder.row_upsert(0, 1, 2 + width)
    upserts: list[bytes] = []
    deletes: list[bytes] = []
    with _streamed(conn, _rows_query(table), {"batch": batch_id, "relid": table.relid}) as rows:
        for row in rows:
            try:
                if row[present_at]:
                    upserts.append(encode(row))
                else:
                    deletes.append(encoder.delete_line(row[1:present_at], row[0]))
            except Exception as exc:  # a value the mapping cannot carry: quarantine the row, keep going
                _reject(writer, table, row[1:present_at], exc, row[0])
            if len(upserts) + len(deletes) >= _FETCH:
                writer.write_many(table.collection, "upsert", upserts)
                writer.write_many(table.collection, "delete", deletes)
                upserts, deletes = [], []
    writer.write_many(table.collection, "upsert", upserts)
    writer.write_many(table.collection, "delete", deletes)


@contextlib.contextmanager
def _streamed(conn: psycopg.Connection[Any], query: sql.Composed, params: dict[str, Any]) -> Iterator[Iterator[Any]]:
    """The query's rows in binary, ``_FETCH`` at a time. With libpq 17 or later they stream in chunked
    rows mode (the server keeps producing while we encode); before that, through a server-side cursor."""
    if psycopg.pq.version() >= LIBPQ_CHUNKED_ROWS:
        with conn.cursor(binary=True) as cur:
            rows = cur.stream(query, params, size=_FETCH)
            assert isinstance(rows, Generator)
            # closed at once on an error: a suspended stream holds the connection's lock (and the query)
            with contextlib.closing(rows):
                yield rows
        return
    with conn.cursor(name="cdc_drain", binary=True) as named:
        named.itersize = _FETCH
        named.execute(query, params)
        yield iter(named)


def _reject(writer: BatchWriter, table: TableInfo, key: Sequence[Any], exc: Exception, pos: int) -> None:
    reason = str(exc) or type(exc).__name__
    writer.reject(table.display, [shorten(value) for value in key], reason, pos)
    log.warning(
        "rejected %s key %s: %s",
        table.display,
        shorten(list(key)),
        shorten(reason),
        extra={"action": "reject", "table": table.display},
    )


def _version(conn: psycopg.Connection[Any], batch_id: int) -> int:
    info = ledger.batch_info(conn, batch_id)
    return info.version if info is not None else 0


def write_batch(conn: psycopg.Connection[Any], archive_dir: Path, batch_id: int) -> BatchWriter:
    """Encode the ledger's changes of ``batch_id`` into a (not yet visible) batch folder."""
    try:
        writer = BatchWriter(archive_dir, batch_id)
    except OSError as exc:
        raise ArchiveWriteError(f"batch {batch_id}: cannot write to {archive_dir}: {exc.strerror}") from None
    try:
        model = mapping.load(conn)
        in_model = model.relids() if model is not None else set()
        for relid, truncates in ledger.batch_relations(conn, batch_id):
            if relid in in_model:
                continue  # read into the model's documents below, not a collection of its own
            table = tables.describe(conn, relid)
            if table is None:
                for pos, key in ledger.batch_table_keys(conn, batch_id, relid):
                    writer.reject(
                        f"<dropped table oid {relid}>", key, "the table was dropped before the batch was read", pos
                    )
                log.warning("batch %d: table oid %d was dropped; its changes are in rejected.jsonl", batch_id, relid)
                continue
            check_row_security(conn, table)
            if table.excluded:
                writer.excluded[f"{table.schema}.{table.name}"] = list(table.excluded)
            for pos in truncates:
                writer.truncate(table.collection, pos)
            export_table(conn, writer, table, batch_id)
            faults.point("mid_archive")
        if model is not None:
            for table in model.tables():
                check_row_security(conn, table)
            documents.export_documents(conn, writer, model, batch_id, _version(conn, batch_id))
            faults.point("mid_archive")
    except OSError as exc:
        writer.abort()
        raise ArchiveWriteError(f"batch {batch_id}: cannot write to {archive_dir}: {exc.strerror}") from None
    except BaseException:
        writer.abort()
        raise
    return writer


@contextlib.contextmanager
def _exclusive_turn(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Exporters take turns, one batch each, under a session advisory lock.

    Without turns, two batches claimed at once could read one key in snapshots that are ordered
    differently from their batch ids, and a replay in batch order could bring back a deleted row.
    The lock is taken in its own transaction, so the batch's snapshot starts after it is granted;
    a dropped connection releases it.
    """
    conn.execute("SELECT pg_advisory_lock(%s)", [ledger.EXPORT_LOCK_KEY])
    conn.commit()
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            conn.rollback()
            conn.execute("SELECT pg_advisory_unlock(%s)", [ledger.EXPORT_LOCK_KEY])
            conn.commit()


def _give_back(conn: psycopg.Connection[Any], batch_id: int) -> None:
    """After a claim rolled back because its batch could not be written (a full disk): let the next
    claim take ``batch_id`` again, so a persistent fault does not burn one id per retry
    (``ledger.give_back_batch_id``). When that cannot be done (no UPDATE privilege on the sequence,
    a lost connection) the id stays burned, as after a crash.
    """
    try:
        ledger.give_back_batch_id(conn, batch_id)
        conn.commit()
    except psycopg.Error:
        log.debug("batch %d: its id could not be given back", batch_id, exc_info=True)
        if not conn.closed and not conn.broken:
            conn.rollback()


def export_batch(
    conn: psycopg.Connection[Any],
    archive_dir: Path,
    *,
    batch_size: int,
    up_to: int | None = None,
    mode: str = "export",
    fence: Fence | None = None,
    log_level: int = logging.INFO,
) -> ExportedBatch | None:
    """Claim, read, write and commit one batch; None when there is nothing to claim.

    ``conn`` must come from ``drain_connection`` (REPEATABLE READ). In ``export`` mode the batch is
    final once written (state ``exported``); ``run`` mode leaves it for the applier. ``fence`` runs
    in the claim's transaction, before the claim, and raises to refuse it (the worker's lock check).
    ``log_level`` is the level of the batch's "batch N: … changes" line.
    """
    started = time.perf_counter()
    archive.check_writable(archive_dir)  # before the claim: an unwritable archive costs no batch id
    with pg.translated("exporting a batch", reads_captured_rows=True), _exclusive_turn(conn):
        claimed = None
        try:
            claimed = _claim(conn, batch_size, INT64_MAX if up_to is None else up_to, mode, fence)
            if claimed is None:
                conn.rollback()
                return None
            batch_id, positions = claimed.batch_id, claimed.positions
            faults.point("after_claim")
            writer = write_batch(conn, archive_dir, batch_id)
            manifest_counts = writer.collection_counts()
            try:
                writer.finish(positions[0], positions[-1], {"mode": mode, **consistency(claimed)})
            except OSError as exc:
                writer.abort()
                raise ArchiveWriteError(f"batch {batch_id}: cannot write to {archive_dir}: {exc.strerror}") from None
            faults.point("before_commit")
            ledger.mark_exported(conn, batch_id, manifest_counts)
            conn.commit()
            faults.point("after_commit")
        except BaseException as exc:
            conn.rollback()
            if claimed is not None and isinstance(exc, ArchiveWriteError):
                _give_back(conn, claimed.batch_id)
            raise
        path = writer.publish()
    changes = sum(counter.get("upsert", 0) + counter.get("delete", 0) for counter in manifest_counts.values())
    exported = ExportedBatch(
        batch_id, path, changes, positions[0], positions[-1], manifest_counts, time.perf_counter() - started
    )
    fields = log_fields(
        batch_id,
        changes=exported.changes,
        upserts=sum(c.get("upsert", 0) for c in manifest_counts.values()),
        deletes=sum(c.get("delete", 0) for c in manifest_counts.values()),
        rejected=exported.rejected,
        seconds=exported.seconds,
        collections=manifest_counts,
    )
    log.log(
        log_level,
        "batch %(batch)d: %(changes)d changes (%(upserts)d upserts, %(deletes)d deletes, %(rejected)d rejected)"
        " in %(seconds).3fs",
        fields,
        extra={"action": "batch_exported"},
    )
    return exported


def recover_partials(conn: psycopg.Connection[Any], archive_dir: Path) -> None:
    """Publish partial folders of batches the ledger committed; remove those it never committed.

    Runs in the exporters' turn, so it never sees another exporter's batch before its commit.
    """
    with pg.translated("recovering interrupted batches"), _exclusive_turn(conn):
        _recover_partials(conn, archive_dir)


def _recover_partials(conn: psycopg.Connection[Any], archive_dir: Path) -> None:
    for path in archive.partial_batches(archive_dir):
        batch_id = int(path.name.removeprefix(archive.PARTIAL_PREFIX))
        info = ledger.batch_info(conn, batch_id)
        conn.commit()
        if info is not None and (path / archive.MANIFEST).exists():
            archive.publish(path, archive_dir / archive.batch_folder_name(batch_id))
            log.info("batch %d: published after an interrupted export", batch_id, extra={"action": "recover"})
        else:
            shutil.rmtree(path, ignore_errors=True)
