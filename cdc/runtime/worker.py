"""The sync worker: claim → archive → apply → mark applied, one batch at a time.

One worker applies at a time: it holds a session advisory lock, and checks before every batch
that it still holds it (a lock is no fence once its connection has dropped). A second worker
waits for the lock. On start, and after any error, batches claimed but not applied are finished
first, re-exported from the ledger's keys when their archive folder is missing or damaged.
A fault that may pass (a server down, an archive that cannot be written) is retried with a
pause that grows to 30 s and a few log lines, not one per attempt (``Backoff``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from cdc.archive import folders as archive
from cdc.archive.batch_log import log_fields
from cdc.capture import hierarchy
from cdc.export import batch as export
from cdc.infra import faults, pg
from cdc.infra.errors import (
    ArchiveError,
    CaptureMissing,
    CdcError,
    LockLost,
    PostgresError,
    PostgresUnavailable,
)
from cdc.infra.progress import Progress
from cdc.ledger import queries as ledger
from cdc.ledger.backlog_reader import BacklogReader
from cdc.ledger.lock import WorkerLock
from cdc.ledger.wakeup import Wakeup
from cdc.runtime import rebuild
from cdc.runtime.backoff import TRANSIENT, Backoff
from cdc.runtime.batches import Batches, PgBatches
from cdc.runtime.run_summary import RunStats, Summary
from cdc.sinks.base import ApplyStats, Sink

if TYPE_CHECKING:
    from cdc.runtime.metrics import Metrics

log = logging.getLogger("cdc.worker")  # the name users filter on, kept across the move to packages
# what the run loop retries, backing off: the transient faults, and a driver error that escaped translation
_RETRIED: tuple[type[Exception], ...] = (*TRANSIENT, psycopg.OperationalError)


class Worker:
    def __init__(
        self,
        dsn: str,
        sink: Sink,
        archive_dir: Path,
        *,
        batch_size: int = export.BATCH_SIZE,
        stop: threading.Event | None = None,
        metrics: Metrics | None = None,
        batch_log_level: int = logging.INFO,
        summary_every: float | None = None,
        batches: Batches | None = None,
        lock: WorkerLock | None = None,
    ) -> None:
        """``batch_log_level``: the level of each batch's lines ("batch N: … changes" when exported,
        "batch N applied: …"); ``summary_every``: while ``run`` runs, log a ``Summary`` this often. With
        ``metrics``, build the sink with its retries counted (``Applier(…, on_retry=metrics.retried)``). ``batches`` and
        ``lock`` default to the ledger and the advisory lock in PostgreSQL (tests pass in-memory ones)."""
        self.dsn = dsn
        self.sink = sink  # where batches go: MongoDB (``Applier``), or any ``Sink``
        self.archive_dir = archive_dir
        self.batch_size = batch_size
        self.stop = stop or threading.Event()
        self.stats = RunStats()
        self.metrics = metrics
        self.batch_log_level = batch_log_level
        self.summary_every = summary_every
        # one pass's own (``cycle``'s arguments), reset when it ends
        self._fast_insert: frozenset[str] = frozenset()
        self._progress: Progress | None = None
        self.lock = lock or WorkerLock(dsn, self.stop)
        self.batches: Batches = batches or PgBatches(lambda: self.conn)
        self._session = export.DrainSession(dsn)  # the claims and the applier's ledger writes
        self._export_session = export.DrainSession(dsn)  # the exporter thread's, behind a backlog
        self.wakeup = Wakeup(dsn, self.stop)
        self.partitions = hierarchy.Watch(dsn)
        self.shapes = rebuild.Watch(dsn)  # migrations: tables whose shape changed, and their rebuilds

    # ---- the lock (cdc.ledger.lock) -----------------------------------------------------------------
    def acquire(self, wait: bool = True) -> bool:
        return self.lock.acquire(wait)

    def assert_lock_holder(self, conn: psycopg.Connection[Any]) -> None:
        """Inside a claim's transaction: the claim's fence (``WorkerLock.fence``)."""
        self.lock.fence(conn)

    def check_lock(self) -> None:
        self.lock.check()

    def release(self) -> None:
        self.partitions.close()
        self.shapes.close()
        self._session.close()
        self._export_session.close()
        self.lock.release()

    @property
    def conn(self) -> psycopg.Connection[Any]:
        """The worker's REPEATABLE READ connection, made again after it broke."""
        return self._session.get()

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
        except ArchiveError as exc:
            log.warning("batch %d: %s; re-exporting it from the ledger", batch_id, exc, extra={"action": "reexport"})
        return self.batches.reexport(batch_id, self.archive_dir)

    def _matches_ledger(self, batch: archive.Batch) -> bool:
        info = self.batches.info(batch.batch_id)
        position = batch.manifest.get("position", {})
        recorded = (str(info.pos_min), str(info.pos_max)) if info is not None else None
        return recorded == (position.get("min"), position.get("max"))

    def apply_batch(self, batch_id: int, fast_insert: Collection[str] = ()) -> ApplyStats:
        self.check_lock()
        batch = self._load_or_reexport(batch_id)
        started = time.perf_counter()
        result = self.sink.apply(batch, fast_insert=set(fast_insert))
        faults.point("before_mark_applied")
        self.sink.mark_applied(batch_id)
        self.batches.mark_applied(batch_id)
        self.stats.batches += 1
        self.stats.changes += result.upserted + result.deleted + result.stale
        self.stats.stale += result.stale
        self.stats.last_batch = batch_id
        self.stats.last_success = time.time()
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.batch_applied(result, seconds)
        if self._progress is not None:
            self._progress.update(result.upserted + result.deleted + result.stale)
        fields = log_fields(
            batch_id,
            upserts=result.upserted,
            deletes=result.deleted,
            stale=result.stale,
            truncated=result.truncated,
            retries=result.retries,
            seconds=seconds,
            digits=4,
            collections=result.by_collection,
        )
        log.log(
            self.batch_log_level,
            "batch %(batch)d applied: %(upserts)d upserts, %(deletes)d deletes, %(stale)d stale, "
            "%(truncated)d truncated in %(seconds).3fs",
            fields,
            extra={"action": "batch_applied"},
        )
        return result

    def finish_pending(self) -> int:
        """Apply the batches claimed and not yet applied, in batch order, until a stop is requested."""
        pending = self.batches.pending()
        done = 0
        for batch_id in pending:
            if self.stop.is_set():
                break
            self.apply_batch(batch_id)
            done += 1
        return done

    def cycle_to_head(self, *, fast_insert: Collection[str] = (), progress: Progress | None = None) -> int:
        """``cycle`` up to the outbox position seen now (``--once``, a snapshot, a repair)."""
        self.shapes.check(pages=None)  # before the head is read: a rebuild's keys are drained too
        return self.cycle(up_to=self.batches.head(), fast_insert=fast_insert, progress=progress)

    def cycle(
        self, up_to: int | None = None, *, fast_insert: Collection[str] = (), progress: Progress | None = None
    ) -> int:
        """One pass (see ``_cycle``). ``fast_insert``: collections known empty, whose new batches are
        written with the insert path (a snapshot's); ``progress`` is told each applied batch's changes."""
        self._fast_insert, self._progress = frozenset(fast_insert), progress
        try:
            done = self._cycle(up_to)
        finally:
            self._fast_insert, self._progress = frozenset(), None
        if not self.stop.is_set():
            self._sweep()
        return done

    def _sweep(self) -> None:
        """The sweeps snapshots left, once their pages are applied: a document below the snapshot's
        start is one of a row that no longer exists (``Applier.sweep``). Not swept: a collection rows of
        which were rejected meanwhile (their older documents stay), or one a migration broke (nothing of
        it was written)."""
        due = self.batches.due_sweeps()
        if not due:
            return
        broken = self.batches.broken_collections()
        for collection, below, rejected in due:
            if rejected or collection in broken:
                why = "rows of it were rejected" if rejected else "a migration broke its mapping"
                log.warning(
                    "%s: documents of rows gone are not removed after the snapshot (%s); `cdc verify --repair`"
                    " removes them",
                    collection,
                    why,
                    extra={"action": "not_swept", "collection": collection},
                )
            else:
                removed = self.sink.sweep(collection, below)
                self.stats.swept += removed
                log.info(
                    "%s: %d documents of rows gone removed after the snapshot",
                    collection,
                    removed,
                    extra={"action": "swept", "collection": collection},
                )
            self.batches.forget_sweep(collection, below)

    def _cycle(self, up_to: int | None) -> int:
        """Finish pending batches, then claim and apply until the outbox is empty (or ``up_to``).

        Each claim is fenced by the worker lock (``assert_lock_holder``) and batches are applied in
        batch order. A live trickle is exported and applied in turn, so changes that arrive during an
        apply gather into the next batch. A full batch means a backlog: then the next batch is exported
        on a second connection while this one is applied (``_pipelined``). A batch exported but never
        applied (a stop, an error) is pending, finished first next time.
        """
        done = self.finish_pending()
        self.partitions.check()  # partitions created, attached, detached or dropped since the last cycle
        if up_to is None:  # (``cycle_to_head`` checked before it read the head)
            self.shapes.check()  # migrations of captured tables, and the next pages of their rebuilds
        while not self.stop.is_set():
            self.check_lock()
            exported = export.export_batch(
                self.conn,
                self.archive_dir,
                batch_size=self.batch_size,
                up_to=up_to,
                mode="run",
                fence=self.assert_lock_holder,
                log_level=self.batch_log_level,
            )
            if exported is None:
                if self.metrics is not None:
                    self.metrics.drained()
                break
            self._exported(exported)
            if exported.changes >= self.batch_size:
                return done + self._pipelined(exported, up_to)
            done += self.apply_in_order(exported.batch_id)
        return done

    def _exported(self, exported: export.ExportedBatch) -> None:
        self.stats.rejected += exported.rejected
        if self.metrics is not None:
            self.metrics.batch_exported(exported)

    def _pipelined(self, first: export.ExportedBatch, up_to: int | None) -> int:
        """Apply ``first`` and the rest of a backlog, the next batch exported while the last is applied
        (PostgreSQL reads and Python encodes while MongoDB writes); at most two batches exported and
        not yet applied."""
        exporter = _Exporter(self, up_to)
        applied_all = False
        try:
            done = self.apply_in_order(first.batch_id)
            for exported in exporter.batches():
                self._exported(exported)
                if self.stop.is_set():
                    break
                done += self.apply_in_order(exported.batch_id)
                exporter.applied()
            else:
                applied_all = True
        finally:
            exporter.close()
        if applied_all and exporter.drained and self.metrics is not None:
            self.metrics.drained()
        return done

    @property
    def export_conn(self) -> psycopg.Connection[Any]:
        """The exporter's own connection (REPEATABLE READ, like ``conn``)."""
        return self._export_session.get()

    def apply_in_order(self, batch_id: int) -> int:
        """Apply ``batch_id``, after any pending batch with a smaller id (one another worker claimed
        just before it lost its lock): batches reach MongoDB in batch order."""
        earlier = []
        if self.stats.last_batch is None or batch_id != self.stats.last_batch + 1:
            # (after batch N, N+1 needs no look: a claim commits within its exporter's turn, so
            # any batch below N+1 was visible when N was applied)
            earlier = [pending for pending in self.batches.pending() if pending < batch_id]
        for pending in earlier:
            log.info("batch %d: pending from an earlier claim; applying it first", pending)
            self.apply_batch(pending)
        self.apply_batch(batch_id, self._fast_insert)
        return len(earlier) + 1

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, *, interval: float, listen: bool, once: bool) -> RunStats:
        if not self.acquire():
            return self.stats
        summary = Summary(self.stats, BacklogReader(self.dsn), every=self.summary_every) if self.summary_every else None
        # each cycle's outcome, for `cdc status` (on a small connection of its own; it never raises)
        cycles = ledger.CycleLog(self.dsn, None if once else interval, lambda: self.lock.backend_pid, self.stop)
        try:
            if summary is not None:
                summary.start()
            cycles.started()
            if once:
                self.partitions.check()  # before the head is read: the keys it records are drained too
                cycles.watch(self.cycle_to_head)
                return self.stats
            backoff = Backoff(self.stop, "cycle")
            while not self.stop.is_set():
                try:
                    if backoff.failing:
                        self._recover()
                        if self.stop.is_set():
                            break
                    cycles.watch(self._cycle_while_installed)
                except _RETRIED as exc:
                    # (a driver error that escaped translation, on a connection a server restart cut: the same fault)
                    if isinstance(exc, psycopg.OperationalError):
                        if not pg.is_transient(exc):
                            raise
                        fault: CdcError = PostgresUnavailable(pg.describe(exc))
                    else:
                        assert isinstance(exc, CdcError)
                        fault = exc
                    backoff.failed(fault)
                    backoff.wait()
                    continue
                backoff.succeeded()
                # (a rebuild with pages left goes on at once)
                self.wakeup.wait(0 if self.shapes.pending else interval, listen)
        finally:
            cycles.close()
            if summary is not None:
                summary.close()
            self.wakeup.close()
            self.release()
        return self.stats

    def _cycle_while_installed(self) -> int:
        """``cycle``; an error that comes from capture having been removed under the worker (`cdc
        uninstall`, before an install again) is ``CaptureMissing``, which the loop waits out."""
        try:
            return self.cycle()
        except PostgresError as exc:
            if exc.transient:
                raise
            with pg.connect(self.dsn) as conn:
                installed = ledger.installed(conn)
            if installed:
                raise
            raise CaptureMissing() from exc

    def _recover(self) -> None:
        """Before a retry: fresh data connections, and the lock taken again when it was lost.

        Raises ``PostgresUnavailable`` while PostgreSQL cannot be reached: the caller counts that as
        one more failed attempt and backs off (no log line of its own)."""
        self._session.close()
        self._export_session.close()
        try:
            self.check_lock()
        except LockLost:
            self.lock.release()
            self.acquire()


class _Exporter:
    """Exports batches on a thread, ahead of the applier, until the outbox is drained.

    The queue holds one batch: the thread exports the next while the worker applies the last, then
    waits to hand it over; after a batch that is not full it waits until that batch is applied, so
    a trickle gathers into one batch. It ends with ``None`` (drained, stopped or closed) or the
    exception that stopped it.
    """

    def __init__(self, worker: Worker, up_to: int | None) -> None:
        self.worker = worker
        self.up_to = up_to
        self.drained = False
        self._queue: queue.Queue[export.ExportedBatch | BaseException | None] = queue.Queue(maxsize=1)
        self._halt = threading.Event()
        self._progress = threading.Condition()
        self._handed = self._applied = 0
        self._thread = threading.Thread(target=self._run, name="cdc-export", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        final: BaseException | None = None
        try:
            while not (self._halt.is_set() or self.worker.stop.is_set()):
                exported = export.export_batch(
                    self.worker.export_conn,
                    self.worker.archive_dir,
                    batch_size=self.worker.batch_size,
                    up_to=self.up_to,
                    mode="run",
                    fence=self.worker.assert_lock_holder,
                    log_level=self.worker.batch_log_level,
                )
                if exported is None:
                    self.drained = True
                    break
                self._put(exported)
                if exported.changes < self.worker.batch_size:
                    # the outbox is about drained: let new changes gather while this batch is applied,
                    # rather than shipping them one by one in batches that each pay a batch's overhead
                    self._wait_applied()
        except BaseException as exc:  # handed to the applying thread, which raises it
            final = exc
        finally:
            self._put(final)

    def _put(self, item: export.ExportedBatch | BaseException | None) -> None:
        while not self._halt.is_set():
            try:
                self._queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            if item is not None and not isinstance(item, BaseException):
                with self._progress:
                    self._handed += 1
            return

    def _wait_applied(self) -> None:
        with self._progress:
            self._progress.wait_for(lambda: self._applied >= self._handed or self._halt.is_set())

    def applied(self) -> None:
        """The applying thread finished a batch it took from ``batches``."""
        with self._progress:
            self._applied += 1
            self._progress.notify_all()

    def batches(self) -> Iterator[export.ExportedBatch]:
        while (item := self._queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        """Stop after the batch being exported (it stays pending) and wait for the thread."""
        self._halt.set()
        with self._progress:
            self._progress.notify_all()
        self._thread.join()
