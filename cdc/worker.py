"""The sync worker: claim → archive → apply → mark applied, one batch at a time.

One worker applies at a time: it holds a session advisory lock, and checks before every batch
that it still holds it (a lock is no fence once its connection has dropped). A second worker
waits for the lock. On start, and after any error, batches claimed but not applied are finished
first, re-exported from the ledger's keys when their archive folder is missing or damaged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from cdc import archive, drain, faults, ledger, pg
from cdc.archive import ArchiveWriteError
from cdc.capture import NOTIFY_CHANNEL
from cdc.errors import CdcError, MongoUnavailable, PostgresUnavailable
from cdc.progress import Progress
from cdc.sink import Applier, ApplyStats

if TYPE_CHECKING:
    from cdc.metrics import Metrics

log = logging.getLogger(__name__)

WORKER_LOCK = (0x0CDC, 3)  # pg_advisory_lock(int, int)
DEBOUNCE_S = 0.005


@dataclass
class RunStats:
    batches: int = 0
    changes: int = 0
    stale: int = 0
    rejected: int = 0
    last_batch: int | None = None
    last_success: float | None = None


class LockLost(CdcError):
    """The worker lock was lost (its connection dropped)."""


class Worker:
    def __init__(
        self,
        dsn: str,
        applier: Applier,
        archive_dir: Path,
        *,
        batch_size: int = 50_000,
        stop: threading.Event | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.dsn = dsn
        self.applier = applier
        self.archive_dir = archive_dir
        self.batch_size = batch_size
        self.stop = stop or threading.Event()
        self.stats = RunStats()
        self.metrics = metrics
        if metrics is not None:
            applier.on_retry = metrics.retried
        self.fast_insert: set[str] = set()  # collections known empty: the insert path
        self.progress: Progress | None = None  # told the changes of every batch applied
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._listener: psycopg.Connection[Any] | None = None

    # ---- the lock -----------------------------------------------------------------------------
    def acquire(self, wait: bool = True) -> bool:
        self._lock_conn = pg.connect(self.dsn, autocommit=True)
        while not self.stop.is_set():
            with pg.translated("taking the worker lock"):
                row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s, %s)", WORKER_LOCK).fetchone()
            if row and row[0]:
                return True
            if not wait:
                return False
            log.info("another worker holds the lock; waiting", extra={"action": "worker_wait"})
            self.stop.wait(2)
        return False

    def check_lock(self) -> None:
        conn = self._lock_conn
        try:
            row = (
                conn.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                    " AND classid = %s AND objid = %s AND granted",
                    WORKER_LOCK,
                ).fetchone()
                if conn is not None
                else None
            )
        except psycopg.Error:
            row = None
        if not row or not row[0]:
            raise LockLost()

    def release(self) -> None:
        for conn in (self._conn, self._lock_conn):
            if conn is not None and not conn.closed:
                conn.close()
        self._conn = self._lock_conn = None

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = drain.drain_connection(self.dsn)
        return self._conn

    # ---- one batch ----------------------------------------------------------------------------
    def _load_or_reexport(self, batch_id: int) -> archive.Batch:
        path = self.archive_dir / archive.batch_folder_name(batch_id)
        try:
            found = archive.read_batch(path)
            if self._matches_ledger(found):
                return found
            log.warning(
                "batch %d: the folder on disk is another batch of that id (an earlier epoch?); re-exporting",
                batch_id,
                extra={"action": "reexport"},
            )
        except archive.ArchiveError as exc:
            log.warning("batch %d: %s; re-exporting it from the ledger", batch_id, exc, extra={"action": "reexport"})
        conn = self.conn
        with pg.translated(f"re-exporting batch {batch_id}"):
            try:
                writer = drain.write_batch(conn, self.archive_dir, batch_id)
                row = conn.execute(
                    "SELECT pos_min, pos_max, mode FROM cdc.batches WHERE batch_id = %s", [batch_id]
                ).fetchone()
                assert row is not None
                try:
                    writer.finish(row[0], row[1], {"mode": row[2], "reexported": True})
                except OSError as exc:
                    writer.abort()
                    raise ArchiveWriteError(f"batch {batch_id}: cannot re-export: {exc.strerror}") from None
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return archive.read_batch(writer.publish())

    def _matches_ledger(self, batch: archive.Batch) -> bool:
        with pg.translated("reading the ledger"):
            row = self.conn.execute(
                "SELECT pos_min::text, pos_max::text FROM cdc.batches WHERE batch_id = %s", [batch.batch_id]
            ).fetchone()
            self.conn.commit()
        position = batch.manifest.get("position", {})
        return row is not None and (position.get("min"), position.get("max")) == (row[0], row[1])

    def apply_batch(self, batch_id: int, fast_insert: set[str] | None = None) -> ApplyStats:
        self.check_lock()
        batch = self._load_or_reexport(batch_id)
        started = time.perf_counter()
        result = self.applier.apply(batch, fast_insert=fast_insert)
        faults.point("before_mark_applied")
        self.applier.mark_applied(batch_id)
        ledger.mark_applied(self.conn, batch_id)
        self.stats.batches += 1
        self.stats.changes += result.upserted + result.deleted + result.stale
        self.stats.stale += result.stale
        self.stats.last_batch = batch_id
        self.stats.last_success = time.time()
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.batch_applied(result, seconds)
        if self.progress is not None:
            self.progress.update(result.upserted + result.deleted + result.stale)
        fields = {
            "batch": batch_id,
            "upserts": result.upserted,
            "deletes": result.deleted,
            "stale": result.stale,
            "truncated": result.truncated,
            "retries": result.retries,
            "seconds": round(seconds, 4),
            "collections": {name: dict(counts) for name, counts in result.by_collection.items()},
        }
        log.info(
            "batch %(batch)d applied: %(upserts)d upserts, %(deletes)d deletes, %(stale)d stale, "
            "%(truncated)d truncated in %(seconds).3fs",
            fields,
            extra={"action": "batch_applied"},
        )
        return result

    def finish_pending(self) -> int:
        pending = ledger.pending_batches(self.conn)
        for batch_id in pending:
            self.apply_batch(batch_id)
        return len(pending)

    def cycle(self, up_to: int | None = None) -> int:
        """Finish pending batches, then claim and apply until the outbox is empty (or ``up_to``)."""
        done = self.finish_pending()
        while not self.stop.is_set():
            self.check_lock()
            exported = drain.export_batch(
                self.conn, self.archive_dir, batch_size=self.batch_size, up_to=up_to, mode="run"
            )
            if exported is None:
                if self.metrics is not None:
                    self.metrics.drained()
                break
            self.stats.rejected += exported.rejected
            if self.metrics is not None:
                self.metrics.batch_exported(exported)
            self.apply_batch(exported.batch_id, self.fast_insert)
            done += 1
        return done

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, *, interval: float, listen: bool, once: bool) -> RunStats:
        if not self.acquire():
            return self.stats
        try:
            if once:
                self.cycle(up_to=drain.outbox_head(self.conn))
                return self.stats
            while not self.stop.is_set():
                try:
                    self.cycle()
                except (PostgresUnavailable, MongoUnavailable, LockLost, ArchiveWriteError) as exc:
                    log.warning("cycle interrupted: %s; retrying", exc, extra={"action": "cycle_retry"})
                    self._recover()
                    continue
                self._wait(interval, listen)
        finally:
            self._close_listener()
            self.release()
        return self.stats

    def _close_listener(self) -> None:
        if self._listener is not None and not self._listener.closed:
            self._listener.close()
        self._listener = None

    def _wait(self, interval: float, listen: bool) -> None:
        """Sleep until the next poll, or until a NOTIFY arrives (a dropped listener falls back to polling)."""
        if listen and self._listener is None:
            try:
                self._listener = pg.connect(self.dsn, autocommit=True)
                self._listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            except (PostgresUnavailable, psycopg.Error) as exc:
                log.warning("cannot listen (%s); polling", exc, extra={"action": "listen_failed"})
                self._close_listener()
        if self._listener is None:
            self.stop.wait(interval if not listen else min(interval, 1.0))
            return
        deadline = time.monotonic() + interval
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                # short slices, so a stop request is seen quickly; any notification wakes the worker
                woke = False
                timeout = min(0.5, max(0.0, deadline - time.monotonic()))
                for _ in self._listener.notifies(timeout=timeout, stop_after=1):
                    woke = True
                if woke:
                    # debounce: a burst of commits wakes one cycle, not one cycle per commit
                    for _ in self._listener.notifies(timeout=DEBOUNCE_S):
                        pass
                    return
        except psycopg.Error as exc:
            log.warning(
                "the LISTEN connection dropped (%s); reconnecting", pg.describe(exc), extra={"action": "listen_lost"}
            )
            self._close_listener()

    def _recover(self) -> None:
        """After a lost connection: wait a little, reconnect, and take the lock again."""
        self.stop.wait(1)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        try:
            self.check_lock()
        except LockLost:
            if self._lock_conn is not None:
                self._lock_conn.close()
            try:
                self.acquire()
            except PostgresUnavailable as exc:
                log.warning("PostgreSQL unavailable: %s", exc, extra={"action": "reconnect"})
